"""Issue 12, point 3: per-message ``retain`` and MQTT 5 ``properties`` on publish, kept packed
and durable with a held message, and on incoming messages (``MessageEvent.properties``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttsession
from mqttsession import unpack_properties

try:  # tests/integration may or may not be a package
    from ._procs import EventLog, unique
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import EventLog, unique  # type: ignore[no-redef]


def _props(n: int) -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.ContentType = "text/plain"
    p.UserProperty = [("n", str(n))]
    return p


def test_properties_survive_a_restart_and_reach_the_subscriber(mosquitto: Any,
                                                               tmp_path: Path) -> None:
    topic = f"mqs/{unique('props')}"
    sub = mqttsession.Client(client_id=unique("sub"), protocol_version=5)
    log = EventLog(sub)
    path = tmp_path / "gw.state"
    gw_id = unique("gw")
    try:
        sub.connect(mosquitto.host, mosquitto.port)
        sub.subscribe(topic, 2)
        log.wait("on_subscribed")
        gw = mqttsession.Client(client_id=gw_id, clean_session=False, protocol_version=5)
        gw.config(f"SessionStateFile={path}")
        gw.restore_session("")
        for n in range(3):  # offline: held in the state file with their properties
            gw.publish_message(topic, 1 + n % 2, f"m{n}", properties=_props(n))
        assert unpack_properties(gw.outgoing_messages[0].properties).ContentType == "text/plain"  # type: ignore[union-attr]
        del gw  # killed before it ever connected
        gw2 = mqttsession.Client(client_id=gw_id, protocol_version=5)
        gw2.config(f"SessionStateFile={path}")
        gw2.restore_session("")
        gw2.connect(mosquitto.host, mosquitto.port)
        assert gw2.flush(10)
        got = log.wait("on_message_in", 3)
        gw2.close()
    finally:
        sub.close()
    by_text = {e.message: unpack_properties(e.properties) for e in got}
    for n in range(3):
        p = by_text[f"m{n}".encode()]
        assert p is not None and p.ContentType == "text/plain"
        assert ("n", str(n)) in p.UserProperty


def test_retain_per_message(mosquitto: Any) -> None:
    topic = f"mqs/{unique('retain')}"
    pub = mqttsession.Client(client_id=unique("pub"))
    try:
        pub.connect(mosquitto.host, mosquitto.port)
        pub.publish_message(topic + "/kept", 1, "kept", retain=True)
        pub.publish_message(topic + "/not", 1, "not kept")  # the Retain setting: False
        assert pub.flush(10)
    finally:
        pub.close()
    late = mqttsession.Client(client_id=unique("late"))
    log = EventLog(late)
    try:
        late.connect(mosquitto.host, mosquitto.port)
        late.subscribe(topic + "/#", 1)
        [e] = log.wait("on_message_in")
        assert (e.topic, e.message, e.retained) == (topic + "/kept", b"kept", True)
        late.publish_message(topic + "/kept", 1, "", retain=True)  # clear it
        assert late.flush(10)
    finally:
        late.close()


@pytest.mark.parametrize("limit", ["max_qos 1", "retain_available false"])
def test_a_message_the_broker_does_not_take_is_taken_out_not_resent_forever(
        mosquitto_factory: Any, limit: str) -> None:
    """MQTT 5 CONNACK Maximum QoS / Retain Available: a held message over them (queued before
    the client knew) was sent anyway; mosquitto closed the connection each time and every
    reconnect sent it first again (7 connections in 7 s, nothing delivered, no ``on_error``;
    a defect hunt). It is taken out (``unsupported``, ``on_error``) and the rest goes; a new
    publish over them is ``UsageError`` [MQTT-3.2.2-11, 3.2.2-14]."""
    broker = mosquitto_factory("mosquitto.conf", extra_config=limit)
    topic = f"mqs/{unique('lim')}"
    sub = mqttsession.Client(client_id=unique("sub"), protocol_version=5)
    got = EventLog(sub)
    pub = mqttsession.Client(client_id=unique("pub"), clean_session=False, protocol_version=5)
    log = EventLog(pub)
    dropped_events: list[Any] = []
    pub.on_message_dropped = dropped_events.append
    try:
        sub.connect(broker.host, broker.port)
        sub.subscribe(topic, 1)
        got.wait("on_subscribed")
        over = {"qos": 2, "retain": False} if "qos" in limit else {"qos": 1, "retain": True}
        pub.publish_data(topic, over["qos"], b"over", retain=over["retain"])  # offline
        for i in range(3):
            pub.publish_data(topic, 1, f"m{i}".encode())
        pub.connect(broker.host, broker.port)
        assert pub.flush(10)
        assert sorted(e.message for e in got.wait("on_message_in", 3)) == [b"m0", b"m1", b"m2"]
        (dropped,) = dropped_events
        assert dropped.reason == "unsupported" and dropped.seq == 1
        assert [e for e in log.of("on_error") if "taken out" in e.description]
        assert len(log.of("on_connected")) == 1  # one connection: never closed by the broker
        with pytest.raises(mqttsession.UsageError, match="cannot be sent"):
            pub.publish_data(topic, over["qos"], b"again", retain=over["retain"])
    finally:
        pub.close()
        sub.close()
