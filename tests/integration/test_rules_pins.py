"""Pins from a rules audit (MQTT-SESSION-RULES.md): MQTT 5 session rules on a real mosquitto."""

from __future__ import annotations

from typing import Any

import pytest

import mqttsession

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _client(client_id: str, interval: int) -> mqttsession.Client:
    c = mqttsession.Client(client_id=client_id, clean_session=False, protocol_version=5)
    c.config(f"SessionExpInterval={interval}")
    return c


def _broker_session(broker: Any, client_id: str, interval: int) -> None:
    """A session of ``client_id`` the broker keeps for ``interval`` s (one subscription)."""
    c = _client(client_id, interval)
    log = _procs.EventLog(c)
    try:
        c.connect(broker.host, broker.port, timeout=5)
        c.subscribe(f"mqs/{client_id}", 1)
        log.wait("on_subscribed", timeout=5)
        c.disconnect()
    finally:
        c.close()


def test_mqtt5_disconnect_carries_a_lowered_session_expiry_interval(mosquitto: Any) -> None:
    """MQTT 5 3.14.2.2.2: the client's DISCONNECT may carry a new Session Expiry Interval.
    CONNECT said 300, ``SessionExpInterval=0`` while connected: the DISCONNECT carries 0, so
    the broker ends the session [MQTT-4.1.0-2] and the next Clean Start 0 gets
    SessionPresent=0 (without it the broker would keep the session 300 s)."""
    cid = _procs.unique("sei-down")
    c = _client(cid, 300)
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        c.subscribe(f"mqs/{cid}", 1)
        log.wait("on_subscribed", timeout=5)
        c.config("SessionExpInterval=0")
        c.disconnect()
    finally:
        c.close()
    again = _client(cid, 300)
    seen: list[bool] = []
    again.on_connected = lambda ev: seen.append(ev.session_present)
    try:
        again.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert seen == [False]
        again.config("SessionExpInterval=0")  # (leave no session on the shared broker)
        again.disconnect()
    finally:
        again.close()


def test_mqtt5_a_kept_interval_resumes_the_session(mosquitto: Any) -> None:
    """The control of the test above [MQTT-3.1.2-23]: the same steps without lowering the
    interval get SessionPresent=1 (so SessionPresent=0 there is the DISCONNECT's doing)."""
    cid = _procs.unique("sei-kept")
    _broker_session(mosquitto, cid, 300)
    again = _client(cid, 300)
    seen: list[bool] = []
    again.on_connected = lambda ev: seen.append(ev.session_present)
    try:
        again.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert seen == [True]
        again.config("SessionExpInterval=0")
        again.disconnect()
    finally:
        again.close()


def test_mqtt5_a_client_without_session_state_takes_the_brokers_session(mosquitto: Any) -> None:
    """MQTT 5 [MQTT-3.2.2-4] says a client with NO session state that gets SessionPresent=1
    closes the connection; this library keeps it and takes the broker's session (README,
    "Where this library decides"): IPWorks' procedure (1) restores in ``on_connected``, and a
    new process of a persistent subscriber gets what the broker queued meanwhile."""
    cid = _procs.unique("sp1-nostate")
    _broker_session(mosquitto, cid, 30)
    topic = f"mqs/{cid}"
    pub = mqttsession.Client(client_id=_procs.unique("sp1-pub"))
    try:
        pub.connect(mosquitto.host, mosquitto.port, timeout=5)
        pub.publish_message(topic, 1, "queued")
        assert pub.flush(_procs.TIMEOUT)
    finally:
        pub.close()
    fresh = _client(cid, 30)
    seen: list[bool] = []
    got: list[bytes] = []
    fresh.on_connected = lambda ev: seen.append(ev.session_present)
    fresh.on_message_in = lambda ev: got.append(ev.message)
    try:
        fresh.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert seen == [True]
        _procs.wait_until(lambda: got, what="the message the broker queued")
        assert got == [b"queued"] and fresh.connected
        fresh.config("SessionExpInterval=0")  # (leave no session on the shared broker)
        fresh.disconnect()
    finally:
        fresh.close()
