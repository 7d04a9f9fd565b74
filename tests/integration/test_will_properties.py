"""``Client(will_properties=...)``: the MQTT 5 properties of the will message reach the broker
in CONNECT (Will Delay Interval, Content Type, User Property...); anything else is refused at
``connect()`` (``UsageError``), as are properties under MQTT 3.1.1."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import Client, UsageError

try:
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import wait_until  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def _will_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class _Observer:
    """A plain paho MQTT 5 subscriber of ``topic``: each will with its arrival time."""

    def __init__(self, broker: Any, topic: str) -> None:
        self.got: list[tuple[float, mqtt.MQTTMessage]] = []
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.on_message = lambda _c, _u, m: self.got.append((time.monotonic(), m))
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(topic, 1)
        assert ready.wait(10), "observer: no SUBACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_the_wills_properties_reach_its_subscribers(mosquitto: Any) -> None:
    topic = f"willp/{uuid.uuid4().hex[:8]}"
    obs = _Observer(mosquitto, topic)
    c = Client(client_id=f"wp-{uuid.uuid4().hex[:8]}", protocol_version=5, will_topic=topic,
               will_message=b"gone", will_properties=_will_props(
                   ContentType="text/plain", UserProperty=[("site", "north")]))
    try:
        c.config("DisconnectReasonCode=4")  # (the broker publishes the will at once)
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        c.disconnect()
        wait_until(lambda: bool(obs.got), 10, "the will")
        msg = obs.got[0][1]
        assert msg.payload == b"gone"
        assert msg.properties.ContentType == "text/plain"
        assert msg.properties.UserProperty == [("site", "north")]
    finally:
        c.close()
        obs.close()


def test_a_will_delay_interval_holds_the_will_back(mosquitto: Any) -> None:
    """Will Delay Interval 2 s on a session that outlives its connection (SessionExpInterval
    60): the will comes about 2 s after the connection ended, not at once [MQTT-3.1.3-9]."""
    topic = f"willd/{uuid.uuid4().hex[:8]}"
    obs = _Observer(mosquitto, topic)
    c = Client(client_id=f"wd-{uuid.uuid4().hex[:8]}", clean_session=False, protocol_version=5,
               will_topic=topic, will_message=b"late",
               will_properties=_will_props(WillDelayInterval=2))
    try:
        c.config("SessionExpInterval=60")
        c.config("DisconnectReasonCode=4")
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        ended = time.monotonic()
        c.disconnect()
        time.sleep(1.0)
        assert obs.got == [], "the will came before its delay"
        wait_until(lambda: bool(obs.got), 10, "the delayed will")
        assert obs.got[0][1].payload == b"late"
        assert obs.got[0][0] - ended >= 1.5
    finally:
        c.close()
        obs.close()


@pytest.mark.parametrize("bad", [_will_props(ContentType="x"), "ContentType=x",
                                 Properties(PacketTypes.PUBLISH)])  # type: ignore[no-untyped-call]
def test_anything_but_will_properties_is_refused_at_connect(fake: Any, bad: Any) -> None:
    version = 4 if isinstance(bad, Properties) and bad.packetType == PacketTypes.WILLMESSAGE else 5
    c = Client(client_id="wp-bad", protocol_version=version, will_topic="w/t",
               will_message=b"x", will_properties=bad)
    try:
        with pytest.raises(UsageError, match="will_properties"):
            c.connect(fake.host, fake.port, timeout=5)
        assert fake.packets("CONNECT") == [], "a CONNECT left with the will's properties lost"
    finally:
        c.close()
