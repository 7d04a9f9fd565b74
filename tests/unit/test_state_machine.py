"""Hypothesis stateful test of SessionState: random legal and illegal operations.

Each rule predicts, from the state before, whether the operation is legal (a small oracle of
OUTGOING_TRANSITIONS and the incoming QoS 2 rules), then checks: an illegal one raised and changed
nothing; a legal one returned the record that `apply` replays. Invariants after every step: the
state passes check_invariants, outgoing packet ids are unique, seqs rise strictly, replaying every
returned record on a fresh state gives an equal state, and encode -> decode round-trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mqttsession import codec
from mqttsession.errors import PacketIdsExhausted, TransitionError
from mqttsession.state import (
    MAX_PACKET_ID,
    OUTGOING_TRANSITIONS,
    Event,
    Phase,
    Record,
    SessionState,
)

from ._support import index_consistent, snap

TOPICS = st.sampled_from(["a", "a/b", "ü/€", "t/\x01", "$SYS/x", "//"])
FILTERS = st.sampled_from(["#", "a/+", "+/+/#", "ü/#", "a/b"])
TIMES = st.floats(min_value=0, max_value=2e9, allow_nan=False)
ACKS = st.sampled_from(["puback", "pubrec", "pubrec_failed", "pubcomp"])
ILLEGAL = (TransitionError, PacketIdsExhausted)


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = SessionState()
        self.initial_text = codec.encode(self.state)
        self.records: list[Record] = []

    @initialize(last_pid=st.sampled_from([0, 3, MAX_PACKET_ID - 2]))
    def start(self, last_pid: int) -> None:
        """Sometimes start near 65535 so the wrap to 1 is exercised."""
        self.state = SessionState(last_packet_id=last_pid)
        self.initial_text = codec.encode(self.state)

    # ------------------------------------------------------------------ helpers

    def attempt(self, legal: bool, fn: Callable[[], Any]) -> Any:
        before = snap(self.state)
        try:
            result = fn()
        except ILLEGAL:
            assert not legal, "a legal operation was refused"
            assert snap(self.state) == before, "an illegal operation changed the state"
            return None
        assert legal, "an illegal operation was accepted"
        return result

    def keep(self, rec: Record | None) -> None:
        if rec is not None:
            self.records.append(rec)

    def held_pids(self) -> list[int]:
        return sorted(m.packet_id for m in self.state.outgoing.values() if m.packet_id)

    # ------------------------------------------------------------------ rules

    @rule(topic=TOPICS, qos=st.sampled_from([1, 2]), payload=st.binary(max_size=8),
          retain=st.booleans(), advance=st.integers(0, 3))
    def accept(self, topic: str, qos: int, payload: bytes, retain: bool, advance: int) -> None:
        """Accept a message, then (so flows get deep) maybe carry it some steps along its flow:
        1 = sent; 2 = QoS 1 PUBACK / QoS 2 PUBREC; 3 = QoS 1 PUBACK / QoS 2 failed PUBREC."""
        seq = self.state.next_seq
        held_before = set(self.held_pids())
        rec = self.state.accept(topic, payload, qos, retain)
        assert rec.message.seq == seq and rec.message.phase is Phase.QUEUED
        assert rec.message.packet_id not in held_before  # never collides with a held id
        self.keep(rec)
        if advance >= 1:
            self.do_send(seq)
        pid = self.state.outgoing[seq].packet_id
        if advance == 2:
            self.do_ack(pid, "puback" if qos == 1 else "pubrec")
        elif advance == 3:
            self.do_ack(pid, "puback" if qos == 1 else "pubrec_failed")

    def do_send(self, seq: int) -> None:
        m = self.state.outgoing.get(seq)
        legal = m is not None and m.phase is Phase.QUEUED
        held_before = set(self.held_pids()) - ({m.packet_id} if m else set())
        rec = self.attempt(legal, lambda: self.state.send(seq))
        if rec is not None:  # a fresh id never collides with a held one
            assert rec.packet_id != 0 and rec.packet_id not in held_before
            assert m is not None and (m.packet_id == 0 or rec.packet_id == m.packet_id)
            assert self.state.outgoing[seq].phase is (
                Phase.AWAIT_PUBACK if m.qos == 1 else Phase.AWAIT_PUBREC)
        self.keep(rec)

    def do_ack(self, pid: int, kind: str) -> None:
        awaiting = {  # an ack of the wrong kind (QoS 2 PUBACK, QoS 1 PUBREC) ends the flow too
            "puback": {(1, Phase.AWAIT_PUBACK), (2, Phase.AWAIT_PUBREC)},
            "pubrec": {(2, Phase.AWAIT_PUBREC), (1, Phase.AWAIT_PUBACK)},
            "pubrec_failed": {(2, Phase.AWAIT_PUBREC), (1, Phase.AWAIT_PUBACK)},
            "pubcomp": {(2, Phase.AWAIT_PUBCOMP)},
        }[kind]
        m = self.state.outgoing_by_packet_id(pid)
        legal = m is not None and (m.qos, m.phase) in awaiting
        call = {
            "puback": lambda: self.state.puback(pid),
            "pubrec": lambda: self.state.pubrec(pid, 0x10),
            "pubrec_failed": lambda: self.state.pubrec(pid, 0x87),  # [MQTT-4.4.0-2]
            "pubcomp": lambda: self.state.pubcomp(pid),
        }[kind]
        self.keep(self.attempt(legal, call))
        if legal:
            after = self.state.outgoing_by_packet_id(pid)
            if kind == "pubrec" and m is not None and m.qos == 2:  # [MQTT-4.3.3-6] released
                assert after is not None and after.phase is Phase.AWAIT_PUBCOMP
            else:  # the flow ended, the id is free
                assert after is None

    @rule(data=st.data(), held=st.sampled_from([True, True, True, False]))
    def send(self, data: st.DataObject, held: bool) -> None:
        """Mostly a message held (QUEUED: legal; sent: illegal), else any seq at all."""
        if held and self.state.outgoing:
            self.do_send(data.draw(st.sampled_from(list(self.state.outgoing))))
        else:
            self.do_send(data.draw(st.integers(-1, 70)))

    @rule(data=st.data(), kind=st.one_of(st.just("right"), ACKS),
          held=st.sampled_from([True, True, True, False]))
    def ack(self, data: st.DataObject, kind: str, held: bool) -> None:
        """Mostly an id some message holds, with the ack its phase expects ("right") or any
        other; else any id at all."""
        pids = self.held_pids()
        if not (held and pids):
            pid = data.draw(st.one_of(st.integers(-1, 20), st.integers(0, MAX_PACKET_ID + 1)))
            self.do_ack(pid, "puback" if kind == "right" else kind)
            return
        pid = data.draw(st.sampled_from(pids))
        if kind == "right":
            m = self.state.outgoing_by_packet_id(pid)
            assert m is not None
            kind = {
                Phase.QUEUED: "puback",  # nothing is right for a message never sent
                Phase.AWAIT_PUBACK: "puback",
                Phase.AWAIT_PUBREC: data.draw(st.sampled_from(["pubrec", "pubrec_failed"])),
                Phase.AWAIT_PUBCOMP: "pubcomp",
            }[m.phase]
        self.do_ack(pid, kind)

    @rule(pid=st.integers(0, 12), topic=TOPICS, payload=st.binary(max_size=8), dup=st.booleans())
    def receive(self, pid: int, topic: str, payload: bytes, dup: bool) -> None:
        held = pid in self.state.incoming
        before = snap(self.state)
        legal = 1 <= pid <= MAX_PACKET_ID
        rec = self.attempt(legal, lambda: self.state.receive(pid, topic, payload, dup=dup))
        if held:  # [MQTT-4.3.3-10] a duplicate is not stored (or delivered) twice
            assert rec is None and snap(self.state) == before
        elif legal:
            assert rec is not None and self.state.incoming[pid].payload == payload
        self.keep(rec)

    def do_release(self, pid: int) -> None:
        expected = self.state.incoming.get(pid)
        result = self.attempt(expected is not None, lambda: self.state.release(pid))
        if result is not None:
            msg, rec = result
            assert msg == expected and pid not in self.state.incoming
            self.keep(rec)

    @rule(data=st.data(), held=st.booleans())
    def release(self, data: st.DataObject, held: bool) -> None:
        if held and self.state.incoming:
            self.do_release(data.draw(st.sampled_from(sorted(self.state.incoming))))
        else:
            self.do_release(data.draw(st.integers(-1, 20)))

    @rule(flt=FILTERS, qos=st.one_of(st.none(), st.integers(0, 2)))
    def subscribe_or_unsubscribe(self, flt: str, qos: int | None) -> None:
        if qos is None:
            self.keep(self.state.unsubscribe(flt))
            assert flt not in self.state.subscriptions
        else:
            self.keep(self.state.subscribe(flt, qos))
            assert self.state.subscriptions[flt] == qos

    @rule(sp=st.booleans(), republish=st.booleans(), released=st.booleans())
    def on_connack(self, sp: bool, republish: bool, released: bool) -> None:
        before = snap(self.state)
        old = dict(self.state.outgoing)
        had_state = not self.state.empty
        changes = bool(self.state.incoming) or any(
            m.phase is not Phase.QUEUED for m in self.state.outgoing.values()
        )
        rec, plan = self.state.on_connack(sp, republish, released)
        assert plan.session_present is sp
        assert [m.seq for m in plan.outgoing] == sorted(self.state.outgoing)  # [MQTT-4.6.0-1]
        assert plan.outgoing == tuple(self.state.outgoing.values())
        if sp or not had_state:
            assert rec is None and plan.lost is None and snap(self.state) == before
        elif not changes:  # only never-sent messages and subscriptions: reported, not recorded
            assert rec is None and plan.lost is not None and snap(self.state) == before
        else:  # [MQTT-3.2.2-5]
            assert rec is not None and plan.lost is not None
            assert self.state.incoming == {}
            for seq, m in old.items():
                now = self.state.outgoing.get(seq)
                if m.phase is Phase.QUEUED:
                    assert now == m
                elif not (released if m.phase is Phase.AWAIT_PUBCOMP else republish):
                    assert now is None
                else:
                    assert now is not None and now.phase is Phase.QUEUED and now.packet_id == 0
        self.keep(rec)

    @rule(at=TIMES, which=st.sampled_from(["connected", "disconnected", "activity", "configure",
                                           "clock"]),
          version=st.sampled_from([4, 5]),
          expiry=st.one_of(st.none(), st.sampled_from([0, 2, 0xFFFFFFFF])))
    def clock_or_configure(self, at: float, which: str, version: int, expiry: int | None) -> None:
        if which == "connected":
            self.keep(self.state.connected(at, "broker", False))
        elif which == "disconnected":
            self.keep(self.state.disconnected(at))
        elif which == "activity":
            self.keep(self.state.activity(at))
        elif which == "clock":  # a ClockOffset: either way from the wall clock, or none
            self.keep(self.state.set_clock_offset(at - 1e9 if at > 1 else 0.0))
        else:
            self.keep(self.state.configure(protocol_version=version, session_expiry_interval=expiry))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def invariants_hold(self) -> None:
        self.state.check_invariants()
        index_consistent(self.state)

    @invariant()
    def packet_ids_unique_and_seqs_rising(self) -> None:
        pids = self.held_pids()
        assert len(pids) == len(set(pids))
        seqs = [m.seq for m in self.state.outgoing.values()]
        assert seqs == sorted(set(seqs)) == list(self.state.outgoing)
        assert all(s < self.state.next_seq for s in seqs)

    @invariant()
    def replay_gives_an_equal_state(self) -> None:
        fresh = codec.decode(self.initial_text)
        for rec in self.records:
            fresh.apply(rec)
        assert fresh == self.state
        assert snap(fresh) == snap(self.state)

    @invariant()
    def encode_decode_round_trips(self) -> None:
        text = codec.encode(self.state)
        again = codec.decode(text)
        assert again == self.state
        assert codec.encode(again) == text
        index_consistent(again)


SessionMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None, database=None
)
TestSessionMachine = pytest.mark.heavy(SessionMachine.TestCase)
