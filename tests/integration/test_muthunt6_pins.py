"""Pins from a mutation hunt over ``mqttsession/driver.py``, against a real mosquitto: a
state file's session that ``on_connected`` did not restore is kept aside by the time
``connect()`` returns, and an accepted CONNACK starts an ``AsyncSession``'s reconnect backoff
low again. Each test failed with one mutant applied (named in its docstring)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, Options

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def test_a_file_session_not_restored_is_kept_aside_when_connect_returns(
        mosquitto: Any, tmp_path: Path) -> None:
    """A client whose state file holds a session it did not restore (not even in
    on_connected): when ``connect()`` returns, the CONNACK has kept that session aside and
    on_error said so. Mutant: ``_hook_connack`` without ``self.file.settle`` (left to the next
    append, after connect() returned)."""
    path = tmp_path / "s"
    cid = _procs.unique("mh6-aside")
    a = Client(client_id=cid, clean_session=False)
    a.config(f"SessionStateFile={path}")
    a.restore_session("")
    for i in range(3):
        a.publish_data("mh6/aside", 1, b"m%d" % i)
    a.close()
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        aside = sorted(n for n in os.listdir(tmp_path) if ".unrestored-" in n)
        said = list(errors)
    finally:
        c.disconnect()
        c.close()
    assert len(aside) == 2, aside  # the snapshot and its journal
    assert len(said) == 1 and "was not restored" in said[0] and "3 outgoing" in said[0]


def test_an_accepted_connack_starts_the_async_backoff_low_again(mosquitto_factory: Any) -> None:
    """``AsyncSession``: reconnects to a dead broker double the backoff; once a CONNACK
    accepts a reconnect, the next backoff is ``ReconnectDelayMin`` again (README). Mutant:
    ``_hook_connack`` without ``self.pump.accepted()`` (the backoff stayed grown)."""
    broker = mosquitto_factory()

    async def main() -> tuple[float, float, float]:
        s = AsyncSession(Options(address=_procs.address(broker)),
                         client_id=_procs.unique("mh6-backoff"), clean_session=False)
        s.client.config("ReconnectDelayMin=0.2")
        s.client.config("ReconnectDelayMax=3")
        connects: list[object] = []
        s.client.on_connected = connects.append
        try:
            await s.start()
            pump = s.client._driver.pump
            assert pump is not None
            broker.kill()
            deadline = time.monotonic() + 30
            while pump._delay < 1.5 and time.monotonic() < deadline:  # grown: 0.2, 0.4, ...
                await asyncio.sleep(0.05)
            grown = pump._delay
            before = len(connects)
            broker.start()
            deadline = time.monotonic() + 30
            while len(connects) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(connects) > before, "no reconnect after the broker came back"
            return grown, pump._delay, pump._delay_min
        finally:
            await s.close()

    grown, after, least = asyncio.run(asyncio.wait_for(main(), 90))
    assert grown >= 1.5 and after == least == 0.2
