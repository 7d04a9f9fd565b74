"""A burst of QoS 1/2 messages with the DEFAULT settings, on a default mosquitto 2.0.

mosquitto keeps at most ``max_inflight_messages`` (default 20) unfinished QoS>0 flows per client
for messages coming IN (``handle__publish``: ``db__ready_for_flight(context, mosq_md_in, qos)``)
and answers the rest with reason code 0x97 "quota exceeded" and DISCARDS them. In MQTT 5 the limit
is announced as Receive Maximum in CONNACK and the client must honour it [MQTT-3.3.4-7] (it does).
In MQTT 3.1.1 neither is visible: the PUBACK has no reason code, so the message looks delivered.

paho-mqtt itself never runs into this: its ``max_inflight_messages`` defaults to 20. mqttsession
takes the session away from paho and has its own window, ``MaxInflight``, which defaults to 65535
for MQTT 3.1.1. 200 alternating QoS 1/2 messages published in a loop then leave far more than 20
QoS 2 flows open at the broker (each waits a round trip for its PUBREL), and the QoS 1 messages
behind them are acknowledged and dropped: flush() returns True, the subscriber never sees them.
That breaks "every QoS 1 message accepted by publish_* reaches a subscriber" on the most common
broker with default settings. With ``config("MaxInflight=20")`` nothing is lost (checked below).
"""

from __future__ import annotations

from typing import Any

import pytest

import mqttsession

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TOTAL = 200


def _burst(broker: Any, protocol: int, window: int | None) -> None:
    tag = _procs.unique("burst")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(broker.host, broker.port, topic, protocol)
    c = mqttsession.Client(client_id=_procs.unique("gw"), protocol_version=protocol)
    if window is not None:
        c.config(f"MaxInflight={window}")
    try:
        c.connect(broker.host, broker.port)
        for n in range(1, TOTAL + 1):
            c.publish_message(topic, _procs.qos_of(n), _procs.payload(tag, n))
        assert c.flush(60)
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END", timeout=30)
        # not a true barrier: mosquitto may send a later message ahead of ones queued behind
        # a full in-flight window to the subscriber, so wait for every number as well
        counter.wait_numbers(tag, range(1, TOTAL + 1), timeout=30)
        _procs.assert_delivered(counter.counts(tag), range(1, TOTAL + 1))
    finally:
        c.close()
        counter.close()


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_burst_with_default_settings_loses_nothing(mosquitto: Any, protocol: int) -> None:
    """Fails for MQTT 3.1.1 while the default MaxInflight is unbounded (see the module doc)."""
    _burst(mosquitto, protocol, None)


def test_burst_with_window_of_20_loses_nothing_mqtt311(mosquitto: Any) -> None:
    _burst(mosquitto, 4, 20)
