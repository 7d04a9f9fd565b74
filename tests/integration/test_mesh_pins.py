"""Pins found by a mutation hunt over ``mqttsession.mesh`` (mostly against a ``FakeBroker``,
which records every packet the client sends):

* what ``close()`` sends to end the session: MQTT 5 a DISCONNECT with Session Expiry Interval 0
  on the session's own connection; MQTT 3.1.1 a clean-session CONNECT and DISCONNECT with the
  same id; after the link went down, a clean connect (MQTT 5: without a Session Expiry Interval);
* a failed ``connect_to_session`` ends the empty session the same way, and its error names it;
* ``open()`` again on an attached session is no new attach: no ``SessionNotFoundError``;
* the options passed on (``session_expiry_interval``, ``retain``, properties, ``insecure`` over
  TLS options, the credentials in ``options``), the values returned, and the checks (empty id,
  a refused or unanswered SUBSCRIBE, ``close()`` twice, a reader blocked in ``receive``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import (Connection, MQTTSessionError, Options, Session, SessionNotFoundError,
                         TlsOptions, UsageError)
from mqttsession import _wire as wire
from mqttsession.testing import fake_broker
from mqttsession.testing.fake_broker import FakeBroker

VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
PacketType = wire.PacketType
USER_PROPERTY = 0x26  # MQTT 5 2.2.2.2


class Recorded:
    """A ``FakeBroker`` and every packet it received, decoded with its MQTT 5 properties."""

    def __init__(self, fb: FakeBroker, raw: list[tuple[bytes, int, int]]) -> None:
        self.fb = fb
        self._raw = raw

    @property
    def address(self) -> str:
        return f"{self.fb.host}:{self.fb.port}"

    def packets(self, ptype: PacketType) -> list[wire.Packet]:
        out = []
        for data, header_len, level in list(self._raw):
            p = wire.decode(data[0], data[header_len:], level)
            if p.type is ptype:
                out.append(p)
        return out


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    raw: list[tuple[bytes, int, int]] = []
    real = fake_broker.parse_packet

    def spy(data: bytes, header_len: int, **kw: Any) -> Any:
        rec = real(data, header_len, **kw)
        raw.append((bytes(data), header_len, rec.protocol_level or 4))
        return rec

    monkeypatch.setattr(fake_broker, "parse_packet", spy)
    fb = FakeBroker()
    try:
        yield Recorded(fb, raw)
    finally:
        fb.stop()


def _connection(address: str, version: int, **kw: Any) -> Connection:
    return Connection.insecure(address, options=Options(
        protocol_version=version, request_timeout_seconds=5.0, **kw))


def _assert_ended(broker: Recorded, version: int, session_id: str, connects: int) -> None:
    """The broker got what ends ``session_id``: ``connects`` CONNECTs in all, the last one
    followed by a DISCONNECT; MQTT 5 over the session's connection: Session Expiry 0."""
    broker.fb.wait_for("DISCONNECT", 1)
    got = broker.packets(PacketType.CONNECT)
    assert [p.client_id for p in got] == [session_id] * connects
    disconnect = broker.packets(PacketType.DISCONNECT)[-1]
    if version == 5 and connects == 1:
        assert got[0].clean_start is False
        # [MQTT-3.1.2-23] the session ends when the connection closes with Session Expiry 0
        assert disconnect.prop(wire.SESSION_EXPIRY_INTERVAL) == 0
    else:
        assert got[-1].clean_start is True  # [MQTT-3.1.2-4] a clean start discards the session
        # (MQTT 5: absent is 0 [MQTT-3.1.2-23], the broker drops it at the DISCONNECT)
        assert got[-1].prop(wire.SESSION_EXPIRY_INTERVAL) in (None, 0)


@VERSIONS
def test_close_sends_what_ends_the_session(broker: Recorded, version: int) -> None:
    """``close()``: MQTT 5 a DISCONNECT with Session Expiry Interval 0 on the session's own
    connection (no second connect); MQTT 3.1.1 a clean connect and disconnect, same id."""
    session = _connection(broker.address, version).create_session()
    session.open()
    session.close()
    _assert_ended(broker, version, session.session_id, 1 if version == 5 else 2)
    assert not session.client.connected


@VERSIONS
def test_close_after_the_link_went_down_connects_clean_to_end_it(broker: Recorded,
                                                                 version: int) -> None:
    """Disconnected at ``close()``: a clean connect and disconnect with the same id ends the
    session (MQTT 5: no Session Expiry Interval on that CONNECT, else the broker keeps it)."""
    session = _connection(broker.address, version).create_session()
    session.open()
    session.client.disconnect()
    broker.fb.wait_for("DISCONNECT", 1)
    session.close()
    broker.fb.wait_for("DISCONNECT", 2)
    _assert_ended(broker, version, session.session_id, 2)


@VERSIONS
def test_close_keeping_the_session_sends_no_clean_connect(broker: Recorded, version: int) -> None:
    """``close(end_session=False)``: one persistent CONNECT, then a DISCONNECT that keeps it
    (MQTT 5: the session's expiry, never 0)."""
    session = _connection(broker.address, version, session_expiry_interval=77).create_session()
    session.open()
    session.close(end_session=False)
    broker.fb.wait_for("DISCONNECT", 1)
    (connect,) = broker.packets(PacketType.CONNECT)
    assert connect.clean_start is False
    if version == 5:
        assert connect.prop(wire.SESSION_EXPIRY_INTERVAL) == 77  # options passed on
        assert broker.packets(PacketType.DISCONNECT)[-1].prop(wire.SESSION_EXPIRY_INTERVAL) != 0


@VERSIONS
def test_a_failed_attach_ends_the_empty_session_and_names_it(broker: Recorded,
                                                             version: int) -> None:
    """``connect_to_session`` of a session the broker does not hold: the empty session the
    attempt created is ended as ``close()`` ends one; the error carries the id."""
    sid = str(uuid.uuid4())
    with pytest.raises(SessionNotFoundError, match=sid) as info:
        _connection(broker.address, version).connect_to_session(sid)
    assert info.value.session_id == sid and isinstance(info.value, LookupError)
    _assert_ended(broker, version, sid, 1 if version == 5 else 2)


@VERSIONS
def test_open_again_after_an_attach_is_no_new_attach(broker: Recorded, version: int) -> None:
    """An attached session whose client was disconnected, the broker no longer holding the
    session (SessionPresent 0): ``open()`` connects again, no ``SessionNotFoundError`` (only
    the first open of ``connect_to_session`` checks)."""
    broker.fb.session_present = True
    session = _connection(broker.address, version).connect_to_session(str(uuid.uuid4()))
    try:
        assert session.session_present is True
        broker.fb.session_present = False
        session.client.disconnect()
        session.open()
        assert session.is_open and session.session_present is False
    finally:
        session.close()


@VERSIONS
def test_publish_passes_retain_and_properties_and_returns_the_packet_id(
        broker: Recorded, version: int) -> None:
    """``publish`` hands ``retain`` and ``properties`` to the client, for text and bytes, and
    returns the packet id."""
    with _connection(broker.address, version).create_session() as session:
        ids = []
        for payload in ("text", b"bytes"):
            props = None
            if version == 5:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = [("k", "v")]
            ids.append(session.publish("pin/retain", payload, 1, retain=True, properties=props))
        assert session.flush(5)
    got = broker.packets(PacketType.PUBLISH)
    assert [p.payload for p in got] == [b"text", b"bytes"]
    assert [p.retain for p in got] == [True, True]
    assert ids == [p.packet_id for p in got] and all(i > 0 for i in ids)
    if version == 5:
        assert all(p.prop(USER_PROPERTY) == ("k", "v") for p in got)


@VERSIONS
def test_subscribe_refused_with_0x80_or_unanswered_raises(version: int) -> None:
    """A SUBACK refusing with exactly 0x80: ``MQTTSessionError``; no SUBACK within
    ``request_timeout_seconds``: ``MQTTSessionError`` too, not a return as if subscribed."""
    with FakeBroker(suback_code=0x80) as fb:
        with Connection.insecure(f"{fb.host}:{fb.port}", options=Options(
                protocol_version=version, request_timeout_seconds=5.0)).create_session() as s:
            with pytest.raises(MQTTSessionError, match="refused"):
                s.subscribe("denied/#", 1)
    with FakeBroker() as fb:
        go = threading.Event()

        def silent(_fb: FakeBroker, rec: Any) -> None:  # no SUBACK until the test ends
            if rec.type == "SUBSCRIBE":
                go.wait(20)

        fb.on_packet = silent
        s = Connection.insecure(f"{fb.host}:{fb.port}", options=Options(
            protocol_version=version, request_timeout_seconds=0.5)).create_session()
        s.open()
        try:
            with pytest.raises(MQTTSessionError, match="no SUBACK"):
                s.subscribe("silent/#", 1)
        finally:
            go.set()
            s.close(end_session=False)


def test_insecure_turns_tls_off_and_keeps_the_options_credentials() -> None:
    """``Connection.insecure(options=...)``: plain TCP even when ``options`` had TLS on; the
    credentials of ``options`` kept unless given; ``with_tls`` keeps them the same way."""
    base = Options(address="127.0.0.1:1", username="u", password="p",
                   tls_options=TlsOptions(True, None, None, None))
    plain = Connection.insecure(options=base).options
    assert not plain.tls_options.enabled
    assert (plain.address, plain.username, plain.password) == ("127.0.0.1:1", "u", "p")
    other = Connection.insecure("127.0.0.1:2", username="v", password="q", options=base).options
    assert (other.address, other.username, other.password) == ("127.0.0.1:2", "v", "q")
    tls = Connection.with_tls(None, options=base).options
    assert tls.tls_options.enabled
    assert (tls.address, tls.username, tls.password) == ("127.0.0.1:1", "u", "p")
    given = Connection.with_tls("127.0.0.1:3", username="v", password="q", options=base).options
    assert (given.address, given.username, given.password) == ("127.0.0.1:3", "v", "q")


def test_a_session_id_must_not_be_empty() -> None:
    """``Session`` / ``connect_to_session`` with an empty id: ``UsageError``, no network."""
    connection = Connection(Options(address="127.0.0.1:1"))
    with pytest.raises(UsageError, match="empty"):
        Session(connection, "")
    with pytest.raises(UsageError, match="empty"):
        connection.connect_to_session("")


@VERSIONS
def test_close_twice_and_a_blocked_reader_wakes(broker: Recorded, version: int) -> None:
    """Readers blocked in ``receive()`` (no timeout) return None at ``close()``; a second
    ``close()`` is a no-op that sends nothing."""
    session = _connection(broker.address, version).create_session()
    session.open()
    got: list[object] = []
    readers = [threading.Thread(target=lambda: got.append(session.receive()), daemon=True)
               for _ in range(2)]
    for t in readers:
        t.start()
    session.close()
    for t in readers:
        t.join(10)
    assert not any(t.is_alive() for t in readers) and got == [None, None]
    broker.fb.wait_for("DISCONNECT", 1)
    sent = len(broker.packets(PacketType.CONNECT)), len(broker.packets(PacketType.DISCONNECT))
    session.close()
    session.close(end_session=False)
    assert (len(broker.packets(PacketType.CONNECT)),
            len(broker.packets(PacketType.DISCONNECT))) == sent


@VERSIONS
def test_a_small_inbound_queue_hands_out_every_message(broker: Recorded, version: int) -> None:
    """``inbound_queue_size=2`` and five QoS 1 messages: each ``receive`` makes room again, so
    all five are handed out in order (and acknowledged, PUBACK [MQTT-4.3.2-2])."""
    with _connection(broker.address, version, inbound_queue_size=2).create_session() as s:
        s.subscribe("pin/in", 1)
        for n in range(1, 6):
            broker.fb.send_raw(broker.fb.publish("pin/in", f"m{n}".encode(), 1, packet_id=n))
        got = [m.message for m in s.messages(timeout=5)]
        assert got == [b"m1", b"m2", b"m3", b"m4", b"m5"]
        broker.fb.wait_for("PUBACK", 4)


@VERSIONS
def test_close_ending_a_never_opened_session_hands_nothing_over(broker: Recorded,
                                                                version: int) -> None:
    """A session that published offline and is closed unopened with ``end_session=True``: its
    message is dropped with it, so the next session with that id does not send it (with
    ``end_session=False`` it would: ``handover.py``)."""
    connection = _connection(broker.address, version)
    s = connection.create_session()
    s.publish("pin/dropped", "stale", 1)
    s.close()
    again = connection.connect_to_session(s.session_id, must_exist=False)
    try:
        assert again.client.outgoing_messages == ()
        assert again.flush(5)
    finally:
        again.close()
    assert broker.packets(PacketType.PUBLISH) == []


@pytest.mark.parametrize("paths", [("ca.pem", None, None), (None, "cert.pem", None),
                                   (None, None, "key.pem")], ids=["ca", "cert", "key"])
def test_with_tls_refuses_a_context_with_any_certificate_path(
        paths: tuple[str | None, str | None, str | None]) -> None:
    """``with_tls(tls_context=..., <any path>)``: ``UsageError`` (a path given with a context
    would be ignored silently)."""
    import ssl

    context = ssl.create_default_context()
    with pytest.raises(UsageError, match="not both"):
        Connection.with_tls("127.0.0.1:8883", *paths, tls_context=context)


@VERSIONS
def test_subscribe_and_publish_default_to_qos_1(broker: Recorded, version: int) -> None:
    """``subscribe(f)`` asks for QoS 1 and ``publish(t, p)`` sends QoS 1 (the documented
    defaults)."""
    with _connection(broker.address, version).create_session() as s:
        s.subscribe("pin/default")
        s.publish("pin/default", "x")
        assert s.flush(5)
    (sub,) = broker.packets(PacketType.SUBSCRIBE)
    assert [o & 0x03 for o in sub.options] == [1]  # [MQTT-3.8.3-1] the maximum QoS requested
    assert [p.qos for p in broker.packets(PacketType.PUBLISH)] == [1]


@VERSIONS
def test_flush_waits_for_the_ack(broker: Recorded, version: int) -> None:
    """``session.flush(timeout)`` waits (up to ``timeout``) for the PUBACK held back by the
    broker, then returns True."""
    got, go = threading.Event(), threading.Event()

    def held(_fb: FakeBroker, rec: Any) -> None:  # the PUBACK goes once the test says so
        if rec.type == "PUBLISH":
            got.set()
            go.wait(20)

    broker.fb.on_packet = held
    s = _connection(broker.address, version).create_session()
    s.open()
    try:
        s.publish("pin/flush", "x", 1)
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(s.flush(20)))
        t.start()
        assert got.wait(10)
        go.set()
        t.join(25)
        assert result == [True]
    finally:
        go.set()
        s.close()


@VERSIONS
def test_ending_a_session_whose_last_server_is_down_tries_the_others(broker: Recorded,
                                                                     version: int) -> None:
    """``end_session_on_broker`` with ``last`` (the server that held the session, tried
    first): when that server is down, the other servers of the list are tried after it, so
    the session is still ended on the one that answers (the list reordered, not cut to
    ``last``)."""
    from mqttsession.mesh import end_session_on_broker
    from mqttsession.testing.brokers import free_port

    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    options = Options(address=f"{broker.address},{down}", protocol_version=version,
                      request_timeout_seconds=5.0)
    end_session_on_broker(options, "gone-dev", last=down)
    broker.fb.wait_for("DISCONNECT", 1)
    (connect,) = broker.packets(PacketType.CONNECT)
    assert connect.client_id == "gone-dev" and connect.clean_start is True
