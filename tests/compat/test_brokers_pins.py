"""Pins of broker behaviours the library works around, checked on the real brokers.

Each test holds one claim of BROKERS.md, README.rst ("Brokers") or a code comment that
justifies a workaround, and fails when the broker stops doing it (then the workaround and its
comment are to be revisited). Raw packets (``mqttsession.compat.raw``): paho would acknowledge
and retry by itself. Waits are bounded; nothing here measures speed.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mqttsession import _wire as wire
from mqttsession.compat import SCENARIOS, Scenario, Status, Target, run_scenario
from mqttsession.compat.raw import (
    ConnectionClosed,
    Packet,
    PacketType,
    RawClient,
    Timeout,
    encode_ack,
    encode_connect,
    encode_publish,
)
from mqttsession.testing import EmbeddedAmqtt, MosquittoBroker
from mqttsession.testing.node_brokers import AedesCluster

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # wait for a packet that should come
QUIET = 0.5  # listen for packets that should not come
CONTENT_TYPE = 0x03  # MQTT 5 property identifier (2.2.2.2)


def _unique(prefix: str) -> str:
    return f"pin-{prefix}-{uuid.uuid4().hex[:10]}"


def _topic(name: str) -> str:
    return f"mqttsession-compat/{uuid.uuid4().hex[:10]}/{name}"


def _publishes(client: RawClient, duration: float = QUIET) -> list[Packet]:
    return [p for p in client.collect(duration) if p.type is PacketType.PUBLISH]


def _reuse_held_qos2_id(host: str, port: int) -> tuple[bool, list[bytes]]:
    """A publisher's session holds a QoS 2 flow (PUBREC, no PUBREL); after a reconnect a NEW
    message is published under the same packet id and its flow completed. Returns the
    SessionPresent of that reconnect and the payloads a subscriber got."""
    topic = _topic("reuse")
    with RawClient(host, port, timeout=TIMEOUT) as sub, RawClient(host, port, timeout=TIMEOUT) as pub:
        sub.connect(_unique("s"), clean=True)
        sub.subscribe(topic, 2)
        pid = _unique("p")
        pub.connect(pid, clean=False)
        pub.subscribe(_topic("keep"), 1)  # aedes reports a session without subscriptions as lost
        pub.send(encode_publish(topic, b"old", qos=2, packet_id=5))
        pub.expect(PacketType.PUBREC, 5)
        pub.disconnect()
        pub.connect(pid, clean=False)
        present = pub.session_present
        pub.send(encode_publish(topic, b"new", qos=2, packet_id=5))  # DUP=0: a new message
        pub.expect(PacketType.PUBREC, 5)
        pub.send(encode_ack(PacketType.PUBREL, 5))
        pub.expect(PacketType.PUBCOMP, 5)
        got = []
        for m in _publishes(sub, 1.0):
            got.append(m.payload)
            sub.ack(m)
        return present, got


# ------------------------------------------------------------------------------------------------
# mqttsession/forgotten.py: a resumed session's held QoS 2 id reused by a new message


def test_aedes_takes_a_reused_qos2_packet_id_for_the_held_flow(aedes_cluster: AedesCluster) -> None:
    """forgotten.py: aedes takes a new QoS 2 PUBLISH under the id of a flow it still holds for
    that flow's duplicate and never delivers it [MQTT-4.3.3-10]: why a forgotten id's next
    session starts clean. (aedes hands QoS 2 on at PUBLISH: the old one was delivered.)"""
    node = aedes_cluster.nodes[0]
    present, got = _reuse_held_qos2_id(node.host, node.port)
    assert present is True
    assert got == [b"old"]


def test_mosquitto_drops_the_held_flow_for_a_reused_qos2_packet_id(mosquitto: MosquittoBroker) -> None:
    """forgotten.py: mosquitto drops the old flow (never delivered: it hands QoS 2 on at PUBREL)
    and delivers the new message."""
    present, got = _reuse_held_qos2_id(mosquitto.host, mosquitto.port)
    assert present is True
    assert got == [b"new"]


# ------------------------------------------------------------------------------------------------
# aedes, README "Brokers": what mqttsession relies on or advises for it (compat scenarios)


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def test_aedes_session_flag_resend_dup_and_delivery_point(aedes_cluster: AedesCluster) -> None:
    """README (aedes 1.2): SessionPresent=0 for a session without subscriptions (hold one in a
    publisher's session), unacknowledged messages resent with DUP=0 (a resent QoS 2 PUBLISH is
    recognised by its packet id, engine.py), QoS 2 handed on at PUBLISH
    (``ReleasedOnSessionLost=drop``), and a publisher's QoS 2 resend still deduplicated."""
    node = aedes_cluster.nodes[0]
    target = Target(node.host, node.port, 4, timeout=TIMEOUT)
    flag = run_scenario(_scenario("session-present-unsubscribed"), target)
    assert flag.status is Status.FAIL and flag.reason.startswith(
        "SessionPresent=0 on reconnect for a session without subscriptions"), flag.reason
    assert "a session with a subscription got SessionPresent=1" in flag.reason
    for name in ("redelivery-qos1", "redelivery-qos2"):
        resend = run_scenario(_scenario(name), target)
        assert resend.status is Status.FAIL and resend.reason == "resent with DUP=0", (name, resend.reason)
    point = run_scenario(_scenario("qos2-delivery-point"), target)
    assert point.status is Status.INFO and point.value == "on PUBLISH", point.reason
    dedupe = run_scenario(_scenario("qos2-dedupe-reconnect"), target)
    assert dedupe.status is Status.PASS, dedupe.reason


# ------------------------------------------------------------------------------------------------
# mosquitto 2.0.11


def test_mosquitto_exceeds_the_receive_maximum_once_the_client_acks(mosquitto: MosquittoBroker) -> None:
    """engine.py: mosquitto 2.0.11 opens more QoS 1/2 flows than the CONNECT's Receive Maximum
    [MQTT-3.3.4-9] when the application acks slowly (so the engine takes them and logs once).
    Receive Maximum 2, ten QoS 1 messages queued: two come; one PUBACK lets more than one in."""
    topic = _topic("rm")
    with RawClient(mosquitto.host, mosquitto.port, protocol=5, timeout=TIMEOUT) as sub, \
            RawClient(mosquitto.host, mosquitto.port, protocol=5, timeout=TIMEOUT) as pub:
        sub.open()
        sub.send(encode_connect(_unique("s"), protocol=5, clean=True,
                                properties=[(wire.RECEIVE_MAXIMUM, 2)]))
        sub.connack = sub.expect(PacketType.CONNACK)
        sub.subscribe(topic, 1)
        pub.connect(_unique("p"), clean=True)
        for n in range(10):
            pub.publish(topic, b"%d" % n, 1)
        first = _publishes(sub)
        assert len(first) == 2  # honoured while nothing is acknowledged
        open_flows = {m.packet_id for m in first}
        most = len(open_flows)
        for _ in range(8):  # one PUBACK at a time, then listen
            if not open_flows:
                break
            sub.send(encode_ack(PacketType.PUBACK, min(open_flows), protocol=5))
            open_flows.discard(min(open_flows))
            open_flows |= {m.packet_id for m in _publishes(sub, 0.2)}
            most = max(most, len(open_flows))
        assert most > 2, f"at most {most} unacknowledged flows open: Receive Maximum honoured"


@pytest.mark.parametrize("held", [19, 20])
def test_mosquitto_311_acks_and_discards_qos1_beyond_20_open_flows(mosquitto: MosquittoBroker,
                                                                    held: int) -> None:
    """actions.py ``max_inflight = 20``: with its default ``max_inflight_messages 20``, mosquitto
    on MQTT 3.1.1 PUBACKs a QoS 1 message that arrives while 20 incoming flows are open, and
    discards it (3.1.1 PUBACK has no reason code); with 19 open it is delivered."""
    topic = _topic("inflight")
    with RawClient(mosquitto.host, mosquitto.port, timeout=TIMEOUT) as sub, \
            RawClient(mosquitto.host, mosquitto.port, timeout=TIMEOUT) as pub:
        sub.connect(_unique("s"), clean=True)
        sub.subscribe(topic, 1)
        pub.connect(_unique("p"), clean=True)
        for pid in range(1, held + 1):  # QoS 2 flows left open: PUBREC, no PUBREL
            pub.send(encode_publish(topic, b"held", qos=2, packet_id=pid))
            pub.expect(PacketType.PUBREC, pid)
        pub.send(encode_publish(topic, b"qos1", qos=1, packet_id=100))
        pub.expect(PacketType.PUBACK, 100)
        got = [m.payload for m in _publishes(sub)]
        assert got == ([] if held == 20 else [b"qos1"])


def test_mosquitto_drops_the_connection_for_a_control_character_in_a_property(
        mosquitto: MosquittoBroker) -> None:
    """properties.py / validation.py: a UTF-8 string holding a control character (here a
    ContentType) costs the connection at mosquitto, so the session refuses it up front; one
    without it is acknowledged."""
    with RawClient(mosquitto.host, mosquitto.port, protocol=5, timeout=TIMEOUT) as pub:
        pub.connect(_unique("p"), clean=True)
        pub.send(encode_publish(_topic("ct"), b"x", qos=1, packet_id=1, protocol=5,
                                properties=[(CONTENT_TYPE, "text/plain")]))
        pub.expect(PacketType.PUBACK, 1)
        pub.send(encode_publish(_topic("ct"), b"x", qos=1, packet_id=2, protocol=5,
                                properties=[(CONTENT_TYPE, "text\x01plain")]))
        with pytest.raises(ConnectionClosed):
            pub.expect(PacketType.PUBACK, 2)


# ------------------------------------------------------------------------------------------------
# amqtt 0.12.1


def test_amqtt_never_answers_a_pubrel_it_has_no_flow_for(embedded_amqtt: EmbeddedAmqtt) -> None:
    """cli.py (demo) and README: amqtt does not answer a PUBREL for a QoS 2 flow it has no record
    of with PUBCOMP, so such a message stays in the client's session; a PUBREL of a flow it
    holds is answered."""
    with RawClient(embedded_amqtt.host, embedded_amqtt.port, timeout=TIMEOUT) as pub:
        pub.connect(_unique("p"), clean=True)
        pub.send(encode_publish(_topic("rel"), b"x", qos=2, packet_id=3))
        pub.expect(PacketType.PUBREC, 3)
        pub.send(encode_ack(PacketType.PUBREL, 3))
        pub.expect(PacketType.PUBCOMP, 3)  # a flow it holds: answered
        pub.send(encode_ack(PacketType.PUBREL, 7))  # no flow 7
        with pytest.raises(Timeout):
            pub.expect(PacketType.PUBCOMP, 7, timeout=1.0)


def test_embedded_amqtt_ends_a_task_started_while_its_loop_shuts_down(
        caplog: pytest.LogCaptureFixture) -> None:
    """A task started on the broker's loop after the first cancel sweep (here by an async
    generator's ``finally``, which ``shutdown_asyncgens`` runs; in a ``compat`` run once by a
    connection taken meanwhile) is cancelled too: before, asyncio logged "Task was destroyed
    but it is pending!" on the ``compat`` command's stderr."""
    import asyncio
    import gc

    kept: list[object] = []

    async def plant() -> None:
        async def late() -> Any:
            try:
                yield 1
            finally:
                kept.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))
        gen = late()
        await gen.__anext__()
        kept.append(gen)

    broker = EmbeddedAmqtt().start()
    broker.call(plant(), 10)
    broker.stop()
    assert len(kept) == 2, "the generator's finally did not run at the loop's shutdown"
    task = kept[1]
    assert isinstance(task, asyncio.Task) and task.cancelled()
    kept.clear()
    gc.collect()
    assert "Task was destroyed" not in caplog.text
