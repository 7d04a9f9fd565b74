"""Pins of README.rst "Sessions and asyncio" (a behaviour audit): claims no other test would
fail on, against a ``FakeBroker`` and a real mosquitto.

* a Mesh ``Session``: once ``close()`` begins, ``publish()`` / ``publish_many()`` are refused
  (``UsageError``) while close still waits for the publishes called before it;
* an ``AsyncSession`` past ``inbound_queue_size``: the socket is not read, so the acks of its
  own publishes wait too and ``flush()`` waits for the application; a pause longer than the
  keep-alive costs the connection, which resumes with nothing lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession import AsyncSession, Connection, Options, UsageError
from mqttsession.testing.fake_broker import FakeBroker

T = TypeVar("T")
TIMEOUT = 10.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _run(main: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)
    return asyncio.run(bounded())


def _publish(broker: Any, topic: str, payloads: list[bytes]) -> None:
    """QoS 1 messages from a plain paho client; waits for their PUBACKs."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_uid("feeder"))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        for info in [c.publish(topic, p, qos=1) for p in payloads]:
            info.wait_for_publish(TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()


async def _until(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_mesh_publish_called_once_close_began_is_refused() -> None:
    """README: "Once ``close()`` begins, a ``publish()`` / ``publish_many()`` called is refused
    (``UsageError``): close waits for the publishes called before it"."""
    with FakeBroker(qos1_ack="none") as fb:  # (never acks: close waits its whole timeout)
        connection = Connection.insecure(f"{fb.host}:{fb.port}", options=Options(
            request_timeout_seconds=1.0))
        session = connection.create_session()
        session.open()
        session.publish("pin/closing", "before", 1)
        closer = threading.Thread(target=session.close, daemon=True)
        t0 = time.monotonic()
        closer.start()
        try:
            fb.wait_for("PUBLISH", 1)
            time.sleep(0.1)
            assert closer.is_alive()  # close() waits for the publish called before it
            with pytest.raises(UsageError):
                session.publish("pin/closing", "during", 1)
            with pytest.raises(UsageError):
                session.publish_many([("pin/closing", 1, b"during")])
        finally:
            closer.join(TIMEOUT)  # (before the broker stops under it)
        assert not closer.is_alive() and time.monotonic() - t0 >= 0.9
        assert [p.payload for p in fb.packets("PUBLISH")] == [b"before"]


def test_flush_waits_for_the_application_while_reading_is_paused(mosquitto: Any) -> None:
    """README: past ``inbound_queue_size`` "nothing else is read meanwhile either (the acks of
    the session's own publishes, PINGRESP), so a ``flush()`` waits for the application too"."""
    topic = f"mqs/{_uid('paused')}"

    async def main() -> None:
        options = Options(address=mosquitto.address, request_timeout_seconds=TIMEOUT,
                          inbound_queue_size=2)
        async with AsyncSession(options) as s:
            await s.subscribe(topic, 1)
            await asyncio.to_thread(_publish, mosquitto, topic, [b"m%d" % n for n in range(4)])
            await _until(lambda: s._queue.qsize() > 2, "reading paused past the bound")
            await s.publish(f"{topic}/own", "mine", 1)
            assert not await s.flush(0.5)  # its PUBACK is not read while paused
            got = []
            for _ in range(4):
                m = await s.receive(TIMEOUT)
                assert m is not None
                got.append(m.message)
            assert got == [b"m0", b"m1", b"m2", b"m3"]
            assert await s.flush(TIMEOUT)  # read again: the PUBACK taken

    _run(main)


def test_a_pause_past_the_keep_alive_costs_the_connection_and_loses_nothing(
        mosquitto: Any) -> None:
    """README: "a pause longer than the keep-alive costs the connection (it resumes, nothing
    lost)"."""
    topic = f"mqs/{_uid('keep')}"
    sent = [b"k%d" % n for n in range(6)]

    async def main() -> None:
        options = Options(address=mosquitto.address, request_timeout_seconds=TIMEOUT,
                          inbound_queue_size=2, keep_alive=1)
        s = await AsyncSession.create(options, client_id=_uid("keep"), clean_session=False)
        try:
            await s.config("ReconnectDelayMin=0.1")
            await s.config("ReconnectDelayMax=0.2")
            await s.subscribe(topic, 1)
            await asyncio.to_thread(_publish, mosquitto, topic, sent)
            await _until(lambda: not s.connected, "the connection lost to the keep-alive")
            got: set[bytes] = set()
            while got != set(sent):
                m = await s.receive(TIMEOUT)
                assert m is not None, f"only {sorted(got)} arrived"
                got.add(m.message)
            await _until(lambda: s.connected, "the session back")
        finally:
            await s.close()

    _run(main)
