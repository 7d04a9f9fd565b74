"""Pins from a behaviour audit of ``design/API.md`` (the public contract), no broker needed:
the claims about the constructor, defaults, read-only properties, the error hierarchy, the
context manager's save and ``queue_stats()`` that no other test proved. Each docstring quotes
the API.md claim it pins."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from mqttsession import (
    Client,
    ConnectError,
    MQTTSessionError,
    QueueFullError,
    StateError,
    load_state,
)


def test_the_constructor_is_all_keyword_and_all_optional() -> None:
    """API.md: ``Client(client_id=..., clean_session=..., protocol_version=...)`` -- "all
    keyword, all optional"."""
    with Client() as bare:
        assert bare.client_id == "" and bare.clean_session is True
    with pytest.raises(TypeError):
        Client("gw-1")  # type: ignore[misc]
    with Client(client_id="gw-1", clean_session=False, protocol_version=5) as c:
        assert (c.client_id, c.clean_session, c.protocol_version) == ("gw-1", False, 5)


def test_keep_alive_defaults_to_60_and_protocol_version_to_4() -> None:
    """API.md: ``keep_alive_interval`` "default 60"; ``protocol_version`` "4 = MQTT 3.1.1
    (default)", the same value as the ``ProtocolVersion`` setting."""
    with Client() as c:
        assert c.keep_alive_interval == 60
        assert c.protocol_version == 4
        assert c.config("ProtocolVersion") == "4"


def test_connect_defaults_to_localhost_1883_and_30_seconds() -> None:
    """API.md: ``connect(host="localhost", port=1883, timeout=30.0)``; ``flush(timeout=None)``."""
    params = inspect.signature(Client.connect).parameters
    assert {n: params[n].default for n in ("host", "port", "timeout")} == {
        "host": "localhost", "port": 1883, "timeout": 30.0}
    assert inspect.signature(Client.flush).parameters["timeout"].default is None


@pytest.mark.parametrize("name", ["connected", "incoming_messages", "outgoing_messages"])
def test_connected_and_the_message_sequences_are_read_only(name: str) -> None:
    """API.md: ``connected`` "bool, read-only"; ``incoming_messages`` / ``outgoing_messages``
    "read-only sequence": assigning raises and changes nothing."""
    with Client(client_id="pin-ro", clean_session=False) as c:
        c.publish_message("api/ro", 1, "held")
        before = getattr(c, name)
        with pytest.raises(AttributeError):
            setattr(c, name, True if name == "connected" else ())
        assert getattr(c, name) == before
        assert [m.message for m in c.outgoing_messages] == [b"held"]


def test_the_named_errors_are_mqtt_session_errors() -> None:
    """API.md: "``ConnectError`` (a ``MQTTSessionError``)"; "``QueueFullError`` | a
    ``MQTTSessionError``"; ``StateError`` is what bad state input raises."""
    for error in (ConnectError, QueueFullError, StateError):
        assert issubclass(error, MQTTSessionError), error


def test_a_full_queue_under_reject_raises_queue_full_error() -> None:
    """API.md: ``MaxQueuedMessages`` with ``QueueFullPolicy`` ``reject``: the publish over the
    limit raises ``QueueFullError`` and the session keeps what it held."""
    with Client(client_id="pin-full", clean_session=False) as c:
        assert c.config("MaxQueuedMessages=1") == ""
        assert c.config("QueueFullPolicy") == "reject"
        first = c.publish_message("api/full", 1, "one")
        with pytest.raises(QueueFullError):
            c.publish_message("api/full", 1, "two")
        assert [(m.packet_id, m.message) for m in c.outgoing_messages] == [(first, b"one")]


def test_the_context_manager_saves_to_the_state_file_on_exit(tmp_path: Path) -> None:
    """API.md: "``with Client(...) as c:`` disconnects (and saves, when a state file is set) on
    exit": after the block the state file alone, read by ``load_state``, holds every message
    published in it, with no ``save_session()`` call."""
    path = tmp_path / "ctx.state"
    with Client(client_id="pin-ctx", clean_session=False) as c:
        c.config(f"SessionStateFile={path}")
        c.restore_session("")
        ids = [c.publish_message("api/ctx", q, f"m{q}") for q in (1, 2)]
    view = load_state(path.read_text(encoding="utf-8"))
    assert [(m.packet_id, m.topic, m.payload) for m in view.outgoing] == [
        (ids[0], "api/ctx", b"m1"), (ids[1], "api/ctx", b"m2")]


def test_queue_stats_is_a_frozen_value_with_its_five_fields() -> None:
    """API.md: ``queue_stats()`` -- "frozen value: messages, bytes, oldest age, dropped,
    expired"; a snapshot: later publishes do not change a value already taken."""
    with Client(client_id="pin-stats", clean_session=False) as c:
        empty = c.queue_stats()
        assert (empty.messages, empty.bytes, empty.oldest_age, empty.dropped, empty.expired) == (
            0, 0, None, 0, 0)
        c.publish_data("api/stats", 1, b"12345")
        c.publish_data("api/stats", 2, b"67890")
        stats = c.queue_stats()
        assert stats.messages == 2 and stats.bytes >= 10
        assert stats.oldest_age is not None and stats.oldest_age >= 0
        assert (stats.dropped, stats.expired) == (0, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.messages = 0  # type: ignore[misc]
        assert empty.messages == 0  # the earlier value stayed as it was
