"""Pins from a mutation hunt over ``mqttsession/aiosync.py`` and ``mqttsession/driver.py``, no
broker, no sockets: a held publish whose sync job never ran fails, a save while disconnected
records no activity, disk-queue records and failed compactions in ``Driver.run``, on_error
logged, a failed close() in on_message_in reported, a CONNACK resetting the redirect count and
its own wait, acks before a PUBREL in one read, the forgotten id's CONNACK batch synced, a
failed Server Reference reported. Each test failed with one mutant applied (named in its
docstring). The stand-in driver, connection and file are test_driver_pins' and
test_aiosync_pins'."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import pytest

from mqttsession import Client, codec
from mqttsession._wire import PacketType
from mqttsession.errors import PersistenceError, StateError
from mqttsession.events import MessageEvent
from mqttsession.failover import MAX_REDIRECTS, ServerRotation
from mqttsession.records import Spooled
from mqttsession.state import OutgoingMessage

from ._support import sample_state
from .test_aiosync_pins import _Driver, _Held, Token
from .test_driver_pins import _driver, _p, _run


def test_publishes_whose_sync_job_never_ran_get_an_error() -> None:
    """The executor job that syncs held publishes ends without running (cancelled: the loop
    shutting down): each publish gets a ``PersistenceError``, so it is taken back, never
    released unsynced. Mutant: ``done``'s ``except`` set ``err = None`` (released)."""
    class _Blocked(_Driver):
        def __init__(self) -> None:
            super().__init__((0, 0))
            self.go = threading.Event()

        def wait_durable(self, token: Token) -> Exception | None:
            self.go.wait(10)
            return super().wait_durable(token)

    d = _Blocked()

    async def run() -> object:
        h = _Held(d)
        waiter = asyncio.get_running_loop().create_future()
        h._awaiting_sync = [(((1, 0, 100),), waiter)]
        h._sync_awaiting()
        assert h._sync_job is not None
        h._sync_job.cancel()  # (as the loop's shutdown cancels it)
        try:
            return await asyncio.wait_for(waiter, 10)
        finally:
            d.go.set()

    res = asyncio.run(run())
    assert isinstance(res, PersistenceError) and "did not run" in str(res)


def test_a_save_while_disconnected_records_no_activity() -> None:
    """``save_session()`` records activity only while connected: a session whose process
    ended while connected keeps its last activity, from which its expiry is judged (saved
    later, disconnected, it would look alive until now). Mutant: ``Driver.save``'s
    ``if self.engine.connected`` inverted."""
    st = sample_state()
    st.disconnected_at = None  # the process ended while connected: activity tells when
    c = Client(client_id=st.client_id, clean_session=False, protocol_version=5)
    try:
        c.restore_session(codec.encode(st))
        saved = codec.decode(c.save_session())
    finally:
        c.close()
    assert saved.last_activity == 1010.5 and saved.disconnected_at is None


def test_a_disk_queue_record_after_a_compaction_in_the_run_is_still_written() -> None:
    """A snapshot written during a run holds the run's journal records, not the disk queue's
    messages: a ``Spooled`` record after it is still appended (else the message is lost).
    Mutant: ``Driver.run`` without ``type(a.records[0]) is not Spooled``."""
    d, log, f = _driver()
    f.folds = True
    spooled = Spooled(OutgoingMessage(7, 0, "q", b"m", 1))
    _run(d, [_p(("a",)), _p(("b",)), _p((spooled,))])  # type: ignore[arg-type]
    assert log == [("persist", ("a",), False), ("persist", (spooled,), False)]


def test_a_failed_compaction_before_a_held_publish_retracts_it() -> None:
    """A group commit's publish whose compaction (``compact_before_publish``) failed: its
    held record is gone, so the publish (all of a publish_many, last first) is retracted and
    the file rewritten before the error is raised. Mutant: that retraction dropped."""
    d, log, f = _driver()

    def fail(st: Any) -> None:
        raise StateError("compaction failed")
    f.compact_before_publish = fail  # type: ignore[method-assign]
    with pytest.raises(StateError):
        _run(d, [_p(("m",), sync=True)], accepted=["a", "b"], deferred=True)
    assert log[-3:] == [("retract", "b"), ("retract", "a"), ("rewrite",)]


def test_errors_for_on_error_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """An error a run reports (a record no packet depends on failed, ``quiet``) is logged at
    WARNING on the ``mqttsession`` logger as well as passed to on_error. Mutant: ``finish``
    without its ``log.warning`` for ``on_error``."""
    d, _, f = _driver()
    fired: list[str] = []
    d._fire = lambda name, event: fired.append(name)
    f.fail = OSError(28, "No space left on device")
    later = _run(d, [_p(("r",), sync=True)], quiet="recording activity failed")
    with caplog.at_level(logging.WARNING, logger="mqttsession"):
        d.finish(later)
    assert fired == ["on_error"]
    assert [r.getMessage() for r in caplog.records if r.name == "mqttsession"
            and r.levelno == logging.WARNING] == [
        "recording activity failed: [Errno 28] No space left on device"]


def test_a_close_in_on_message_in_that_fails_is_reported() -> None:
    """``close()`` called in on_message_in runs after the message's ack; when it raises (on
    the network thread: never into paho) the failure goes to on_error with its errno.
    Mutant: ``_deliver``'s ``except`` without its ``self.error``."""
    d, _, _ = _driver()
    fired: list[tuple[str, Any]] = []
    acked: list[int] = []

    def ack(e: Any) -> Any:
        acked.append(e.packet_id)
    d.ack = ack  # type: ignore[method-assign,assignment]

    def close() -> None:
        raise OSError(5, "Input/output error")

    def fire(name: str, event: Any) -> None:
        fired.append((name, event))
        if name == "on_message_in":
            d.close_after = close  # (as close() called in the callback leaves it)
    d._fire = fire
    d._deliver(MessageEvent(3, "t", 1, b"x", False, False))
    assert acked == [3] and d.close_after is None
    assert [n for n, _ in fired] == ["on_message_in", "on_error"]
    assert fired[1][1].error_code == 5 and "close(): " in fired[1][1].description


def test_an_accepted_connack_lets_redirections_be_followed_again() -> None:
    """``failover.MAX_REDIRECTS`` redirections are followed in a row, until a CONNACK accepts
    a connection: after it, a Server Reference is followed again. Mutant: ``_hook_connack``
    without ``self.servers.accepted()``."""
    d, _, _ = _driver()
    rot = d.servers = ServerRotation([("127.0.0.1", 1883), ("127.0.0.1", 1884)])
    rot.hops = MAX_REDIRECTS
    d._hook_connack(0, "Success", False, 65535, None)
    assert rot.redirect(0x9C, "127.0.0.1:1999", "the server") == ("127.0.0.1", 1999)


def test_a_connack_ends_the_wait_for_it() -> None:
    """A CONNACK (accepted or not) ends a reconnect's wait for it: the next tick past that
    wait's end drops nothing. Mutant: ``_hook_connack`` without ``self._connack_by = 0.0``
    (a healthy connection dropped once the wait would have ended)."""
    for rc in (0, 0x87):
        d, log, _ = _driver()
        d._next_tick = float("inf")  # (the session's timers: not this test's)
        d._end_connect = lambda rc, reason: None  # type: ignore[method-assign]
        d._connack_by = time.monotonic() - 1  # (the wait that CONNACK answered, run out now)
        d._hook_connack(rc, "", False, 65535, None)
        log.clear()
        d._hook_tick()
        assert ("drop",) not in log and d._connack_by == 0.0


def test_acks_before_a_pubrel_in_one_read_are_all_handled() -> None:
    """A PUBACK and a PUBREL read together (``_hook_acks``): the PUBACK's record and
    callbacks are carried out first, then the PUBREL's delivery. Mutant: the flows before a
    PUBREL not run (the PUBACK's record and on_message_out lost)."""
    d, log, _ = _driver()
    d.engine.state.protocol_version = 5
    d.engine.restore(sample_state(), time.time())  # seq 1 awaits PUBACK 5; 9 is incoming
    d._hook_connack(0, "", True, 65535, None)
    log.clear()
    fired: list[str] = []
    d._fire = lambda name, event: fired.append(name)
    d._hook_acks([(PacketType.PUBACK, 5), (PacketType.PUBREL, 9)])
    records = [type(r).__name__ for e in log if e[0] == "persist" for r in e[1]]
    assert records == ["Stepped", "Released"]
    assert fired.index("on_message_out") < fired.index("on_message_in")
    assert 1 not in d.engine.state.outgoing and not d.engine.state.incoming


def test_the_connack_batch_of_a_forgotten_id_is_synced_then_waits_for_the_note() -> None:
    """A gateway's CONNACK batch that accepted a forgotten id's clean start: off the loop, its
    deferred records are synced, then the id's note is waited for, before its packets go.
    Mutant: ``_hook_batch_end`` hands ``_after_note`` no sync (the batch's records unsynced)."""
    d, log, _ = _driver()
    job: Any = object()  # (the future a background sync returns)

    def note() -> None:
        time.sleep(0.2)  # (the note's write: not done at once)
        log.append(("noted",))

    def background(fn: Callable[[], None]) -> Any:
        fn()  # (the sync thread's job, run here)
        return job
    noting = threading.Thread(target=note)
    noting.start()
    d._noting, d._batch_sync, d.background_sync = noting, True, background
    assert d._hook_batch_end() is job
    assert log == [("sync",), ("noted",)] and not noting.is_alive()
    left: tuple[Any, bool] = (d._noting, d._batch_sync)
    assert left == (None, False)  # (cleared for the next batch)


def test_a_server_reference_that_cannot_be_followed_on_disconnect_is_reported() -> None:
    """A DISCONNECT 0x9D whose Server Reference fails to be read: reported to on_error (never
    raised into paho's thread) and the disconnect still recorded. Mutant:
    ``_paho_on_disconnect``'s ``except`` without its ``self.error``."""
    d, _, _ = _driver()
    d._settings.follow_server_reference = True
    d._hook_connack(0, "", False, 65535, None)
    d.servers = ServerRotation([("127.0.0.1", 1883)])
    d.conn.wants_reconnect = lambda: False  # type: ignore[union-attr,method-assign]
    fired: list[tuple[str, Any]] = []
    d._fire = lambda name, event: fired.append((name, event))

    class _Props:
        @property
        def ServerReference(self) -> str:
            raise ValueError("malformed property")

    d._paho_on_disconnect(None, None, None, 0x9D, _Props())
    errors = [e for n, e in fired if n == "on_error"]
    assert len(errors) == 1 and "Server Reference failed" in errors[0].description
    assert d.engine.state.disconnected_at is not None
