"""``AsyncSession`` rules pinned by a second mutation hunt over ``mqttsession/aio.py``, no broker
needed (``connect=False``, or an address nobody listens on):

* argument checks: a ``state_file`` needs a ``client_id`` and refuses ``clean_session=True``;
  calls before ``start()`` are ``UsageError`` (``config`` is allowed);
* ``flush()`` with nothing held is True at once; with messages held and no connection, False
  after its timeout; after close, ``UsageError``;
* ``close()`` wakes every reader (``receive()`` is None, ``messages()`` ends), ends a
  ``flush()`` waiting (False), and a second ``close()`` returns at once;
* the inbound queue's back-pressure: reading pauses once more than ``inbound_queue_size``
  messages wait, and goes on once the application has taken half of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from mqttsession import AsyncSession, Options, UsageError
from mqttsession.events import MessageEvent

T = TypeVar("T")

NOWHERE = Options(address="127.0.0.1:1", request_timeout_seconds=5.0)


def _run(main: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)
    return asyncio.run(bounded())


def test_a_state_file_needs_a_client_id_and_keeps_its_session(tmp_path: Path) -> None:
    """``state_file`` without ``client_id``, or with ``clean_session=True``: ``UsageError``."""
    with pytest.raises(UsageError, match="pass client_id"):
        AsyncSession(NOWHERE, state_file=tmp_path / "a.session")
    with pytest.raises(UsageError, match="clean_session=True"):
        AsyncSession(NOWHERE, client_id="c", state_file=tmp_path / "a.session",
                     clean_session=True)
    assert not list(tmp_path.iterdir())


def test_calls_before_start_are_usage_errors_but_config_is_not() -> None:
    """A session not started refuses publish / subscribe / flush (start() would replace what
    they did); ``config`` sets before start."""
    async def main() -> None:
        s = AsyncSession(NOWHERE, client_id="not-started-yet")
        for call in (lambda: s.publish("t/a", "x"), lambda: s.publish_many([("t/a", 1, "x")]),
                     lambda: s.subscribe("t/#"), s.flush, s.connect):
            with pytest.raises(UsageError, match="not started"):
                await call()
        await s.config("MaxInFlight=7")
        assert await s.config("MaxInFlight") == "7"
        await s.close()
    _run(main)


def test_flush_when_nothing_is_held_is_true_at_once() -> None:
    """``flush()`` without a timeout and nothing outgoing returns True (it never waits)."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id="flush-empty", connect=False)
        try:
            assert await asyncio.wait_for(s.flush(), 5) is True
        finally:
            await s.close()
    _run(main)


def test_flush_times_out_false_while_disconnected_and_raises_after_close() -> None:
    """A QoS 1 publish while disconnected is queued (its packet id returned at once);
    ``flush(timeout)`` is then False; after close, ``flush()`` is ``UsageError``."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id="flush-held", connect=False)
        pid = await s.publish("t/a", "held", 1)
        assert pid > 0
        assert [m.topic for m in s.client.outgoing_messages] == ["t/a"]
        assert await s.flush(0.05) is False
        await s.close()
        with pytest.raises(UsageError, match="closed"):
            await s.flush(0.05)
    _run(main)


def test_close_ends_waiting_readers_flushes_and_every_later_reader() -> None:
    """close() wakes a ``receive()`` waiting (None), ends ``messages()``, makes a ``flush()``
    waiting return False; later readers see the end too; a second close() returns."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id="close-wakes", connect=False)
        await s.publish("t/a", "held", 1)
        got: list[MessageEvent] = []

        async def iterate() -> int:
            async for m in s.messages():
                got.append(m)
            return len(got)

        waiting = asyncio.ensure_future(s.receive())
        iterating = asyncio.ensure_future(iterate())
        flushing = asyncio.ensure_future(s.flush())
        await asyncio.sleep(0.01)
        assert not (waiting.done() or iterating.done() or flushing.done())
        await s.close()
        assert await asyncio.wait_for(waiting, 5) is None
        assert await asyncio.wait_for(iterating, 5) == 0
        assert await asyncio.wait_for(flushing, 5) is False
        assert s.closed
        assert await asyncio.wait_for(s.receive(), 5) is None
        assert await asyncio.wait_for(s.receive(), 5) is None
        await asyncio.wait_for(s.close(), 5)
    _run(main)


class _Pump:
    """Records the back-pressure calls a session makes on its pump."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_reading_pauses_past_the_bound_and_resumes_once_half_is_taken() -> None:
    """``inbound_queue_size=4``: four messages waiting pause nothing, the fifth pauses reading;
    taking them resumes reading once at most two wait."""
    async def main() -> None:
        options = Options(address="127.0.0.1:1", inbound_queue_size=4)
        s = await AsyncSession.create(options, client_id="bound", connect=False)
        pump = _Pump()
        d = s.client._driver
        d.pump = pump  # type: ignore[assignment]
        try:
            for n in range(4):
                s._on_message_in(MessageEvent(-1, "t/a", 0, b"%d" % n, False, False))
            assert pump.calls == []
            s._on_message_in(MessageEvent(-1, "t/a", 0, b"4", False, False))
            assert pump.calls == ["pause"]
            pump.calls.clear()
            taken = []
            for _ in range(5):
                m = await s.receive(1)
                assert m is not None
                taken.append((m.message, s._queue.qsize(), list(pump.calls)))
                pump.calls.clear()
            assert [t[0] for t in taken] == [b"0", b"1", b"2", b"3", b"4"]
            # 4 left, 3 left: still paused; 2 left (half the bound): reading goes on
            assert [(left, calls) for _, left, calls in taken] == [
                (4, []), (3, []), (2, ["resume"]), (1, ["resume"]), (0, ["resume"])]
        finally:
            d.pump = None
            await s.close()
    _run(main)


def test_subscribe_while_disconnected_waits_for_no_suback() -> None:
    """Unconnected, ``subscribe()`` records the subscription and returns: no SUBACK can come,
    so it never waits for one (nor raises "no SUBACK")."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id="sub-offline", connect=False)
        try:
            await asyncio.wait_for(s.subscribe("t/#", 1), 2)
            assert s._subacks == {}
        finally:
            await s.close()
    _run(main)


def test_a_cancelled_disconnect_still_ends_and_raises_cancelled() -> None:
    """``disconnect()`` cancelled while its DISCONNECT runs in the executor finishes it (never
    cut short) and then raises ``CancelledError`` to its caller."""
    async def main() -> None:
        s = await AsyncSession.create(NOWHERE, client_id="disc-cancel", connect=False)
        try:
            task = asyncio.ensure_future(s.disconnect())
            await asyncio.sleep(0)  # (it waits for its executor job now)
            task.cancel()
            await asyncio.wait([task], timeout=5)
            assert task.cancelled()
        finally:
            await s.close()
    _run(main)
