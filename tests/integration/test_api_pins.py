"""Pins from a behaviour audit of ``design/API.md`` (the public contract) over loopback: the
claims about ``connect()``'s timeout and ``on_message_dropped``'s ``too-large`` reason that no
other test proved. Each docstring quotes the API.md claim it pins."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from mqttsession import Client, ConnectError, MQTTSessionError

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

unique = _procs.unique


def test_no_connack_within_the_timeout_raises_connect_error() -> None:
    """API.md: ``connect(..., timeout)`` "blocks until CONNACK; raises ``ConnectError`` (a
    ``MQTTSessionError``) on ... timeout": a server that takes the TCP connection and never
    answers; afterwards the client is not connected and holds what it held."""
    silent = socket.create_server(("127.0.0.1", 0))
    c = Client(client_id=unique("api-silent"), clean_session=False)
    c.on_error = lambda _e: None
    try:
        held = c.publish_message("api/silent", 1, "waits")
        with pytest.raises(ConnectError) as err:
            c.connect("127.0.0.1", silent.getsockname()[1], timeout=1.0)
        assert isinstance(err.value, MQTTSessionError)
        assert "CONNACK" in str(err.value)
        assert not c.connected
        assert [m.packet_id for m in c.outgoing_messages] == [held]
    finally:
        c.close()
        silent.close()


def test_a_held_message_over_the_brokers_maximum_packet_size_is_dropped_as_too_large(
        mosquitto_factory: Any) -> None:
    """API.md: ``on_message_dropped`` -- "event: topic, qos, seq, reason (... ``too-large``
    ...)": MQTT 5, a QoS 1 message published while disconnected that mosquitto's announced
    Maximum Packet Size cannot take is taken out with reason ``too-large``; the one behind it
    still goes."""
    broker = mosquitto_factory(extra_config="max_packet_size 500")
    c = Client(client_id=unique("api-big"), clean_session=True, protocol_version=5)
    log = _procs.EventLog(c)
    c.on_error = lambda _e: None
    dropped_events: list[Any] = []
    c.on_message_dropped = dropped_events.append
    try:
        c.publish_data("api/big", 1, b"b" * 1000)  # no limit known yet: accepted and held
        small = c.publish_data("api/small", 2, b"s" * 10)
        c.connect(broker.host, broker.port, timeout=5)
        _procs.wait_until(lambda: dropped_events, 5, "on_message_dropped")
        (dropped,) = dropped_events
        assert (dropped.topic, dropped.qos, dropped.reason) == ("api/big", 1, "too-large")
        assert dropped.seq > 0
        assert c.flush(5) is True
        assert c.outgoing_messages == ()
        assert [e.packet_id for e in log.wait("on_message_out", timeout=5)] == [small]
        assert len(dropped_events) == 1
    finally:
        c.close()
