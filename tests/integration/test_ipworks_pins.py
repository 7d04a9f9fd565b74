"""IPWorks-fidelity pins against a real mosquitto: claims of the IPWorks IoT MQTT component's
session surface (``shared/reference/IPWORKS-API.md`` beside the project) that no other test proved. Each
docstring names the reference's claim. Where mqttsession differs, README
says so ("Where this library decides") and the test pins what it does."""

from __future__ import annotations

from typing import Any

import pytest

from mqttsession import Client, UsageError

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

unique = _procs.unique


def _present(c: Client, host: str, port: int) -> tuple[bool, str]:
    """Connect ``c``; its ``on_connected`` session_present and ``config("SessionPresent")``
    read inside the callback; then a clean disconnect."""
    seen: list[tuple[bool, str]] = []
    c.on_connected = lambda e: seen.append((e.session_present, c.config("SessionPresent")))
    c.connect(host, port, timeout=5)
    c.disconnect()
    assert len(seen) == 1
    return seen[0]


def test_normal_disconnect_is_status_0_and_ok(mosquitto: Any) -> None:
    """Reference: ``on_disconnected`` gives status_code 0 and description "OK" for a normal
    close."""
    c = Client(client_id=unique("ipw-ok"))
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert c.connected
        c.disconnect()
        assert not c.connected
        assert [(e.status_code, e.description) for e in log.of("on_disconnected")] == [(0, "OK")]
    finally:
        c.close()


def test_qos0_packet_id_is_minus_1_and_message_out_fires_on_send(mosquitto: Any) -> None:
    """Reference: ``on_message_in`` / ``on_message_out`` packet_id is -1 for QoS 0;
    ``on_message_out`` fires on send for QoS 0 (no acknowledgement to wait for)."""
    topic = f"ipw/{unique('q0')}"
    c = Client(client_id=unique("ipw-q0"))
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        c.subscribe(topic, 0)
        log.wait("on_subscribed")
        assert c.publish_message(topic, 0, "zero") == 0
        (out,) = log.wait("on_message_out")  # fired by the publish itself
        (got,) = log.wait("on_message_in")
        assert (out.packet_id, out.qos, out.message) == (-1, 0, b"zero")
        assert (got.packet_id, got.qos, got.message) == (-1, 0, b"zero")
        assert log.of("on_message_ack") == []  # QoS 0: no acknowledgement
    finally:
        c.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_sent_message_ack_then_message_out_after_removal(mosquitto: Any, qos: int) -> None:
    """Reference, acknowledgement order of a sent QoS 1 / 2 message: the final ack, then
    ``on_message_ack`` (direction 0, the client's message), then removal from
    ``outgoing_messages``, then ``on_message_out``."""
    c = Client(client_id=unique("ipw-out"))
    order: list[tuple[str, int, int, tuple[int, ...]]] = []
    c.on_message_ack = lambda e: order.append(
        ("ack", e.packet_id, e.direction, tuple(m.packet_id for m in c.outgoing_messages)))
    c.on_message_out = lambda e: order.append(
        ("out", e.packet_id, e.qos, tuple(m.packet_id for m in c.outgoing_messages)))
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        pid = c.publish_message(f"ipw/{unique('out')}", qos, "x")
        assert pid > 0
        assert c.flush(_procs.TIMEOUT)
        _procs.wait_until(lambda: len(order) >= 2, what="on_message_ack and on_message_out")
        assert [(k, p) for k, p, _, _ in order] == [("ack", pid), ("out", pid)]
        assert order[0][2] == 0  # direction 0: a message the client sent
        assert order[1][2:] == (qos, ())  # removed before on_message_out
        assert c.outgoing_messages == ()
    finally:
        c.close()


def test_a_sent_message_has_left_outgoing_messages_when_its_ack_fires(mosquitto: Any) -> None:
    """IPWorks' order for a sent QoS 1 message is PUBACK, ``on_message_ack``, removal,
    ``on_message_out``; here the removal (a session record) comes first, so inside
    ``on_message_ack`` the message is no longer in ``outgoing_messages`` (README, "Where this
    library decides")."""
    c = Client(client_id=unique("ipw-held"))
    held: list[tuple[int, ...]] = []
    c.on_message_ack = lambda e: held.append(tuple(m.packet_id for m in c.outgoing_messages))
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        c.publish_message(f"ipw/{unique('held')}", 1, "x")
        assert c.flush(_procs.TIMEOUT)
        _procs.wait_until(lambda: held, what="on_message_ack")
        assert held == [()]
    finally:
        c.close()


def test_received_message_ack_has_direction_1(mosquitto: Any) -> None:
    """Reference: ``on_message_ack`` direction is 1 for a message the server sent (its
    acknowledgement by this client), 0 for the client's own."""
    topic = f"ipw/{unique('dir')}"
    c = Client(client_id=unique("ipw-dir"))
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        c.subscribe(topic, 1)
        log.wait("on_subscribed")
        pid = c.publish_message(topic, 1, "x")
        (got,) = log.wait("on_message_in")
        acks = log.wait("on_message_ack", 2)
        assert sorted((a.direction, a.packet_id) for a in acks) == [(0, pid), (1, got.packet_id)]
        assert all(a.response_code == 0 for a in acks)
    finally:
        c.close()


def test_clean_session_discards_the_servers_state_and_keeps_none(mosquitto: Any) -> None:
    """Reference: ``clean_session`` True: "the server discards state for this client id and
    keeps none after disconnect" (MQTT 3.1.1)."""
    cid = unique("ipw-clean")
    h, p = mosquitto.host, mosquitto.port
    with Client(client_id=cid, clean_session=False) as first:
        first.connect(h, p, timeout=5)
        first.disconnect()
        assert _present(first, h, p) == (True, "True")  # the broker kept it: the baseline
    with Client(client_id=cid, clean_session=True) as clean:
        assert _present(clean, h, p) == (False, "False")  # discarded
    with Client(client_id=cid, clean_session=False) as after:
        assert _present(after, h, p) == (False, "False")  # and none kept after it


def test_mqtt5_clean_session_is_the_clean_start_flag_only(mosquitto: Any) -> None:
    """Reference: "In MQTT 5 it acts as the Clean Start flag only": a clean_session True
    connection with a SessionExpInterval still leaves a session the broker keeps after it."""
    cid = unique("ipw-cs5")
    h, p = mosquitto.host, mosquitto.port
    with Client(client_id=cid, clean_session=True, protocol_version=5) as clean:
        clean.config("SessionExpInterval=60")
        assert _present(clean, h, p) == (False, "False")
    with Client(client_id=cid, clean_session=False, protocol_version=5) as after:
        after.config("SessionExpInterval=0")  # (the broker may forget it after this one)
        assert _present(after, h, p) == (True, "True")


def test_clean_session_must_be_set_before_connect(mosquitto: Any) -> None:
    """Reference: ``clean_session`` "must be set before connect": changing it while connected
    is refused and leaves the value as it was."""
    c = Client(client_id=unique("ipw-before"), clean_session=True)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        with pytest.raises(UsageError):
            c.clean_session = False
        assert c.clean_session is True and c.connected
    finally:
        c.close()
