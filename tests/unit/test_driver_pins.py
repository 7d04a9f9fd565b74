"""``driver.Driver.run`` at edges a mutation hunt found unpinned: the order of a run's records
and packets (persistence points: a packet after the record it depends on, the PUBLISHes
written before a record still leave if it fails), a read batch's deferred sync and held
PUBLISHes, a failed record reported (``quiet``) or raised with the publish retracted. A
stand-in connection and state file record the calls, in order; no network, no disk."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from mqttsession._config import ClientSettings
from mqttsession._wire import PacketType
from mqttsession.actions import Action, ConnState, EngineSettings, Notify, Persist, Write
from mqttsession.driver import Driver
from mqttsession.errors import PersistenceError, ProtocolViolation, StateError
from mqttsession.events import MessageEvent
from mqttsession.state import Phase

from ._support import sample_state


class _Conn:
    """A connection's writes and batch calls, logged."""

    loop_thread = None

    def __init__(self, log: list[tuple[Any, ...]], batch: bool = False) -> None:
        self.log, self.batch = log, batch

    def write(self, packet: bytes, kind: int, packet_id: int = 0, qos: int = 0) -> None:
        self.log.append(("write", packet))

    def in_batch(self) -> bool:
        return self.batch

    def hold_publishes(self) -> None:
        self.log.append(("hold",))

    def tcp(self) -> object:
        return object()  # the TCP connect done

    def drop(self) -> None:
        self.log.append(("drop",))

    def release_held(self) -> None:
        self.log.append(("release",))

    def peer(self) -> tuple[str, int]:
        return ("127.0.0.1", 1883)


class _File:
    """The state file's appends (records, sync), logged; ``fail``: the next append raises."""

    compactions = 0
    journal = None
    off_loop = None
    has_errors = False

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.fail: BaseException | None = None
        self.held: list[bool] = []  # each append's ``held``
        self.folds = False  # each append writes a snapshot too (a compaction)

    def append(self, records: Any, st: Any, sync: bool = False, lazy: bool = False,
               held: bool = False) -> None:
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.log.append(("persist", records, sync))
        self.held.append(held)
        self.compactions += self.folds

    def rewrite(self, st: Any) -> None:
        self.log.append(("rewrite",))

    def compact_if_due(self, st: Any) -> None:
        pass

    def compact_before_publish(self, st: Any) -> None:
        pass

    def sync_pending(self) -> None:
        self.log.append(("sync",))

    deferring = False
    unrestored = None


def _driver(batch: bool = False, connected: bool = True, session_sync: str = "always"
            ) -> tuple[Driver, list[tuple[Any, ...]], _File]:
    log: list[tuple[Any, ...]] = []
    d = Driver(lambda name, event: None, ClientSettings(session_sync=session_sync),
               EngineSettings())
    f = _File(log)
    d.file = f  # type: ignore[assignment]
    d.conn = _Conn(log, batch) if connected else None  # type: ignore[assignment]
    d._sync_later = lambda: None  # type: ignore[method-assign]
    d.engine.retract = lambda rec: log.append(("retract", rec))  # type: ignore[method-assign]
    return d, log, f


def _run(d: Driver, actions: list[Action], **kw: Any) -> list[Action]:
    with d.lock:  # (as every caller: the lock held)
        return d.run(actions, **kw)


def _p(records: tuple[str, ...], **kw: Any) -> Persist:
    """A ``Persist`` of stand-in records (names the stand-in file logs)."""
    return Persist(cast(Any, records), **kw)


def _pub(name: bytes, qos: int = 1) -> Write:
    return Write(name, PacketType.PUBLISH, 1 if qos else 0, qos)


def test_publishes_before_a_record_leave_before_it_is_written() -> None:
    """QoS 1/2 PUBLISHes joined before a (not lazy) record are written before it: they do not
    depend on it, so they never wait for its sync; a PUBLISH after it leaves after it."""
    d, log, _ = _driver()
    _run(d, [_pub(b"a"), _p(("r",), sync=True), _pub(b"b")])
    assert log == [("write", b"a"), ("persist", ("r",), True), ("write", b"b")]


def test_a_qos0_packet_after_joined_publishes_keeps_its_place() -> None:
    """A packet that is not a QoS 1/2 PUBLISH goes out after the PUBLISHes joined before it."""
    d, log, _ = _driver()
    _run(d, [_pub(b"a"), _pub(b"b"), _pub(b"c", qos=0)])
    assert log == [("write", b"ab"), ("write", b"c")]


def test_publishes_written_before_a_failed_record_still_leave() -> None:
    """A failed record stops the run; the PUBLISHes joined before it (not depending on it) are
    written all the same, the packets after it are not."""
    d, log, f = _driver()
    f.fail = StateError("disk full")
    with pytest.raises(StateError):
        _run(d, [_pub(b"a"), _p(("r",), lazy=True), _pub(b"b")])
    assert log == [("write", b"a")]


def test_a_quiet_failure_is_reported_and_the_run_goes_on() -> None:
    """``quiet``: a record no packet depends on failed: on_error (its errno, the context named)
    among the callbacks, the rest of the run carried out."""
    d, log, f = _driver()
    f.fail = OSError(28, "No space left on device")
    ack = Write(b"k", PacketType.PUBACK, 1, 0)
    later = _run(d, [_p(("r",), sync=True), ack, Notify("on_x", 1)], quiet="recording")
    assert log == [("write", b"k")]
    assert [a.name for a in later if isinstance(a, Notify)] == ["on_error", "on_x"]
    event: Any = later[0].event  # type: ignore[union-attr]
    assert event.error_code == 28 and event.description.startswith("recording: ")


def test_a_read_batch_defers_the_sync_and_holds_publishes_behind_a_record() -> None:
    """In a read batch a record's sync waits for the batch's end; a record an ack does not
    alone depend on holds the batch's PUBLISHes after it (an ack's record does not)."""
    d, log, _ = _driver(batch=True)
    _run(d, [_p(("a",), sync=True, ack=True)])
    assert log == [("persist", ("a",), False)] and d._batch_sync
    d._batch_sync = False
    _run(d, [_p(("r",), sync=True)])
    assert log[1:] == [("hold",), ("persist", ("r",), False)] and d._batch_sync


def test_a_publish_outside_a_batch_syncs_its_record_at_once() -> None:
    """A publish's record (``accepted``) is synced before the publish returns, even on the
    network thread in a read batch (it is no batch's)."""
    d, log, _ = _driver(batch=True)
    _run(d, [_p(("m",), sync=True), _pub(b"p")], accepted=object())
    assert log == [("persist", ("m",), True), ("write", b"p")] and not d._batch_sync


def test_interval_sync_defers_a_publish_record_but_not_a_forced_one() -> None:
    """SessionSync=interval: a publish's record is synced later, a packet-id reservation
    (``force``) at once."""
    d, log, _ = _driver(session_sync="interval")
    acc: Any = object()
    _run(d, [_p(("m",), sync=True)], accepted=acc)
    _run(d, [_p(("id",), sync=True, force=True)], accepted=acc)
    assert log == [("persist", ("m",), False), ("persist", ("id",), True)]


def test_a_failed_publish_record_retracts_the_publish_and_raises() -> None:
    """A publish whose record failed is retracted (all of a publish_many, last first) and the
    file rewritten without them; the error reaches the caller, even with ``quiet``."""
    d, log, f = _driver()
    f.fail = OSError(5, "EIO")
    with pytest.raises(OSError):
        _run(d, [_p(("m",), sync=True), _pub(b"p")], accepted=["a", "b"])
    assert log == [("retract", "b"), ("retract", "a"), ("rewrite",)]
    f.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        _run(d, [_p(("m",), sync=True)], quiet="never quiet for an interrupt")


def test_callbacks_of_a_run_are_returned_in_order() -> None:
    """Callbacks (not records or packets) are left for ``finish``, in order, after those the
    caller's ``later`` holds."""
    d, _, _ = _driver()
    later: list[Action] = [Notify("on_first", 0)]
    out = _run(d, [Notify("on_a", 1), _p(("r",)), Notify("on_b", 2)], later=later)
    assert out is later and [a.name for a in out] == ["on_first", "on_a", "on_b"]  # type: ignore[union-attr]


def test_a_failed_publish_keeps_the_callbacks_before_it_and_the_drops() -> None:
    """A publish whose record failed: the callbacks before the failure and the drops made to
    make room (after it too) are kept for ``finish``; nothing else after it."""
    d, _, f = _driver()
    f.fail = StateError("disk full")
    drop = Notify("on_message_dropped", 3)
    with pytest.raises(StateError):
        _run(d, [Notify("on_a", 1), _p(("m",), sync=True), Notify("on_b", 2), drop],
             accepted="m")
    assert [a.name for a in d.stashed] == ["on_a", "on_message_dropped"]  # type: ignore[union-attr]


def test_no_idle_while_messages_wait_in_the_disk_queue() -> None:
    """``on_idle`` (and flush()'s wake-up) only once no message is in flight nor spooled."""
    d, _, _ = _driver()
    idle: list[int] = []
    d.on_idle = lambda: idle.append(1)
    d.engine.state.spooled = 1
    _run(d, [_p(("r",))])
    assert idle == []
    d.engine.state.spooled = 0
    _run(d, [_p(("r",))])
    assert idle == [1]


def test_a_batch_waits_for_its_sync_unless_session_sync_is_none() -> None:
    """A read batch's packets wait for its deferred sync only with a journal and a sync to
    wait for (SessionSync=none: nothing)."""
    for sync, waits in (("always", True), ("interval", True), ("none", False)):
        d, _, f = _driver(session_sync=sync)
        f.journal = object()  # type: ignore[assignment]
        d._batch_sync = True
        assert d._hook_batch_waits() is waits
        d._batch_sync = False
        assert not d._hook_batch_waits()


def test_a_hook_failure_before_the_connack_ends_connect_and_is_reported() -> None:
    """A failed hook on the network thread: on_error (errno, what failed, the connection
    dropped); before any CONNACK, connect() is ended with -3 too."""
    d, _, _ = _driver()
    fired: list[tuple[str, Any]] = []
    ended: list[tuple[int, str]] = []
    d._fire = lambda name, event: fired.append((name, event))
    d._end_connect = lambda rc, reason: ended.append((rc, reason))  # type: ignore[method-assign]
    d._hook_failure(OSError(28, "No space"), "handling a PUBLISH packet")
    assert [rc for rc, _ in ended] == [-3]
    assert fired[0][0] == "on_error" and fired[0][1].error_code == 28
    assert "connection dropped" in fired[0][1].description
    d._connack.set()
    d._hook_failure(PersistenceError("bad"), "handling a PUBREL packet")
    assert len(ended) == 1 and "state file could not be written" in fired[1][1].description
    assert "reconnecting" in fired[1][1].description
    d._hook_failure(ProtocolViolation(0x82, "PUBREL for no flow"), "handling a PUBREL packet")
    assert fired[2][1].error_code == 0x82 and "the session is unchanged" in fired[2][1].description


def test_records_applied_before_a_compaction_in_the_run_are_not_written_again() -> None:
    """A snapshot written during the run holds all the run's records: a record after it is not
    appended again (it would replay twice); a bare sync still runs."""
    d, log, f = _driver()
    f.folds = True
    _run(d, [_p(("a",)), _p(("b",)), _p((), sync=True)])
    assert log == [("persist", ("a",), False), ("persist", (), True)]


def test_finish_runs_the_callbacks_a_failed_run_stashed_first() -> None:
    """``finish``: the callbacks a run that raised left (``stashed``) before the new ones."""
    d, _, _ = _driver()
    fired: list[str] = []
    d._fire = lambda name, event: fired.append(name)
    d.stashed = [Notify("on_message_dropped", 1)]
    d.finish([Notify("on_b", 2)])
    assert fired == ["on_message_dropped", "on_b"] and d.stashed == []


def test_only_session_sync_always_makes_a_publisher_wait() -> None:
    """A publisher waits for its record's sync (so its PUBLISH cannot join a read batch's)
    with SessionSync=always only."""
    for sync, waits in (("always", True), ("interval", False), ("none", False)):
        d, _, _ = _driver(session_sync=sync)
        assert d._hook_publisher_waits() is waits


class _GatheringJournal:
    gathers_batch_records = True


def test_only_a_read_batchs_ack_records_wait_in_memory_for_its_sync() -> None:
    """A ``batched`` record waits in memory for the batch's sync (``held``) in a read batch of
    a journal that gathers; outside a batch it is written at once."""
    for batch in (True, False):
        d, _, f = _driver(batch=batch)
        f.journal = _GatheringJournal()  # type: ignore[assignment]
        _run(d, [_p(("a",), sync=True, ack=True, batched=True)])
        assert f.held == [batch]


class _LazyJournal:
    writes_lazy_at_sync = True


def test_a_group_commits_record_waits_in_memory_unless_forced() -> None:
    """A deferred publish (group commit) on a journal that writes lazily at its sync: its
    record waits in memory (``held``), a packet-id reservation (``force``) is written and
    synced at once; another journal writes it at once."""
    d, log, f = _driver()
    f.journal = _LazyJournal()  # type: ignore[assignment]
    acc: Any = object()
    _run(d, [_p(("m",), sync=True)], accepted=acc, deferred=True)
    _run(d, [_p(("id",), sync=True, force=True)], accepted=acc, deferred=True)
    assert f.held == [True, False]
    assert log == [("persist", ("m",), False), ("persist", ("id",), True)]
    d, _, f = _driver()
    f.journal = object()  # type: ignore[assignment]
    _run(d, [_p(("m",), sync=True)], accepted=acc, deferred=True)
    assert f.held == [False]


def test_a_server_silent_after_the_tcp_connect_is_dropped_once() -> None:
    """No CONNACK within the wait after the TCP connect: the connection is dropped (the
    reconnect tries the next server), once; before that time, nothing."""
    d, log, _ = _driver()
    d._next_tick = float("inf")  # (the session's timers: not this test's)
    d._connack_by = time.monotonic() + 3600
    d._hook_tick()
    assert log == []
    d._connack_by = time.monotonic() - 1
    d._hook_tick()
    d._hook_tick()
    assert log == [("drop",)] and d._connack_by == 0.0


def test_a_refused_connack_leaves_the_session_as_it_was() -> None:
    """A refused CONNACK: connect() ends with its code and no resume plan runs (a resume
    would take the refusal for a lost session: messages awaiting PUBCOMP dropped)."""
    d, log, _ = _driver()
    d.engine.state.protocol_version = 5
    d.engine.restore(sample_state(), time.time())
    ended: list[int] = []
    d._end_connect = lambda rc, reason: ended.append(rc)  # type: ignore[method-assign]
    d._hook_connack(0x87, "Not authorized", False, 0, None)
    assert ended == [0x87]
    out = d.engine.state.outgoing
    assert [m.phase for m in out.values()] == [Phase.AWAIT_PUBACK, Phase.AWAIT_PUBCOMP]
    assert log == []


@pytest.mark.parametrize("was", [ConnState.CONNECTING, ConnState.RESUMING])
def test_a_connection_closed_before_connect_returned_fails_connect(was: ConnState) -> None:
    """Closed before connect() returned (no CONNACK yet, or during on_connected): connect()
    fails at once (-2) instead of waiting for its timeout; once it returned, not again."""
    d, _, _ = _driver()
    d.engine.conn = was
    d.conn = None  # (paho's: no reconnect asked)
    ended: list[int] = []
    d._end_connect = lambda rc, reason: ended.append(rc)  # type: ignore[method-assign]
    d._paho_on_disconnect(None, None, None, 7, None)
    assert ended == [-2]
    d._connack.set()  # connect() has returned: a later close is no connect() failure
    d.engine.conn = was
    d._paho_on_disconnect(None, None, None, 7, None)
    assert ended == [-2]


def test_an_auto_acknowledged_message_is_listed_only_while_in_on_message_in() -> None:
    """``incoming_messages``: a QoS 1 message auto-acknowledged is listed while on_message_in
    runs, then acknowledged and gone from the list (also when the callback raised)."""
    d, _, _ = _driver()
    seen: list[tuple[int, ...]] = []
    acked: list[int] = []

    def ack(e: Any) -> Any:
        acked.append(e.packet_id)
    d.ack = ack  # type: ignore[method-assign,assignment]
    d._fire = lambda name, e: seen.append(tuple(m.packet_id for m in d.incoming_messages()))
    d._deliver(MessageEvent(4, "t", 1, b"x", False, False))
    assert seen == [(4,)] and acked == [4] and d.incoming_messages() == ()

    def boom(name: str, e: object) -> None:
        raise RuntimeError("callback")
    d._fire = boom
    with pytest.raises(RuntimeError):
        d._deliver(MessageEvent(5, "t", 1, b"x", False, False))
    assert d.incoming_messages() == () and d.delivering_in is None
