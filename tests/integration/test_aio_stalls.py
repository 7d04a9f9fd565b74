"""An event loop busy (a blocking call, a GC or VM pause) as an answer arrives and its
deadline passes: the answer counts. Before (a hunt of other Pythons): ``AsyncSession.create``
raised "no CONNACK" and tore the accepted connection down (every Python), and
``subscribe`` raised "no SUBACK" for a granted subscription (3.12+, where ``wait_for`` lets the
timeout win)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from mqttsession.aio import AsyncSession
from mqttsession.options import Options
from mqttsession.testing.fake_broker import FakeBroker

pytestmark = pytest.mark.integration

_TIMEOUT = 0.5


def _held_back(fb: FakeBroker, kind: str) -> tuple[threading.Event, threading.Event]:
    """The broker's answer to the first ``kind`` packet waits for the second event."""
    got, go = threading.Event(), threading.Event()

    def on_packet(_fb: Any, rec: Any) -> None:
        if rec.type == kind and not got.is_set():
            got.set()
            go.wait(5)

    fb.on_packet = on_packet
    return got, go


async def _stall_while_answered(got: threading.Event, go: threading.Event) -> None:
    while not got.is_set():
        await asyncio.sleep(0.001)
    go.set()
    time.sleep(_TIMEOUT + 0.5)  # the loop busy: the answer arrives, the deadline passes


def test_a_connack_that_came_while_the_loop_was_busy_counts() -> None:
    async def main() -> None:
        fb = FakeBroker()
        try:
            got, go = _held_back(fb, "CONNECT")
            task = asyncio.create_task(AsyncSession.create(Options(
                address=f"{fb.host}:{fb.port}", request_timeout_seconds=_TIMEOUT)))
            await _stall_while_answered(got, go)
            s = await task  # (before: ConnectError "no CONNACK")
            await s.close()
        finally:
            fb.stop()

    asyncio.run(main())


def test_a_suback_that_came_while_the_loop_was_busy_counts() -> None:
    async def main() -> None:
        fb = FakeBroker()
        try:
            got, go = _held_back(fb, "SUBSCRIBE")
            s = await AsyncSession.create(Options(address=f"{fb.host}:{fb.port}",
                                                  request_timeout_seconds=_TIMEOUT))
            try:
                task = asyncio.create_task(s.subscribe("t/x", 1))
                await _stall_while_answered(got, go)
                await task  # (before, 3.12+: MQTTSessionError "no SUBACK")
            finally:
                await s.close()
        finally:
            fb.stop()

    asyncio.run(main())


def test_a_socket_another_thread_closed_is_unwatched_without_error() -> None:
    """A connection's socket closed by another thread (paho's close from a ``disconnect()``
    or ``close()`` now run in an executor, or a TCP connect's thread) before the loop stops
    watching it: the loop forgets it, with no ``ValueError: Invalid file descriptor: -1``
    (a review: from about 1% of ``close()`` calls racing a ``connect()``, and asyncio
    callback errors), and a new socket that gets the same descriptor number is watched."""
    import socket  # noqa: PLC0415
    import types  # noqa: PLC0415

    from mqttsession.pump import AsyncioPump  # noqa: PLC0415

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pump = AsyncioPump(types.SimpleNamespace(), loop, 1.0, 1.0)  # type: ignore[arg-type]
        pump.stopped = True  # (no reconnect to schedule)
        a, b = socket.socketpair()
        loop.add_reader(a, lambda: None)
        loop.add_writer(a, lambda: None)
        a.close()  # (another thread's close: the loop still watches it)
        pump._on_close(None, None, a)  # paho's socket callback: the loop forgets it
        c, d = socket.socketpair()  # (its descriptor may be the one ``a`` had)
        try:
            got = asyncio.Event()
            loop.add_reader(c, got.set)
            d.send(b"x")
            await asyncio.wait_for(got.wait(), 5)
            loop.remove_reader(c)
        finally:
            for s in (b, c, d):
                s.close()

    asyncio.run(main())
