"""An ``AsyncGateway``'s loop never waits for an fdatasync when its sessions reconnect (a
hunt: each CONNACK synced the resume plan's records on the loop, one fdatasync per session
after a broker restart: 1,000 sessions on a 10 ms card, 10 s of a stopped loop). The plan's
acks wait for that sync in the sync thread, as a read batch's do."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
from mqttsession import AsyncGateway, Options
from mqttsession.testing.faults import FakeOs

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def test_reconnects_sync_off_the_loop(mosquitto_factory: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    broker = mosquitto_factory()
    on_loop: list[str] = []

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():  # (the loop's)
            on_loop.append(threading.current_thread().name)
        os.fdatasync(fd)

    monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=fdatasync))
    topic = f"mqs/{_procs.unique('loop')}"
    counter = _procs.Counter(broker.host, broker.port, topic)

    async def main() -> None:
        opts = Options(address=broker.address, request_timeout_seconds=20)
        async with AsyncGateway(tmp_path / "gw") as gw:
            ss = [await gw.session(_procs.unique(f"s{i}"), opts, session_sync="always")
                  for i in range(4)]
            on_loop.clear()
            broker.restart()
            await asyncio.sleep(0.3)
            for i, s in enumerate(ss):  # flushed: reconnected (and their acks' syncs done)
                await s.publish(topic, f"{i}", 2)
            for s in ss:
                assert await s.flush(_procs.TIMEOUT)
            assert on_loop == [], on_loop

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        counter.close()
