"""Pins from a rules audit (MQTT-SESSION-RULES.md, ARCHITECTURE.md): claims no test proved, each
checked on the pure engine (the order of its actions is the persistence points)."""

from __future__ import annotations

from mqttsession._wire import PacketType
from mqttsession.engine import Engine, EngineSettings, Notify, Persist, Write
from mqttsession.state import Connected, Disconnected, SessionState, Subscribed, Unsubscribed

try:  # tests/unit may or may not be a package
    from .test_engine import (ack_in, connect, connected, index, make, notified, packets,
                              publish, writes)
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_engine import (ack_in, connect, connected, index,  # type: ignore[no-redef]
                             make, notified, packets, publish, writes)


def test_point6_subscribe_and_unsubscribe_recorded_before_their_packets() -> None:
    """Persistence point 6: the subscription's record is written (not lazily) before its
    SUBSCRIBE leaves, the removal's before its UNSUBSCRIBE."""
    e = connected()
    out = e.subscribe(["a/#"], 1)
    i = index(out, Persist, record=Subscribed)
    rec = out[i]
    assert isinstance(rec, Persist) and not rec.lazy and Subscribed("a/#", 1) in rec.records
    assert i < index(out, Write, kind=PacketType.SUBSCRIBE)
    out = e.unsubscribe(["a/#"])
    i = index(out, Persist, record=Unsubscribed)
    rec = out[i]
    assert isinstance(rec, Persist) and not rec.lazy and Unsubscribed("a/#") in rec.records
    assert i < index(out, Write, kind=PacketType.UNSUBSCRIBE)


def test_point6_connack_record_durable_before_on_connected_and_the_resends() -> None:
    """Point 6 (connect) and "On CONNACK": the Connected record (time, SessionPresent) is synced
    before on_connected runs and before any resend of the resume plan leaves."""
    e = connected()
    pid, _ = publish(e, b"m", 1)
    e.connection_lost(5.0, 0, "gone")
    e.reset()
    e.connecting("broker:1883")
    out = e.connack(0, "", True, 65535, None, 7.0) + e.lost_incoming() + e.resume()
    i = index(out, Persist, record=Connected)
    rec = out[i]
    assert isinstance(rec, Persist) and rec.sync
    (conn,) = [r for r in rec.records if isinstance(r, Connected)]
    assert conn.session_present is True and conn.at == 7.0
    assert i < index(out, Notify) < index(out, Write, kind=PacketType.PUBLISH)
    assert [(p.packet_id, p.dup) for p in packets(out)] == [(pid, True)]


def test_point6_disconnect_time_and_expiry_durable_before_the_disconnect() -> None:
    """Point 6 (disconnect): the time and the Session Expiry Interval are synced by
    ``disconnect`` (the driver writes DISCONNECT after it), none of it written as a packet."""
    st = SessionState()
    st.configure(client_id="c", clean_session=False, protocol_version=5)
    st.session_expiry_interval = 300
    e = Engine(EngineSettings(), st)
    connect(e)
    out = e.disconnect(42.0)
    assert not writes(out)
    (rec,) = out
    assert isinstance(rec, Persist) and rec.sync
    assert Disconnected(42.0, 300) in rec.records
    assert e.disconnect_expiry() == 300


def test_session_lost_republishes_under_new_ids_with_dup_0_in_seq_order() -> None:
    """On CONNACK, SessionPresent=0 while holding state [MQTT-3.2.2-5]: messages not past
    PUBREC are published again as NEW messages: new packet ids, DUP=0 (the flag bit itself),
    in their original order [MQTT-4.6.0-1]."""
    e = connected()
    old = [publish(e, p, q)[0] for p, q in ((b"a", 1), (b"b", 2), (b"c", 1))]
    e.connection_lost(5.0, 0, "gone")
    out = connect(e, session_present=False)
    got = [(p.packet_id, p.payload) for p in packets(out)]
    assert [payload for _pid, payload in got] == [b"a", b"b", b"c"]
    new = [pid for pid, _payload in got]
    assert len(set(new)) == 3 and not set(new) & set(old)
    assert all(w.packet[0] & 0x08 == 0 for w in writes(out))
    (lost,) = notified(out, "on_session_lost")
    assert [m.message for m in lost.republished] == [b"a", b"b", b"c"]  # type: ignore[attr-defined]


def test_qos0_publish_has_dup_0_while_resends_go_with_dup_1() -> None:
    """[MQTT-3.3.1-2]: a QoS 0 PUBLISH's DUP bit is 0, also written beside resends with
    DUP=1 (the raw first byte: the decoder would refuse a set one anyway)."""
    e = connected()
    publish(e, b"q1", 1)
    e.connection_lost(5.0, 0, "gone")
    resent = connect(e, session_present=True)
    assert [w.packet[0] & 0x08 for w in writes(resent)] == [0x08]
    _pid, out = publish(e, b"q0", 0)
    (w,) = writes(out)
    assert w.qos == 0 and w.packet[0] == 0x30  # PUBLISH, DUP 0, QoS 0, RETAIN 0


def test_flows_refused_by_reason_code_are_not_resent_on_reconnect() -> None:
    """MQTT 5 [MQTT-4.4.0-2]: a PUBACK or PUBREC with a reason code >= 0x80 completes the
    flow: no PUBLISH (nor PUBREL) goes again at the next SessionPresent=1 reconnect, and the
    ids are free again."""
    e = connected(protocol=5)
    p1, _ = publish(e, b"one", 1)
    p2, _ = publish(e, b"two", 2)
    e.receive(ack_in(PacketType.PUBACK, p1, reason=0x97, protocol=5))
    assert not writes(e.receive(ack_in(PacketType.PUBREC, p2, reason=0x80, protocol=5)))
    e.connection_lost(5.0, 0, "gone")
    assert packets(connect(e, session_present=True), 5) == []
    assert not e.state.outgoing and {p1, p2}.isdisjoint(e.busy_packet_ids())


def test_pubrel_sent_then_reconnect_resends_pubrel_never_the_publish() -> None:
    """[MQTT-4.3.3-6] with [MQTT-4.4.0-1]: once PUBREL went, a reconnect (SessionPresent=1)
    sends PUBREL with the original id again, never that PUBLISH; so does a new process that
    reads back the records of a kill -9 right after (the PUBREC's sync wrote every earlier
    lazy one too)."""
    e = make()
    written = connect(e)
    pid, out = publish(e, b"x", 2)
    written += out
    out = e.receive(ack_in(PacketType.PUBREC, pid))
    written += out
    assert [p.type for p in packets(out)] == [PacketType.PUBREL]
    st = SessionState()
    st.configure(client_id="c", clean_session=False)
    for a in written:
        if isinstance(a, Persist):
            for r in a.records:
                st.apply(r)
    e.connection_lost(5.0, 0, "gone")
    assert [(p.type, p.packet_id) for p in packets(connect(e, True))] == [
        (PacketType.PUBREL, pid)]
    fresh = Engine(EngineSettings(), st)
    assert [(p.type, p.packet_id) for p in packets(connect(fresh, True))] == [
        (PacketType.PUBREL, pid)]
