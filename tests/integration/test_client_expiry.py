"""MQTT 5 session expiry on mosquitto: the client's own clock (``session_expired``) agrees with the
broker's SessionPresent.

``SessionExpInterval=2``, a clean disconnect, then:

* 4 s later: ``session_expired(saved)`` is True, and the broker has discarded the session
  [MQTT-4.1.0-2]: a client reconnecting with Clean Start 0 (IPWorks procedure (a)) reads
  SessionPresent False in on_connected. Restoring the saved text anyway (procedure (b)) starts
  clean, and the saved subscription is sent again, so it delivers.
* 1 s later: ``session_expired(saved)`` is False, and the broker still holds the session
  [MQTT-3.1.2-23]: restore + connect sees SessionPresent True and gets the message the broker
  queued for it while it was away [MQTT-3.1.2-5].
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import mqttsession
from mqttsession import load_state, session_expired

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

INTERVAL = 2


def _client(client_id: str) -> tuple[mqttsession.Client, Any, list[tuple[bool, str]]]:
    c = mqttsession.Client(client_id=client_id, clean_session=False, protocol_version=5)
    c.config(f"SessionExpInterval={INTERVAL}")
    log = _procs.EventLog(c)
    seen: list[tuple[bool, str]] = []

    def on_connected(ev: Any) -> None:
        seen.append((ev.session_present, c.config("SessionPresent")))  # read inside on_connected

    c.on_connected = on_connected
    return c, log, seen


def _session_then_disconnect(broker: Any, client_id: str, topic: str) -> tuple[str, float]:
    c, log, _ = _client(client_id)
    try:
        c.connect(broker.host, broker.port)
        c.subscribe(topic, 1)
        log.wait("on_subscribed")
        c.disconnect()
        saved = c.save_session()
    finally:
        c.close()
    view = load_state(saved)
    assert view.protocol_version == 5 and view.session_expiry_interval == INTERVAL
    assert view.disconnected_at is not None
    return saved, view.disconnected_at


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.1))


def test_mqtt5_session_expired_after_interval(mosquitto: Any) -> None:
    client_id = _procs.unique("exp")
    topic = f"mqs/{client_id}"
    saved, t0 = _session_then_disconnect(mosquitto, client_id, topic)
    # the client's clock, deterministically
    assert session_expired(saved, now=t0 + INTERVAL - 1) is False
    assert session_expired(saved, now=t0 + INTERVAL + 1) is True
    assert session_expired(saved, now=t0 - 60) is None  # the clock went backwards: unknowable

    _sleep_until(t0 + 4)
    assert session_expired(saved) is True

    # procedure (a): the broker decides, and it has forgotten the session
    c, _log, seen = _client(client_id)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        assert seen == [(False, "False")]
        assert c.config("SessionPresent") == "False"
        c.disconnect()
    finally:
        c.close()

    # procedure (b) with the expired text: a clean start, the saved subscription sent again
    c, log, seen = _client(client_id)
    try:
        c.restore_session(saved)
        c.connect(mosquitto.host, mosquitto.port)
        assert seen == [(False, "False")]
        log.wait("on_subscribed")
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "after-expiry")], 5)
        _procs.wait_until(lambda: [e for e in log.of("on_message_in") if e.message == b"after-expiry"],
                          what="the re-sent subscription delivers")
    finally:
        c.close()


def test_mqtt5_session_kept_within_interval(mosquitto: Any) -> None:
    client_id = _procs.unique("exp")
    topic = f"mqs/{client_id}"
    saved, t0 = _session_then_disconnect(mosquitto, client_id, topic)
    # queued by the broker for the absent client [MQTT-3.1.2-5]
    _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "while-away")], 5)
    _sleep_until(t0 + 1)
    assert session_expired(saved) is False

    c, log, seen = _client(client_id)
    try:
        c.restore_session(saved)  # procedure (b): the saved state says it is still there
        c.connect(mosquitto.host, mosquitto.port)
        assert seen == [(True, "True")]
        _procs.wait_until(lambda: [e for e in log.of("on_message_in") if e.message == b"while-away"],
                          what="the message queued while away")
        assert log.of("on_session_lost") == []
    finally:
        c.close()
