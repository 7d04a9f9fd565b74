"""Settings changed while connected (a live-reconfiguration hunt; each case failed before its
fix): ``config()`` took them and returned "", but they waited for the next ``connect()``:

* ``SessionExpInterval``: every reconnect's CONNECT carried the first one's (paho replays its
  properties); raised, a later outage lost the session and its messages;
* ``MaxInflight``: the window stayed the one of the last CONNACK (lowered to a broker's
  ``max_inflight_messages`` on MQTT 3.1.1 in ``on_connected``, as the README advises: messages
  lost);
* ``MaxMessageSize`` lowered took out messages already held (one already in flight);
* ``AutoReconnect`` / ``ReconnectDelayMin`` reached the connection only at the next connect();
* ``FailoverRepublish`` lowered (to 0: off) still republished the old number;
* ``DrainRateLimit`` lowered let the old bucket out first;
* ``SessionStateFile`` set on a session holding messages wrote nothing until the next change
  (a kill -9 before it: all of them lost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, _wire
from mqttsession.testing.fake_broker import FakeBroker

try:  # tests/integration may or may not be a package
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import wait_until  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _expiry(rec: Any) -> int | None:
    return dict(_wire.parse_properties(bytes(rec.properties))).get(0x11)


@pytest.mark.parametrize("old,new", [(60, 86400), (3600, 5)])
def test_session_expiry_set_while_connected_goes_with_the_next_reconnect(old: int,
                                                                         new: int) -> None:
    with FakeBroker(session_present=True) as fb:
        c = Client(client_id=f"se{old}", clean_session=False, protocol_version=5)
        c.config("ReconnectDelayMin=0.1")
        c.config(f"SessionExpInterval={old}")
        try:
            c.connect(fb.host, fb.port, 5)
            c.config(f"SessionExpInterval={new}")
            fb.close_client()
            fb.wait_connections(2)
            wait_until(lambda: len(fb.packets("CONNECT")) >= 2, 5, "the reconnect")
            assert [_expiry(r) for r in fb.packets("CONNECT")][:2] == [old, new]
        finally:
            c.close()


@pytest.mark.parametrize("start,new,expected", [(20, 2, 2), (2, 10, 10)])
def test_max_inflight_set_while_connected_counts_at_once(start: int, new: int,
                                                         expected: int) -> None:
    with FakeBroker(qos1_ack="none") as fb:
        c = Client(client_id="mi", clean_session=True)
        c.config(f"MaxInflight={start}")
        try:
            c.connect(fb.host, fb.port, 5)
            c.config(f"MaxInflight={new}")
            for i in range(10):
                c.publish_message("t", 1, str(i))
            wait_until(lambda: len(fb.packets("PUBLISH")) >= expected, 5, "the window")
            time.sleep(1.2)  # (a tick: nothing more)
            assert len(fb.packets("PUBLISH")) == expected
        finally:
            c.close()


def test_max_message_size_lowered_keeps_what_is_held() -> None:
    with FakeBroker(qos1_ack="none") as fb:
        c = Client(client_id="mms", clean_session=False)
        c.config("ReconnectDelayMin=0.1")
        dropped: list[Any] = []
        c.on_message_dropped = dropped.append
        try:
            c.connect(fb.host, fb.port, 5)
            for i in range(3):
                c.publish_data("t", 1, bytes([i]) * 500)
            wait_until(lambda: len(fb.packets("PUBLISH")) >= 3, 5, "three in flight")
            c.config("MaxMessageSize=200")
            with pytest.raises(Exception, match="MaxMessageSize"):
                c.publish_data("t", 1, b"x" * 500)  # a new one: refused
            fb.close_client()
            wait_until(lambda: len(fb.packets("PUBLISH")) >= 6, 5, "the three resent")
            assert dropped == [] and len(c.outgoing_messages) == 3
        finally:
            c.close()


def test_reconnect_settings_set_while_connected_reach_the_connection() -> None:
    with FakeBroker() as fb:
        c = Client(client_id="ar", clean_session=True)
        c.config("ReconnectDelayMin=0.1")
        try:
            c.connect(fb.host, fb.port, 5)
            c.config("ReconnectDelayMin=30")
            fb.close_client()
            time.sleep(2)
            assert fb.connections == 1  # (before: reconnected after 0.1 s)
        finally:
            c.close()
    with FakeBroker() as fb:
        c = Client(client_id="ar2", clean_session=True)
        c.config("ReconnectDelayMin=0.1")
        c.config("AutoReconnect=False")
        try:
            c.connect(fb.host, fb.port, 5)
            c.config("AutoReconnect=True")
            fb.close_client()
            fb.wait_connections(2)  # (before: offline for good)
            wait_until(lambda: c.connected, 5, "the reconnect")
        finally:
            c.close()
    with FakeBroker() as fb:  # set after a loss under AutoReconnect=False: its loop ended,
        c = Client(client_id="ar3", clean_session=True)  # disconnect() + connect() (review:
        c.config("AutoReconnect=False")  # it said "under way", and connect_all skipped it)
        try:
            c.connect(fb.host, fb.port, 5)
            fb.close_client()
            wait_until(lambda: not c.connected, 5, "the cut")
            c.config("AutoReconnect=True")
            with pytest.raises(Exception, match="disconnect\\(\\) first, then connect"):
                c.connect(fb.host, fb.port, 5)
            c.disconnect()
            c.connect(fb.host, fb.port, 5)
            assert c.connected
        finally:
            c.close()


@pytest.mark.parametrize("sent,setting,expected", [(10, 2, [8, 9]), (7, 10, list(range(7)))])
def test_failover_republish_lowered_republishes_only_that_many(
        sent: int, setting: int, expected: list[int]) -> None:
    """(review: ``FailoverRepublish=10`` with 7 acknowledged republished the last 3 only)."""
    with FakeBroker() as a, FakeBroker() as b:
        c = Client(client_id="fr", clean_session=False)
        c.config("ReconnectDelayMin=0.1")
        c.config(f"FailoverServers={b.host}:{b.port}")
        c.config("FailoverRepublish=40")
        try:
            c.connect(a.host, a.port, 5)
            for i in range(sent):
                c.publish_message("t/fr", 1, str(i))
            assert c.flush(5)
            c.config(f"FailoverRepublish={setting}")
            a.stop()
            wait_until(lambda: c.connected and c.config("ConnectedServer").endswith(
                str(b.port)), 10, "the failover")
            wait_until(lambda: len(b.packets("PUBLISH")) >= len(expected), 5, "the republished")
            time.sleep(0.3)
            assert [bytes(r.payload) for r in b.packets("PUBLISH")] == [
                str(i).encode() for i in expected]
        finally:
            c.close()


def test_drain_rate_lowered_caps_at_once() -> None:
    with FakeBroker() as fb:
        c = Client(client_id="dr", clean_session=True)
        c.config("DrainRateLimit=1000")
        try:
            c.connect(fb.host, fb.port, 5)
            time.sleep(1.2)  # (a tick: the bucket full, 1000)
            c.config("DrainRateLimit=2")
            for i in range(40):
                c.publish_message("t", 1, str(i))
            time.sleep(2)
            assert len(fb.packets("PUBLISH")) <= 7  # (a second's 2, then 2 a second)
        finally:
            c.close()


@pytest.mark.parametrize("before", ["no file", "an empty session"])
def test_a_state_file_set_on_a_session_holding_messages_has_them_at_once(
        tmp_path: Path, before: str) -> None:
    """(and a crash hunt: a file an earlier run left with an empty session was not written
    either, 0 of 6 restored)"""
    path = tmp_path / "s"
    if before == "an empty session":
        earlier = Client(client_id="late", clean_session=False)
        earlier.config(f"SessionStateFile={path}")
        earlier.restore_session("")
        earlier.close()
        assert path.exists()
    child = f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from mqttsession import Client
c = Client(client_id="late", clean_session=False)
for i in range(5):
    c.publish_message("t", 1, str(i))
c.config("SessionStateFile={path}")
print("set", flush=True)
time.sleep(60)
"""
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "set"
            os.kill(p.pid, signal.SIGKILL)  # right after the setting: no other change
        finally:
            p.kill()
            p.wait()
    c = Client(client_id="late", clean_session=False)
    c.config(f"SessionStateFile={path}")
    try:
        c.restore_session("")
        assert [m.message for m in c.outgoing_messages] == [str(i).encode() for i in range(5)]
    finally:
        c.close()


def test_auto_reconnect_off_during_an_async_backoff_stops_the_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncSession`` retrying a gone broker; ``AutoReconnect=False`` set meanwhile: at
    most the attempt under way, then none (review: its pump rescheduled after every failed
    attempt, for ever, while ``connect()`` was refused as "lost")."""
    import asyncio

    from mqttsession import AsyncSession, Options
    from mqttsession._paho import PahoConnection

    calls: list[float] = []
    real = PahoConnection.reconnect

    def counted(self: PahoConnection) -> Any:
        calls.append(time.monotonic())
        return real(self)

    monkeypatch.setattr(PahoConnection, "reconnect", counted)

    async def main() -> None:
        fb = FakeBroker()
        s = AsyncSession(Options(address=f"127.0.0.1:{fb.port}"), client_id="ar-aio")
        await s.start(connect=False)
        for setting in ("ReconnectDelayMin=0.2", "ReconnectDelayMax=0.2"):
            await s.config(setting)
        await s.connect()
        fb.stop()
        await asyncio.sleep(1.0)
        assert calls  # (retrying)
        await s.config("AutoReconnect=False")
        since = time.monotonic() + 0.5
        await asyncio.sleep(2.0)
        assert [t for t in calls if t > since] == []
        await s.close()

    asyncio.run(main())
