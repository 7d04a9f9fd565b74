"""The engine's rules a mutation hunt found no test held (each test here fails with the
mutation it names: a line of engine.py, outgoing.py or transitions.py made to do nothing or
the opposite)."""

from __future__ import annotations

import pytest

from mqttsession import _wire
from mqttsession._wire import PacketType
from mqttsession.state import Disconnected, SessionState

try:  # tests/unit may or may not be a package
    from .test_engine import (ack_in, connect, connected, incoming, make, notified, packets,
                              publish, publish_in, writes)
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_engine import (ack_in, connect, connected, incoming,  # type: ignore[no-redef]
                             make, notified, packets, publish, publish_in, writes)


def _dups(actions: list[object], protocol: int) -> list[int]:
    return [p.packet_id for p in packets(actions, protocol)  # type: ignore[arg-type]
            if p.type is PacketType.PUBLISH and p.dup]


@pytest.mark.parametrize("protocol", [4, 5])
def test_republish_interval_resends_on_311_once_each_interval_and_never_on_5(
        protocol: int) -> None:
    """``RepublishInterval`` (MQTT 3.1.1): an unacknowledged PUBLISH is written again (DUP)
    once the interval passed since it was last written, not at every tick after; MQTT 5
    resends only on a reconnect [MQTT-4.4.0-1] (without the version check it resent on the
    timer; without noting the resend's time it resent at every tick)."""
    e = connected(protocol, republish_interval=5)
    pid, _ = publish(e, b"x", 1)
    got = {t: _dups(e.tick(float(t), float(t)), protocol) for t in (1, 6, 7, 8, 11)}
    if protocol == 5:
        assert got == {1: [], 6: [], 7: [], 8: [], 11: []}
    else:
        assert got == {1: [], 6: [pid], 7: [], 8: [], 11: [pid]}
    e.receive(ack_in(PacketType.PUBACK, pid, protocol=protocol))
    assert _dups(e.tick(20.0, 20.0), protocol) == []  # acknowledged: never again


def test_a_disconnected_record_restores_the_session_expiry_interval() -> None:
    """Replaying a journal: a ``Disconnected`` record sets the Session Expiry Interval the
    session had when it disconnected (a DISCONNECT may change it), not only the time."""
    s = SessionState()
    s.configure(client_id="c", protocol_version=5, clean_session=False,
                session_expiry_interval=30)
    s.apply(Disconnected(160.0, 120))
    assert (s.disconnected_at, s.session_expiry_interval) == (160.0, 120)
    s.apply(Disconnected(170.0, None))
    assert s.session_expiry_interval is None


def test_a_session_that_never_reached_a_broker_is_not_told_it_was_lost() -> None:
    """Messages published before the first connection, then a CONNACK with SessionPresent=0:
    nothing was lost at the broker (it never had the session), so no ``on_session_lost``."""
    e = make()
    publish(e, b"offline", 1)
    out = connect(e, session_present=False)
    assert notified(out, "on_session_lost") == []
    assert [p.payload for p in packets(out) if p.type is PacketType.PUBLISH] == [b"offline"]


def test_a_session_a_broker_accepted_is_told_it_was_lost_also_with_nothing_to_resend() -> None:
    """A session holding only a subscription, accepted once: a later CONNACK with
    SessionPresent=0 is its loss at the broker (``on_session_lost``, the subscription made
    again) although no message is resent (the first connection's exemption is for a session
    that never reached a broker)."""
    e = make()
    e.subscribe(["a/#"], 1)
    first = connect(e, session_present=False)
    assert notified(first, "on_session_lost") == []
    (sub,) = [p for p in packets(first) if p.type is PacketType.SUBSCRIBE]
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    lost = connect(e, session_present=False)
    assert len(notified(lost, "on_session_lost")) == 1
    assert [p.type for p in packets(lost)] == [PacketType.SUBSCRIBE]


def test_a_puback_of_0x80_is_a_refusal() -> None:
    """0x80 (Unspecified error) is the first refusal code: the message is dropped "refused",
    not reported sent."""
    e = connected(protocol=5)
    pid, _ = publish(e, b"x", 1)
    actions = e.receive(ack_in(PacketType.PUBACK, pid, reason=0x80, protocol=5))
    assert not notified(actions, "on_message_out") and not e.state.outgoing
    assert [d.reason for d in notified(actions, "on_message_dropped")] == [  # type: ignore[attr-defined]
        "refused"]


def test_drain_rate_limit_never_holds_back_resends() -> None:
    """DrainRateLimit paces new PUBLISHes only: back on a session the broker kept, every
    in-flight message is written again (DUP) at once, whatever the bucket holds."""
    e = connected(drain_rate_limit=1, max_inflight=10)
    pids = [publish(e, f"m{i}".encode(), 1)[0] for i in range(3)]
    for t in (1.0, 2.0, 3.0):  # one new PUBLISH a second
        e.tick(t, t)
    assert len(e.state.outgoing) == 3
    out = connect(e, session_present=True)  # (the bucket empty)
    assert _dups(out, 4) == pids


def test_a_released_qos2_message_is_not_dropped_by_smaller_broker_limits() -> None:
    """A QoS 2 message whose PUBREL went out (awaiting PUBCOMP) is past its PUBLISH: a
    reconnect whose CONNACK sets a Maximum Packet Size below its size (or a Maximum QoS of 1)
    does not drop it; its PUBREL goes out again so the broker's flow ends."""
    e = connected(protocol=5)
    pid, _ = publish(e, b"x" * 200, 2)
    e.receive(ack_in(PacketType.PUBREC, pid, protocol=5))
    out = connect(e, session_present=True, max_packet=64)
    assert notified(out, "on_message_dropped") == []
    assert [(p.type, p.packet_id) for p in packets(out, 5)] == [(PacketType.PUBREL, pid)]


def test_a_disconnect_before_the_recovered_ids_are_released_keeps_their_reservation() -> None:
    """Ids of a reservation recovered after a power cut (the broker may hold QoS 2 flows for
    them [MQTT-4.3.3-10]) stay reserved until the PUBRELs sent for them are answered: a
    DISCONNECT before that writes no ``Reserved(0, 0)`` (which let the next process hand
    those ids out again while the broker still held their flows: new messages taken for
    duplicates and lost), and the next connection releases them again."""
    try:
        from .test_engine import _recovered_state, _reserved
    except ImportError:  # pragma: no cover - rootdir-relative import
        from test_engine import _recovered_state, _reserved  # type: ignore[no-redef]
    from mqttsession.engine import Engine, EngineSettings  # noqa: PLC0415

    e = Engine(EngineSettings(reserve_packet_ids=4), _recovered_state())
    sent = [(p.type, p.packet_id) for p in packets(connect(e, session_present=True))]
    assert (PacketType.PUBREL, 2) in sent and e._unreleased is not None
    out = e.disconnect(2.0)
    assert (0, 0) not in _reserved(out)
    assert (e.state.reserved_first, e.state.reserved_last) == (1, 4)
    again = [(p.type, p.packet_id) for p in packets(connect(e, session_present=True))]
    assert {(PacketType.PUBREL, i) for i in (2, 3, 4)} <= set(again)


def _closes_until_error(e: object, rounds: int, pubrel_between: bool = False) -> list[int]:
    """``rounds`` connections each closed by the broker with no ack (the session's one QoS 1
    message first in flight); the rounds whose close reported ``on_error``."""
    from mqttsession.engine import Engine  # noqa: PLC0415

    assert isinstance(e, Engine)
    reported = []
    for r in range(1, rounds + 1):
        connect(e, session_present=True)
        if pubrel_between:  # (an incoming QoS 2 flow's PUBREL: not an ack of ours)
            e.receive(publish_in(r, 2))
            e.receive(ack_in(PacketType.PUBREL, r))
        out = e.connection_lost(float(r), 0x80, "closed")
        if notified(out, "on_error"):
            reported.append(r)
    return reported


def test_a_broker_closing_on_the_head_message_is_reported_once() -> None:
    """The broker closes connection after connection, no ack, the same message first in
    flight: ``on_error`` once, at the third close, not at every later one; a PUBREL of an
    incoming flow is no ack of the session's messages (it does not hide the stall)."""
    from mqttsession.engine import SUBSCRIBE_TRIES  # noqa: PLC0415

    e = make()
    publish(e, b"too big for it", 1)
    assert _closes_until_error(e, 6) == [SUBSCRIBE_TRIES]
    e = make()
    publish(e, b"too big for it", 1)
    assert _closes_until_error(e, 4, pubrel_between=True) == [SUBSCRIBE_TRIES]


@pytest.mark.parametrize("kind", ["qos", "retain"])
def test_a_queued_message_the_brokers_limits_refuse_is_dropped_with_its_reason_code(
        kind: str) -> None:
    """MQTT 5: a message waiting while a CONNACK says Maximum QoS 1 (it is QoS 2) or Retain
    Available 0 (it is retained) is dropped "unsupported", ``on_error`` naming 0x9B (QoS
    not supported) or 0x9A (Retain not supported) [MQTT-3.2.2-11] [MQTT-3.2.2-14]."""
    e = make(5)
    e.publish("t", b"x", 2 if kind == "qos" else 1, kind == "retain")
    e.reset()
    e.connecting("broker:1883")
    out = e.connack(0, "", False, 65535, None, 0.0,
                    limits=(1, True) if kind == "qos" else (2, False))
    out += e.lost_incoming() + e.resume()
    assert [d.reason for d in notified(out, "on_message_dropped")] == [  # type: ignore[attr-defined]
        "unsupported"]
    assert [x.error_code for x in notified(out, "on_error")] == [  # type: ignore[attr-defined]
        0x9B if kind == "qos" else 0x9A]
    assert not [p for p in packets(out, 5) if p.type is PacketType.PUBLISH]


def test_a_publish_exactly_at_the_brokers_maximum_packet_size_is_sent() -> None:
    """[MQTT-3.2.2-15] forbids a packet OVER the broker's Maximum Packet Size: one of exactly
    that size is sent, one byte more is refused (``UsageError``, nothing stored)."""
    from mqttsession.errors import UsageError  # noqa: PLC0415

    e = make(5)
    connect(e, max_packet=200)
    from mqttsession.validation import publish_packet_size  # noqa: PLC0415

    body = next(n for n in range(200) if publish_packet_size("t", n, 1, 0, True)[1] == 200)
    assert len(_wire.encode_publish("t", b"x" * body, qos=1, packet_id=1, protocol=5)) == 200
    pid, out = publish(e, b"x" * body, 1)
    (p,) = [p for p in packets(out, 5) if p.type is PacketType.PUBLISH]
    assert p.packet_id == pid and len(out) and len(p.payload) == body
    with pytest.raises(UsageError, match="Maximum Packet Size"):
        publish(e, b"x" * (body + 1), 1)
    assert len(e.state.outgoing) == 1


def test_pubrec_answers_for_flows_the_session_does_not_hold_as_qos2() -> None:
    """A PUBREC for a packet id the session holds nothing for: PUBREL lets the broker end
    its flow [MQTT-4.3.3-11], unless the PUBREC failed (0x80+: the flow has ended). A PUBREC
    for a QoS 1 message (a broker that took it as QoS 2) ends that message and gets its
    PUBREL, so the broker's flow ends too; a failed one gets none."""
    e = connected(protocol=5)
    assert [(p.type, p.packet_id) for p in packets(e.receive(
        ack_in(PacketType.PUBREC, 77, protocol=5)), 5)] == [(PacketType.PUBREL, 77)]
    assert packets(e.receive(ack_in(PacketType.PUBREC, 78, reason=0x80, protocol=5)), 5) == []
    for code, pubrel in ((0, True), (0x97, False)):
        pid, _ = publish(e, b"q1", 1)
        out = e.receive(ack_in(PacketType.PUBREC, pid, reason=code, protocol=5))
        assert [(p.type, p.packet_id) for p in packets(out, 5)] == (
            [(PacketType.PUBREL, pid)] if pubrel else [])
        assert e.state.outgoing_by_packet_id(pid) is None  # (the message ended either way)


def test_failover_republish_keeps_only_messages_the_broker_accepted() -> None:
    """``FailoverRepublish`` keeps the last QoS 1 messages acknowledged, to publish again on
    the next server after a move; one the broker refused (PUBACK 0x80+) is not among them
    (it was dropped "refused": publishing it elsewhere would deliver what was refused)."""
    e = connected(protocol=5, failover_republish=5)
    ok, _ = publish(e, b"accepted", 1)
    bad, _ = publish(e, b"refused", 1)
    e.receive(ack_in(PacketType.PUBACK, ok, protocol=5))
    e.receive(ack_in(PacketType.PUBACK, bad, reason=0x87, protocol=5))
    assert [m.payload for m in e.recent_acked] == [b"accepted"]


def test_failover_republish_keeps_exactly_the_last_n() -> None:
    """``FailoverRepublish=2``: of three QoS 1 messages acknowledged, the last two are kept
    to publish again after a move (one more would be a duplicate more)."""
    e = connected(protocol=5, failover_republish=2)
    for body in (b"m1", b"m2", b"m3"):
        pid, _ = publish(e, body, 1)
        e.receive(ack_in(PacketType.PUBACK, pid, protocol=5))
    assert [m.payload for m in e.recent_acked] == [b"m2", b"m3"]


def _on(e: object, server: str, present: bool) -> list[object]:
    """A connection to ``server`` (CONNACK with ``present``), its resume plan."""
    from mqttsession.engine import Engine  # noqa: PLC0415

    assert isinstance(e, Engine)
    e.reset()
    e.connecting(server)
    return [*e.connack(0, "", present, 65535, None, 0.0), *e.lost_incoming(), *e.resume()]


def test_back_on_a_server_a_subscription_changed_elsewhere_is_made_again() -> None:
    """Failover: subscribed at QoS 0 on A, moved to B (SessionPresent=1) and subscribed
    there at QoS 1, back on A whose session is as it was left: the filter goes to A again at
    QoS 1 (a SUBSCRIBE replaces the one A holds [MQTT-3.8.4-3]); without it A went on
    delivering at QoS 0."""
    e = make()
    e.subscribe(["a/#"], 0)
    (sub,) = [p for p in packets(_on(e, "A:1", False))  # type: ignore[arg-type]
              if p.type is PacketType.SUBSCRIBE]
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [0])))
    e.connection_lost(1.0, 0x80, "lost")
    assert packets(_on(e, "B:1", True)) == []  # type: ignore[arg-type]
    (sub,) = packets(e.subscribe(["a/#"], 1))
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    e.connection_lost(2.0, 0x80, "lost")
    back = [p for p in packets(_on(e, "A:1", True))  # type: ignore[arg-type]
            if p.type is PacketType.SUBSCRIBE]
    assert [(p.filters, p.options) for p in back] == [(("a/#",), (1,))]


def test_a_message_taken_at_a_move_is_not_delivered_again_when_the_session_is_lost() -> None:
    """An incoming QoS 2 message received on A (PUBREC sent), handed to the application at
    the move to B (SessionPresent=1: A's flow will never be released there) and taken
    (``ack``); B then loses the session (SessionPresent=0): the message is not delivered a
    second time with the orphans (exactly once)."""
    from mqttsession.engine import Deliver  # noqa: PLC0415

    e = make()
    _on(e, "A:1", False)
    e.receive(publish_in(5, 2, b"in"))
    e.connection_lost(1.0, 0x80, "lost")
    moved = [a for a in _on(e, "B:1", True) if isinstance(a, Deliver)]
    assert [d.message.message for d in moved] == [b"in"]
    assert e.ack(moved[0].message)[0]
    e.connection_lost(2.0, 0x80, "lost")
    assert [a for a in _on(e, "B:1", False) if isinstance(a, Deliver)] == []


def test_qos0_past_the_backlog_bound_is_dropped_and_one_always_goes(
        caplog: pytest.LogCaptureFixture) -> None:
    """``QoS0BacklogBytes``: a QoS 0 publish whose PUBLISH packet (and ``PACKET_COST``, what
    holds it), added to the bytes the connection holds unwritten, passes the bound is dropped
    (logged, no PUBLISH, nothing held); exactly at it, or with nothing waiting (however
    large), it goes; 0: no bound. The packet is counted as the connection counts it (topic
    and header included), not only its payload."""
    from mqttsession.actions import PACKET_COST  # noqa: PLC0415

    e = connected(qos0_backlog_bytes=1000 + PACKET_COST)
    waiting = [0]
    e.unsent_qos0 = lambda: waiting[0]
    assert len(writes(publish(e, b"x" * 5000, 0)[1])) == 1  # nothing waits: it goes
    head = len(writes(publish(e, b"", 0)[1])[0].packet)  # the PUBLISH without a payload
    waiting[0] = 900
    assert len(writes(publish(e, b"x" * (100 - head), 0)[1])) == 1  # 900 + 100: at the bound
    with caplog.at_level("DEBUG", logger="mqttsession"):
        pid, actions = publish(e, b"x" * (101 - head), 0)
    assert (pid, actions) == (0, [])
    assert any("connection is behind" in r.getMessage() for r in caplog.records)
    assert not e.state.outgoing
    e.settings.qos0_backlog_bytes = 0
    waiting[0] = 10**9
    assert len(writes(publish(e, b"x" * 101, 0)[1])) == 1


def test_publish_many_counts_its_own_qos0_packets_against_the_backlog_bound() -> None:
    """``publish_many``: the QoS 0 PUBLISHes one call wrote count, whole packets and
    ``PACKET_COST`` each, before the connection has them: with room for exactly three
    packets past what waits all three go, with a byte less the third is dropped."""
    from mqttsession.actions import PACKET_COST  # noqa: PLC0415

    e = connected()
    size = len(writes(publish(e, b"x" * 50, 0)[1])[0].packet)  # one message's PUBLISH
    e.unsent_qos0 = lambda: 10  # something waits: the bound applies
    for room, sent in ((0, 3), (-1, 2)):
        e.settings.qos0_backlog_bytes = 10 + 3 * (size + PACKET_COST) + room
        ids, actions = e.publish_many([("t", b"x" * 50, 0, False, b"")] * 3, 0.0)
        assert ids == [0, 0, 0] and len(writes(actions)) == sent

def test_replay_refuses_a_disk_queue_message_read_back_twice() -> None:
    """A ``Loaded`` record naming a seq already read back (a journal that is consistent by its
    CRCs but not by its records) is refused, not held twice."""
    from mqttsession.records import Loaded  # noqa: PLC0415
    from mqttsession.state import TransitionError  # noqa: PLC0415

    s = SessionState()
    s.configure(client_id="c", protocol_version=4, clean_session=False)
    one = s.spool_checked("t", b"one", 1, False, b"", 0.0).message
    s.spool_checked("t", b"two", 1, False, b"", 0.0)
    s.load([one], one.seq + 1)
    with pytest.raises(TransitionError, match="out of order"):
        s.apply(Loaded((one,), one.seq + 2))


def test_replay_refuses_orphans_released_that_are_not_the_first_held() -> None:
    """``OrphansReleased`` names the first orphans in order: another id, the wrong order or
    none at all is refused."""
    from mqttsession.records import OrphansReleased  # noqa: PLC0415
    from mqttsession.state import TransitionError  # noqa: PLC0415

    e = connected()
    for pid in (4, 5):
        e.receive(publish_in(pid, 2, b"held"))
    e.connection_lost(1.0, 0, "gone")
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, 2.0)
    assert [im.packet_id for im in e.state.orphans] == [4, 5]
    for ids in ((5,), (5, 4), ()):
        with pytest.raises(TransitionError, match="not the first held"):
            e.state.apply(OrphansReleased(ids))
    e.state.apply(OrphansReleased((4,)))
    assert [im.packet_id for im in e.state.orphans] == [5]


def test_a_filter_subscribed_and_unsubscribed_offline_is_not_subscribed_on_connect() -> None:
    """``subscribe`` then ``unsubscribe`` of a filter while disconnected: the connection
    sends no SUBSCRIBE for it (the unsubscribe takes back the waiting SUBSCRIBE; without it
    the broker was subscribed after all and delivered on it) (a hunt)."""
    e = make()
    e.subscribe(["gone/#"], 1)
    e.unsubscribe(["gone/#"])
    got = packets(connect(e, session_present=True))
    assert [p for p in got if p.type is PacketType.SUBSCRIBE] == []
    assert e.state.subscriptions == {}


def test_a_subscribe_cut_by_a_lost_connection_is_not_sent_again_once_unsubscribed() -> None:
    """A SUBSCRIBE without its SUBACK when the connection is lost goes out again on the next
    one, unless its filter was unsubscribed meanwhile: then only the UNSUBSCRIBE goes (a
    SUBSCRIBE after it left the broker subscribed to a filter the session dropped)
    (a hunt)."""
    e = connected()
    packets(e.subscribe(["cut/#"], 1))  # its SUBACK never comes
    packets(e.unsubscribe(["cut/#"]))  # nor its UNSUBACK
    e.connection_lost(1.0, 0x80, "lost")
    got = packets(connect(e, session_present=True))
    assert [(p.type, p.filters) for p in got] == [(PacketType.UNSUBSCRIBE, ("cut/#",))]


def test_back_on_a_server_an_unsubscribe_in_flight_when_it_was_left_is_sent_again() -> None:
    """Failover: an UNSUBSCRIBE written to A and unanswered when A was lost, answered on B
    (SessionPresent=1); back on A (SessionPresent=1), whose session may still hold the
    filter: the UNSUBSCRIBE goes to A again (without it A went on delivering on a filter the
    session dropped) (a hunt)."""
    e = make()
    e.subscribe(["a/#"], 1)
    (sub,) = [p for p in packets(_on(e, "A:1", False))  # type: ignore[arg-type]
              if p.type is PacketType.SUBSCRIBE]
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    packets(e.unsubscribe(["a/#"]))  # its UNSUBACK never comes from A
    e.connection_lost(1.0, 0x80, "lost")
    (unsub,) = packets(_on(e, "B:1", True))  # type: ignore[arg-type]
    assert (unsub.type, unsub.filters) == (PacketType.UNSUBSCRIBE, ("a/#",))
    e.receive(incoming(_wire.encode_unsuback(unsub.packet_id)))
    e.connection_lost(2.0, 0x80, "lost")
    back = packets(_on(e, "A:1", True))  # type: ignore[arg-type]
    assert [(p.type, p.filters) for p in back] == [(PacketType.UNSUBSCRIBE, ("a/#",))]
