"""Mesh-style sessions (``mqttsession.mesh``) against mosquitto, MQTT 3.1.1 and 5.

* ``create_session()`` + ``open()`` / ``close()``, and the ``with`` block: a new id, open in
  between, and ended on the broker afterwards (a later ``connect_to_session`` fails);
* ``connect_to_session`` on a session closed with ``end_session=False`` finds it
  (``session_present`` True) and gets the QoS 1 message queued for it meanwhile;
* ``connect_to_session`` on an unknown id raises ``SessionNotFoundError`` and leaves no session
  behind (a second attempt fails the same way); ``must_exist=False`` starts one instead;
* a session attached with ``connect_to_session`` and then closed is ended too.
"""

from __future__ import annotations

import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession import Connection, Options, Session, SessionNotFoundError, UsageError

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])


def _connection(broker: Any, version: int) -> Connection:
    return Connection.insecure(broker.address, options=Options(
        protocol_version=version, request_timeout_seconds=10.0))


def _publish(broker: Any, topic: str, payload: str, qos: int = 1) -> None:
    """A QoS 1 (or ``qos``) message from an independent plain paho client."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=qos).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def _assert_gone(connection: Connection, session_id: str) -> None:
    with pytest.raises(SessionNotFoundError, match=session_id):
        connection.connect_to_session(session_id)


def test_open_and_close(mosquitto: Any, version: int) -> None:
    connection = _connection(mosquitto, version)
    session = connection.create_session()
    assert isinstance(session, Session) and not session.is_open
    assert uuid.UUID(session.session_id)  # a new uuid-based id
    assert connection.create_session().session_id != session.session_id
    session.open()
    try:
        assert session.is_open and session.session_present is False
        assert session.client.client_id == session.session_id
        session.subscribe(f"mesh/{session.session_id}", 1)
        session.publish(f"mesh/{session.session_id}", "to myself")
        msg = session.receive(10)
        assert msg is not None and msg.message == b"to myself" and msg.qos == 1
    finally:
        session.close()
    assert not session.is_open
    assert session.receive(0.1) is None and list(session.messages()) == []
    with pytest.raises(UsageError, match="connect_to_session"):
        session.open()
    _assert_gone(connection, session.session_id)


def test_with_block(mosquitto: Any, version: int) -> None:
    connection = _connection(mosquitto, version)
    with connection.create_session() as session:
        assert session.is_open and session.client.connected
    assert not session.is_open and not session.client.connected
    _assert_gone(connection, session.session_id)


def test_connect_to_a_kept_session(mosquitto: Any, version: int) -> None:
    connection = _connection(mosquitto, version)
    first = connection.create_session()
    first.open()
    topic = f"mesh/kept/{first.session_id}"
    first.subscribe(topic, 1)
    first.close(end_session=False)  # the broker keeps it, and queues for it

    _publish(mosquitto, topic, "while you were away")

    again = connection.connect_to_session(uuid.UUID(first.session_id))  # a UUID works too
    try:
        assert again.session_id == first.session_id
        assert again.is_open and again.session_present is True
        again.open()  # already open: a no-op (the Mesh example calls it)
        msg = next(again.messages(timeout=10))
        assert (msg.topic, msg.message) == (topic, b"while you were away")
        assert again.receive(0.2) is None
    finally:
        again.close()  # ends it
    _assert_gone(connection, first.session_id)


def test_unknown_session_id(mosquitto: Any, version: int) -> None:
    connection = _connection(mosquitto, version)
    unknown = str(uuid.uuid4())
    _assert_gone(connection, unknown)
    _assert_gone(connection, unknown)  # the failed attempt left nothing on the broker

    fresh = connection.connect_to_session(unknown, must_exist=False)
    try:
        assert fresh.is_open and fresh.session_present is False
    finally:
        fresh.close(end_session=False)
    kept = connection.connect_to_session(unknown)
    assert kept.session_present is True
    kept.close()
    _assert_gone(connection, unknown)


@pytest.mark.parametrize("qos", [1, 2])
def test_receive_after_close_hands_out_nothing_and_the_next_session_gets_them(
        mosquitto: Any, version: int, qos: int) -> None:
    """Before: ``receive()`` went on handing out the queued messages after ``close()``; they
    could not be acknowledged any more, so the session attached next got them again. QoS 2:
    the broker sends the next one only their PUBREL (PUBREC answered on arrival): they went
    with the closed client (lost), now handed over to it (``handover.py``)."""
    import time

    connection = _connection(mosquitto, version)
    s = connection.create_session()
    s.open()
    topic = f"mesh/closed/{s.session_id}"
    s.subscribe(topic, 2)
    for n in range(4):
        _publish(mosquitto, topic, f"m{n}", qos)
    deadline = time.monotonic() + 10
    while s._messages.qsize() < 4 and time.monotonic() < deadline:  # (all four queued)
        time.sleep(0.02)
    first = s.receive(timeout=5)
    assert first is not None and first.message == b"m0"
    s.close(end_session=False)
    assert [s.receive(timeout=0.1) for _ in range(3)] == [None, None, None]
    assert list(s.messages(timeout=0.1)) == []
    again = connection.connect_to_session(s.session_id)
    try:
        got = [m.message for m in again.messages(timeout=2)]
        assert got == [b"m1", b"m2", b"m3"]  # m0 was taken and acknowledged: not again
    finally:
        again.close()


def test_close_while_disconnected_waits_for_the_reconnect_to_deliver(
        mosquitto_factory: Any, version: int) -> None:
    """Before: ``close()`` skipped its wait when the connection was down at that moment: the
    QoS 1 messages published meanwhile were dropped with the in-memory session, silently."""
    import threading

    broker = mosquitto_factory()
    connection = _connection(broker, version)
    s = connection.create_session()
    s.open()
    s.client.config("ReconnectDelayMin=0.2")
    s.client.config("ReconnectDelayMax=0.5")
    broker.stop()
    for n in range(3):
        s.publish(f"mesh/down/{s.session_id}", f"m{n}", qos=1)
    restart = threading.Timer(1.0, broker.start)
    restart.start()
    try:
        s.close(end_session=False)
        assert s.client.outgoing_messages == ()  # delivered before close() returned
    finally:
        restart.join()


def test_close_ends_the_session_on_the_server_that_holds_it(mosquitto_factory: Any,
                                                            version: int) -> None:
    """A server list, the first down when the session opened on the second, then back:
    ``close()`` (MQTT 3.1.1: a clean connect and disconnect) ended the session on the first
    server that accepted, so the second kept it and queued QoS 1 messages for it for good (a
    defect hunt). It goes to the server that held the session last."""
    a, b = mosquitto_factory(), mosquitto_factory()
    a.stop()
    connection = Connection.insecure(f"{a.address},{b.address}", options=Options(
        protocol_version=version, request_timeout_seconds=5.0))
    session = connection.create_session()
    session.open()
    assert session.client.config("ConnectedServer") == b.address
    session.subscribe(f"mesh/{session.session_id}", 1)
    a.start()
    session.close()
    _assert_gone(Connection.insecure(b.address, options=Options(
        protocol_version=version, request_timeout_seconds=5.0)), session.session_id)


def test_a_failed_attach_keeps_what_the_closed_session_held(mosquitto_factory: Any,
                                                            version: int) -> None:
    """A QoS 1 message published while the broker is down, the session closed with
    ``end_session=False`` (kept in memory, ``handover.py``); an attach while the broker is
    still down fails: the message stays kept, and the attach after the broker is back
    publishes it (before: the failed attach had taken it, lost)."""
    from mqttsession import ConnectError

    broker = mosquitto_factory()
    connection = Connection.insecure(broker.address, options=Options(
        protocol_version=version, request_timeout_seconds=1.0))
    s = connection.create_session()
    s.open()
    broker.stop()
    s.publish("mesh/kept", "precious", qos=1)
    s.close(end_session=False)  # its flush times out: the message is kept
    with pytest.raises(ConnectError):
        connection.connect_to_session(s.session_id, must_exist=False)
    broker.start()
    with _procs.observed(broker.host, broker.port, "mesh/kept") as got:
        again = connection.connect_to_session(s.session_id, must_exist=False)
        try:
            _procs.wait_until(lambda: got, 10, "the kept message")
            assert got == [b"precious"]
        finally:
            again.close()


def test_open_again_after_a_failed_open(mosquitto_factory: Any, version: int) -> None:
    """A session that published offline, whose ``open()`` failed (broker down), opens on the
    next try and publishes the message (before: the failed open kept the session for the next
    one, and every retry refused to restore it over the messages it still held)."""
    from mqttsession import ConnectError

    broker = mosquitto_factory()
    broker.stop()
    connection = Connection.insecure(broker.address, options=Options(
        protocol_version=version, request_timeout_seconds=1.0))
    s = connection.create_session()
    s.publish("mesh/retry", "kept", qos=1)
    with pytest.raises(ConnectError):
        s.open()
    broker.start()
    with _procs.observed(broker.host, broker.port, "mesh/retry") as got:
        try:
            s.open()
            _procs.wait_until(lambda: got, 10, "the kept message")
            assert got == [b"kept"]
        finally:
            s.close()


def test_open_again_after_the_client_was_disconnected(mosquitto: Any, version: int) -> None:
    """``session.client.disconnect()``, a message published meanwhile, then ``open()``: it
    connects again and the message goes out (before: a silent no-op, ``is_open`` True and
    the session offline for good)."""
    s = _connection(mosquitto, version).create_session()
    s.open()
    with _procs.observed(mosquitto.host, mosquitto.port, "mesh/again") as got:
        try:
            s.client.disconnect()
            s.publish("mesh/again", "held", qos=1)
            s.open()
            assert s.client.connected and s.is_open
            _procs.wait_until(lambda: got, 10, "the held message")
            assert got == [b"held"]
            s.open()  # open: a no-op
        finally:
            s.close()


def test_open_again_after_a_lost_link_without_auto_reconnect(mosquitto: Any, version: int) -> None:
    """``AutoReconnect=False``, the link cut, a message published meanwhile, then ``open()``:
    it connects again and the message goes out (review: a silent no-op, the session offline
    for good with ``is_open`` True)."""
    from mqttsession.testing.proxy import MQTTProxy

    with MQTTProxy(mosquitto.host, mosquitto.port) as proxy:
        s = Connection.insecure(f"{proxy.host}:{proxy.port}", options=Options(
            protocol_version=version, request_timeout_seconds=10.0)).create_session()
        s.client.config("AutoReconnect=False")
        s.open()
        with _procs.observed(mosquitto.host, mosquitto.port, "mesh/lost") as got:
            try:
                proxy.cut()
                _procs.wait_until(lambda: not s.client.connected, 5, "the cut")
                s.publish("mesh/lost", "held", qos=1)
                s.open()
                assert s.client.connected and s.is_open
                _procs.wait_until(lambda: got, 10, "the held message")
                assert got == [b"held"]
            finally:
                s.close()
