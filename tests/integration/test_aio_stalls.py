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
