"""Threads a session costs: a connected ``Client`` one (paho's network thread, which also runs
the session's timers), an ``AsyncSession`` none (the event loop runs it). Also across a lost
connection and the automatic reconnect, where the timers and the reconnect run on the same
thread (the loop's default executor only waits for the TCP connect)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import mqttsession
from mqttsession import AsyncSession, Options

try:  # tests/integration may or may not be a package
    from ._procs import EventLog, unique, wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import EventLog, unique, wait_until  # type: ignore[no-redef]


def _own_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before``, but for the loop's default executor (asyncio_N)."""
    return sorted(t.name for t in threading.enumerate()
                  if t not in before and not t.name.startswith("asyncio_"))


def test_a_connected_client_uses_one_thread(mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    before = set(threading.enumerate())
    c = mqttsession.Client(client_id=unique("threads"), clean_session=False)
    c.config("ReconnectDelayMin=0")
    log = EventLog(c)
    try:
        c.connect(proxy.host, proxy.port)
        c.subscribe("mqs/threads/#", 1)
        c.publish_data("mqs/threads/a", 1, b"x")
        assert c.flush(10)
        assert len(_own_threads(before)) == 1, _own_threads(before)
        proxy.cut()
        log.wait("on_connected", 2)  # reconnected by that same thread
        assert len(_own_threads(before)) == 1, _own_threads(before)
    finally:
        c.close()
    wait_until(lambda: not _own_threads(before), timeout=5, what="paho's thread to end")


def test_an_async_session_uses_no_thread(mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    proxy = mqtt_proxy_factory(mosquitto)

    async def main() -> None:
        before = set(threading.enumerate())
        options = Options(address=proxy.address, request_timeout_seconds=10.0)
        s = AsyncSession(options, client_id=unique("aio-threads"), clean_session=False)
        s.client.config("ReconnectDelayMin=0")
        async with s:
            await s.subscribe("mqs/aio-threads/#", 1)
            await s.publish("mqs/aio-threads/a", b"x", 1)
            assert await s.flush(10)
            got = await s.receive(10)
            assert got is not None and got.message == b"x"
            assert _own_threads(before) == []
            proxy.cut()
            for _ in range(200):  # reconnected by the loop (the loop must run to do it)
                await asyncio.sleep(0.05)
                if s.connected and proxy.accepted > 1:
                    break
            assert s.connected and _own_threads(before) == []
            await s.publish("mqs/aio-threads/a", b"y", 1)
            got = await s.receive(10)  # "x" again first: taken, not acknowledged before the cut
            assert got is not None and (got.message, got.duplicate) == (b"x", True)
            got = await s.receive(10)
            assert got is not None and got.message == b"y"

    asyncio.run(asyncio.wait_for(main(), 60))
