"""The shared log's held frames: a group commit's publishes, every session's, written by the
sync that covers them in one ``write`` (mqttsession.sharedlog)."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqttsession import codec
from mqttsession.errors import PersistenceError
from mqttsession.sessionlog import SessionLog
from mqttsession.sharedlog import LOG_NAME, SharedLog
from mqttsession.state import Phase, SessionState

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-held-", dir=SHM) as d:
        yield Path(d)


def _sessions(shm: Path, *cids: str) -> tuple[SharedLog, list[tuple[SessionLog, SessionState]]]:
    log = SharedLog(str(shm), hold_publishes=True)
    out = []
    for cid in cids:
        view, state = log.session(cid), SessionState(client_id=cid, clean_session=False)
        view.compact(state)
        out.append((view, state))
    return log, out


def _counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os.write`` counted (the sizes written)."""
    real, sizes = os.write, []

    def counted(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counted)
    return sizes


def _recovered(shm: Path) -> dict[str, str]:
    log = SharedLog(str(shm))
    try:
        return {c: codec.encode(log.session(c).recover()) for c in log.sessions()}
    finally:
        log.close()


def test_held_records_are_written_by_the_sync_that_covers_them(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, views = _sessions(shm, "a", "b", "c")
    size = (shm / LOG_NAME).stat().st_size
    writes = _counting_writes(monkeypatch)
    for view, state in views:
        view.append([state.accept("t", b"held", 1)], state, sync=False, held=True)
    assert writes == [] and (shm / LOG_NAME).stat().st_size == size
    gen, pos = log.position()
    assert not log.is_synced(gen, pos)
    assert log.sync_to(gen, pos)
    assert len(writes) == 1 and log.is_synced(gen, pos)  # one write for the three sessions
    assert (shm / LOG_NAME).stat().st_size == pos
    log.close()
    assert _recovered(shm) == {v.client_id: codec.encode(s) for v, s in views}


def test_a_write_after_held_frames_writes_them_first(shm: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log, [(a, sa), (b, sb)] = _sessions(shm, "a", "b")
    writes = _counting_writes(monkeypatch)
    a.append([sa.accept("t", b"held", 1)], sa, sync=False, held=True)
    b.append([sb.accept("t", b"written now", 1)], sb, sync=False)
    assert len(writes) == 1  # a's held frame and b's, in that order, one write
    assert (shm / LOG_NAME).stat().st_size == log.position()[1]
    monkeypatch.undo()
    # what a kill -9 now leaves (no close): both records, in order
    data = (shm / LOG_NAME).read_bytes()
    log._lock_fd, lock = None, log._lock_fd  # noqa: SLF001 - the process "dies": no close
    os.close(lock) if lock is not None else None
    copy = shm / "copy"
    copy.mkdir()
    (copy / LOG_NAME).write_bytes(data)
    assert _recovered(copy) == {"a": codec.encode(sa), "b": codec.encode(sb)}


def test_close_writes_the_held_frames(shm: Path) -> None:
    log, [(a, sa)] = _sessions(shm, "a")
    a.append([sa.accept("t", b"held", 1)], sa, sync=False, held=True)
    log.close()
    assert _recovered(shm) == {"a": codec.encode(sa)}


def _failing_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Every ``os.write`` writes 5 bytes and fails with ENOSPC, until the returned undo."""
    real = os.write

    def short(fd: int, data: bytes) -> int:
        real(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short)
    return lambda: monkeypatch.setattr(os, "write", real)


@pytest.mark.parametrize("by", ["sync", "write"])
def test_a_failed_write_of_held_frames_cuts_them_and_the_log_is_rebuilt(
        shm: Path, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    """The disk full when the held frames are written (by the sync that covers them, or by
    another session's write): their publishes fail, nothing of them stays in the log or in
    memory, and what was written before them is kept."""
    log, [(a, sa), (b, sb)] = _sessions(shm, "a", "b")
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    b.append([sb.accept("t", b"unsynced", 1)], sb, sync=False)  # in the OS: kept
    durable_a, written_b = codec.encode(sa), codec.encode(sb)
    size = (shm / LOG_NAME).stat().st_size
    a.append([sa.accept("t", b"held", 1)], sa, sync=False, held=True)
    gen, pos = log.position()
    undo = _failing_writes(monkeypatch)
    if by == "sync":
        with pytest.raises(PersistenceError, match="No space"):
            log.sync_to(gen, pos)
    else:
        with pytest.raises(PersistenceError, match="No space"):
            b.append([sb.accept("t", b"two", 1)], sb, sync=False)
        sb = codec.decode(written_b)  # its publish failed: withdrawn
    undo()
    assert (shm / LOG_NAME).stat().st_size == size  # the short write taken back
    assert not log.is_synced(gen, pos)
    with pytest.raises(PersistenceError):
        log.sync_to(gen, pos)
    sa = codec.decode(durable_a)  # the held publish failed: withdrawn
    a.append([sa.accept("t", b"three", 1)], sa, sync=True)  # the log rebuilt from memory
    assert log._gen > gen  # noqa: SLF001
    b.append([sb.accept("t", b"after", 1)], sb, sync=True)
    log.close()
    assert _recovered(shm) == {"a": codec.encode(sa), "b": codec.encode(sb)}


def test_a_rotation_writes_the_held_frames(shm: Path) -> None:
    log = SharedLog(str(shm), max_log_bytes=4096, hold_publishes=True)
    views = [(log.session(c), SessionState(client_id=c, clean_session=False)) for c in "abc"]
    for v, s in views:
        v.compact(s)
    rng = random.Random(5)
    for i in range(300):
        v, s = rng.choice(views)
        v.append([s.accept("t", rng.randbytes(40), 1)], s, sync=False, held=True)
        if i % 7 == 0:
            log.sync_to(*log.position())
        if i % 25 == 0:  # the live bytes bounded: the log rotates
            for seq in [m.seq for m in s.outgoing.values()]:
                s.withdraw(seq)
            v.compact(s)
    assert log._gen > 0  # noqa: SLF001 - it rotated with held frames
    log.sync_to(*log.position())
    assert (shm / LOG_NAME).stat().st_size == log.position()[1]
    log.close()
    assert _recovered(shm) == {v.client_id: codec.encode(s) for v, s in views}


def test_a_random_history_of_held_lazy_and_synced_records(shm: Path) -> None:
    log, views = _sessions(shm, "a", "b", "c", "d")
    rng = random.Random(11)
    for i in range(400):
        v, s = rng.choice(views)
        acked = [m.packet_id for m in s.outgoing.values() if m.phase is Phase.AWAIT_PUBACK]
        queued = [m.seq for m in s.outgoing.values() if m.phase is Phase.QUEUED]
        r = rng.random()
        if acked and r < 0.3:
            v.append([s.puback(acked[0])], s, lazy=True, sync=False)
        elif queued and r < 0.6:
            v.append([s.send(queued[0])], s, sync=False)
        else:
            v.append([s.accept("t", rng.randbytes(10), 1)], s, sync=False,
                     held=rng.random() < 0.7)
        if rng.random() < 0.1:
            log.sync_to(*log.position())
        if rng.random() < 0.02:
            v.compact(s)
    log.sync_to(*log.position())
    for v, _s in views:
        v.flush()
    log.close()
    assert _recovered(shm) == {v.client_id: codec.encode(s) for v, s in views}


def test_lazy_records_flushed_while_frames_are_held_join_them(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session's timer flushing its lazy records (a PUBACK's removal) while a group commit
    waits: held with the others, the sync writes them all in one ``write``; with nothing
    held, the flush writes at once."""
    log, [(a, sa), (b, sb)] = _sessions(shm, "a", "b")
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    m = next(iter(sa.outgoing.values()))
    a.append([sa.send(m.seq)], sa, sync=True)
    writes = _counting_writes(monkeypatch)
    a.append([sa.puback(m.packet_id)], sa, lazy=True, sync=False)
    b.append([sb.accept("t", b"held", 1)], sb, sync=False, held=True)
    a.flush()
    assert writes == []
    log.sync_to(*log.position())
    assert len(writes) == 1
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    m = sa.outgoing[max(sa.outgoing)]
    a.append([sa.send(m.seq)], sa, sync=True)
    a.append([sa.puback(m.packet_id)], sa, lazy=True, sync=False)
    a.flush()  # nothing held: written now
    assert len(writes) == 4 and (shm / LOG_NAME).stat().st_size == log.position()[1]
    log.close()
    assert _recovered(shm) == {"a": codec.encode(sa), "b": codec.encode(sb)}


def test_a_log_that_does_not_hold_publishes_writes_them_at_once(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A threaded ``Gateway``'s log: each publisher thread writes its own record (in its own
    thread, before it joins the group commit); only ``AsyncGateway``'s holds them."""
    log = SharedLog(str(shm))
    a, sa = log.session("a"), SessionState(client_id="a", clean_session=False)
    a.compact(sa)
    writes = _counting_writes(monkeypatch)
    a.append([sa.accept("t", b"at once", 1)], sa, sync=False, held=True)
    assert len(writes) == 1 and (shm / LOG_NAME).stat().st_size == log.position()[1]
    log.close()
    assert _recovered(shm) == {"a": codec.encode(sa)}
