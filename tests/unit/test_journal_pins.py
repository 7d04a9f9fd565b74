"""Rules of the state file that a mutation hunt found no test pinned: a torn tail cut once
(never again over later records), a publish told "failed" never found after a restart, the
zeros written ahead never written over a durable record, a short write completed, a failed
compaction leaving the journal broken, the compaction bound following the snapshot, the lock
taken again when its file is unlinked under us, and another state file's temp left alone."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
import mqttsession.statelock as statelock_mod
from mqttsession.errors import PersistenceError, StateLockedError
from mqttsession.journal import AHEAD_BYTES, JOURNAL_SUFFIX, Journal, read_frames, read_state
from mqttsession.state import SessionState
from mqttsession.testing.faults import FakeOs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

NAME = "pins.state"
CID = "pins"
TORN = b"\x00\x00\x01\x00torn-garbage"  # a frame header promising more than follows


def jpath(p: Path) -> Path:
    return Path(str(p) + JOURNAL_SUFFIX)


def topics(p: Path) -> list[str]:
    """The outgoing topics a restart finds (read-only: also while a Journal has the file)."""
    return sorted(m.topic for m in read_state(str(p), CID).outgoing.values())


def eio(*_a: Any) -> Any:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def enospc(*_a: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, Journal, SessionState]]:
    p = tmp_path / NAME
    j = Journal(str(p), CID, sync=True)
    state = j.recover()
    j.compact(state)
    try:
        yield p, j, state
    finally:
        j.close()


def torn_and_reopened(p: Path, j: Journal, state: SessionState) -> tuple[Journal, SessionState]:
    """One record "t/a" synced, garbage written after it (a torn tail), the journal reopened."""
    j.append([state.accept("t/a", b"a", 1)], state, sync=True)
    j.close()
    _payloads, end, _damaged = read_frames(jpath(p).read_bytes())
    with open(jpath(p), "r+b") as f:
        f.seek(end)
        f.write(TORN)
    j2 = Journal(str(p), CID, sync=True)
    return j2, j2.recover()


# =================================================================================================
# a torn tail is cut once


def test_a_torn_tail_is_cut_once_not_again_over_later_records(
        journal: tuple[Path, Journal, SessionState]) -> None:
    """After a restart that cut a torn tail, later appends never truncate the journal back to
    the recovery point: both records synced after it are found (a hunt)."""
    p, j, state = journal
    j2, got = torn_and_reopened(p, j, state)
    try:
        j2.append([got.accept("t/b", b"b", 1)], got, sync=True)
        j2.append([got.accept("t/c", b"c", 1)], got, sync=True)
        assert topics(p) == ["t/a", "t/b", "t/c"]
    finally:
        j2.close()


def test_a_torn_tail_is_cut_by_a_group_commit_before_its_held_record(
        journal: tuple[Path, Journal, SessionState]) -> None:
    """A group commit's write is the first after a restart that found a torn tail: it cuts the
    tail first, once; its held record and one synced after are found (a hunt)."""
    p, j, state = journal
    j2, got = torn_and_reopened(p, j, state)
    try:
        j2.append([got.accept("t/held", b"h", 1)], got, held=True)
        assert j2.sync_to(*j2.position())
        assert topics(p) == ["t/a", "t/held"]
        j2.append([got.accept("t/b", b"b", 1)], got, sync=True)
        assert topics(p) == ["t/a", "t/b", "t/held"]
    finally:
        j2.close()


# =================================================================================================
# a publish told "failed" is not found after a restart


@pytest.mark.parametrize("cut_fails", [False, True])
def test_a_record_whose_fdatasync_failed_is_taken_back_out(
        journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch,
        cut_fails: bool) -> None:
    """An append whose fdatasync fails (EIO) raises, and its frame is cut from the file (when
    that ftruncate fails too, zeros are written over it): a restart after a kill -9 does not
    find the publish told "failed" (a hunt)."""
    p, j, state = journal
    j.append([state.accept("t/kept", b"k", 1)], state, sync=True)
    faults = {"fdatasync": eio, **({"ftruncate": eio} if cut_fails else {})}
    monkeypatch.setattr(journal_mod, "os", FakeOs(**faults))
    with pytest.raises(PersistenceError):
        j.append([state.accept("t/failed", b"x", 1)], state, sync=True)
    monkeypatch.setattr(journal_mod, "os", os)
    assert topics(p) == ["t/kept"]


# =================================================================================================
# the zeros ahead, short writes


def test_zeros_ahead_after_a_full_disk_never_overwrite_the_record_before(
        journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch) -> None:
    """A record written past the zeros ahead while they could not be written (ENOSPC) counts
    as allocated: the zeros the next append writes (space back) go after it, not over it; both
    records are found (a hunt)."""
    p, j, state = journal
    monkeypatch.setattr(journal_mod, "os", FakeOs(pwrite=enospc))
    j.append([state.accept("t/big", b"\xab" * AHEAD_BYTES, 1)], state, sync=True)
    monkeypatch.setattr(journal_mod, "os", os)
    j.append([state.accept("t/next", b"y", 1)], state, sync=True)
    assert topics(p) == ["t/big", "t/next"]


def test_a_short_write_of_a_record_is_completed(
        journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.write`` may write less than asked (a nearly full disk): the rest is written, and
    the record is found after a restart (a hunt)."""
    p, j, state = journal
    calls: list[int] = []

    def short(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return os.write(fd, bytes(data)[:10] if len(calls) == 1 else data)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=short))
    j.append([state.accept("t/short", b"s" * 100, 1)], state, sync=True)
    monkeypatch.setattr(journal_mod, "os", os)
    assert topics(p) == ["t/short"]
    assert len(calls) >= 2 and calls[0] > 10  # (the short write did happen)


# =================================================================================================
# compaction


def test_a_failed_compaction_leaves_the_journal_broken(
        journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction that fails (fsync EIO) leaves the journal broken: a record appended before
    it and never synced makes the next ``sync_pending`` raise, not return as if durable (a
    hunt)."""
    _p, j, state = journal
    j.append([state.accept("t/unsynced", b"u", 1)], state, sync=False)
    monkeypatch.setattr(journal_mod, "os", FakeOs(fsync=eio))
    with pytest.raises(PersistenceError):
        j.compact(state)
    monkeypatch.setattr(journal_mod, "os", os)
    with pytest.raises(PersistenceError):
        j.sync_pending()


def test_the_compaction_bound_is_half_a_snapshot_over_two_mib(tmp_path: Path) -> None:
    """With a snapshot over 2 MiB (and no ``max_journal_bytes``) the journal's bound is half
    the snapshot's size, not the snapshot's size: past it, the journal is compacted (a
    hunt)."""
    p = tmp_path / NAME
    j = Journal(str(p), CID, sync=False)
    try:
        state = j.recover()
        for i in range(6):
            state.accept(f"t/{i}", os.urandom(512 * 1024), 1)
        j.compact(state)
        snap = p.stat().st_size
        assert snap > 2 * 1024 * 1024
        assert j.bound == snap // 2
        while not j.needs_compaction:
            j.append([state.accept("t/more", os.urandom(64 * 1024), 1)], state)
        assert j.position()[1] < snap * 3 // 4  # compacted at half, well before the whole
    finally:
        j.close()


# =================================================================================================
# the lock, temp files


def test_a_lock_file_unlinked_while_we_lock_it_is_taken_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the previous owner unlinks the lock file just as we flock it, our lock is on a
    file nobody else opens: the lock file at the path is created and locked again, so a second
    Journal on the same path is refused (a hunt)."""
    p = tmp_path / NAME
    real = fcntl.flock
    unlinked: list[int] = []

    def flock(fd: int, op: int) -> None:
        if not unlinked:
            unlinked.append(fd)
            os.unlink(str(p) + ".lock")
        real(fd, op)

    fake = type("Fcntl", (), {"flock": staticmethod(flock), "LOCK_EX": fcntl.LOCK_EX,
                              "LOCK_NB": fcntl.LOCK_NB})
    monkeypatch.setattr(statelock_mod, "fcntl", fake)
    first = Journal(str(p), CID, sync=True)
    monkeypatch.setattr(statelock_mod, "fcntl", fcntl)
    try:
        assert unlinked
        with pytest.raises(StateLockedError):
            Journal(str(p), CID, sync=True).close()
    finally:
        first.close()


def test_another_state_files_temp_sharing_our_name_as_a_prefix_is_left(tmp_path: Path) -> None:
    """Opening state file ``s`` removes the temps a killed owner of ``s`` left, never the live
    temp ``s2.tmp-...`` of state file ``s2`` in the same directory (a hunt)."""
    other = tmp_path / "s2.tmp-0123456789abcdef"
    other.write_text("live temp of s2")
    ours = tmp_path / "s.tmp-0123456789abcdef"
    ours.write_text("left by a killed owner of s")
    j = Journal(str(tmp_path / "s"), CID, sync=True)
    j.close()
    assert other.read_text() == "live temp of s2"
    assert not ours.exists()
