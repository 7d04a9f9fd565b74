"""The session model of mqttsession.state: every transition, legal and illegal.

Spec statement ids are from /work/shared/reference/MQTT-SESSION-RULES.md.
"""

from __future__ import annotations

import itertools
import math

import pytest

from mqttsession import codec
from mqttsession.errors import (
    MQTTSessionError,
    PacketIdsExhausted,
    StateError,
    TransitionError,
    UsageError,
)
from mqttsession.state import (
    MAX_PACKET_ID,
    OUTGOING_TRANSITIONS,
    PHASES_FOR_QOS,
    Accepted,
    Activity,
    Configured,
    Connected,
    Disconnected,
    Event,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    Received,
    Released,
    SessionReset,
    SessionState,
    Stepped,
    Subscribed,
    Unsubscribed,
    validate_filter,
    validate_qos,
    validate_topic,
)

from ._support import index_consistent, snap

Q, A1, A2, A3 = Phase.QUEUED, Phase.AWAIT_PUBACK, Phase.AWAIT_PUBREC, Phase.AWAIT_PUBCOMP


def one_message(qos: int, phase: Phase, pid: int = 7, seq: int = 3) -> SessionState:
    """A state holding one outgoing message (plus a bystander so 'nothing changed' means more)."""
    bystander = OutgoingMessage(1, 1, "by/stander", b"b", 1, phase=A1)
    m = OutgoingMessage(seq, pid, "t/x", b"payload", qos, phase=phase)
    return SessionState(
        next_seq=seq + 1,
        last_packet_id=pid,
        outgoing={1: bystander, seq: m},
        incoming={4: IncomingMessage(4, "in", b"i")},
        subscriptions={"a/+": 1},
    )


def assert_raises_unchanged(state: SessionState, exc: type[BaseException], fn, *args, **kw):
    before = snap(state)
    small = len(state.outgoing) < 1000  # the 65535-message states: skip the (slow) text compare
    text = codec.encode(state) if small and _encodable(state) else None
    with pytest.raises(exc):
        fn(*args, **kw)
    assert snap(state) == before
    index_consistent(state)
    if text is not None:
        assert codec.encode(state) == text


def _encodable(state: SessionState) -> bool:
    try:
        state.check_invariants()
    except StateError:
        return False
    return True


# =========================================================================== the table


def test_transition_table_is_exactly_the_documented_one() -> None:
    assert dict(OUTGOING_TRANSITIONS) == {
        (1, Q, Event.SEND): A1,
        (1, A1, Event.PUBACK): None,
        (2, Q, Event.SEND): A2,
        (2, A2, Event.PUBACK): None,  # a broker that downgrades QoS 2 to 1
        (1, A1, Event.PUBREC): None,  # a broker that took QoS 1 as QoS 2
        (1, A1, Event.PUBREC_FAILED): None,
        (2, A2, Event.PUBREC): A3,
        (2, A2, Event.PUBREC_FAILED): None,
        (2, A3, Event.PUBCOMP): None,
        (1, Q, Event.SESSION_LOST): Q,
        (2, Q, Event.SESSION_LOST): Q,
        (1, A1, Event.SESSION_LOST): Q,
        (2, A2, Event.SESSION_LOST): Q,
        (2, A3, Event.SESSION_LOST): Q,  # ReleasedOnSessionLost=republish (the default)
        (1, Q, Event.TOO_LARGE): None,  # over the broker's Maximum Packet Size
        (1, A1, Event.TOO_LARGE): None,
        (2, Q, Event.TOO_LARGE): None,
        (2, A2, Event.TOO_LARGE): None,
        (1, Q, Event.DROPPED): None,  # QueueFullPolicy=drop-oldest: never-sent messages only
        (2, Q, Event.DROPPED): None,
        (1, Q, Event.EXPIRED): None,  # its Message Expiry Interval passed before it was sent
        (2, Q, Event.EXPIRED): None,
    }
    for (qos, phase, _event), nxt in OUTGOING_TRANSITIONS.items():
        assert phase in PHASES_FOR_QOS[qos]
        assert nxt is None or nxt in PHASES_FOR_QOS[qos]


@pytest.mark.parametrize(
    ("qos", "phase", "event"), sorted(OUTGOING_TRANSITIONS, key=lambda k: (k[0], k[1].value, k[2].value))
)
def test_every_legal_transition_via_apply(qos: int, phase: Phase, event: Event) -> None:
    state = one_message(qos, phase)
    nxt = OUTGOING_TRANSITIONS[(qos, phase, event)]
    pid = 0 if (event is Event.SESSION_LOST and phase is not Q) else 7
    state.apply(Stepped(3, event, pid))
    index_consistent(state)
    state.check_invariants()
    if nxt is None:
        assert 3 not in state.outgoing
        assert state.outgoing_by_packet_id(7) is None  # the id is free again
    else:
        assert state.outgoing[3].phase is nxt
        assert state.outgoing[3].packet_id == pid
    assert state.outgoing[1].phase is A1  # the bystander is untouched


ILLEGAL = [
    (qos, phase, event)
    for qos, phase, event in itertools.product((1, 2), Phase, Event)
    if (qos, phase, event) not in OUTGOING_TRANSITIONS
]


def test_illegal_list_is_complete() -> None:
    assert len(ILLEGAL) == 2 * len(Phase) * len(Event) - len(OUTGOING_TRANSITIONS) == 50


@pytest.mark.parametrize(("qos", "phase", "event"), ILLEGAL, ids=lambda v: getattr(v, "value", v))
def test_every_illegal_transition_raises_and_changes_nothing(qos: int, phase: Phase, event: Event):
    """h11 style: an illegal transition raises TransitionError and leaves the state as it was."""
    state = one_message(qos, phase)
    assert_raises_unchanged(state, TransitionError, state.apply, Stepped(3, event, 7))
    # and through the public methods that produce that event
    public = {
        Event.SEND: lambda: state.send(3),
        Event.PUBACK: lambda: state.puback(7),
        Event.PUBREC: lambda: state.pubrec(7),
        Event.PUBREC_FAILED: lambda: state.pubrec(7, 0x80),
        Event.PUBCOMP: lambda: state.pubcomp(7),
        Event.DROPPED: lambda: state.drop(3),
        Event.EXPIRED: lambda: state.expire(3),
    }
    if event in public:
        assert_raises_unchanged(state, TransitionError, public[event])


# =========================================================================== QoS 1 / QoS 2 flows


def test_wrong_kind_acks_end_the_flow() -> None:
    st = SessionState(client_id="c")
    two = st.accept("t", b"2", 2).message
    one = st.accept("t", b"1", 1).message
    st.send(two.seq)
    st.send(one.seq)
    st.puback(two.packet_id)  # RabbitMQ 3.x answers QoS 2 with PUBACK
    st.pubrec(one.packet_id)
    assert st.outgoing == {}
    index_consistent(st)


def test_too_large_takes_a_message_out_until_released() -> None:
    st = SessionState(client_id="c")
    queued = st.accept("t", b"q", 1).message
    sent = st.accept("t", b"s", 2).message
    st.send(sent.seq)
    rec = st.too_large(queued.seq)
    assert codec.decode_record(codec.encode_record(rec)) == rec  # binary event code 6
    st.too_large(sent.seq)
    assert st.outgoing == {}
    index_consistent(st)
    released = st.accept("t", b"r", 2).message
    st.send(released.seq)
    st.pubrec(released.packet_id)
    assert_raises_unchanged(st, TransitionError, st.too_large, released.seq)  # PUBREL only


def test_qos1_accept_send_puback() -> None:
    s = SessionState()
    rec = s.accept("a/b", b"x", 1)
    assert isinstance(rec, Accepted)
    m = rec.message
    assert (m.seq, m.packet_id, m.phase, m.qos) == (1, 1, Q, 1)
    assert not m.sent
    assert s.next_seq == 2 and s.last_packet_id == 1
    st = s.send(1)
    assert st == Stepped(1, Event.SEND, 1)
    assert s.outgoing[1].phase is A1 and s.outgoing[1].sent
    assert s.outgoing_by_packet_id(1) == s.outgoing[1]
    done = s.puback(1)
    assert done == Stepped(1, Event.PUBACK, 1)
    assert s.outgoing == {} and s.outgoing_by_packet_id(1) is None
    assert s.next_seq == 2  # seq numbers are never reused
    index_consistent(s)
    s.check_invariants()


def test_qos2_accept_send_pubrec_pubcomp() -> None:
    """[MQTT-4.3.3-6] PUBREC releases the message: it then awaits PUBCOMP."""
    s = SessionState()
    s.accept("a", b"x", 2, retain=True, properties=b"\x01\x02")
    s.send(1)
    assert s.outgoing[1].phase is A2
    assert s.pubrec(1) == Stepped(1, Event.PUBREC, 1)
    assert s.outgoing[1].phase is A3
    assert s.outgoing[1].retain and s.outgoing[1].properties == b"\x01\x02"
    assert s.pubcomp(1) == Stepped(1, Event.PUBCOMP, 1)
    assert s.empty
    index_consistent(s)


@pytest.mark.parametrize("reason", [0x80, 0x83, 0x87, 0x91, 0x97, 0xFF])
def test_qos2_pubrec_failure_ends_the_flow_mqtt_4_4_0_2(reason: int) -> None:
    """[MQTT-4.4.0-2] PUBREC with reason >= 0x80 completes the flow: never retransmitted."""
    s = SessionState()
    s.accept("a", b"x", 2)
    s.send(1)
    assert s.pubrec(1, reason) == Stepped(1, Event.PUBREC_FAILED, 1)
    assert s.outgoing == {}
    assert_raises_unchanged(s, TransitionError, s.pubcomp, 1)


@pytest.mark.parametrize("reason", [0x00, 0x10, 0x7F])
def test_qos2_pubrec_success_codes_release(reason: int) -> None:
    s = SessionState()
    s.accept("a", b"x", 2)
    s.send(1)
    s.pubrec(1, reason)
    assert s.outgoing[1].phase is A3


def test_duplicate_acks_are_refused_and_change_nothing() -> None:
    s = SessionState()
    s.accept("a", b"x", 2)
    s.send(1)
    s.pubrec(1)
    assert_raises_unchanged(s, TransitionError, s.pubrec, 1)  # PUBREC twice
    assert_raises_unchanged(s, TransitionError, s.send, 1)  # [MQTT-4.3.3-6] no PUBLISH after PUBREL
    s.pubcomp(1)
    assert_raises_unchanged(s, TransitionError, s.pubcomp, 1)


@pytest.mark.parametrize("pid", [0, 2, 99, MAX_PACKET_ID, MAX_PACKET_ID + 1, -1])
@pytest.mark.parametrize("ack", ["puback", "pubrec", "pubrec_failed", "pubcomp"])
def test_ack_for_unknown_packet_id_raises_and_changes_nothing(pid: int, ack: str) -> None:
    s = SessionState()
    s.accept("a", b"x", 1)
    s.send(1)
    s.accept("b", b"y", 2)
    s.send(2)  # ids 1 and 2 are held
    held = {m.packet_id for m in s.outgoing.values()}
    if pid in held:
        pid = 3
    call = {
        "puback": lambda: s.puback(pid),
        "pubrec": lambda: s.pubrec(pid),
        "pubrec_failed": lambda: s.pubrec(pid, 0x80),
        "pubcomp": lambda: s.pubcomp(pid),
    }[ack]
    assert_raises_unchanged(s, TransitionError, call)


@pytest.mark.parametrize("seq", [0, 2, 5, -1])
def test_send_unknown_seq_raises_and_changes_nothing(seq: int) -> None:
    s = SessionState()
    s.accept("a", b"x", 1)
    assert_raises_unchanged(s, TransitionError, s.send, seq)
    assert_raises_unchanged(s, TransitionError, s.apply, Stepped(seq, Event.PUBACK, 1))


def test_send_keeps_the_id_given_at_accept() -> None:
    s = SessionState()
    s.accept("a", b"x", 1)
    s.accept("b", b"y", 2)
    assert s.send(2).packet_id == 2
    assert s.send(1).packet_id == 1


def test_apply_refuses_a_step_that_changes_the_packet_id() -> None:
    s = one_message(1, A1)
    assert_raises_unchanged(s, TransitionError, s.apply, Stepped(3, Event.PUBACK, 8))
    s = one_message(1, Q)
    assert_raises_unchanged(s, TransitionError, s.apply, Stepped(3, Event.SEND, 8))


def test_apply_refuses_a_send_assigning_a_taken_id() -> None:
    s = one_message(1, Q, pid=0)
    assert_raises_unchanged(s, TransitionError, s.apply, Stepped(3, Event.SEND, 1))  # bystander's
    assert_raises_unchanged(s, TransitionError, s.apply, Stepped(3, Event.SEND, MAX_PACKET_ID + 1))


def test_apply_refuses_non_records() -> None:
    s = one_message(1, Q)
    assert_raises_unchanged(s, TransitionError, s.apply, object())
    assert_raises_unchanged(s, TransitionError, s.apply, ("send", 3))


def test_apply_refuses_bad_accepted_records() -> None:
    s = one_message(1, Q)  # next_seq 4, ids 1 and 7 held
    ok = OutgoingMessage(4, 8, "t", b"", 1)
    for bad in (
        OutgoingMessage(5, 8, "t", b"", 1),  # seq is not next_seq
        OutgoingMessage(3, 8, "t", b"", 1),  # an old seq
        OutgoingMessage(4, 7, "t", b"", 1),  # id taken
        OutgoingMessage(4, MAX_PACKET_ID + 1, "t", b"", 1),
        OutgoingMessage(4, 8, "t", b"", 1, phase=A1),  # must start QUEUED
        OutgoingMessage(4, 8, "t", b"", 0),
        OutgoingMessage(4, 8, "t", b"", 3),
    ):
        assert_raises_unchanged(s, TransitionError, s.apply, Accepted(bad))
    s.apply(Accepted(ok))
    assert s.outgoing[4] == ok and s.last_packet_id == 8 and s.next_seq == 5


# =========================================================================== incoming QoS 2


def test_incoming_qos2_receive_then_release() -> None:
    s = SessionState()
    rec = s.receive(10, "in/a", b"p", retain=True, dup=False, properties=b"\x02")
    assert rec == Received(IncomingMessage(10, "in/a", b"p", 2, True, False, b"\x02"))
    assert s.incoming[10] == rec.message
    msg, rel = s.release(10)
    assert msg == rec.message and rel == Released(10)
    assert s.incoming == {}


def test_duplicate_incoming_publish_is_not_stored_twice_mqtt_4_3_3_10() -> None:
    """[MQTT-4.3.3-10] a duplicate QoS 2 PUBLISH before PUBREL: None, nothing changes."""
    s = SessionState()
    s.receive(10, "in/a", b"first")
    before = snap(s)
    assert s.receive(10, "in/a", b"first", dup=True) is None
    assert s.receive(10, "other", b"different payload", dup=True) is None
    assert snap(s) == before
    assert s.incoming[10].payload == b"first"


def test_incoming_ids_are_independent_of_outgoing_ids() -> None:
    s = SessionState()
    s.accept("a", b"", 1)
    assert s.receive(1, "in", b"") is not None
    assert s.outgoing[1].packet_id == 1 and 1 in s.incoming


@pytest.mark.parametrize("pid", [1, 11, 0, 65536])
def test_release_of_unknown_id_raises_and_changes_nothing(pid: int) -> None:
    s = SessionState()
    s.receive(10, "in/a", b"p")
    assert_raises_unchanged(s, TransitionError, s.release, pid)
    assert_raises_unchanged(s, TransitionError, s.apply, Released(pid))


def test_release_twice_raises() -> None:
    s = SessionState()
    s.receive(10, "in/a", b"p")
    s.release(10)
    assert_raises_unchanged(s, TransitionError, s.release, 10)


@pytest.mark.parametrize("pid", [0, -1, MAX_PACKET_ID + 1])
def test_receive_out_of_range_id_raises_and_changes_nothing(pid: int) -> None:
    s = SessionState()
    assert_raises_unchanged(s, TransitionError, s.receive, pid, "t", b"")


def test_apply_refuses_bad_received_records() -> None:
    s = SessionState()
    s.receive(3, "t", b"")
    assert_raises_unchanged(s, TransitionError, s.apply, Received(IncomingMessage(3, "t", b"")))
    assert_raises_unchanged(s, TransitionError, s.apply, Received(IncomingMessage(4, "t", b"", 1)))


# =========================================================================== subscriptions


def test_subscribe_unsubscribe() -> None:
    s = SessionState()
    assert s.subscribe("a/#", 1) == Subscribed("a/#", 1)
    s.subscribe("+/b", 0)
    s.subscribe("a/#", 2)  # re-subscribing replaces the qos
    assert s.subscriptions == {"a/#": 2, "+/b": 0}
    assert s.unsubscribe("a/#") == Unsubscribed("a/#")
    assert s.subscriptions == {"+/b": 0}
    assert s.unsubscribe("never/subscribed") == Unsubscribed("never/subscribed")  # a no-op
    assert s.subscriptions == {"+/b": 0}
    assert not s.empty


# =========================================================================== connection records


def test_connected_disconnected_activity() -> None:
    s = SessionState()
    s.configure(client_id="c", protocol_version=5, clean_session=False, session_expiry_interval=30)
    assert s.connected(100.0, "h:1883", False) == Connected(100.0, "h:1883", False)
    assert (s.connected_at, s.last_activity, s.broker) == (100.0, 100.0, "h:1883")
    assert s.activity(150.5) == Activity(150.5)
    assert s.last_activity == 150.5 and s.connected_at == 100.0
    assert s.disconnected(160.0) == Disconnected(160.0, 30)
    assert (s.disconnected_at, s.last_activity, s.session_expiry_interval) == (160.0, 160.0, 30)
    s.check_invariants()


def test_configure_keeps_what_is_left_out() -> None:
    s = SessionState()
    rec = s.configure(client_id="x", protocol_version=5, session_expiry_interval=60)
    assert rec == Configured("x", 5, True, 60)
    s.configure(clean_session=False)
    assert (s.client_id, s.protocol_version, s.clean_session, s.session_expiry_interval) == (
        "x", 5, False, 60)
    s.configure(session_expiry_interval=None)
    assert s.session_expiry_interval is None and s.client_id == "x"


@pytest.mark.parametrize(
    "kw",
    [
        {"protocol_version": 3},
        {"protocol_version": 6},
        {"session_expiry_interval": -1},
        {"session_expiry_interval": 0x100000000},
        {"session_expiry_interval": 1.5},
        {"session_expiry_interval": True},
        {"client_id": 5},
    ],
)
def test_configure_rejects_bad_settings_and_changes_nothing(kw: dict[str, object]) -> None:
    s = SessionState()
    s.configure(client_id="keep", protocol_version=5, session_expiry_interval=10)
    assert_raises_unchanged(s, UsageError, s.configure, **kw)


# =========================================================================== on CONNACK


def held_state() -> SessionState:
    return SessionState(
        client_id="c",
        clean_session=False,
        next_seq=7,
        last_packet_id=5,
        outgoing={
            1: OutgoingMessage(1, 1, "q1/never", b"1", 1, phase=Q),
            2: OutgoingMessage(2, 2, "q1/sent", b"2", 1, phase=A1),
            3: OutgoingMessage(3, 3, "q2/sent", b"3", 2, phase=A2),
            4: OutgoingMessage(4, 4, "q2/released", b"4", 2, phase=A3),
            6: OutgoingMessage(6, 5, "q2/never", b"6", 2, phase=Q),
        },
        incoming={
            11: IncomingMessage(11, "in/b", b"b"),
            10: IncomingMessage(10, "in/a", b"a"),
        },
        subscriptions={"a/#": 1, "b/+": 2},
    )


def test_connack_session_present_resends_everything_in_order_mqtt_4_4_0_1() -> None:
    """[MQTT-4.4.0-1] [MQTT-4.6.0-1]: SessionPresent=1 keeps all, plan lists all in seq order."""
    s = held_state()
    before = snap(s)
    rec, plan = s.on_connack(True)
    assert rec is None
    assert snap(s) == before
    assert plan.session_present is True
    assert plan.lost is None
    assert [m.seq for m in plan.outgoing] == [1, 2, 3, 4, 6]
    assert plan.outgoing == tuple(s.outgoing.values())
    assert [m.packet_id for m in plan.outgoing] == [1, 2, 3, 4, 5]  # the ORIGINAL ids
    assert dict(plan.resubscribe) == {"a/#": 1, "b/+": 2}
    assert set(s.incoming) == {10, 11}  # incoming QoS 2 kept, awaiting PUBREL


def test_connack_session_lost_mqtt_3_2_2_5() -> None:
    """[MQTT-3.2.2-5] SessionPresent=0 while holding state: the broker forgot the session."""
    s = held_state()
    old = dict(s.outgoing)
    rec, plan = s.on_connack(False)
    assert rec == SessionReset(requeued=(2, 3, 4), dropped=(), released=(10, 11))
    # never-sent kept, with their ids
    assert s.outgoing[1] == old[1] and s.outgoing[6] == old[6]
    # sent but unconfirmed, and past PUBREC (a broker delivering on PUBREL lost it with the
    # session): QUEUED again, id 0 (a fresh one is taken on send)
    for seq in (2, 3, 4):
        assert s.outgoing[seq] == OutgoingMessage(
            seq, 0, old[seq].topic, old[seq].payload, old[seq].qos, phase=Q)
    assert list(s.outgoing) == [1, 2, 3, 4, 6]
    assert s.incoming == {}
    assert s.subscriptions == {"a/#": 1, "b/+": 2}
    index_consistent(s)
    s.check_invariants()

    assert plan.session_present is False
    assert plan.outgoing == tuple(s.outgoing.values())
    assert dict(plan.resubscribe) == {"a/#": 1, "b/+": 2}
    lost = plan.lost
    assert lost is not None
    assert lost.republished == (old[2], old[3], old[4])
    assert lost.possible_duplicates == (old[4],)
    assert lost.dropped == ()
    assert lost.queued == (old[1], old[6])
    assert {m.packet_id for m in lost.delivered_incoming} == {10, 11}
    assert all(isinstance(m, IncomingMessage) for m in lost.delivered_incoming)
    assert dict(lost.resubscribed) == {"a/#": 1, "b/+": 2}

    # sending them again takes fresh ids that collide with no held id
    held = {1, 5}
    for seq in (2, 3, 4):
        pid = s.send(seq).packet_id
        assert 1 <= pid <= MAX_PACKET_ID and pid not in held
        held.add(pid)
    assert s.send(1).packet_id == 1 and s.send(6).packet_id == 5
    index_consistent(s)
    s.check_invariants()


def test_connack_session_lost_record_replays() -> None:
    s = held_state()
    copy = held_state()
    rec, _ = s.on_connack(False)
    assert rec is not None
    copy.apply(rec)
    assert copy == s
    assert snap(copy) == snap(s)


def test_connack_session_lost_released_drop() -> None:
    """ReleasedOnSessionLost=drop: past PUBREC, the broker had accepted it (it delivers on
    PUBLISH): dropped, never published twice."""
    s = held_state()
    old = dict(s.outgoing)
    rec, plan = s.on_connack(False, republish_released=False)
    assert rec == SessionReset(requeued=(2, 3), dropped=(4,), released=(10, 11))
    assert plan.lost is not None and plan.lost.possible_duplicates == ()
    assert plan.lost.dropped == (old[4],)


def test_connack_session_lost_without_republish_drops_unconfirmed() -> None:
    s = held_state()
    old = dict(s.outgoing)
    rec, plan = s.on_connack(False, republish=False, republish_released=False)
    assert rec == SessionReset(requeued=(), dropped=(2, 3, 4), released=(10, 11))
    assert list(s.outgoing) == [1, 6]
    assert plan.lost is not None
    assert plan.lost.republished == ()
    assert plan.lost.dropped == (old[2], old[3], old[4])
    assert plan.lost.queued == (old[1], old[6])
    index_consistent(s)


def test_connack_session_lost_with_nothing_held() -> None:
    s = SessionState()
    rec, plan = s.on_connack(False)
    assert rec is None and plan.lost is None and plan.outgoing == () and plan.resubscribe == ()
    s.subscribe("x/#", 1)
    before = snap(s)
    rec, plan = s.on_connack(False)
    assert rec is None and snap(s) == before  # nothing to change, nothing to record
    assert plan.resubscribe == (("x/#", 1),)  # subscriptions are sent again
    # [MQTT-3.2.2-5] the broker forgot a session that held subscriptions: that is reported
    assert plan.lost is not None and plan.lost.resubscribed == (("x/#", 1),)
    assert plan.lost.republished == plan.lost.dropped == plan.lost.queued == ()


def test_apply_refuses_bad_session_resets() -> None:
    s = held_state()
    for bad in (
        SessionReset((99,), (), ()),  # not held
        SessionReset((), (99,), ()),
        SessionReset((1,), (), ()),  # never sent: cannot be requeued
        SessionReset((), (), (12,)),  # incoming not held
    ):
        assert_raises_unchanged(s, TransitionError, s.apply, bad)


# =========================================================================== packet ids


def test_packet_ids_start_at_1_and_rise() -> None:
    s = SessionState()
    assert [s.accept("t", b"", 1).message.packet_id for _ in range(3)] == [1, 2, 3]


def test_packet_ids_skip_held_ids() -> None:
    s = SessionState(
        next_seq=4,
        last_packet_id=0,
        outgoing={
            1: OutgoingMessage(1, 1, "t", b"", 1),
            2: OutgoingMessage(2, 2, "t", b"", 1, phase=A1),
            3: OutgoingMessage(3, 4, "t", b"", 2, phase=A3),
        },
    )
    assert s.accept("t", b"", 1).message.packet_id == 3
    assert s.accept("t", b"", 1).message.packet_id == 5


def test_packet_ids_wrap_65535_to_1() -> None:
    s = SessionState(last_packet_id=MAX_PACKET_ID - 1)
    assert s.accept("t", b"", 1).message.packet_id == MAX_PACKET_ID
    assert s.accept("t", b"", 1).message.packet_id == 1
    s = SessionState(
        next_seq=3,
        last_packet_id=MAX_PACKET_ID,
        outgoing={1: OutgoingMessage(1, 1, "t", b"", 1), 2: OutgoingMessage(2, 2, "t", b"", 1)},
    )
    assert s.allocate_packet_id() == 3


def exhausted_state() -> SessionState:
    """Every one of the 65535 ids held by a QoS 1 message awaiting PUBACK."""
    out = {i: OutgoingMessage(i, i, "t", b"", 1, phase=A1) for i in range(1, MAX_PACKET_ID + 1)}
    return SessionState(next_seq=MAX_PACKET_ID + 1, last_packet_id=MAX_PACKET_ID, outgoing=out)


def test_packet_ids_exhausted() -> None:
    s = exhausted_state()
    s.check_invariants()
    with pytest.raises(PacketIdsExhausted):
        s.allocate_packet_id()
    # accept still takes the message, with packet id 0
    rec = s.accept("late", b"x", 2)
    assert rec.message.packet_id == 0 and rec.message.phase is Q
    seq = rec.message.seq
    assert s.last_packet_id == MAX_PACKET_ID
    s.check_invariants()
    # no id free: send raises and changes nothing
    assert_raises_unchanged(s, PacketIdsExhausted, s.send, seq)
    # one id frees up: send takes it
    s.puback(1234)
    step = s.send(seq)
    assert step.packet_id == 1234
    assert s.outgoing[seq].packet_id == 1234 and s.outgoing[seq].phase is A2
    assert s.outgoing_by_packet_id(1234) == s.outgoing[seq]
    assert s.last_packet_id == 1234
    index_consistent(s)
    with pytest.raises(PacketIdsExhausted):
        s.allocate_packet_id()


def test_packet_id_0_message_replays() -> None:
    s = exhausted_state()
    fresh = exhausted_state()
    recs = [s.accept("late", b"x", 1)]
    recs.append(s.puback(7))
    recs.append(s.send(recs[0].message.seq))
    for r in recs:
        fresh.apply(r)
    assert fresh == s and snap(fresh) == snap(s)


def test_avoid_skips_ids_held_outside_the_session() -> None:
    """In-flight SUBSCRIBE / UNSUBSCRIBE ids (``avoid``) are never given to a message."""
    s = SessionState()
    assert s.accept("t", b"", 1, avoid={1, 2}).message.packet_id == 3
    assert s.allocate_packet_id(avoid=range(1, 10)) == 10
    every_free = set(range(1, MAX_PACKET_ID + 1)) - {3}
    assert_raises_unchanged(s, PacketIdsExhausted, s.allocate_packet_id, every_free)
    # accept still takes the message, id-less; send with the same avoid set cannot assign one
    rec = s.accept("t", b"", 2, avoid=every_free)
    assert rec.message.packet_id == 0
    assert_raises_unchanged(s, PacketIdsExhausted, s.send, rec.message.seq, every_free)
    assert s.send(rec.message.seq, avoid={4}).packet_id == 5  # after last id 3, 4 avoided


def test_retract_undoes_the_latest_accept() -> None:
    s = SessionState()
    s.accept("a", b"1", 1)
    s.accept("b", b"2", 2)
    before = snap(s)
    text = codec.encode(s)
    rec = s.accept("c", b"3", 1)
    s.retract(rec)
    index_consistent(s)
    assert s.outgoing_by_packet_id(rec.message.packet_id) is None
    assert s.next_seq == rec.message.seq
    s.check_invariants()
    # "undo": the state is exactly what it was, so it equals a replay of the durable records
    # (the retracted Accepted never reached the journal). See the report: last_packet_id stays.
    assert snap(s) == before
    assert codec.encode(s) == text


def test_retract_only_the_latest() -> None:
    s = SessionState()
    first = s.accept("a", b"1", 1)
    s.accept("b", b"2", 1)
    assert_raises_unchanged(s, TransitionError, s.retract, first)
    s2 = SessionState()
    other = s2.accept("x", b"", 1)
    s3 = SessionState()
    s3.accept("y", b"", 1)
    assert_raises_unchanged(s3, TransitionError, s3.retract, other)  # same seq, other message


# =========================================================================== validation


BAD_TOPICS = ["", "a/+", "+", "#", "a/#", "a+b", "x#", "a\x00b", "\x00", "a\ud800", b"a", None, 5,
              "x" * 65536, "é" * 32768]
GOOD_TOPICS = ["a", "/", "a//b", "$SYS/x", "ü/€/𝄞", "\x01\x7f", " ", "x" * 65535, "é" * 32767]


@pytest.mark.parametrize("topic", BAD_TOPICS, ids=repr)
def test_accept_rejects_bad_topics(topic: object) -> None:
    """[MQTT-3.3.2-2] no wildcards in a topic name; [MQTT-1.5.3-1/2] UTF-8, no U+0000."""
    s = SessionState()
    s.accept("ok", b"", 1)
    assert_raises_unchanged(s, UsageError, s.accept, topic, b"x", 1)
    with pytest.raises(UsageError):
        validate_topic(topic)


@pytest.mark.parametrize("topic", GOOD_TOPICS, ids=lambda t: repr(t)[:20])
def test_accept_takes_good_topics(topic: str) -> None:
    assert validate_topic(topic) == topic
    s = SessionState()
    assert s.accept(topic, b"", 2).message.topic == topic


@pytest.mark.parametrize("qos", [0, 3, -1, True, "1", 1.0, None])
def test_accept_rejects_bad_qos(qos: object) -> None:
    """QoS 0 is never held in the session; only 1 and 2 are accepted."""
    s = SessionState()
    assert_raises_unchanged(s, UsageError, s.accept, "t", b"x", qos)


@pytest.mark.parametrize("payload", ["text", None, 5, [1]])
def test_accept_rejects_non_bytes_payload(payload: object) -> None:
    s = SessionState()
    assert_raises_unchanged(s, UsageError, s.accept, "t", payload, 1)


def test_accept_takes_bytearray_payload() -> None:
    s = SessionState()
    assert s.accept("t", bytearray(b"ab"), 1).message.payload == b"ab"


BAD_FILTERS = ["", "a/#/b", "#/", "#/a", "a#", "a/b#", "##", "+a", "a/+b", "a/++", "+#", "a\x00",
               "a\ud800", None, b"a/#"]
GOOD_FILTERS = ["#", "+", "a/+", "+/+", "/#", "a//b", "+/#", "/", "$SYS/#", "a/b/#", "a/+/c", "ü/#"]


@pytest.mark.parametrize("flt", BAD_FILTERS, ids=repr)
def test_subscribe_rejects_bad_filters(flt: object) -> None:
    """[MQTT-4.7.1] '#' only as the whole last level, '+' only as a whole level."""
    s = SessionState()
    s.subscribe("keep/#", 1)
    assert_raises_unchanged(s, UsageError, s.subscribe, flt, 1)
    assert_raises_unchanged(s, UsageError, s.unsubscribe, flt)
    with pytest.raises(UsageError):
        validate_filter(flt)


@pytest.mark.parametrize("flt", GOOD_FILTERS)
def test_subscribe_takes_good_filters(flt: str) -> None:
    s = SessionState()
    s.subscribe(flt, 2)
    assert s.subscriptions == {flt: 2}


@pytest.mark.parametrize("qos", [3, -1, True, "0", None, 1.0])
def test_subscribe_rejects_bad_qos(qos: object) -> None:
    s = SessionState()
    assert_raises_unchanged(s, UsageError, s.subscribe, "a/b", qos)
    with pytest.raises(UsageError):
        validate_qos(qos)


def test_validate_qos_allowed() -> None:
    assert validate_qos(0) == 0
    assert validate_qos(2, (1, 2)) == 2
    with pytest.raises(UsageError):
        validate_qos(0, (1, 2))


def test_usage_error_is_a_value_error_and_an_mqttsession_error() -> None:
    assert issubclass(UsageError, ValueError) and issubclass(UsageError, MQTTSessionError)
    assert issubclass(TransitionError, MQTTSessionError)
    assert issubclass(PacketIdsExhausted, MQTTSessionError)


# =========================================================================== state invariants


def test_empty_and_equality() -> None:
    assert SessionState().empty
    assert SessionState() == SessionState()
    assert SessionState() != SessionState(client_id="x")
    assert SessionState().__eq__(object()) is NotImplemented


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"protocol_version": 3}, "protocol_version"),
        ({"session_expiry_interval": -1}, "session_expiry_interval"),
        ({"last_packet_id": 65536}, "last_packet_id"),
        ({"connected_at": math.nan}, "connected_at"),
        ({"last_activity": math.inf}, "last_activity"),
        ({"next_seq": 1, "outgoing": {1: OutgoingMessage(1, 1, "t", b"", 1)}}, "next_seq"),
        ({"next_seq": 9, "outgoing": {2: OutgoingMessage(1, 1, "t", b"", 1)}}, "rise"),
        ({"next_seq": 9, "outgoing": {1: OutgoingMessage(1, 1, "t", b"", 3)}}, "qos"),
        ({"next_seq": 9, "outgoing": {1: OutgoingMessage(1, 1, "t", b"", 1, phase=A3)}}, "phase"),
        ({"next_seq": 9, "outgoing": {1: OutgoingMessage(1, 0, "t", b"", 1, phase=A1)}}, "packet id"),
        ({"next_seq": 9, "outgoing": {1: OutgoingMessage(1, 1, "t", b"", 1),
                                      2: OutgoingMessage(2, 1, "t", b"", 1)}}, "held twice"),
        ({"next_seq": 9, "outgoing": {1: OutgoingMessage(1, 1, "a/#", b"", 1)}}, "wildcards"),
        ({"incoming": {1: IncomingMessage(2, "t", b"")}}, "packet_id"),
        ({"incoming": {1: IncomingMessage(1, "t", b"", qos=1)}}, "qos"),
        ({"subscriptions": {"a/#/b": 1}}, "subscription"),
        ({"subscriptions": {"a": 3}}, "subscription"),
    ],
)
def test_check_invariants_names_the_problem(kw: dict[str, object], words: str) -> None:
    with pytest.raises(StateError, match=words):
        SessionState(**kw).check_invariants()  # type: ignore[arg-type]


# =========================================================================== robustness
#
# The module docstring promises: "an illegal transition raises TransitionError and changes
# nothing"; apply(): "raise TransitionError (changing nothing) if it does not fit". And every
# state the transitions can build must be saveable (encode) and loadable again (decode), or
# save_session()/restore_session() break on a state the library itself produced.
# (Every case below failed against the first version of state.py and was fixed there.)


def _saveable(s: SessionState) -> None:
    s.check_invariants()
    assert codec.decode(codec.encode(s)) == s


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.receive(1, "", b""), id="receive-empty-topic"),
        pytest.param(lambda s: s.receive(1, "a\x00b", b""), id="receive-nul-topic"),
        pytest.param(lambda s: s.receive(1, "a\ud800", b""), id="receive-surrogate-topic"),
        pytest.param(lambda s: s.configure(client_id="a\x00"), id="configure-nul-client-id"),
        pytest.param(lambda s: s.connected(math.nan, None, False), id="connected-nan"),
        pytest.param(lambda s: s.connected(1.0, "h\x00", False), id="connected-nul-broker"),
        pytest.param(lambda s: s.disconnected(math.inf), id="disconnected-inf"),
        pytest.param(lambda s: s.activity(math.nan), id="activity-nan"),
    ],
)
def test_transitions_only_build_saveable_states(call) -> None:
    """Either the call is refused (MQTTSessionError, state unchanged) or the state round-trips."""
    s = SessionState()
    before = snap(s)
    try:
        call(s)
    except MQTTSessionError:
        assert snap(s) == before
        return
    _saveable(s)


def _bad_records():
    yield "send-assigning-id-0", one_message(1, Q, pid=0), Stepped(3, Event.SEND, 0)
    yield "reset-seq-requeued-and-dropped", one_message(1, A1), SessionReset((3,), (3,), ())
    yield "reset-seq-dropped-twice", one_message(1, A1), SessionReset((), (3, 3), ())
    yield "reset-released-twice", one_message(1, A1), SessionReset((), (), (4, 4))
    yield "subscribed-bad-filter", one_message(1, Q), Subscribed("a/#/b", 1)
    yield "subscribed-qos-3", one_message(1, Q), Subscribed("a/b", 3)
    yield "accepted-wildcard-topic", one_message(1, Q), Accepted(OutgoingMessage(4, 8, "a/+", b"", 1))


@pytest.mark.parametrize(("state", "rec"), [p[1:] for p in _bad_records()],
                         ids=[p[0] for p in _bad_records()])
def test_apply_never_half_applies_or_builds_an_invalid_state(state: SessionState, rec) -> None:
    before = snap(state)
    try:
        state.apply(rec)
    except MQTTSessionError:
        assert snap(state) == before
        return
    state.check_invariants()
    index_consistent(state)
