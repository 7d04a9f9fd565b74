"""Server choice and event values: behaviour a mutation hunt over ``failover.py`` and
``events.py`` found no test held (each test here fails with the mutation it names: a line
made to do nothing, a bound moved, a field dropped). No network, no clock."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from mqttsession import Client, PublishRequest
from mqttsession.errors import ConnectError
from mqttsession.events import (DIRECTION_CLIENT, DIRECTION_SERVER, ConnectedEvent,
                                DisconnectedEvent, ErrorEvent, Message, MessageAckEvent,
                                MessageDroppedEvent, MessageEvent, SessionLostEvent,
                                SubscribedEvent, UnsubscribedEvent)
from mqttsession.failover import (MAX_REDIRECTS, SERVER_MOVED, USE_ANOTHER_SERVER,
                                  ServerRotation, none_accepted, parse_server_reference)
from mqttsession.records import IncomingMessage, OutgoingMessage, Phase, SessionLost

# ------------------------------------------------------------------------------- failover


def test_at_most_three_redirections_are_followed_in_a_row() -> None:
    """README: "At most 3 redirections are followed in a row" (``MAX_REDIRECTS = 3`` ->
    ``2`` went unseen: every test counted with the constant)."""
    assert MAX_REDIRECTS == 3
    r = ServerRotation([("a", 1)])
    followed = [r.redirect(USE_ANOTHER_SERVER, f"x{i}:1", "a:1") for i in range(4)]
    assert followed == [("x0", 1), ("x1", 1), ("x2", 1), None]


@pytest.mark.parametrize("reference", ["evil\x1b[31m:1883", "a\x07b:1", "bad\x7f x:1"])
def test_a_server_reference_with_a_control_character_names_no_server(
        reference: str, caplog: pytest.LogCaptureFixture) -> None:
    """A hostile broker's Server Reference (MQTT 5 4.11) whose host holds control characters
    is not followed: its text would reach the log and the ``server`` of events as it is
    (``return server if server[0].isprintable() else None`` -> ``return server``)."""
    assert parse_server_reference(reference) is None
    r = ServerRotation([("a", 1)])
    caplog.set_level(logging.INFO, "mqttsession")
    assert r.redirect(SERVER_MOVED, reference, "a:1") is None
    assert not r.redirect_pending and r.hops == 0 and r.servers == [("a", 1)]


def test_a_server_reference_with_a_unicode_host_is_followed() -> None:
    """Only control characters make a Server Reference unreadable: an internationalised host
    name (MQTT 5 4.11: a UTF-8 string) is followed (``server[0].isprintable()`` ->
    ``server[0].isascii()``)."""
    assert parse_server_reference("bücher.example:1884") == ("bücher.example", 1884)
    r = ServerRotation([("a", 1)])
    assert r.redirect(USE_ANOTHER_SERVER, "bücher.example", "a:1") == ("bücher.example", 1883)


def test_a_rotation_without_a_server_is_refused() -> None:
    """An empty server list is a ValueError that says so, not an IndexError from deep inside
    (``if not servers: raise`` deleted)."""
    with pytest.raises(ValueError, match="needs a server"):
        ServerRotation([])


def test_attempts_go_on_past_a_list_entry_a_redirection_went_to() -> None:
    """connect() tries every list entry once: the entry a redirection already reached is
    left out, and the list goes on with the ones after it (the skip's
    ``self.index = (self.index + 1) % len(self.servers)`` deleted: c and d were never tried)."""
    r = ServerRotation([("a", 1), ("b", 2), ("c", 3), ("d", 4)])
    got = []
    for server in r.attempts():
        got.append(server)
        if server == ("a", 1):
            r.redirect(USE_ANOTHER_SERVER, "b:2", "a:1")  # a refuses, naming b
    assert got == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


def test_a_followed_redirection_is_the_current_server() -> None:
    """After the attempt a redirection sent elsewhere, ``current`` is that server: the
    reconnect's "the last connection was to ..." line names it, not the list entry before
    (``self.current = target`` moved into the round-robin branch of ``next()``)."""
    r = ServerRotation([("a", 1), ("b", 2)])
    r.redirect(USE_ANOTHER_SERVER, "x:9", "a:1")
    assert r.next() == ("x", 9) and r.current == ("x", 9)
    assert r.next() == ("b", 2) and r.current == ("b", 2)


def test_server_moved_to_a_server_already_in_the_list_keeps_the_list() -> None:
    """0x9D Server moved (MQTT 5 4.11) to a server the list holds already: the list is not
    changed (a duplicate entry would get two turns of the round robin)
    (``code == SERVER_MOVED and target not in self.servers`` -> ``code == SERVER_MOVED``)."""
    r = ServerRotation([("a", 1), ("b", 2), ("c", 3)])
    assert r.redirect(SERVER_MOVED, "b:2", "a:1") == ("b", 2)
    assert r.servers == [("a", 1), ("b", 2), ("c", 3)]
    assert [r.next() for _ in range(4)] == [("b", 2), ("b", 2), ("c", 3), ("a", 1)]


def test_a_server_reference_without_a_port_takes_the_tls_port_with_tls() -> None:
    """A Server Reference without a port (MQTT 5 4.11) on a TLS connection means 8883, as a
    list entry without one does (``parse_server_reference(reference, tls=self.tls)`` ->
    ``parse_server_reference(reference)``: it went to 1883)."""
    r = ServerRotation([("a", 8883)], tls=True)
    assert r.redirect(USE_ANOTHER_SERVER, "other", "a:8883") == ("other", 8883)
    assert r.next() == ("other", 8883)
    assert ServerRotation([("a", 1883)]).redirect(USE_ANOTHER_SERVER, "other", "a") == (
        "other", 1883)


def test_none_accepted_with_one_server_is_its_own_error() -> None:
    """One server and it failed: connect() raises that server's own error, not a summary of
    one (``if len(failures) == 1`` -> ``== 0``)."""
    own = ConnectError("connection refused: Not authorized", 0x87)
    assert none_accepted([(("a", 1), own)]) is own


def test_none_accepted_names_every_failure_and_keeps_the_last_status_code() -> None:
    """Several servers failed: the error names each, and its status code is the last
    attempt's (``failures[-1][1].status_code`` -> ``failures[0][1].status_code``)."""
    err = none_accepted([(("a", 1), ConnectError("cannot connect to a:1", -1)),
                         (("b", 2), ConnectError("connection refused: Banned", 0x8A))])
    assert str(err) == ("no server accepted the connection: cannot connect to a:1; "
                        "connection refused: Banned")
    assert err.status_code == 0x8A


# ------------------------------------------------------------------------------- events


def test_ack_directions_are_the_documented_values() -> None:
    """``MessageAckEvent.direction``: 0 for a message the client sent, 1 for one it received
    (IPWorks' values; ``DIRECTION_CLIENT = 0`` -> ``1`` / ``DIRECTION_SERVER = 1`` -> ``0``
    went unseen: every test compared with the constants)."""
    assert (DIRECTION_CLIENT, DIRECTION_SERVER) == (0, 1)


def test_message_views_carry_every_field_of_the_held_message() -> None:
    """``outgoing_messages`` / ``incoming_messages`` items: each field from the message it shows
    (``duplicate`` of an outgoing one: it went out before, so a PUBLISH of it again carries
    DUP=1, MQTT 5 3.3.1.1); dropping or fixing any argument of ``Message.outgoing`` /
    ``Message.incoming`` (``m.sent`` -> ``False``, ``m.retain`` -> ``False``, ``m.properties``
    left out, ``m.dup`` -> ``False``, ``m.packet_id`` -> ``-1``) fails here."""
    props = b"\x01\x01"  # Payload Format Indicator = 1
    sent = OutgoingMessage(7, 3, "t/out", b"o", 2, True, props, Phase.AWAIT_PUBREC)
    assert Message.outgoing(sent) == Message(3, "t/out", 2, b"o", True, True, props)
    queued = OutgoingMessage(8, 4, "t/q", b"q", 1)
    assert Message.outgoing(queued) == Message(4, "t/q", 1, b"q", False, False, b"")
    held = IncomingMessage(9, "t/in", b"i", 2, True, True, props)
    assert Message.incoming(held) == Message(9, "t/in", 2, b"i", True, True, props)


def test_session_lost_event_carries_each_list_and_the_expiry_verdict() -> None:
    """``SessionLostEvent.of``: every list of the SessionLost in its own field, and
    ``expired`` as the client's clock judged it (``expired`` -> ``False``)."""
    rep = OutgoingMessage(1, 1, "t/r", b"r", 1, phase=Phase.AWAIT_PUBACK)
    drop = OutgoingMessage(2, 2, "t/d", b"d", 2, phase=Phase.AWAIT_PUBCOMP)
    queued = OutgoingMessage(3, 3, "t/q", b"q", 1)
    dup = OutgoingMessage(4, 4, "t/p", b"p", 2, phase=Phase.AWAIT_PUBCOMP)
    held = IncomingMessage(5, "t/i", b"i")
    lost = SessionLost((rep, dup), (drop,), (queued,), (held,), (("t/#", 1),), (dup,))
    for expired in (True, False):
        ev = SessionLostEvent.of(lost, expired)
        assert ev.expired is expired
        assert ev == SessionLostEvent(
            (Message.outgoing(rep), Message.outgoing(dup)), (Message.outgoing(drop),),
            (Message.outgoing(queued),), (Message.incoming(held),), (("t/#", 1),), expired,
            (Message.outgoing(dup),))


def test_a_publish_request_without_retain_takes_the_retain_setting() -> None:
    """``PublishRequest.retain`` None (its default) takes the client's ``Retain`` setting;
    an explicit False does not (``retain: bool | None = None`` -> ``= False``)."""
    assert PublishRequest("t", 1, b"x").retain is None
    c = Client(client_id="pins-retain")
    try:
        c.config("Retain=true")
        c.publish_many([PublishRequest("t/a", 1, b"x"), PublishRequest("t/b", 1, b"y", retain=False)])
        assert [m.retained for m in c.outgoing_messages] == [True, False]
    finally:
        c.close()


@pytest.mark.parametrize("event", [
    ConnectedEvent(0, "Success", False, "a:1"), DisconnectedEvent(0, "bye"),
    MessageEvent(1, "t", 1, b"x", False, False), MessageAckEvent(1, DIRECTION_CLIENT, 0),
    SubscribedEvent("t/#", 1, 1), UnsubscribedEvent("t/#", 0), ErrorEvent(-1, "x"),
    MessageDroppedEvent("t", 1, 3, "expired"), Message(1, "t", 1, b"x", False, False),
    SessionLostEvent((), (), (), (), (), False),
], ids=lambda ev: type(ev).__name__)
def test_events_are_frozen_values(event: Any) -> None:
    """An event is a value: the same for every reader of it (a callback cannot change what
    the next one or ``ack()`` sees) and hashable (``frozen=True`` -> ``frozen=False``)."""
    name = dataclasses.fields(event)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, name, getattr(event, name))
    assert hash(event) == hash(dataclasses.replace(event))


def test_a_message_without_properties_has_empty_ones() -> None:
    """``Message.properties`` left out is ``b""`` (none), as the docstring says: the QoS 1
    items of ``incoming_messages`` are built without it (``properties: bytes = b""`` ->
    ``= None``)."""
    assert Message(1, "t", 1, b"x", False, False).properties == b""
    assert MessageEvent(1, "t", 1, b"x", False, False).properties == b""
