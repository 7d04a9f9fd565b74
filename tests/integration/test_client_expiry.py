"""MQTT 5 session expiry on mosquitto: the client's own clock (``session_expired``) agrees with the
broker's SessionPresent.

``SessionExpInterval=2``, a clean disconnect, then:

* 4 s later: ``session_expired(saved)`` is True, and the broker has discarded the session
  [MQTT-4.1.0-2]: a client reconnecting with Clean Start 0 (IPWorks procedure (a)) reads
  SessionPresent False in on_connected. Restoring the saved text anyway (procedure (b)) still
  connects with Clean Start 0 (the client's clock may have jumped: it never destroys a session the
  broker may hold); SessionPresent 0 then starts clean and the saved subscription is sent again.
* 1 s later: ``session_expired(saved)`` is False, and the broker still holds the session
  [MQTT-3.1.2-23]: restore + connect sees SessionPresent True and gets the message the broker
  queued for it while it was away [MQTT-3.1.2-5].
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import mqttsession
from mqttsession import codec, load_state, session_expired

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

INTERVAL = 2


def _client(client_id: str, interval: int = INTERVAL
            ) -> tuple[mqttsession.Client, Any, list[tuple[bool, str]]]:
    c = mqttsession.Client(client_id=client_id, clean_session=False, protocol_version=5)
    c.config(f"SessionExpInterval={interval}")
    log = _procs.EventLog(c)
    seen: list[tuple[bool, str]] = []

    def on_connected(ev: Any) -> None:
        seen.append((ev.session_present, c.config("SessionPresent")))  # read inside on_connected

    c.on_connected = on_connected
    return c, log, seen


def _session_then_disconnect(broker: Any, client_id: str, topic: str,
                             interval: int = INTERVAL) -> tuple[str, float]:
    c, log, _ = _client(client_id, interval)
    try:
        c.connect(broker.host, broker.port)
        c.subscribe(topic, 1)
        log.wait("on_subscribed")
        c.disconnect()
        saved = c.save_session()
    finally:
        c.close()
    view = load_state(saved)
    assert view.protocol_version == 5 and view.session_expiry_interval == interval
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

    # procedure (b) with the expired text: Clean Start 0 all the same (the broker decides: the
    # session of procedure (a) must expire first), SessionPresent 0, the saved subscription sent
    # again
    _sleep_until(time.time() + INTERVAL + 1)
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


def test_mqtt5_persistent_session_without_interval_is_kept(mosquitto: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """No SessionExpInterval set: the Client sends 3600 s like Options, so the broker keeps the
    session across a disconnect (an absent interval would mean 0: a new session every time)."""
    client_id = _procs.unique("noexp")
    c = mqttsession.Client(client_id=client_id, clean_session=False, protocol_version=5)
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        c.subscribe(f"mqs/{client_id}", 1)
        log.wait("on_subscribed")
        c.disconnect()
        assert load_state(c.save_session()).expired(time.time() + 60) is False
        c.connect(mosquitto.host, mosquitto.port)
        assert c.config("SessionPresent") == "True"
        c.disconnect()
        with caplog.at_level("WARNING", logger="mqttsession"):
            c.config("SessionExpInterval=0")
            c.connect(mosquitto.host, mosquitto.port)
        assert any("SessionExpInterval=0" in r.getMessage() for r in caplog.records)
    finally:
        c.close()


def test_mqtt5_clock_jump_never_destroys_a_live_session(mosquitto: Any) -> None:
    """The client's clock says the saved session expired (it jumped forward), the broker still
    holds it: the client connects with Clean Start 0, SessionPresent=1 resumes it, and the
    message the broker queued for it meanwhile arrives."""
    client_id = _procs.unique("jump")
    topic = f"mqs/{client_id}"
    saved, _ = _session_then_disconnect(mosquitto, client_id, topic, 600)
    state = codec.decode(saved)
    jump = 24 * 3600.0  # what this process reads as "now" is a day after what was recorded
    for name in ("connected_at", "disconnected_at", "last_activity"):
        setattr(state, name, getattr(state, name) - jump)
    saved = codec.encode(state)
    assert session_expired(saved) is True
    _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "queued-meanwhile")], 5)

    c, log, seen = _client(client_id, 600)
    try:
        c.restore_session(saved)
        c.connect(mosquitto.host, mosquitto.port)
        assert seen == [(True, "True")]
        _procs.wait_until(
            lambda: [e for e in log.of("on_message_in") if e.message == b"queued-meanwhile"],
            what="the message the broker queued")
        assert log.of("on_session_lost") == []
    finally:
        c.close()


@pytest.mark.parametrize("clean", [True, False])
def test_mqtt5_expiry_cannot_go_up_from_zero_while_connected(mosquitto: Any, clean: bool) -> None:
    """A CONNECT with Session Expiry Interval 0, then ``SessionExpInterval=300`` while
    connected: the DISCONNECT carried 300, a protocol error (MQTT 5 3.14.2.2.2; mosquitto
    published the will), and the state said 300 of a session the broker dropped (a hunt)."""
    c = mqttsession.Client(client_id=_procs.unique("sei0"), clean_session=clean,
                           protocol_version=5)
    if not clean:
        c.config("SessionExpInterval=0")
    try:
        c.connect(mosquitto.host, mosquitto.port)
        with pytest.raises(mqttsession.UsageError, match=r"3\.14\.2\.2\.2"):
            c.config("SessionExpInterval=300")
        c.config("SessionExpInterval=0")  # (no change of what the DISCONNECT may carry)
        saved = c.save_session()
        c.disconnect()
        c.config("SessionExpInterval=300")  # disconnected: for the next CONNECT
        c.connect(mosquitto.host, mosquitto.port)
        c.config("SessionExpInterval=0")
        c.config("SessionExpInterval=300")  # back to what this CONNECT carried: allowed
        assert saved
        c.config("SessionExpInterval=300")  # disconnected: for the next CONNECT
    finally:
        c.close()
