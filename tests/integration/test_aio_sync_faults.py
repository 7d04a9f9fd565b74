"""AsyncSession (a durable QoS 2 subscriber, SessionSync=always; real mosquitto): the off-loop
fdatasync behind a received message's PUBREC fails (EIO) after the connection dropped (a sweep's
finding; fails before). Before, the failed future was never read: asyncio logged "Future
exception was never retrieved" and on_error never said the state file could not be written.
The message is delivered once all the same (the broker sends it again)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
from mqttsession import AsyncSession, Options

try:  # tests/integration may or may not be a package
    from . import _faults, _feeds
except ImportError:  # pragma: no cover - rootdir-relative import
    import _faults  # type: ignore[no-redef]
    import _feeds  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


_StuckThenEIO = _faults.StuckThenEIO


_publish = _feeds.publish


def test_a_sync_failing_after_the_connection_dropped_is_reported(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = _StuckThenEIO()
    monkeypatch.setattr(journal_mod, "os", failing)
    loop_errors: list[Any] = []
    errors: list[str] = []
    got: list[bytes] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda lp, ctx: loop_errors.append(ctx))
        tag = uuid.uuid4().hex[:8]
        topic = f"drop/{tag}"
        s = AsyncSession(Options(address=mosquitto.address, protocol_version=5,
                                 request_timeout_seconds=5),
                         client_id=f"drop-{tag}", state_file=tmp_path / "sub.session",
                         session_sync="always")
        s.client.on_error = lambda e: errors.append(e.description)
        await s.start()
        try:
            await s.subscribe(topic, 2)
            failing.armed = True
            await asyncio.to_thread(_publish, mosquitto, topic, b"one")  # (PUBREC held: ok)
            assert await asyncio.to_thread(failing.entered.wait, 10), "no sync began"
            # the network drops while the PUBREC's sync is under way
            s.client._driver.conn._sock.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 5
            while s.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            failing.gate.set()  # ... and the sync fails
            await asyncio.sleep(0.3)
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                m = await s.receive(0.5)
                if m is not None:
                    got.append(m.message)
            m = await s.receive(0.5)
            if m is not None:
                got.append(m.message)
        finally:
            await s.close()
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(main(), 30))
    gc.collect()
    assert got == [b"one"]  # delivered once
    assert not loop_errors, loop_errors  # before: 'Future exception was never retrieved'
    assert any("could not be written" in e for e in errors), errors
