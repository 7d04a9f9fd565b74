"""Disk faults for the state file: make an ``os`` call inside ``mqttsession.journal`` fail.

Only the journal module sees the failing function (its ``os`` is replaced by a ``FakeOs``); the
rest of the process keeps the real one. ``journal_faults(name)`` lists one fault for every write
path of a state file called ``name``: the journal append, and each step of a compaction (temp
files, fsyncs, renames, the directory fsync, reopening the journal)::

    inj = Injector(monkeypatch, fault)   # armed
    ...                                  # the call under test raises PersistenceError
    inj.disarm()
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

import pytest

import mqttsession.journal as journal_mod
import mqttsession.recovery as recovery_mod
from mqttsession.journal import JOURNAL_SUFFIX
from mqttsession.mapped import MappedTail

__all__ = ["FakeOs", "Fault", "Injector", "journal_faults", "fd_name", "is_dir_fd", "base_name"]


class FakeOs:
    """Stands in for ``os`` inside mqttsession.journal only (other modules keep the real one)."""

    def __init__(self, **overrides: Callable[..., Any]) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def fd_name(fd: int) -> str:
    """The file name an open descriptor refers to (Linux ``/proc``)."""
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def base_name(p: Any) -> str:
    return str(os.path.basename(os.fspath(p)))


@dataclass(frozen=True)
class Fault:
    id: str
    op: str  # "append" or "compact": the Journal call the fault hits
    func: str  # the os function that fails
    when: Callable[..., bool]  # which calls of it count
    err: int
    nth: int | None = 0  # fail the nth counted call; None: every counted call while armed
    short: bool = False  # os.write: write half first (a partial write before ENOSPC)


def journal_faults(name: str) -> list[Fault]:
    """A fault on every write path of the state file ``name`` (its base name)."""
    journal = name + JOURNAL_SUFFIX
    snap_tmp, jour_tmp = name + ".tmp-", journal + ".tmp-"

    def writes(prefix: str, exact: bool = False) -> Callable[..., bool]:
        if exact:
            return lambda fd, *_: fd_name(fd) == prefix
        return lambda fd, *_: fd_name(fd).startswith(prefix)

    def opens(prefix: str) -> Callable[..., bool]:
        return lambda path, *_: base_name(path).startswith(prefix)

    return [
        Fault("append-write", "append", "write", writes(journal, exact=True), errno.ENOSPC),
        Fault("append-short-write", "append", "write", writes(journal, exact=True), errno.ENOSPC,
              short=True),
        Fault("append-fdatasync", "append", "fdatasync", lambda fd: True, errno.EIO),
        Fault("snapshot-open-temp", "compact", "open", opens(snap_tmp), errno.ENOSPC),
        Fault("snapshot-write", "compact", "write", writes(snap_tmp), errno.ENOSPC),
        Fault("snapshot-short-write", "compact", "write", writes(snap_tmp), errno.ENOSPC,
              short=True),
        Fault("snapshot-fsync", "compact", "fsync", writes(snap_tmp), errno.EIO),
        Fault("snapshot-replace", "compact", "replace",
              lambda src, dst: base_name(dst) == name, errno.EIO),
        Fault("snapshot-dir-open", "compact", "open", lambda path, *_: os.path.isdir(path),
              errno.EIO),
        Fault("snapshot-dir-fsync", "compact", "fsync", is_dir_fd, errno.EIO),
        Fault("journal-open-temp", "compact", "open", opens(jour_tmp), errno.ENOSPC),
        Fault("journal-write", "compact", "write", writes(jour_tmp), errno.ENOSPC),
        Fault("journal-fsync", "compact", "fsync", writes(jour_tmp), errno.EIO),
        Fault("journal-replace", "compact", "replace",
              lambda src, dst: base_name(dst) == journal, errno.EIO),
        Fault("journal-dir-fsync", "compact", "fsync", is_dir_fd, errno.EIO, nth=1),
        Fault("journal-reopen", "compact", "open",
              lambda path, flags, *_: (base_name(path) == journal
                                       and bool(flags & (os.O_WRONLY | os.O_RDWR))
                                       and not flags & os.O_CREAT),
              errno.EIO),
    ]


def _unmapped(_self: MappedTail, _fd: int, _alloc: int, _at: int, _data: bytes) -> bool:
    return False


class Injector:
    """Installs one Fault into mqttsession.journal's (and recovery's) ``os`` until
    ``disarm()`` (or the end of the test: ``monkeypatch`` undoes it)."""

    def __init__(self, mp: pytest.MonkeyPatch, fault: Fault) -> None:
        self.fault = fault
        self.counted = 0
        self.hits = 0
        self.armed = True
        real = getattr(os, fault.func)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self.armed and fault.when(*args):
                n = self.counted
                self.counted += 1
                if fault.nth is None or n == fault.nth:
                    self.hits += 1
                    if fault.short:
                        fd, data = args[0], memoryview(args[1])
                        if len(data) > 1:
                            real(fd, data[: len(data) // 2])
                    raise OSError(fault.err, os.strerror(fault.err))
            return real(*args, **kwargs)

        fake = FakeOs(**{fault.func: faulty})
        mp.setattr(journal_mod, "os", fake)
        mp.setattr(recovery_mod, "os", fake)  # (the directory fsync: ``recovery._fsync_dir``)
        if fault.func == "write":  # the write path: a file system where files cannot be mapped
            mp.setattr(MappedTail, "put", _unmapped)

    def disarm(self) -> None:
        self.armed = False
