"""Pins on transitions.py / state.py / reserving.py found by a mutation hunt.

Each test pins one rule a single small mutation of the transition code broke without any
other unit test noticing: an illegal record raises ``TransitionError`` and changes NOTHING
(every field, counts included), counts stay exact, packet ids never collide with a held one
[MQTT-2.3.1-2]. Spec statement ids are from /work/shared/reference/MQTT-SESSION-RULES.md.
"""

from __future__ import annotations

import copy

import pytest

from mqttsession.engine import Engine, EngineSettings
from mqttsession.errors import StateError, TransitionError
from mqttsession.state import (
    MAX_PACKET_ID,
    PHASES_FOR_QOS,
    Event,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    SessionState,
    Spooled,
    Stepped,
)
from mqttsession.records import Loaded, Orphaned, OrphansReleased, SpoolMark
from mqttsession.reserving import AHEAD

Q, A1, A2, A3 = Phase.QUEUED, Phase.AWAIT_PUBACK, Phase.AWAIT_PUBREC, Phase.AWAIT_PUBCOMP


def everything(s: SessionState) -> tuple[object, ...]:
    """Every field, the ones left out of ``==`` (counts, the packet-id index) included."""
    return (s.snapshot_fields(), dict(s._by_packet_id), s._undo_last_packet_id,
            s.outgoing_bytes, s.spool_last, s.spooled, s.spooled_bytes)


def refused(s: SessionState, rec: object) -> None:
    """``rec`` is refused with TransitionError, and the state is exactly as it was."""
    before = copy.deepcopy(everything(s))
    with pytest.raises(TransitionError):
        s.apply(rec)  # type: ignore[arg-type]
    assert everything(s) == before


def held(pid: int = 7, seq: int = 3, phase: Phase = A1, qos: int = 1) -> SessionState:
    """A state holding one outgoing message with packet id ``pid`` and one incoming one."""
    m = OutgoingMessage(seq, pid, "t/x", b"payload", qos, phase=phase)
    return SessionState(next_seq=seq + 1, last_packet_id=pid, outgoing={seq: m},
                        incoming={4: IncomingMessage(4, "in", b"i")}, spool_next=seq + 1)


# --------------------------------------------------------------------------- the disk queue


def test_a_spooled_record_holding_a_packet_id_is_refused() -> None:
    """A message in the disk queue holds no packet id (it gets one when read back): a
    ``Spooled`` record naming one is illegal and changes nothing."""
    s = held()
    refused(s, Spooled(OutgoingMessage(s.next_seq, 9, "t/s", b"x", 1)))


def test_replaying_spooled_records_counts_them_as_spool_checked_did() -> None:
    """Replay equivalence for the disk queue: ``Spooled`` records applied to a fresh state
    give the counts (``spooled``, ``spooled_bytes``: MaxQueuedBytes) and ``next_seq`` that
    ``spool_checked`` kept when it built them."""
    live = SessionState()
    recs = [live.spool_checked("a/b", b"12345", 1, False, b"\x01\x02", 1.0),
            live.spool_checked("c", b"", 2, True, b"", 2.0)]
    again = SessionState()
    for rec in recs:
        again.apply(rec)
    assert (again.next_seq, again.spooled, again.spooled_bytes) == (3, 2, 5 + 3 + 2 + 1)
    assert everything(again) == everything(live)


@pytest.mark.parametrize("seq", [0, 3, 5])
def test_a_spooled_record_out_of_sequence_is_refused(seq: int) -> None:
    """A spooled message takes the next seq: one with any other seq is refused, unchanged."""
    s = held()  # next_seq 4
    refused(s, Spooled(OutgoingMessage(seq, 0, "t/s", b"x", 1)))


@pytest.mark.parametrize("seq", [0, -1])
def test_a_disk_queue_mark_that_is_not_a_seq_is_refused(seq: int) -> None:
    """``SpoolMark`` names a message appended to the disk queue: seqs start at 1."""
    refused(held(), SpoolMark(seq))


def test_a_read_back_of_nothing_new_is_legal_and_changes_nothing() -> None:
    """``Loaded`` refuses a read-back *behind* ``spool_next``; one at it (the disk queue had
    nothing more) is legal and leaves every field as it was."""
    s = held()
    before = everything(s)
    rec = s.load([], s.spool_next)
    assert rec.spool_next == 4 and everything(s) == before


def test_a_message_read_back_at_or_past_the_new_spool_next_is_refused() -> None:
    """Every message read back lies below the ``spool_next`` it moves to (else its seq could
    be handed to a later message): one at it is refused, changing nothing."""
    s = held()  # spool_next 4, next_seq 4
    refused(s, Loaded((OutgoingMessage(4, 0, "t/l", b"x", 1),), 4))
    refused(s, Loaded((OutgoingMessage(5, 0, "t/l", b"x", 1),), 5))


def test_a_read_back_message_the_disk_queue_already_gave_is_refused() -> None:
    """A read-back starts at ``spool_next``: a message below it (already read back, or
    never in the queue) is refused, even when ``outgoing`` holds nothing after it."""
    s = SessionState(next_seq=6, spool_next=4)
    refused(s, Loaded((OutgoingMessage(2, 0, "t/l", b"x", 1),), 6))


def test_a_read_back_giving_two_messages_one_packet_id_is_refused() -> None:
    """[MQTT-2.3.1-2] two held messages never share a packet id: a ``Loaded`` record that
    gives the same free id to two of its messages is refused and changes nothing."""
    s = SessionState(next_seq=7, spool_next=4, last_packet_id=9)
    refused(s, Loaded((OutgoingMessage(4, 10, "t/l", b"x", 1),
                       OutgoingMessage(5, 10, "t/l", b"y", 2)), 6))


def test_a_read_back_moves_last_packet_id_and_replays_the_same() -> None:
    """``load`` gives read-back messages the next free ids; the record moves
    ``last_packet_id`` to the last of them (the next allocation starts after it), and the
    record replayed on the state before gives the same state."""
    s = SessionState(next_seq=7, spool_next=4, last_packet_id=9)
    start = copy.deepcopy(s)
    rec = s.load([OutgoingMessage(4, 0, "t/l", b"x", 1), OutgoingMessage(5, 0, "t/l", b"y", 2)],
                 7)
    assert [m.packet_id for m in rec.messages] == [10, 11]
    assert s.last_packet_id == 11 and s.allocate_packet_id() == 12
    start.apply(rec)
    assert everything(start) == everything(s)


def test_a_partial_read_back_keeps_next_seq_and_the_counts_exact() -> None:
    """Reading back part of the disk queue leaves ``next_seq`` past the messages still in it
    (a seq is never handed out twice) and takes exactly the read-back messages out of
    ``spooled`` / ``spooled_bytes`` into ``outgoing_bytes``."""
    s = SessionState(spool_next=1)
    recs = [s.spool_checked("t", b"abc", 1, False, b"", 0.0) for _ in range(3)]
    assert (s.next_seq, s.spooled, s.spooled_bytes) == (4, 3, 12)
    s.load([recs[0].message], 2)
    assert (s.next_seq, s.spool_next, s.spooled, s.spooled_bytes, s.outgoing_bytes) == (
        4, 2, 2, 8, 4)
    assert s.spool_checked("t", b"", 1, False, b"", 0.0).message.seq == 4


@pytest.mark.parametrize("phase", [A1, A2])
def test_a_read_back_message_that_is_not_queued_is_refused(phase: Phase) -> None:
    """The disk queue holds only never-sent messages: a read-back naming one in a sent
    phase is refused, changing nothing."""
    s = SessionState(next_seq=6, spool_next=4, last_packet_id=9)
    refused(s, Loaded((OutgoingMessage(4, 10, "t/l", b"x", 2, phase=phase),), 5))


# --------------------------------------------------------------------------- steps


@pytest.mark.parametrize("pid", [8, 99, MAX_PACKET_ID])
def test_session_lost_only_clears_the_packet_id(pid: int) -> None:
    """SESSION_LOST requeues a sent message *without* an id (a new one is taken when it is
    sent again): a ``Stepped`` naming another id is refused and changes nothing."""
    s = held(pid=7, phase=A1)
    refused(s, Stepped(3, Event.SESSION_LOST, pid))


@pytest.mark.parametrize(("phase", "event", "pid"), [
    (A1, Event.PUBACK, 7.0), (A1, Event.PUBACK, True), (Q, Event.SEND, 7.0),
])
def test_a_step_whose_packet_id_is_not_an_int_is_refused(phase: Phase, event: Event,
                                                         pid: object) -> None:
    """A packet id is an int (a record from a damaged journal may say 7.0 or true): refused,
    changing nothing."""
    s = held(pid=7 if phase is not Q else 0, phase=phase)
    if pid is True:
        s = held(pid=1, phase=phase)
    refused(s, Stepped(3, event, pid))  # type: ignore[arg-type]


@pytest.mark.parametrize(("qos", "phase"), [(1, A2), (1, A3)])
def test_a_qos1_message_awaiting_pubrec_or_pubcomp_is_not_a_valid_state(qos: int,
                                                                        phase: Phase) -> None:
    """QoS 1 flows are QUEUED -> AWAIT_PUBACK only (``PHASES_FOR_QOS``): a loaded state
    holding a QoS 1 message in a QoS 2 phase is refused by ``check_invariants``."""
    assert PHASES_FOR_QOS == {1: {Q, A1}, 2: {Q, A2, A3}}
    with pytest.raises(StateError, match="not valid for qos"):
        held(pid=7, phase=phase, qos=qos).check_invariants()


# --------------------------------------------------------------------------- incoming


def test_releasing_no_orphans_is_refused() -> None:
    """``OrphansReleased`` names the first held orphans it hands out: a record naming none
    is not a transition and is refused, changing nothing."""
    s = held()
    s.orphan()
    assert [o.packet_id for o in s.orphans] == [4]
    refused(s, OrphansReleased(()))


def test_orphaning_a_packet_id_twice_is_refused_without_half_applying() -> None:
    """An ``Orphaned`` record naming a held incoming id twice is refused with
    TransitionError before anything moves (not half-applied, not a KeyError)."""
    refused(held(), Orphaned((4, 4)))


# --------------------------------------------------------------------------- state.py builders


def test_a_refused_read_back_leaves_last_packet_id_as_it_was() -> None:
    """``load`` moves ``last_packet_id`` while it hands out ids; when its record is refused
    (here: behind ``spool_next``) every field is as it was, ``last_packet_id`` included."""
    s = SessionState(next_seq=9, spool_next=6, last_packet_id=9)
    before = everything(s)
    with pytest.raises(TransitionError):
        s.load([OutgoingMessage(4, 0, "t/l", b"x", 1)], 5)
    assert everything(s) == before


@pytest.mark.parametrize("phase", [A1, A2, A3])
def test_withdraw_never_takes_back_a_sent_message(phase: Phase) -> None:
    """``withdraw`` takes back only a QUEUED message (a failed group commit): a sent one
    (the broker may hold its flow) stays held with its packet id."""
    s = held(pid=7, phase=phase, qos=2)
    before = everything(s)
    s.withdraw(3)
    assert everything(s) == before and s.outgoing_by_packet_id(7) is not None


def test_session_lost_keeps_the_id_of_a_message_never_sent() -> None:
    """SESSION_LOST on a QUEUED message: it stays QUEUED *with* the id it was given at
    accept (only a sent message's id is cleared)."""
    s = SessionState()
    s.accept("t", b"x", 1)
    rec = s._step(1, Event.SESSION_LOST)
    assert rec.packet_id == 1 and s.outgoing[1].packet_id == 1
    assert s.outgoing_by_packet_id(1) is s.outgoing[1]


def test_a_state_holding_only_disk_queue_messages_is_not_empty() -> None:
    """``empty`` (nothing to carry over) is false while the disk queue holds messages."""
    s = SessionState()
    s.spool_checked("t", b"x", 1, False, b"", 0.0)
    assert not s.outgoing and not s.empty


def test_keep_first_without_a_reservation_starts_after_before() -> None:
    """``reserve(keep_first=True)`` with no reservation held starts after ``before`` (there
    is no first to keep): ids ``before + 1`` through ``last_packet_id + n - 1``."""
    s = SessionState(last_packet_id=5)
    rec = s.reserve(3, 4, keep_first=True)
    assert (rec.first, rec.last) == (4, 8) == (s.reserved_first, s.reserved_last)


def test_accept_checked_wraps_65535_to_1_like_accept() -> None:
    """The hot path's next id after 65535 is 1 [MQTT-2.3.1-1] (ids are 1..65535), the same
    id ``accept`` gives; its record replays to the same state."""
    fast, slow = SessionState(last_packet_id=MAX_PACKET_ID), SessionState(
        last_packet_id=MAX_PACKET_ID)
    start = copy.deepcopy(fast)
    rec = fast.accept_checked("t", b"x", 1, False, b"", (), 0.0)
    assert rec == slow.accept("t", b"x", 1) and rec.message.packet_id == 1
    start.apply(rec)
    assert everything(start) == everything(fast) == everything(slow)


def test_retract_spooled_undoes_every_count() -> None:
    """``retract_spooled`` (the queue could not store it) puts ``next_seq``, ``spooled`` and
    ``spooled_bytes`` back exactly as they were before the ``spool``."""
    s = SessionState()
    s.spool_checked("a", b"12", 1, False, b"", 0.0)
    before = everything(s)
    s.retract_spooled(s.spool_checked("b/c", b"xyz", 2, False, b"\x01", 0.0))
    assert everything(s) == before and (s.spooled, s.spooled_bytes) == (1, 3)


# --------------------------------------------------------------------------- reserving.py


def _engine(n: int) -> Engine:
    state = SessionState()
    state.configure(client_id="c", clean_session=False)
    return Engine(EngineSettings(reserve_packet_ids=n), state)


def test_no_reservation_when_no_id_was_handed_out() -> None:
    """``_reserve`` with ``handed=False`` (a read-back or batch that gave no packet id):
    nothing to cover, so no ``Reserved`` is written and the reservation stays none."""
    e = _engine(4)
    assert e._reserve(0, 0, handed=False) == []
    assert (e.state.reserved_first, e.state.reserved_last) == (0, 0)
    assert e._reserve(0, 0)  # (an id handed out: one is made)


@pytest.mark.parametrize("count", [1, 3])
def test_reservation_near_looks_exactly_ahead_plus_count_ids(count: int) -> None:
    """``reservation_near(count)``: whether one of the next ``count + AHEAD`` ids after the
    last one handed out lies outside the reservation; the last of them inside is enough."""
    e = _engine(100)
    e.state.last_packet_id = 1
    e.state.reserved_first, e.state.reserved_last = 1, 1 + AHEAD + count - 1
    assert not e.reservation_near(count)
    e.state.reserved_last -= 1
    assert e.reservation_near(count)


def test_a_retract_after_reserve_ahead_keeps_the_synced_reservation() -> None:
    """``reserve_ahead``'s reservation is synced at once (no publish's): retracting the
    publish that made the one before it leaves the synced one in place, never an older."""
    e = _engine(4)
    e.publish("t", b"a", 1, False)
    rec = e.accepted
    assert rec is not None and (e.state.reserved_first, e.state.reserved_last) == (1, 4)
    e.reserve_ahead()
    ahead = (e.state.reserved_first, e.state.reserved_last)
    assert ahead == (2, 5)
    e.retract(rec)
    assert (e.state.reserved_first, e.state.reserved_last) == ahead
