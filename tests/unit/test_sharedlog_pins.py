"""The shared log (mqttsession.sharedlog), the loop's compaction turn (mqttsession.compacting)
and the mapped tail (mqttsession.mapped) at edges a mutation hunt found unpinned: frames a
writer never makes are damage, stats read back as written, a torn tail of one byte, the
session state a failed sync or write leaves, what ``keep_unsynced`` keeps, the turn's order
and cancels, a mapping never past what was allocated."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mqttsession.mapped as mapped_mod
from mqttsession import codec
from mqttsession.compacting import Turn, size_of
from mqttsession.errors import PersistenceError, StateError
from mqttsession.mapped import MappedTail
from mqttsession.recovery import frame, read_frames
from mqttsession.sessionlog import SessionLog
from mqttsession.sharedlog import (_ATTACH, _HEADER, _RECORD, _SNAPSHOT, LOG_NAME, SharedLog,
                                   _tagged, parse)
from mqttsession.state import SessionState

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-pins-", dir=SHM) as d:
        yield Path(d)


def _snap(cid: str) -> bytes:
    return codec.encode(SessionState(client_id=cid, clean_session=False)).encode()


def _two(shm: Path, **kw: object) -> tuple[SharedLog, tuple[SessionLog, SessionState],
                                           tuple[SessionLog, SessionState]]:
    """A log with sessions "a" and "b", each with an empty snapshot (synced)."""
    log = SharedLog(str(shm), **kw)  # type: ignore[arg-type]
    out = []
    for cid in ("a", "b"):
        view, state = log.session(cid), SessionState(client_id=cid, clean_session=False)
        view.compact(state)
        out.append((view, state))
    return log, out[0], out[1]


def _fail_fdatasyncs(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``arm(n)``: the next ``n`` calls of ``os.fdatasync`` fail with EIO."""
    real, left = os.fdatasync, [0]

    def maybe(fd: int) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.EIO, "I/O error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", maybe)
    return lambda n: left.__setitem__(0, n)


def _reopened(shm: Path) -> dict[str, str]:
    log = SharedLog(str(shm))
    try:
        return {c: codec.encode(log.session(c).recover()) for c in log.sessions()}
    finally:
        log.close()


@pytest.mark.parametrize("junk", [b"junk", b"\x01" * (len(_HEADER) - 1), b"x"])
def test_a_short_file_that_is_no_torn_header_is_damage(shm: Path, junk: bytes) -> None:
    """Only a prefix of the header is a torn empty log: shorter bytes that are not one are
    damage (kept aside), never an empty log that would be written over."""
    assert parse(_HEADER[:5], StateError) == ({}, 1, 0)
    with pytest.raises(StateError, match="no shared log header"):
        parse(junk, StateError)
    (shm / LOG_NAME).write_bytes(junk)
    with pytest.raises(StateError, match="damaged"):
        SharedLog(str(shm))
    kept = [p for p in shm.iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == junk


_SNAP = _snap("c")
_BAD_LOGS = {
    "session id 0": _tagged(_ATTACH, 0, b"c") + _tagged(_SNAPSHOT, 0, _SNAP),
    "payload shorter than its session id": frame(b"a\x00\x00\x01") + _tagged(_SNAPSHOT, 1, _SNAP),
    "a live client attached again": _tagged(_ATTACH, 1, b"c") + _tagged(_SNAPSHOT, 1, _SNAP)
    + _tagged(_ATTACH, 2, b"c") + _tagged(_SNAPSHOT, 2, _SNAP),
    "a record before any snapshot": _tagged(_ATTACH, 1, b"c") + _tagged(_RECORD, 1, b"{}")
    + _tagged(_SNAPSHOT, 1, _SNAP),
}


@pytest.mark.parametrize("why", sorted(_BAD_LOGS))
def test_frames_no_writer_makes_are_damage(why: str) -> None:
    """Whole, CRC-valid frames that no writer of the log makes (a session id 0, a payload cut
    inside its session id, a second attach of a client whose session is live, a record with
    no snapshot before it) are damage, never read as a session."""
    data = _HEADER + _BAD_LOGS[why]
    assert not read_frames(data)[2] and read_frames(data)[1] == len(data)  # (whole frames)
    with pytest.raises(StateError, match="does not fit|attached twice"):
        parse(data, StateError)


def test_stats_read_back_as_written(shm: Path) -> None:
    """``stats`` after a reopen (parsed from the file) equals ``stats`` as written, and counts
    the snapshot's body and the records' whole frames."""
    log, (a, sa), _ = _two(shm)
    sa.accept("t", b"x" * 40, 1)
    a.compact(sa)
    a.append([sa.accept("t", b"one", 1), sa.accept("t", b"two!", 1)], sa, sync=True)
    written = sorted(log.stats(), key=lambda s: s.client_id)
    log.close()
    data = (shm / LOG_NAME).read_bytes()
    payloads = read_frames(data)[0][1:]
    sid = next(p[1:5] for p in payloads if p[:1] == _ATTACH and p[5:] == b"a")
    mine = [p for p in payloads if p[1:5] == sid]
    st = next(s for s in written if s.client_id == "a")
    assert st.snapshot_bytes == len([p for p in mine if p[:1] == _SNAPSHOT][-1]) - 5
    assert st.records == 2 and st.record_bytes == sum(8 + len(p) for p in mine if p[:1] == b"r")
    log = SharedLog(str(shm))
    try:
        assert sorted(log.stats(), key=lambda s: s.client_id) == written
    finally:
        log.close()


def test_a_torn_tail_of_one_byte_is_cut(shm: Path) -> None:
    """A single stray byte after the last frame is a torn tail: cut, so the records appended
    after the restart follow the good frames (left there, the next start found damage)."""
    log, (a, sa), _ = _two(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    log.close()
    with open(shm / LOG_NAME, "ab") as f:
        f.write(b"\x07")
    log = SharedLog(str(shm))
    a = log.session("a")
    sa = a.recover()
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    log.close()
    assert _reopened(shm)["a"] == codec.encode(sa)


def test_a_torn_tail_cut_is_synced_even_without_sync(shm: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``sync=False`` leaves a clean log unsynced at start, but the cut of a torn tail is
    made durable (an fdatasync) before anything is appended after it."""
    log, (a, sa), _ = _two(shm)
    log.close()
    with open(shm / LOG_NAME, "ab") as f:
        f.write(b"\x05\x00\x00")
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    SharedLog(str(shm), sync=False).close()
    assert calls


def test_a_compaction_whose_sync_failed_leaves_the_last_synced_snapshot(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot cut by a failed fdatasync is forgotten: the one before it (synced) is the
    session's, in memory and in the log rebuilt at close, never the failed one."""
    log, (a, sa), (b, sb) = _two(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    durable = codec.encode(sa)
    arm = _fail_fdatasyncs(monkeypatch)
    sa.accept("t", b"two", 1)
    arm(1)
    with pytest.raises(PersistenceError):
        a.compact(sa)
    b.append([sb.accept("t", b"bee", 1)], sb, sync=True)  # (the rebuild)
    log.close()
    assert _reopened(shm) == {"a": durable, "b": codec.encode(sb)}


def test_a_session_that_lost_records_stays_stale_through_another_cut(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Session "a" loses a record to a failed sync; before it writes again another failed
    sync ("b"'s) cuts nothing of a's. "a" still writes a snapshot next, not a record that
    would follow the one lost (the next start: damage)."""
    log, (a, sa), (b, sb) = _two(shm)
    arm = _fail_fdatasyncs(monkeypatch)
    arm(1)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    arm(1)
    with pytest.raises(PersistenceError):
        b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    b.append([sb.accept("t", b"bee2", 1)], sb, sync=True)
    log.close()
    assert _reopened(shm) == {"a": codec.encode(sa), "b": codec.encode(sb)}


def _failing(monkeypatch: pytest.MonkeyPatch, name: str) -> Callable[[int], None]:
    """``arm(n)``: the next ``n`` calls of ``os.<name>`` fail with ENOSPC."""
    real, left = getattr(os, name), [0]

    def maybe(*args: object) -> object:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, name, maybe)
    return lambda n: left.__setitem__(0, n)


def test_a_record_whose_write_failed_makes_the_next_append_a_snapshot(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record whose ``write`` failed is not in the log (taken back) but is in the caller's
    state: the session's next append writes a snapshot, not a record after a missing one."""
    log, (a, sa), _ = _two(shm)
    arm = _failing(monkeypatch, "write")
    arm(1)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    log.close()
    assert _reopened(shm)["a"] == codec.encode(sa)


def test_a_record_whose_rebuild_failed_makes_the_next_append_a_snapshot(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed sync the next write rebuilds the log; when that rebuild fails the
    record is not written, so the session's next append writes a snapshot."""
    log, (a, sa), (b, sb) = _two(shm)
    _fail_fdatasyncs(monkeypatch)(1)
    with pytest.raises(PersistenceError):
        b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    import mqttsession.sharedlog as sharedlog_mod  # noqa: PLC0415

    real, left = sharedlog_mod.write_atomic, [1]

    def failing(*args: object, **kw: object) -> None:
        if left[0]:
            left[0] -= 1
            raise PersistenceError(errno.ENOSPC, "No space left on device")
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sharedlog_mod, "write_atomic", failing)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    log.close()
    assert _reopened(shm)["a"] == codec.encode(sa)


def test_keep_unsynced_keeps_written_records_through_a_failed_sync(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``keep_unsynced`` (a session under SessionSync=interval or none) a failed sync
    cuts only held frames: a record written unsynced, whose publish returned, stays in the
    log (the next start finds it)."""
    log, (a, sa), (b, sb) = _two(shm)
    log.keep_unsynced = True
    b.append([sb.accept("t", b"bee", 1)], sb, sync=False)
    _fail_fdatasyncs(monkeypatch)(1)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    log.close()
    assert _reopened(shm)["b"] == codec.encode(sb)


def test_bytes_synced_before_a_cut_stay_synced_after_the_rebuild(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``is_synced`` of an incarnation a failed sync cut: bytes up to the cut (synced before
    it) are on disk, the ones after are not."""
    log, (a, sa), (b, sb) = _two(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    gen, pos = log.position()
    _fail_fdatasyncs(monkeypatch)(1)
    with pytest.raises(PersistenceError):
        b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    assert log._lost[gen] == pos
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)  # (the rebuild: a new incarnation)
    assert log.position()[0] != gen
    assert log.is_synced(gen, pos) and not log.is_synced(gen, pos + 1)
    log.close()


# ---------------------------------------------------------------- compacting.Turn


class _File:
    def __init__(self) -> None:
        self.over = False  # the journal past its bound
        self.journal = self

    @property
    def needs_compaction(self) -> bool:
        return self.over

    def compaction_near(self, size: int) -> bool:
        return self.over


class _Driver:
    """What ``Turn`` asks of a session's driver; ``compact_ahead`` waits for ``gate``."""

    def __init__(self) -> None:
        self.file = _File()
        self.executor = None
        self.loop_waits = 0
        self.busy = False
        self.compactions = 0
        self.errors: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def compact_ahead(self) -> None:
        assert self.gate.wait(5)
        self.compactions += 1
        self.file.over = False

    def reservation_near(self, count: int) -> bool:
        return False

    def queue_sync_near(self) -> bool:
        return False

    def lock_busy(self) -> bool:
        return self.busy

    def error(self, code: int, text: str) -> None:
        self.errors.append(text)


def test_a_call_waits_its_turn_while_another_holds_it() -> None:
    """``due``: a call with nothing of its own to wait for still takes its turn while one
    call holds it (a compaction running): it must not overtake it."""
    async def main() -> None:
        d, turn = _Driver(), Turn()
        assert not turn.due(d, 10)
        async with turn.held(d, 0):
            assert turn.waiting == 1 and turn.due(d, 10) and turn.due(d, 0, record=False)
            assert d.loop_waits == 1  # (a batch about to take the lock lets this call in)
        assert turn.waiting == 0 and d.loop_waits == 0 and not turn.due(d, 10)

    asyncio.run(main())


def test_compact_soon_runs_one_compaction_at_a_time() -> None:
    """A second ``compact_soon`` while the first one's task runs starts no other task."""
    async def main() -> None:
        d, turn = _Driver(), Turn()
        d.file.over = True
        d.gate.clear()
        assert turn.compact_soon(d)
        first = turn.pending()
        assert first is not None and turn.compact_soon(d) and turn.pending() is first
        await asyncio.sleep(0)
        d.gate.set()
        await asyncio.wait_for(first, 5)
        assert d.compactions == 1 and turn.pending() is None

    asyncio.run(main())


def test_a_call_cancelled_during_its_compaction_is_cancelled_after_it() -> None:
    """A cancel while the turn's compaction runs in the executor: the compaction runs to its
    end, then the call is cancelled (it stores nothing), never let through."""
    async def main() -> None:
        d, turn = _Driver(), Turn()
        d.file.over = True
        d.gate.clear()
        stored: list[int] = []

        async def publish() -> None:
            async with turn.held(d, 0):
                stored.append(1)

        task = asyncio.ensure_future(publish())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.01)
        d.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert d.compactions == 1 and stored == [] and turn.waiting == 0

    asyncio.run(main())


def test_size_of_counts_the_topic_and_the_payload() -> None:
    assert size_of("a/b", b"12345") == 8 and size_of(None, b"x") == 0


# ---------------------------------------------------------------- mapped.MappedTail


def _mappable_file(shm: Path, size: int) -> int:
    if mapped_mod.fs_type(os.stat(shm).st_dev) not in mapped_mod.IN_PLACE:
        pytest.skip(f"{shm} is not on a file system the tail maps")
    fd = os.open(shm / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, bytes(size))
    return fd


def test_a_put_past_the_allocated_bytes_is_written_not_mapped(shm: Path) -> None:
    """``put`` never maps past ``alloc`` (the zeros written): one byte past it is False
    (the caller writes it), and the file is untouched."""
    fd = _mappable_file(shm, 8192)  # (more than allocated: the next zeros being written)
    tail = MappedTail()
    try:
        assert tail.put(fd, 4096, 0, b"abc") and tail.active
        assert not tail.put(fd, 4096, 4094, b"xyz")  # (ends at 4097)
        assert tail.put(fd, 4096, 4093, b"xyz")  # (ends at 4096)
    finally:
        tail.drop()
        os.close(fd)
    data = (shm / "f").read_bytes()
    assert len(data) == 8192 and data[:3] == b"abc" and data[4093:4096] == b"xyz"
    assert data[3:4093] == bytes(4090) and data[4096:] == bytes(4096)


def test_a_map_the_file_refuses_falls_back_to_write(shm: Path) -> None:
    """A mapping that fails (here ``alloc`` past the file's end: ``ValueError``) is no error:
    ``put`` says "write it", and from then on for that file."""
    fd = _mappable_file(shm, 0)
    tail = MappedTail()
    try:
        assert not tail.put(fd, 8192, 0, b"abc")
        assert tail.mappable is False and not tail.active
    finally:
        os.close(fd)
    assert (shm / "f").read_bytes() == b""


def test_the_file_system_type_is_the_field_after_the_separator() -> None:
    """``fs_type`` reads the type (the first field after `` - `` in mountinfo), not the
    mount source or its options."""
    assert mapped_mod.fs_type(os.stat("/proc").st_dev) == "proc"


def test_a_take_back_cancelled_while_it_runs_is_cancelled_after_it() -> None:
    """``Turn.run``: a cancel while the call runs in the executor waits for its end (never cut
    short), then the future is cancelled, not done as if nothing happened."""
    async def main() -> None:
        d, turn = _Driver(), Turn()
        ran: list[int] = []

        def call() -> None:
            assert d.gate.wait(5)
            ran.append(1)

        d.gate.clear()
        fut = turn.run(d, call)
        await asyncio.sleep(0.01)
        fut.cancel()
        await asyncio.sleep(0.01)
        d.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(fut, 5)
        assert ran == [1] and turn.waiting == 0

    asyncio.run(main())


def test_a_failed_sync_cuts_every_sessions_unsynced_records(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fdatasync cuts what was not synced of every session, not only the syncing
    one's: "b"'s record written unsynced is gone from memory as from the file (b writes a
    snapshot next), never brought back by the rebuild."""
    log, (a, sa), (b, sb) = _two(shm)
    b.append([sb.accept("t", b"bee", 1)], sb, sync=False)
    b_st = next(s for s in log.stats() if s.client_id == "b")
    assert b_st.records == 1
    _fail_fdatasyncs(monkeypatch)(1)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    assert {s.client_id: s.records for s in log.stats()} == {"a": 0, "b": 0}
    log.close()
    assert _reopened(shm)["b"] != codec.encode(sb)  # (its record was cut)


def test_a_failed_sync_after_a_rotation_keeps_the_records_it_carried(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation moves every frame to a new offset; a failed sync after it cuts only what
    followed the new file's synced end: the records the rotation carried (synced) stay, in
    memory and in the log rebuilt at close."""
    log, (a, sa), (b, sb) = _two(shm)
    for _ in range(30):  # dead snapshots the rotation drops
        sb.accept("t", b"z" * 200, 1)
        b.compact(sb)
    a.append([sa.accept("t", b"one", 1), sa.accept("t", b"two", 1)], sa, sync=True)
    durable_a = codec.encode(sa)
    with log._mutex:
        log._rotate(rebuild=False)
    gen, pos = log.position()
    assert log.is_synced(gen, pos)
    _fail_fdatasyncs(monkeypatch)(1)
    with pytest.raises(PersistenceError):
        b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    assert next(s for s in log.stats() if s.client_id == "a").records == 2
    log.close()
    assert _reopened(shm)["a"] == durable_a


def test_a_torn_header_is_written_anew_before_any_session(shm: Path) -> None:
    """A log torn inside its header (nothing after it was ever written) starts empty with a
    whole header, so the sessions written next are found by the next start."""
    (shm / LOG_NAME).write_bytes(_HEADER[:7])
    log = SharedLog(str(shm))
    a, sa = log.session("a"), SessionState(client_id="a", clean_session=False)
    a.compact(sa)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    log.close()
    assert (shm / LOG_NAME).read_bytes().startswith(_HEADER)
    assert _reopened(shm) == {"a": codec.encode(sa)}


def test_a_closed_log_gives_no_session_view(shm: Path) -> None:
    log = SharedLog(str(shm))
    log.close()
    with pytest.raises(PersistenceError, match="closed"):
        log.session("a")
