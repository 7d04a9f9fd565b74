"""Pins found by a mutation hunt over the disk-fault tools in ``mqttsession.testing``:
``faults.Injector`` / ``journal_faults`` (which calls count, the n-th one failing, a short write,
``disarm``, both modules patched, maps refused on the write path) and ``fsyncs``
(``counting_fdatasyncs`` over the journal and the disk queue, ``StuckFdatasync`` once).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqttsession.journal as journal_mod
import mqttsession.recovery as recovery_mod
import mqttsession.spool as spool_mod
from mqttsession.journal import JOURNAL_SUFFIX
from mqttsession.mapped import MappedTail
from mqttsession.testing.faults import FakeOs, Fault, Injector, journal_faults
from mqttsession.testing.fsyncs import StuckFdatasync, counting_fdatasyncs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

NAME = "state.bin"


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Open descriptors of the journal, a temp journal and a temp snapshot of ``NAME``."""
    names = {"journal": NAME + JOURNAL_SUFFIX, "jour_tmp": NAME + JOURNAL_SUFFIX + ".tmp-1",
             "snap_tmp": NAME + ".tmp-1"}
    opened = {k: os.open(tmp_path / n, os.O_RDWR | os.O_CREAT, 0o600) for k, n in names.items()}
    yield opened
    for fd in opened.values():
        os.close(fd)


def _fault(fault_id: str) -> Fault:
    return next(f for f in journal_faults(NAME) if f.id == fault_id)


def test_append_write_counts_only_the_journal_itself(fds: dict[str, int]) -> None:
    """The append faults hit writes to the journal, not to its temp copies."""
    when = _fault("append-write").when
    assert when(fds["journal"], b"x")
    assert not when(fds["jour_tmp"], b"x")
    assert _fault("journal-write").when(fds["jour_tmp"], b"x")
    assert not _fault("snapshot-write").when(fds["journal"], b"x")


def test_journal_reopen_does_not_count_creating_opens(tmp_path: Path) -> None:
    """``journal-reopen`` fails the reopen for writing, not the journal's creation."""
    when = _fault("journal-reopen").when
    path = str(tmp_path / (NAME + JOURNAL_SUFFIX))
    assert when(path, os.O_WRONLY | os.O_APPEND)
    assert not when(path, os.O_WRONLY | os.O_CREAT)
    assert not when(path, os.O_RDONLY)


def test_injector_fails_the_nth_counted_call_only_while_armed(
    monkeypatch: pytest.MonkeyPatch, fds: dict[str, int]
) -> None:
    """``nth=1``: the second counted call fails, the others pass; ``nth=None``: every counted
    call; after ``disarm()`` none. Uncounted calls always pass."""
    fd = fds["journal"]
    inj = Injector(monkeypatch, Fault("w", "append", "write", lambda f, *_: f == fd, errno.EIO, nth=1))
    assert journal_mod.os.write(fd, b"a") == 1
    with pytest.raises(OSError) as ei:
        journal_mod.os.write(fd, b"b")
    assert ei.value.errno == errno.EIO
    assert journal_mod.os.write(fd, b"c") == 1
    assert (inj.counted, inj.hits) == (3, 1)

    every = Injector(monkeypatch, Fault("w", "append", "write", lambda f, *_: f == fd, errno.ENOSPC,
                                        nth=None))
    for _ in range(2):
        with pytest.raises(OSError):
            journal_mod.os.write(fd, b"d")
    assert journal_mod.os.write(fds["jour_tmp"], b"e") == 1
    every.disarm()
    assert journal_mod.os.write(fd, b"f") == 1
    assert every.hits == 2
    assert os.pread(fd, 10, 0) == b"acf"


@pytest.mark.parametrize("data, written", [(b"ab", b"a"), (b"abcdef", b"abc"), (b"z", b"")])
def test_short_write_writes_half_then_fails(
    monkeypatch: pytest.MonkeyPatch, fds: dict[str, int], data: bytes, written: bytes
) -> None:
    """A ``short`` write fault writes the first half (nothing of one byte), then raises."""
    fd = fds["journal"]
    Injector(monkeypatch, _fault("append-short-write"))
    with pytest.raises(OSError) as ei:
        journal_mod.os.write(fd, data)
    assert ei.value.errno == errno.ENOSPC
    assert os.pread(fd, 10, 0) == written


def test_injector_patches_journal_and_recovery_and_refuses_maps_for_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fault is seen by ``journal`` and ``recovery`` (the directory fsync); a write fault
    also makes files unmappable, so the write path is taken."""
    real_put = MappedTail.put
    Injector(monkeypatch, _fault("snapshot-dir-fsync"))
    assert isinstance(journal_mod.os, FakeOs) and recovery_mod.os is journal_mod.os
    assert MappedTail.put is real_put
    Injector(monkeypatch, _fault("append-write"))
    assert MappedTail.put is not real_put
    assert MappedTail.put(None, 0, 0, 0, b"x") is False  # type: ignore[arg-type]


def test_counting_fdatasyncs_counts_journal_and_spool_and_restores(tmp_path: Path) -> None:
    """Every fdatasync through the journal's or the disk queue's ``os`` is counted (and done);
    both get the real ``os`` back after the block."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with counting_fdatasyncs() as counter:
            journal_mod.os.fdatasync(fd)
            spool_mod.os.fdatasync(fd)
            assert counter.syncs == 2
        with pytest.raises(OSError):
            counter.fdatasync(2**20)  # the real call is made (EBADF)
        assert counter.syncs == 2
    finally:
        os.close(fd)
    assert journal_mod.os is os and spool_mod.os is os


def test_stuck_fdatasync_holds_one_call_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Armed, the next fdatasync blocks until ``gate``; the next ones go straight through."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    stuck = StuckFdatasync(monkeypatch.setattr)
    stuck.armed = True
    t = threading.Thread(target=os.fdatasync, args=(fd,))
    second = threading.Thread(target=os.fdatasync, args=(fd,))
    try:
        t.start()
        assert stuck.entered.wait(5)
        assert not stuck.armed
        second.start()
        second.join(5)  # not held: returns while the first is still blocked
        assert not second.is_alive() and t.is_alive()
    finally:
        stuck.gate.set()
        t.join(5)
        if second.ident is not None:
            second.join(5)
        os.close(fd)


def test_journal_dir_fsync_is_the_second_directory_fsync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compaction fsyncs the directory twice (after the snapshot's rename, then the
    journal's): ``snapshot-dir-fsync`` fails the first, ``journal-dir-fsync`` the second."""
    d = os.open(tmp_path, os.O_RDONLY)
    try:
        Injector(monkeypatch, _fault("journal-dir-fsync"))
        recovery_mod.os.fsync(d)
        with pytest.raises(OSError):
            recovery_mod.os.fsync(d)
        Injector(monkeypatch, _fault("snapshot-dir-fsync"))
        with pytest.raises(OSError):
            recovery_mod.os.fsync(d)
    finally:
        os.close(d)
