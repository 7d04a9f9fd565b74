"""A power-cut model for the interval tests: what a file holds on disk is what it held at its
last fsync / fdatasync (by inode, so renames are followed). Unsynced bytes may reach the disk
too, but losing all of them is one legal outcome of a power cut: ``Recorder.image`` builds it.
``copy_now`` is what a kill -9 leaves (the page cache).

A failed fdatasync is modelled as Linux handles a write-back error: the file's dirty pages are
marked clean, so a later sync that succeeds does not write them unless they were written again
(``write``/``pwrite`` over them, or their content changed, as a mapped store does): until
then the disk keeps what it had."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
import mqttsession.journal as journal_mod
import mqttsession.recovery as recovery_mod
import mqttsession.sessionlog as sessionlog_mod
import mqttsession.sharedlog as sharedlog_mod
import mqttsession.spool as spool_mod
from mqttsession import Client

_PAGE = 4096


class Recorder:
    """Stands for ``os`` in the modules that write state files: records each file's synced
    bytes; the next ``fail_next`` fdatasyncs (of files named ``fail_name``...) fail with EIO
    (fsyncs too with ``fail_fsync``)."""

    def __init__(self) -> None:
        self.durable: dict[tuple[int, int], bytes] = {}
        self.lock = threading.Lock()
        self.fail_next = 0
        self.fail_name = ""
        self.fail_fsync = False
        self.events: list[str] = []  # "fdatasync NAME SIZE" / "fsync NAME SIZE"
        # by inode: pages a failed sync marked clean (their content then), and those of them
        # written since (a page written again is dirty again)
        self.clean: dict[tuple[int, int], dict[int, bytes]] = {}
        self.rewritten: dict[tuple[int, int], set[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def _name(fd: int) -> str:
        try:
            return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return "?"

    @staticmethod
    def _content(fd: int) -> tuple[tuple[int, int], bytes] | None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None
        with open(f"/proc/self/fd/{fd}", "rb") as f:  # (the fd may be write-only)
            return (st.st_dev, st.st_ino), f.read(st.st_size)

    def _touched(self, fd: int, at: int, n: int) -> None:
        key = os.fstat(fd)
        ino = (key.st_dev, key.st_ino)
        with self.lock:
            if ino in self.clean:
                self.rewritten.setdefault(ino, set()).update(
                    range(at // _PAGE, (at + n + _PAGE - 1) // _PAGE))

    def write(self, fd: int, data: Any) -> int:
        at = os.lseek(fd, 0, os.SEEK_CUR)
        n = os.write(fd, data)
        self._touched(fd, at, n)
        return n

    def pwrite(self, fd: int, data: Any, at: int) -> int:
        n = os.pwrite(fd, data, at)
        self._touched(fd, at, n)
        return n

    def _record(self, fd: int, what: str) -> None:
        got = self._content(fd)
        if got is None:
            return
        ino, data = got
        name = self._name(fd)
        with self.lock:
            old = self.durable.get(ino, b"")
            clean, again = self.clean.get(ino, {}), self.rewritten.pop(ino, set())
            out = bytearray(data)
            for p, then in list(clean.items()):
                page = data[p * _PAGE:(p + 1) * _PAGE]
                if p in again or page != then or not page:
                    del clean[p]  # dirty again (or cut off): this sync writes it
                else:  # still clean: the disk keeps its old bytes
                    out[p * _PAGE:(p + 1) * _PAGE] = old[p * _PAGE:(p + 1) * _PAGE].ljust(
                        len(page), b"\0")
            if not clean:
                self.clean.pop(ino, None)
            self.durable[ino] = bytes(out)
            self.events.append(f"{what} {name} {len(data)}")

    def _failed(self, fd: int) -> None:
        """A write-back error: the pages not on disk are marked clean as they are now."""
        got = self._content(fd)
        if got is None:
            return
        ino, data = got
        with self.lock:
            old = self.durable.get(ino, b"")
            clean = self.clean.setdefault(ino, {})
            self.rewritten.pop(ino, None)
            for p in range((len(data) + _PAGE - 1) // _PAGE):
                page = data[p * _PAGE:(p + 1) * _PAGE]
                if page != old[p * _PAGE:(p + 1) * _PAGE]:
                    clean[p] = page

    def _fail(self, fd: int) -> None:
        """Raise EIO if this sync is to fail (its pages marked clean)."""
        with self.lock:
            fail = self.fail_next > 0 and self._name(fd).startswith(self.fail_name)
            self.fail_next -= fail
        if fail:
            self._failed(fd)
            raise OSError(5, "Input/output error (injected)")

    def fdatasync(self, fd: int) -> None:
        self._fail(fd)
        os.fdatasync(fd)
        self._record(fd, "fdatasync")

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            self._fail(fd)
        os.fsync(fd)
        self._record(fd, "fsync")

    def syncs_of(self, prefix: str) -> int:
        """fdatasyncs of files whose name starts with ``prefix``."""
        with self.lock:
            return sum(1 for e in self.events if e.startswith(f"fdatasync {prefix}"))

    def image(self, path: Path, into: Path) -> Path:
        """The state file's files as a power cut now leaves them (synced bytes only; a file
        never synced is absent); returns the state file's path in ``into``."""
        into.mkdir(parents=True)
        for src in path.parent.rglob("*"):
            rel = src.relative_to(path.parent)
            if not str(rel).startswith(path.name) or src.name.endswith(".lock") \
                    or not src.is_file():
                continue
            st = src.stat()
            data = self.durable.get((st.st_dev, st.st_ino))
            if data is not None:
                (into / rel).parent.mkdir(parents=True, exist_ok=True)
                (into / rel).write_bytes(data)
        return into / path.name


Entries = dict[str, tuple[tuple[int, int], bool]]  # name: (inode, a directory?)


class DirRecorder(Recorder):
    """Directories too (POSIX): a new name, a rename or an unlink survives a power cut only
    once its directory is fsynced. Everything under ``base`` when made counts as durable;
    ``dir_image`` rebuilds ``base`` as a power cut now leaves it. ``release`` when done."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base
        self.dirs: dict[tuple[int, int], Entries] = {}
        self.pinned: dict[tuple[int, int], int] = {}  # an fd on each file seen: never reused
        for root, _dirs, files in os.walk(base):
            self._list(root)
            for f in files:
                self._pin(os.path.join(root, f))
                with open(os.path.join(root, f), "rb") as fh:
                    st = os.fstat(fh.fileno())
                    self.durable[(st.st_dev, st.st_ino)] = fh.read()

    def _list(self, path: str) -> None:
        entries: Entries = {}
        for name in os.listdir(path):
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(path, name))
                entries[name] = ((st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode))
                if stat.S_ISREG(st.st_mode):
                    self._pin(os.path.join(path, name))
        st = os.stat(path)
        with self.lock:
            self.dirs[(st.st_dev, st.st_ino)] = entries

    def _pin(self, path: str) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.pinned:
                os.close(fd)
            else:
                self.pinned[(st.st_dev, st.st_ino)] = fd

    def _record(self, fd: int, what: str) -> None:
        self._pin(f"/proc/self/fd/{fd}")
        super()._record(fd, what)

    def fsync(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.fsync(fd)
            self._list(os.readlink(f"/proc/self/fd/{fd}"))
            return
        super().fsync(fd)

    def dir_image(self, into: Path) -> None:
        """``base`` as a power cut now leaves it, made in ``into`` (a new directory)."""
        st = os.stat(self.base)
        into.mkdir(parents=True)
        self._build((st.st_dev, st.st_ino), into)

    def _build(self, ino: tuple[int, int], into: Path) -> None:
        for name, (child, is_dir) in self.dirs.get(ino, {}).items():
            if is_dir:
                (into / name).mkdir()
                self._build(child, into / name)
            elif not name.endswith(".lock"):
                (into / name).write_bytes(self.durable.get(child, b""))

    def release(self) -> None:
        for fd in self.pinned.values():
            os.close(fd)
        self.pinned.clear()


def install(monkeypatch: pytest.MonkeyPatch, r: Recorder | None = None) -> Recorder:
    """``r`` (a new ``Recorder`` by default) stands for ``os`` in the state-writing modules."""
    r = Recorder() if r is None else r
    for m in (journal_mod, spool_mod, sharedlog_mod, sessionlog_mod, groupcommit_mod,
              recovery_mod):
        monkeypatch.setattr(m, "os", r)
    return r


def copy_now(path: Path, into: Path) -> Path:
    """The state file's files as a kill -9 now leaves them (what the OS holds)."""
    into.mkdir(parents=True)
    for src in path.parent.rglob("*"):
        rel = src.relative_to(path.parent)
        if str(rel).startswith(path.name) and src.is_file() and not src.name.endswith(".lock"):
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, into / rel)
    return into / path.name


def interval_client(path: Path, interval_ms: int, client_id: str = "ivf",
                    **settings: object) -> Client:
    """A client of the state file ``path`` under SessionSync=interval, with ``settings``."""
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=interval")
    c.config(f"SessionSyncInterval={interval_ms}")
    for k, v in settings.items():
        c.config(f"{k}={v}")
    return c


def kept(path: Path, client_id: str = "ivf", **settings: object) -> list[bytes]:
    """The payloads a restart from ``path`` finds: in memory, then in the disk queue."""
    d = interval_client(path, 60_000, client_id, **settings)
    try:
        d.restore_session("")
        return [m.message for m in d.outgoing_messages]
    finally:
        d.close()


def gateway_kept(d: Path, cid: str) -> list[bytes]:
    """The payloads a restart of the gateway directory ``d`` finds for session ``cid``."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    gw = Gateway(d)
    try:
        c = gw.client(cid, clean_session=False)
        return [m.message for m in c.outgoing_messages]
    finally:
        gw.close()
