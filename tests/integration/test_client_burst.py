"""A burst of QoS 1/2 messages with the DEFAULT settings, on a default mosquitto 2.0.

mosquitto keeps at most ``max_inflight_messages`` (default 20) unfinished QoS>0 flows per client
for messages coming IN (``handle__publish``: ``db__ready_for_flight(context, mosq_md_in, qos)``)
and answers the rest with reason code 0x97 "quota exceeded" and DISCARDS them. In MQTT 5 the limit
is announced as Receive Maximum in CONNACK and the client must honour it [MQTT-3.3.4-7] (it does).
In MQTT 3.1.1 neither is visible: the PUBACK has no reason code, so the message looks delivered.

mqttsession takes the session away from paho and keeps its own window, ``MaxInflight``, which
defaults to 20 (mosquitto's default, and paho's own ``max_inflight_messages``); on MQTT 5 the
window is the smaller of it and the broker's Receive Maximum. 200 alternating QoS 1/2 messages
published in a loop therefore never leave more than 20 flows open at the broker, and every one
of them reaches an independent subscriber: QoS 1 at least once, QoS 2 exactly once. Were the
default window larger (it once was 65535 for MQTT 3.1.1), the QoS 2 flows waiting a round trip
for their PUBREL would fill mosquitto's quota and the QoS 1 messages behind them would be
acknowledged and dropped on 3.1.1: flush() True, the subscriber never seeing them.
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
    """The default window (MaxInflight 20; on MQTT 5 also the broker's Receive Maximum) keeps
    within mosquitto's quota: nothing lost (it failed on 3.1.1 while the default was 65535)."""
    _burst(mosquitto, protocol, None)


def test_burst_with_window_of_20_loses_nothing_mqtt311(mosquitto: Any) -> None:
    """``config("MaxInflight=20")`` set explicitly (the default's value): nothing lost either."""
    _burst(mosquitto, 4, 20)
