"""Pins from a mutation hunt over ``mqttsession/aio.py``: a cancelled ``AsyncSession.close()``
still closes the session and then raises ``CancelledError`` (the cancel is never swallowed),
whether it lands in its flush (a real mosquitto behind a proxy that drops the PUBACKs) or
while it waits for a publish's failing fdatasync. Each test failed with one mutant applied
(named in its docstring)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
from mqttsession import AsyncSession, Options, PersistenceError

try:  # tests/integration may or may not be a package
    from . import _faults, _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _faults  # type: ignore[no-redef]
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


@pytest.mark.mosquitto
def test_a_close_cancelled_in_its_flush_closes_and_raises_cancelled(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """``close()`` waiting in its flush for a PUBACK that never comes, cancelled: the session
    ends closed and ``close()`` raises ``CancelledError`` (mutant: ``cancelled = True`` of the
    flush's ``except asyncio.CancelledError`` dropped: ``close()`` returned as if not
    cancelled)."""
    proxy = mqtt_proxy_factory(mosquitto)
    proxy.drop("s2c", "PUBACK")

    async def main() -> None:
        s = await AsyncSession.create(Options(address=proxy.address, request_timeout_seconds=30),
                                      client_id=_procs.unique("mh7c"), clean_session=False)
        await s.publish(f"mqs/{_procs.unique('mh7')}", "x", 1)
        closing = asyncio.create_task(s.close())
        while not s._idle:  # (close() flushes)
            await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert s.closed and not s.connected

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_close_cancelled_while_a_publish_sync_fails_closes_and_raises_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, ``always``: a publish waits for an fdatasync that then fails; ``close()``,
    waiting for it, is cancelled: the publish gets its ``PersistenceError``, the session ends
    closed and ``close()`` raises ``CancelledError`` (mutant: ``cancelled = True`` of the
    wait for the syncs dropped). No broker: nothing listens at the address."""
    failing = _faults.StuckThenEIO()
    monkeypatch.setattr(journal_mod, "os", failing)

    async def main() -> None:
        s = await AsyncSession.create(Options(address="127.0.0.1:1", request_timeout_seconds=30),
                                      client_id=_procs.unique("mh7s"), connect=False,
                                      state_file=tmp_path / "s.session")
        await s.publish("t/a", "before", 1)
        failing.armed = True
        publishing = asyncio.create_task(s.publish("t/a", "fails", 1))
        assert await asyncio.to_thread(failing.entered.wait, 10)
        closing = asyncio.create_task(s.close())
        while not s._closing:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert not closing.done()  # (it waits for the sync)
        closing.cancel()
        failing.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert s.closed
        with pytest.raises(PersistenceError):
            await publishing

    asyncio.run(asyncio.wait_for(main(), 60))
