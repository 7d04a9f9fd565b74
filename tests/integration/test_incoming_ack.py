"""Incoming acknowledgements (issue 10, points 3 and 14), against mosquitto behind ``MQTTProxy``.

* ``ManualAck``: the Client delivers QoS 1/2 messages but sends PUBACK / PUBCOMP only on
  ``ack()``; PUBACKs leave in the order the PUBLISHes arrived [MQTT-4.6.0-2]; a QoS 2 message's
  removal is in the state file before its PUBCOMP leaves.
* ``AsyncSession`` and the Mesh ``Session`` acknowledge a message once the application has taken
  it (asked for the next one, ``ack()``, or closed the session), never one still queued; their
  queue is bounded (``Options.inbound_queue_size``) and the network thread waits for room.
* ``ReceiveMaximum`` goes out in the MQTT 5 CONNECT.
* Without ``ManualAck``, a QoS 2 message's removal reaches the state file as soon as
  ``on_message_in`` returns, before ``on_message_ack`` fires and before PUBCOMP.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from mqttsession import AsyncSession, Client, Connection, MessageEvent, Options, UsageError
from mqttsession.properties import unpack_properties
from mqttsession.journal import read_state

T = TypeVar("T")
TIMEOUT = 10.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _wait(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _publish(broker: Any, topic: str, payloads: list[tuple[str, int]]) -> None:
    """Publish (payload, qos) pairs from an independent plain paho client; wait for the acks."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_uid("feeder"))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        for info in [c.publish(topic, p.encode(), qos=q) for p, q in payloads]:
            info.wait_for_publish(TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()


def _publish_in_order(broker: Any, client: Client, topic: str,
                      payloads: list[tuple[str, int]]) -> None:
    """One at a time, each once ``client`` delivered it to its front end: they arrive in this
    order (a QoS 2 message is held on PUBLISH and delivered on PUBREL, so waiting only until
    ``client`` holds it would let a later QoS 1 one be delivered first)."""
    handler = client.on_message_in
    delivered: list[bytes] = []

    def count(e: MessageEvent) -> None:
        delivered.append(e.message)  # before: a full front end keeps the handler waiting
        handler(e)

    client.on_message_in = count
    try:
        for p in payloads:
            _publish(broker, topic, [p])
            _wait(lambda: p[0].encode() in delivered, f"{p} delivered")
    finally:
        client.on_message_in = handler


def _acks(proxy: Any, kind: str) -> list[int]:
    return [r.packet_id for r in proxy.packets("c2s", kind)]


def _delivered(proxy: Any, topic: str) -> list[Any]:
    return [r for r in proxy.packets("s2c", "PUBLISH") if r.topic == topic]


def _run(main: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)
    return asyncio.run(bounded())


# ------------------------------------------------------------------ point 14: Receive Maximum


def _connect_props(proxy: Any, **config: str) -> Any:
    c = Client(client_id=_uid("rm"), protocol_version=config.pop("version", 5))  # type: ignore[arg-type]
    for k, v in config.items():
        c.config(f"{k}={v}")
    before = len(proxy.packets("c2s", "CONNECT"))
    c.connect(proxy.host, proxy.port, timeout=TIMEOUT)
    c.close()
    rec = proxy.packets("c2s", "CONNECT")[before]
    return rec, unpack_properties(rec.properties or b"", PacketTypes.CONNECT)


def test_receive_maximum_goes_out_in_the_mqtt5_connect(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    _rec, props = _connect_props(proxy, ReceiveMaximum="7")
    assert props is not None and props.ReceiveMaximum == 7
    _rec, props = _connect_props(proxy)
    assert props is not None and props.ReceiveMaximum == 20  # the default, like MaxInflight
    rec, _props = _connect_props(proxy, version=4, ReceiveMaximum="7")  # type: ignore[arg-type]
    assert rec.protocol_level == 4 and rec.properties is None  # MQTT 3.1.1 has none


def test_receive_maximum_setting() -> None:
    c = Client()
    assert c.config("ReceiveMaximum") == "20"
    c.config("ReceiveMaximum=65535")
    assert c.config("receivemaximum") == "65535"
    for bad in ("0", "65536", "x"):
        with pytest.raises(UsageError, match="ReceiveMaximum"):
            c.config(f"ReceiveMaximum={bad}")


# ------------------------------------------------------------------ QoS 2 removal ordering


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_qos2_removal_is_in_the_file_when_on_message_in_returns(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, version: int
) -> None:
    """Point 4: deliver, record the removal (written at once: a kill -9 after the callback
    cannot repeat it), on_message_ack, then PUBCOMP."""
    proxy = mqtt_proxy_factory(mosquitto)
    path = str(tmp_path / "sub.session")
    topic = f"mqs/{_uid('order')}"
    seen: list[tuple[str, int, bool]] = []
    done = threading.Event()
    c = Client(client_id=_uid("order"), clean_session=False, protocol_version=version)
    c.config(f"SessionStateFile={path}")

    def held(pid: int) -> bool:
        return pid in read_state(path).incoming

    def on_in(e: MessageEvent) -> None:
        seen.append(("in", e.packet_id, held(e.packet_id)))

    def on_ack(e: Any) -> None:
        seen.append(("ack", e.packet_id, held(e.packet_id)))
        assert not _acks(proxy, "PUBCOMP")  # PUBCOMP only after the events
        done.set()

    c.on_message_in, c.on_message_ack = on_in, on_ack
    try:
        c.connect(proxy.host, proxy.port, timeout=TIMEOUT)
        c.subscribe(topic, 2)
        proxy.wait_for("s2c", "SUBACK")  # subscribed before anything is published
        _publish(mosquitto, topic, [("x", 2)])
        assert done.wait(TIMEOUT)
        pid = seen[0][1]
        assert seen == [("in", pid, True), ("ack", pid, False)]
        proxy.wait_for("c2s", "PUBCOMP", predicate=lambda r: r.packet_id == pid)
    finally:
        c.close()


# ------------------------------------------------------------------ point 3: Client.ack


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_manual_ack_client(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, version: int
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    path = str(tmp_path / "sub.session")
    topic = f"mqs/{_uid('manual')}"
    got: list[MessageEvent] = []
    c = Client(client_id=_uid("manual"), clean_session=False, protocol_version=version)
    c.config(f"SessionStateFile={path}")
    c.config("ManualAck=True")
    assert c.config("ManualAck") == "True"
    c.on_message_in = got.append
    try:
        c.connect(proxy.host, proxy.port, timeout=TIMEOUT)
        c.subscribe(topic, 2)
        proxy.wait_for("s2c", "SUBACK")  # subscribed before anything is published
        _publish(mosquitto, topic, [("a", 1), ("b", 1), ("c", 1), ("d", 2)])
        _wait(lambda: len(got) == 4, "4 deliveries")
        a, b, cc, d = sorted(got, key=lambda e: e.message)
        assert [m.message for m in c.incoming_messages] == [b"a", b"b", b"c", b"d"]
        assert not _acks(proxy, "PUBACK") and not _acks(proxy, "PUBCOMP")
        assert read_state(path).incoming.keys() == {d.packet_id}  # held until acked

        assert c.ack(cc) is True  # later than a and b: its PUBACK waits [MQTT-4.6.0-2]
        assert c.ack(a) is True
        proxy.wait_for("c2s", "PUBACK")
        assert c.ack(b) is True
        proxy.wait_for("c2s", "PUBACK", count=3)
        assert _acks(proxy, "PUBACK") == [a.packet_id, b.packet_id, cc.packet_id]
        assert c.ack(a) is False  # acknowledged before: nothing to do

        assert c.ack(d.packet_id) is True
        assert read_state(path).incoming == {}  # the removal before PUBCOMP (point 4)
        proxy.wait_for("c2s", "PUBCOMP")
        assert _acks(proxy, "PUBCOMP") == [d.packet_id]
        assert c.incoming_messages == ()
    finally:
        c.close()


def test_manual_ack_qos2_held_across_a_reconnect_is_delivered_once(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path
) -> None:
    """A QoS 2 message handed out and not acked when the connection drops: the broker sends
    PUBREL again; it is not delivered again, and the ack on the new connection sends PUBCOMP."""
    proxy = mqtt_proxy_factory(mosquitto)
    topic = f"mqs/{_uid('held2')}"
    got: list[MessageEvent] = []
    c = Client(client_id=_uid("held2"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 'sub.session'}")
    c.config("ManualAck=True")
    c.config("ReconnectDelayMax=1")
    c.on_message_in = got.append
    try:
        c.connect(proxy.host, proxy.port, timeout=TIMEOUT)
        c.subscribe(topic, 2)
        proxy.wait_for("s2c", "SUBACK")  # subscribed before anything is published
        _publish(mosquitto, topic, [("q1", 1), ("q2", 2)])
        _wait(lambda: len(got) == 2, "2 deliveries")
        connects = len(proxy.packets("c2s", "CONNECT"))
        proxy.cut()
        _wait(lambda: c.connected and len(proxy.packets("c2s", "CONNECT")) > connects,
              "the reconnect")
        q2 = next(e for e in got if e.qos == 2)
        proxy.wait_for("s2c", "PUBREL", count=2)
        _wait(lambda: len(got) == 3, "the QoS 1 message again")
        time.sleep(0.2)
        assert sorted(e.message for e in got) == [b"q1", b"q1", b"q2"]  # QoS 2 not again
        assert c.ack(q2) is True
        proxy.wait_for("c2s", "PUBCOMP")
        for e in got:
            c.ack(e)
        proxy.wait_for("c2s", "PUBACK")
    finally:
        c.close()


# ------------------------------------------------------------------ point 3: front ends


def test_async_session_acks_what_the_application_took(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    topic = f"mqs/{_uid('aio')}"

    async def main() -> None:
        options = Options(address=proxy.address, request_timeout_seconds=TIMEOUT)
        session = await AsyncSession.create(options)
        await session.subscribe(topic, 2)
        await asyncio.to_thread(_publish_in_order, mosquitto, session.client, topic,
                                [("m1", 1), ("m2", 2), ("m3", 1), ("m4", 1)])
        m1 = await session.receive(TIMEOUT)
        assert m1 is not None and m1.message == b"m1"
        assert not _acks(proxy, "PUBACK") and not _acks(proxy, "PUBCOMP")
        m2 = await session.receive(TIMEOUT)  # asking for the next one acks m1
        assert m2 is not None and m2.message == b"m2"
        await asyncio.to_thread(proxy.wait_for, "c2s", "PUBACK")
        assert _acks(proxy, "PUBACK") == [m1.packet_id] and not _acks(proxy, "PUBCOMP")
        await session.ack()  # an explicit ack
        await asyncio.to_thread(proxy.wait_for, "c2s", "PUBCOMP")
        assert _acks(proxy, "PUBCOMP") == [m2.packet_id]
        async for m3 in session.messages():
            assert m3.message == b"m3"
            break
        await session.close()  # acks m3, the one handed out; m4 was never taken
        await asyncio.to_thread(proxy.wait_for, "c2s", "DISCONNECT")
        assert _acks(proxy, "PUBACK") == [m1.packet_id, m3.packet_id]

    _run(main)


def test_async_session_queue_is_bounded(mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    topic = f"mqs/{_uid('bound')}"

    async def main() -> None:
        options = Options(address=proxy.address, request_timeout_seconds=TIMEOUT,
                          inbound_queue_size=2)
        async with AsyncSession(options) as session:
            await session.subscribe(topic, 1)
            await asyncio.to_thread(_publish, mosquitto, topic, [(f"m{n}", 1) for n in range(6)])
            await asyncio.to_thread(lambda: proxy.wait_for("s2c", "PUBLISH", count=6))
            # two in the queue, the third waiting on the network thread for room
            await asyncio.to_thread(_wait, lambda: len(session.client.incoming_messages) == 3,
                                    "3 messages received")
            await asyncio.sleep(0.3)
            assert len(session.client.incoming_messages) == 3
            got = []
            for _ in range(6):
                m = await session.receive(TIMEOUT)
                assert m is not None
                got.append(m.message)
            assert got == [f"m{n}".encode() for n in range(6)]
            await session.ack()
            await asyncio.to_thread(proxy.wait_for, "c2s", "PUBACK", count=6)

    _run(main)


def test_async_session_close_while_the_network_thread_waits_for_room(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    topic = f"mqs/{_uid('full')}"

    async def main() -> None:
        options = Options(address=proxy.address, request_timeout_seconds=TIMEOUT,
                          inbound_queue_size=1)
        session = await AsyncSession.create(options)
        await session.subscribe(topic, 1)
        await asyncio.to_thread(_publish, mosquitto, topic, [(f"m{n}", 1) for n in range(3)])
        await asyncio.to_thread(_wait, lambda: len(session.client.incoming_messages) == 2,
                                "the network thread waiting")
        await session.close()
        assert not _acks(proxy, "PUBACK")  # nothing was taken

    _run(main)


def test_mesh_session_acks_what_the_application_took(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    topic = f"mqs/{_uid('mesh')}"
    connection = Connection.insecure(proxy.address, options=Options(
        request_timeout_seconds=TIMEOUT, inbound_queue_size=3))
    session = connection.create_session()
    session.open()
    try:
        session.subscribe(topic, 2)
        _publish_in_order(mosquitto, session.client, topic,
                          [("m1", 1), ("m2", 2), ("m3", 1), ("m4", 1)])
        _publish(mosquitto, topic, [("m5", 1)])
        proxy.wait_for("s2c", "PUBLISH", predicate=lambda r: r.payload == b"m5")
        # m1..m3 queued, m4 waiting on the network thread for room: m5 is not read yet
        expected = [b"m1", b"m3", b"m4", b"m2"]
        _wait(lambda: [m.message for m in session.client.incoming_messages] == expected,
              "m1..m4 in the session")
        time.sleep(0.2)  # m5 would show now
        assert [m.message for m in session.client.incoming_messages] == expected
        m1 = session.receive(TIMEOUT)
        assert m1 is not None and m1.message == b"m1"
        assert not _acks(proxy, "PUBACK")
        m2 = next(session.messages(TIMEOUT))  # acks m1
        assert m2.message == b"m2"
        proxy.wait_for("c2s", "PUBACK")
        assert _acks(proxy, "PUBACK") == [m1.packet_id] and not _acks(proxy, "PUBCOMP")
        session.ack()
        proxy.wait_for("c2s", "PUBCOMP")
        m3 = session.receive(TIMEOUT)
        assert m3 is not None and m3.message == b"m3"
    finally:
        session.close(end_session=False)  # acks m3; m4 and m5 were never taken
    proxy.wait_for("c2s", "DISCONNECT")
    assert _acks(proxy, "PUBACK") == [m1.packet_id, m3.packet_id]
    again = connection.connect_to_session(session.session_id)
    try:
        got = [m.message for m in itertools.islice(again.messages(TIMEOUT), 2)]
        assert got == [b"m4", b"m5"]  # the broker kept them
    finally:
        again.close()


def _closing_in_callback(path: Path, call: str) -> tuple[Client, list[bytes]]:
    """A client on the state file ``path`` whose ``on_message_in`` records each message and
    calls ``close()`` / ``disconnect()`` (``call``) in the first one."""
    got: list[bytes] = []
    c = Client(client_id=_uid("cl"), clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")

    def on_in(e: MessageEvent) -> None:
        got.append(e.message)
        if len(got) == 1:
            getattr(c, call)()

    c.on_message_in = on_in
    return c, got


@pytest.mark.parametrize("qos", [1, 2])
def test_close_inside_on_message_in_still_writes_its_removal(tmp_path: Path, qos: int) -> None:
    """``close()`` called in ``on_message_in`` (automatic ack) releases the state file only
    after that message's acknowledgement: its removal is written and a restart does not
    deliver it again (before: the file was released first, the removal never written, and
    the QoS 2 message came again after the restart, with no kill and no ``on_error``)."""
    from mqttsession import _wire
    from mqttsession.testing.fake_broker import FakeBroker

    fake = FakeBroker()
    path = tmp_path / "s"
    errors: list[str] = []
    c, got = _closing_in_callback(path, "close")
    c.on_error = lambda e: errors.append(e.description)
    try:
        c.connect(fake.host, fake.port, 5)
        fake.send_raw(_wire.encode_publish("t/a", b"once", qos=qos, packet_id=5))
        if qos == 2:
            fake.wait_for("PUBREC")
            fake.send_raw(_wire.encode_ack(_wire.PacketType.PUBREL, 5))
        deadline = time.monotonic() + 10
        while (not got or not fake.packets("DISCONNECT")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [b"once"] and errors == []
        assert read_state(str(path)).incoming == {}  # the removal is in the file
        # and its ack went before the DISCONNECT (before: held for the read batch's end, never
        # sent; the broker sent a QoS 1 message again in the next session)
        sent = [p.type for p in fake.packets() if p.type in ("PUBACK", "PUBCOMP", "DISCONNECT")]
        assert sent == ["PUBACK" if qos == 1 else "PUBCOMP", "DISCONNECT"]
        again = Client(client_id=c.client_id, clean_session=False)
        again.config(f"SessionStateFile={path}")
        again.restore_session("")
        assert again.incoming_messages == ()
        again.close()
    finally:
        c.close()
        fake.stop()


@pytest.mark.parametrize("call", ["close", "disconnect"])
@pytest.mark.parametrize("qos", [1, 2])
def test_nothing_is_delivered_after_a_close_inside_on_message_in(tmp_path: Path, qos: int,
                                                                 call: str) -> None:
    """The messages read in the same batch after the one whose ``on_message_in`` closed (or
    disconnected) the client were delivered all the same, after ``close()``, and their
    removals went to a closed file: the next client got them again (13-15 QoS 2 duplicates
    in a 30-message run). They are now left to the broker, which sends them again."""
    from mqttsession import _wire
    from mqttsession.testing.fake_broker import FakeBroker

    fake = FakeBroker()
    path = tmp_path / "s"
    c, got = _closing_in_callback(path, call)
    try:
        c.connect(fake.host, fake.port, 5)
        fake.send_raw(b"".join(_wire.encode_publish(f"t/{n}", b"m%d" % n, qos=qos,
                                                    packet_id=n + 1) for n in range(5)))
        if qos == 2:
            fake.wait_for("PUBREC")
            fake.send_raw(b"".join(_wire.encode_ack(_wire.PacketType.PUBREL, n + 1)
                                   for n in range(5)))
        fake.wait_for("DISCONNECT")
        time.sleep(0.2)
        assert got == [b"m0"]  # none after the close
        if call == "close" and qos == 2:  # m0 removed; the others held for their PUBREL
            assert set(read_state(str(path)).incoming) == {2, 3, 4, 5}
    finally:
        c.close()
        fake.stop()


@pytest.mark.parametrize("call", ["close", "disconnect"])
def test_a_close_inside_on_connected_is_a_clean_close(call: str) -> None:
    """Before: the CONNACK's resume ran after ``on_connected`` had closed the client, so
    ``connected`` read True after ``close()`` and ``on_disconnected`` said "connection lost"
    (128) for a close the application asked for."""
    from mqttsession.testing.fake_broker import FakeBroker

    fake = FakeBroker()
    events: list[Any] = []
    c = Client(client_id=_uid("cl"), clean_session=False)
    c.on_connected = lambda e: getattr(c, call)()
    c.on_disconnected = events.append
    try:
        c.connect(fake.host, fake.port, 5)
        assert not c.connected
        fake.wait_for("DISCONNECT")
        time.sleep(0.2)
        assert [e.status_code for e in events] in ([], [0])
    finally:
        c.close()
        fake.stop()


@pytest.mark.parametrize("manual_ack", [True, False], ids=["ack-owed", "in-callback"])
def test_incoming_messages_keep_a_qos1_messages_properties(manual_ack: bool) -> None:
    """``Client.incoming_messages`` items carry the message's MQTT 5 properties as received
    (``Message.properties``: ``b""`` only when it had none), for a QoS 1 message as for a
    QoS 2 one: the one the ``on_message_in`` event carries (MQTT 5 3.3.2.3)."""
    from mqttsession import _wire
    from mqttsession.testing.fake_broker import FakeBroker

    props = [(0x26, ("k", "v"))]  # a User Property (MQTT 5 3.3.2.3.7)
    fake = FakeBroker()
    c = Client(client_id=_uid("props"), protocol_version=5)
    c.config(f"ManualAck={manual_ack}")
    got: list[MessageEvent] = []
    seen: list[tuple[Any, ...]] = []

    def on_in(ev: MessageEvent) -> None:
        got.append(ev)
        seen.append(tuple(c.incoming_messages))  # (a callback may call back into the client)

    c.on_message_in = on_in
    try:
        c.connect(fake.host, fake.port, 5)
        fake.send_raw(_wire.encode_publish("t/1", b"one", qos=1, packet_id=11, protocol=5,
                                           properties=props))
        _wait(lambda: seen, "on_message_in")
        ((item,),) = seen
        assert got[0].properties != b""
        assert (item.packet_id, item.qos) == (11, 1)
        assert item.properties == got[0].properties
    finally:
        c.close()
        fake.stop()
