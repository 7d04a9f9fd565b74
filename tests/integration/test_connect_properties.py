"""``Client(connect_properties=...)``: MQTT 5 CONNECT properties besides the session's own
(User Property, Maximum Packet Size, Request Problem Information...), sent with the Session
Expiry Interval and Receive Maximum the session sets; the ones the session sets itself or
cannot honour, anything but CONNECT properties, and properties under MQTT 3.1.1 are refused at
``connect()`` (``UsageError``) before a CONNECT leaves."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import Client, UsageError
from mqttsession.events import MessageEvent
from mqttsession.properties import unpack_properties
from mqttsession.testing.fake_broker import FakeBroker

try:
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import wait_until  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _connect_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


def test_the_applications_properties_go_with_the_sessions_own(fake: FakeBroker) -> None:
    c = Client(client_id="cp", clean_session=False, protocol_version=5,
               connect_properties=_connect_props(UserProperty=[("site", "north")],
                                                 RequestProblemInformation=0))
    try:
        c.config("SessionExpInterval=120")
        c.config("ReceiveMaximum=7")
        c.config("ReconnectDelayMin=0.1")
        c.connect(fake.host, fake.port, timeout=10)
        fake.wait_for("CONNECT")
        fake.close_client()  # (the reconnect's CONNECT carries them too)
        records = fake.wait_for("CONNECT", 2)
    finally:
        c.close()
    for rec in records:
        assert rec.properties is not None
        got = unpack_properties(rec.properties, PacketTypes.CONNECT)
        assert got is not None and got.json() == {
            "SessionExpiryInterval": 120, "ReceiveMaximum": 7, "RequestProblemInformation": 0,
            "UserProperty": [("site", "north")]}


@pytest.mark.mosquitto
def test_a_maximum_packet_size_keeps_bigger_messages_away(mosquitto: Any) -> None:
    """Maximum Packet Size 200: mosquitto does not send this client a message that would not
    fit [MQTT-3.1.2-25] (it drops it); the small one after it arrives."""
    topic = f"cpsize/{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    subscribed = threading.Event()
    c = Client(client_id=f"cps-{uuid.uuid4().hex[:8]}", protocol_version=5,
               connect_properties=_connect_props(MaximumPacketSize=200))
    pub = Client(client_id=f"cpp-{uuid.uuid4().hex[:8]}", protocol_version=5)
    c.on_message_in = lambda e: got.append(e.message) if isinstance(e, MessageEvent) else None
    c.on_subscribed = lambda _e: subscribed.set()
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        c.subscribe(topic, 1)
        assert subscribed.wait(10)
        pub.connect(mosquitto.host, mosquitto.port, timeout=10)
        pub.publish_data(topic, 1, b"B" * 1000)
        pub.publish_data(topic, 1, b"small")
        assert pub.flush(10)
        wait_until(lambda: got, 10, "the small message")
        time.sleep(0.3)
        assert got == [b"small"]
    finally:
        c.close()
        pub.close()


@pytest.mark.parametrize(("props", "version", "match"), [
    (_connect_props(SessionExpiryInterval=5), 5, "SessionExpInterval"),
    (_connect_props(ReceiveMaximum=5), 5, "ReceiveMaximum"),
    (_connect_props(TopicAliasMaximum=5), 5, "ClientTopicAliasMax"),
    (_connect_props(AuthenticationMethod="SCRAM"), 5, "AUTH"),
    (Properties(PacketTypes.PUBLISH), 5, "Properties\\(PacketTypes.CONNECT\\)"),  # type: ignore[no-untyped-call]
    ("UserProperty=x", 5, "Properties\\(PacketTypes.CONNECT\\)"),
    (_connect_props(UserProperty=[("a", "b")]), 4, "MQTT 5"),
], ids=["expiry", "receive-maximum", "topic-alias", "auth", "publish-props", "text", "mqtt311"])
def test_what_the_session_cannot_take_is_refused_before_a_connect_leaves(
        fake: FakeBroker, props: Any, version: int, match: str) -> None:
    c = Client(client_id="cp-bad", protocol_version=version, connect_properties=props)
    try:
        with pytest.raises(UsageError, match=f"connect_properties.*{match}|{match}"):
            c.connect(fake.host, fake.port, timeout=5)
        assert fake.packets("CONNECT") == []
    finally:
        c.close()
