"""Pins from a mutation hunt over ``sessionlog.py`` and ``aio.py``, no broker needed. Each test
failed with one mutant applied (named in its docstring)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttsession.publishing as publishing_mod
import mqttsession.sessionlog as sessionlog_mod
from mqttsession import AsyncSession, Options, QueueFullError
from mqttsession.errors import NewerFormatError, PersistenceError, StateError
from mqttsession.sessionlog import SessionLog, read_sessions
from mqttsession.sharedlog import _RECORD, ASIDE_DIR, LOG_NAME, SharedLog, _tagged
from mqttsession.state import SessionState

try:  # tests/unit may or may not be a package
    from .test_client_pins import _Clock
    from .test_sharedlog import _fail_next_fdatasync
    from .test_sharedlog_pins import _failing
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_client_pins import _Clock  # type: ignore[no-redef]
    from test_sharedlog import _fail_next_fdatasync  # type: ignore[no-redef]
    from test_sharedlog_pins import _failing  # type: ignore[no-redef]

T = TypeVar("T")
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
linux = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")
NOWHERE = Options(address="127.0.0.1:1", request_timeout_seconds=5.0)


def _run(main: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)
    return asyncio.run(bounded())


def _cid(what: str) -> str:
    return f"mh7-{what}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ sessionlog


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-mh7-", dir=SHM) as d:
        yield Path(d)


def _one(shm: Path, cid: str = "a") -> tuple[SharedLog, SessionLog, SessionState]:
    """A log with session ``cid``, an empty snapshot of it synced."""
    log = SharedLog(str(shm))
    view, state = log.session(cid), SessionState(client_id=cid, clean_session=False)
    view.compact(state)
    return log, view, state


def _reopened(shm: Path, cid: str) -> SessionState | None:
    log = SharedLog(str(shm))
    try:
        return log.session(cid).recover() if log.has(cid) else None
    finally:
        log.close()


@linux
def test_a_record_of_a_newer_format_leaves_the_session_in_the_log(shm: Path) -> None:
    """A record of a kind a newer mqttsession wrote: ``NewerFormatError``, nothing kept aside,
    the session still in the log (mutant: ``decode_session``'s ``except NewerFormatError``
    dropped: it became damage, kept aside and taken out of the log)."""
    log, view, _ = _one(shm)
    with log._mutex:
        s = log._session("a")
        log._write(s, [_tagged(_RECORD, s.sid, b'["Y",1]')], _RECORD)
    log.sync_to(*log.position())
    with pytest.raises(NewerFormatError, match="nothing was changed"):
        view.recover()
    assert view.exists() and not (shm / ASIDE_DIR).exists()
    log.close()
    log = SharedLog(str(shm))
    assert log.has("a")
    log.close()


@linux
def test_sync_pending_after_a_cut_and_a_snapshot_has_nothing_left_to_sync(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record written unsynced, cut by a failed fdatasync, then held by the snapshot the next
    append writes: ``sync_pending`` has nothing to do, no error (mutant: ``compact`` without
    ``self._unsynced = None``: it tried to sync the cut record and raised)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"one", 1)], state, sync=False)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        log.sync_to(*log.position())
    view.append([state.accept("t", b"two", 1)], state)  # a snapshot: the cut lost "one"
    view.sync_pending()
    log.close()
    got = _reopened(shm, "a")
    assert got is not None and [m.payload for m in got.outgoing.values()] == [b"one", b"two"]


@linux
def test_the_first_append_of_a_new_session_even_lazy_puts_it_in_the_log(shm: Path) -> None:
    """A session the log does not hold yet: its first append, lazy or not, writes its snapshot
    at once (mutant: ``s.snap is None`` dropped from the first look: the lazy record waited in
    memory, and the close dropped it with the whole session)."""
    log = SharedLog(str(shm))
    view, state = log.session("n"), SessionState(client_id="n", clean_session=False)
    view.append([state.accept("t", b"first", 1)], state, lazy=True)
    assert view.exists()
    log.close()
    got = _reopened(shm, "n")
    assert got is not None and [m.payload for m in got.outgoing.values()] == [b"first"]


@linux
def test_lazy_records_whose_write_fails_are_reported(
        shm: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``flush`` whose write fails (disk full) raises nothing but logs a WARNING naming the
    session (mutant: the ``log.warning`` dropped: the loss went unreported)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"lazy", 1)], state, lazy=True)
    arm = _failing(monkeypatch, "write")
    arm(1)
    with caplog.at_level(logging.WARNING, logger="mqttsession"):
        view.flush()
    assert [r.levelno for r in caplog.records if "lazy records not written" in r.message] == [
        logging.WARNING]
    assert view.path in caplog.text
    log.close()


@linux
def test_sync_pending_keeps_a_record_appended_while_it_synced(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record appended unsynced by another thread while ``sync_pending`` ran its fdatasync
    stays pending: the next ``sync_pending`` makes it durable (mutant: ``if self._unsynced ==
    at`` dropped: it was forgotten, never synced)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"one", 1)], state, sync=False)
    real, later = log.sync_to, []

    def sync_to(gen: int, pos: int, linger: float = 0.0) -> bool:
        done = real(gen, pos, linger)
        if not later:  # another thread's append, after this sync
            rec = state.accept("t", b"two", 1)
            t = threading.Thread(target=lambda: (view.append([rec], state, sync=False),
                                                 later.append(view.appended_at)))
            t.start()
            t.join(10)
        return done

    monkeypatch.setattr(log, "sync_to", sync_to)
    view.sync_pending()
    assert len(later) == 1 and not log.is_synced(*later[0])
    view.sync_pending()
    assert log.is_synced(*later[0])
    log.close()


@linux
def test_another_sessions_failed_sync_leaves_this_one_broken(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fdatasync of the log breaks every session's view until the next write rewrites
    the log, also one that lost nothing (mutant: ``broken`` without ``_needs_rebuild()``)."""
    log, a, sa = _one(shm, "a")
    b = log.session("b")
    sb = SessionState(client_id="b", clean_session=False)
    b.compact(sb)
    b.append([sb.accept("t", b"unsynced", 1)], sb, sync=False)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        b.sync_pending()
    assert a.broken and b.broken
    a.append([sa.accept("t", b"a1", 1)], sa)  # the log rewritten
    assert not a.broken
    log.close()


@linux
def test_fsync_of_a_closed_log_says_false(shm: Path) -> None:
    """``fsync`` once the log is closed: False ("not so"), not an error (mutant: the
    ``_fd is None`` look dropped: ``PersistenceError``)."""
    log, view, _ = _one(shm)
    log.close()
    assert view.fsync() is False


@linux
def test_keep_aside_syncs_the_aside_directory_before_the_session_leaves_the_log(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept aside files' names are synced (their directory fsynced) before the end frame
    takes the session out of the log: a power cut between loses neither (mutant: that
    ``_fsync_dir`` dropped)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"r", 1)], state)
    events: list[str] = []
    real_dir, real_discard = sessionlog_mod._fsync_dir, view.discard

    def fsync_dir(path: str) -> None:
        events.append(f"dir {os.path.dirname(path)}")
        real_dir(path)

    def discard() -> bool:
        events.append("discard")
        return real_discard()

    monkeypatch.setattr(sessionlog_mod, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(view, "discard", discard)
    kept = view.keep_aside("pin")
    assert events == [f"dir {shm / ASIDE_DIR}", "discard"]
    assert len(kept) == 2 and not view.exists()
    log.close()


@linux
def test_read_sessions_raises_on_a_damaged_session_and_changes_nothing(shm: Path) -> None:
    """``read_sessions``: a session whose records do not apply is ``StateError`` naming it,
    and the log is left as it was, nothing kept aside (mutant: the session skipped)."""
    log, view, state = _one(shm)
    rec = state.accept("t", b"one", 1)
    view.append([rec], state)
    view.append([rec], state)  # the same message twice: does not apply
    log.close()
    before = (shm / LOG_NAME).read_bytes()
    with pytest.raises(StateError, match="session 'a'"):
        read_sessions(str(shm))
    assert (shm / LOG_NAME).read_bytes() == before
    assert not (shm / ASIDE_DIR).exists()


def test_read_sessions_of_a_directory_without_a_log_is_state_error(tmp_path: Path) -> None:
    """No ``sessions.log``: ``StateError`` saying it is not a gateway directory (mutant: the
    missing log read as an empty one)."""
    with pytest.raises(StateError, match="not a gateway directory"):
        read_sessions(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@linux
def test_an_append_that_wrote_a_snapshot_ends_at_the_snapshot(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fdatasync cut a record, the next append writes a snapshot: its
    ``appended_at`` is that snapshot's end, which syncs without error (mutant: ``compact``
    without ``self.appended_at = (gen, pos)``: it still named the cut record, and a publish
    waiting on it got the old failure)."""
    log, view, state = _one(shm)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        view.append([state.accept("t", b"cut", 1)], state, sync=True)
    cut = view.appended_at
    view.append([state.accept("t", b"next", 1)], state)
    at = view.appended_at
    assert at != cut
    view.sync_to(*at)
    assert log.is_synced(*at)
    log.close()


@linux
def test_recover_of_a_damaged_session_logs_an_error_naming_what_was_kept(
        shm: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged session: an ERROR naming the session and its kept aside files, besides the
    ``StateError`` (mutant: the ``log.error`` dropped)."""
    log, view, state = _one(shm)
    rec = state.accept("t", b"one", 1)
    view.append([rec], state)
    view.append([rec], state)
    with caplog.at_level(logging.ERROR, logger="mqttsession"):
        with pytest.raises(StateError, match="kept aside"):
            view.recover()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and view.path in errors[0] and ASIDE_DIR in errors[0]
    log.close()


# ------------------------------------------------------------------ aio


def _gate_restore(s: AsyncSession) -> tuple[threading.Event, threading.Event]:
    """The session's restore (in the executor) set the first event, then waits for the second."""
    entered, gate = threading.Event(), threading.Event()
    real = s.client.restore_session

    def gated(text: str) -> None:
        entered.set()
        gate.wait(10)
        real(text)

    s.client.restore_session = gated  # type: ignore[method-assign]
    return entered, gate


def test_a_create_cancelled_while_it_restores_raises_cancelled(tmp_path: Path) -> None:
    """``start()`` cancelled while the state file's restore runs in the executor: the restore
    ends, then ``CancelledError`` and the session closed (mutant: the
    ``raise asyncio.CancelledError`` after ``_off_loop`` dropped: the cancel was lost)."""

    async def main() -> None:
        s = AsyncSession(NOWHERE, client_id=_cid("rs"), state_file=tmp_path / "s.session")
        entered, gate = _gate_restore(s)
        task = asyncio.create_task(s.start(connect=False))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.closed
    _run(main)


def test_a_clean_session_discards_what_a_closed_one_left_in_the_process() -> None:
    """An ``AsyncSession`` with ``clean_session=True`` discards the session a persistent one
    of its id left at close (handover): the next persistent one starts empty (mutant:
    ``handover.discard`` dropped: the old message came back)."""
    cid = _cid("ho")

    async def main() -> tuple[list[bytes], list[bytes]]:
        first = await AsyncSession.create(NOWHERE, client_id=cid, clean_session=False,
                                          connect=False)
        await first.publish("t/ho", "held", 1)
        await first.close()
        control = await AsyncSession.create(NOWHERE, client_id=cid, clean_session=False,
                                            connect=False)  # (what is kept: it is handed on)
        kept = [m.message for m in control.client.outgoing_messages]
        await control.close()
        clean = await AsyncSession.create(NOWHERE, client_id=cid, connect=False)
        await clean.close()
        last = await AsyncSession.create(NOWHERE, client_id=cid, clean_session=False,
                                         connect=False)
        after = [m.message for m in last.client.outgoing_messages]
        await last.close()
        return kept, after

    kept, after = _run(main)
    assert kept == [b"held"] and after == []


def test_the_second_background_sync_reports_its_failure() -> None:
    """Two read batches' syncs: the second waits for the first, then runs; when it fails its
    waiter gets the error (mutant: ``_next_sync`` answered with ``set_result(None)``: the
    acks it holds would go out as if durable)."""
    gate, calls = threading.Event(), [0]

    def sync() -> None:
        calls[0] += 1
        if calls[0] == 1:
            gate.wait(10)
        else:
            raise PersistenceError(None, "injected sync failure")

    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id=_cid("bg"), connect=False)
        try:
            first, second = s._sync_off_loop(sync), s._sync_off_loop(sync)
            assert first is not second
            gate.set()
            await first
            with pytest.raises(PersistenceError, match="injected"):
                await second
            assert calls[0] == 2
        finally:
            await s.close()
    _run(main)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """The clocks ``client.py`` and ``publishing.py`` read, set by the test."""
    import mqttsession.client as client_mod  # noqa: PLC0415

    clk = _Clock()
    for mod in (client_mod, publishing_mod):
        monkeypatch.setattr(mod, "time", clk)
        monkeypatch.setattr(mod, "since_boot", lambda: clk.mono)
    return clk


def test_an_async_publish_refused_reports_the_expired_drop_before_raising(clock: _Clock) -> None:
    """``AsyncSession.publish`` refused for room after its search dropped an expired message:
    ``on_message_dropped`` ran before ``QueueFullError`` reached the caller (mutant: the
    ``finish_stashed`` in ``publish``'s ``except`` dropped: the drop was reported only with
    some later call)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 10

    async def main() -> list[tuple[str, str]]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1", protocol_version=5),
                                      client_id=_cid("drop"), connect=False)
        dropped: list[tuple[str, str]] = []
        s.client.on_message_dropped = lambda e: dropped.append((e.topic, e.reason))
        try:
            await s.config("MaxQueuedBytes=3000")
            await s.publish("t/short", b"s", 1, properties=props)
            await s.publish("t/big", b"b" * 2000, 1)
            clock.wall += 20.0
            clock.mono += 20.0
            with pytest.raises(QueueFullError):
                await s.publish("t/huge", b"h" * 2000, 1)
            return list(dropped)
        finally:
            await s.close()

    assert _run(main) == [("t/short", "expired")]


def test_publishes_after_the_spool_executor_shut_down_fail_each(tmp_path: Path) -> None:
    """A publish bound for the disk queue whose executor is shut down raises; so does the next
    one, at once, rather than waiting for a batch nobody stores (mutant: ``_spool`` without
    ``self._combiner.abandon(exc)``: the combiner stayed busy)."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id=_cid("sp"), connect=False,
                                      state_file=tmp_path / "s.session")
        try:
            await s.config("QueueInMemory=1")
            await s.publish("t/a", "m0")
            await s.publish("t/a", "m1")  # (the disk queue's)
            assert s.client._driver.spool_executor is None  # (the loop's default)
            await asyncio.get_running_loop().shutdown_default_executor()
            for _ in range(2):
                with pytest.raises(RuntimeError):
                    await asyncio.wait_for(s.publish("t/a", "lost"), 10)
            assert not s._combiner.busy
        finally:
            await s.close()
    _run(main, 60)


def test_a_create_cancelled_while_restoring_a_damaged_file_reports_the_damage(
        tmp_path: Path) -> None:
    """``start()`` cancelled just as the restore of a damaged state file failed (the cancel
    lands in the loop iteration that hands over the error): the restore's ``StateError`` (the
    file kept aside) is what the caller gets, not a bare cancel (mutant: ``_off_loop``
    without ``job.result()``: the error was swallowed)."""
    path = tmp_path / "bad.session"
    path.write_bytes(b'{"format":"mqttsession","version":3,"sha256":"00"}garbage')

    async def main() -> None:
        s = AsyncSession(NOWHERE, client_id=_cid("bad"), state_file=path)
        entered, gate = _gate_restore(s)
        task = asyncio.create_task(s.start(connect=False))
        assert await asyncio.to_thread(entered.wait, 10)
        assert s._ending is not None
        s._ending.add_done_callback(lambda _f: task.cancel())  # (after the shield's own)
        gate.set()
        with pytest.raises(StateError, match="damaged"):
            await task
        assert s.closed
    _run(main)
    assert [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]


def test_a_disconnect_cancelled_while_it_waits_its_turn_raises_cancelled() -> None:
    """``disconnect()`` waiting for the off-loop call before it, cancelled meanwhile: it still
    runs, then raises ``CancelledError`` (mutant: the ``cancelled = True`` of that wait
    dropped: the cancel was lost and ``disconnect()`` returned)."""
    gate = threading.Event()

    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id=_cid("dc"), connect=False)
        try:
            first = asyncio.create_task(s._off_loop(lambda: None if gate.wait(10) else None))
            while s._ending is None:
                await asyncio.sleep(0.001)
            second = asyncio.create_task(s.disconnect())
            while s._offs < 2:
                await asyncio.sleep(0.001)
            second.cancel()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert await first is False
        finally:
            gate.set()
            await s.close()
    _run(main)
