"""The engine against an in-memory model broker, with crashes at every action boundary.

A hypothesis state machine drives one ``Engine`` (carried out by a small driver over a
``MemoryStore``) and a model broker that holds the client's session (method B: an incoming
QoS 2 message is stored on PUBLISH and delivered onward on PUBREL, like mosquitto). The
application publishes; the broker reads, answers (PUBACK / PUBREC / PUBCOMP queues drained in
any interleaving: the spec orders each kind only), sends QoS 1/2 messages; connections drop
(unread packets are lost); the broker may forget the session (SessionPresent=0). A CRASH cuts
the action list being carried out at a chosen boundary: kill -9 keeps ``store.written``, a power
cut only the synced records; a fresh ``Engine(settings, recovered_state)`` reconnects. The
SessionSync mode is drawn: ``always``; ``interval``, where a publish's records are written at
once and synced by a timer rule (``interval_sync``) while its PUBLISH leaves at once, packet ids
coming from reservations synced first; ``none`` (no sync at all: no power cuts, which it does
not promise to survive).

Checked: every publish whose ``Persist`` ran reaches the broker's subscribers (after a final
quiescent phase); no QoS 2 message reaches them twice, except the documented window (it was
past PUBREC when the broker answered SessionPresent=0, ``state.py``); broker-sent QoS 2
messages are taken by the application at most once, QoS 1/2 at least once before the broker
sees their PUBACK / PUBCOMP; outgoing packet ids never collide; and each ``Write`` finds the
record it depends on durable (synced) when it is carried out, a sync ``Persist`` earlier in its
own action list for PUBREC / PUBREL. Under ``interval`` a PUBLISH finds its message written
(not necessarily synced) and its packet id inside a durable reservation; a power cut takes only
promised messages published since the last timer sync, a suffix of the publish order, never
one published after a restart; the broker holds no QoS 2 flow at the end (the PUBRELs for a
reservation read back release those whose records the power cut took).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mqttsession import _wire, codec
from mqttsession._wire import Packet, PacketType
from mqttsession.engine import (
    Action,
    Deliver,
    Engine,
    EngineSettings,
    Persist,
    Write,
)
from mqttsession.events import MessageEvent, SessionLostEvent
from mqttsession.state import (
    Accepted,
    Reserved,
    Event,
    Orphaned,
    OrphansReleased,
    OrphanReleased,
    OutgoingMessage,
    Phase,
    Received,
    Released,
    SessionReset,
    SessionState,
    Spooled,
    Stepped,
    Taken,
    id_range,
)
from mqttsession.store import MemoryStore

SETTINGS = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ACKS = (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBCOMP)
NODES = ["model:1883", "other:1883"]  # the model broker's two cluster nodes

# The machine steers clear of the engine bug the xfail test below pins down (so it keeps guarding
# everything else): no crash between a SessionPresent=0 CONNACK's Connected record and the reset
# that releases the incoming QoS 2 messages the broker forgot. Set False once that is fixed.
# Fixed: bug 1's outgoing side (the outgoing reset is durable with the Connected record) and
# bug 2 (a SEND record that gives a message its packet id is synced).
STEER_KNOWN_BUGS = False


def _persist(store: MemoryStore, state: SessionState, a: Persist) -> None:
    """What the driver does with a ``Persist`` (``driver.Driver.run``), on the memory store."""
    if a.records:
        store.append(a.records, state, sync=a.sync, lazy=a.lazy)
    elif a.sync:
        store.sync_pending()
    else:
        store.flush()


class _Crash(Exception):
    """The process died at this action boundary."""


# ------------------------------------------------------------------------------ model broker


@dataclass
class _Out:
    """A broker-to-client QoS 1/2 flow; ``released``: PUBREC seen, PUBREL sent."""

    pid: int
    payload: bytes
    qos: int
    released: bool = False
    node: str = NODES[0]  # the cluster node that sent it last


class ModelBroker:
    """The broker's session for the one client id, and its subscribers' view. It is a cluster
    of two nodes (``NODES``) sharing the session, the way aedes' nodes behave: a node never
    sends the PUBREL of a flow the other node began, and resends a PUBLISH with DUP=0."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.has_session = False
        self.held: dict[int, bytes] = {}  # client's QoS 2 stored on PUBLISH, awaiting PUBREL
        self.outbound: dict[int, _Out] = {}  # by packet id, in send order
        self.last_pid = 0
        self.delivered: Counter[bytes] = Counter()  # onward, to subscribers
        self.allowed_dups: set[bytes] = set()  # the documented SessionPresent=0 window
        self.sent: dict[bytes, int] = {}  # messages it sent the client -> QoS
        self.forgotten: set[bytes] = set()  # of those, lost with a forgotten session
        self.online = False
        self.node = NODES[0]  # the node of the current (or last) connection
        self.replies: dict[PacketType, deque[bytes]] = {k: deque() for k in ACKS}
        self.q1_order: list[int] = []  # QoS 1 PUBLISHes sent on this connection
        self.q1_acked: set[int] = set()
        self.seen: set[bytes] = set()  # client PUBLISHes read on this connection
        self.last_seen = 0  # the publish number of the latest first-seen one

    def connect(self, forget: bool, node: str = "") -> tuple[bool, list[bytes]]:
        """A CONNECT (CleanSession=0) to ``node``: SessionPresent, and the resends that follow
        CONNACK."""
        node = node or NODES[0]
        present = self.has_session and not forget
        if not present:
            self.forgotten |= {o.payload for o in self.outbound.values()}
            self.held.clear()
            self.outbound.clear()
            self.last_pid = 0  # a new session numbers from 1 again
            self.has_session = True
        self.online = True
        self.node = node
        for q in self.replies.values():
            q.clear()
        self.q1_order, self.q1_acked = [], set()
        self.seen, self.last_seen = set(), 0
        resends = []
        for o in self.outbound.values():  # [MQTT-4.4.0-1], in order [MQTT-4.6.0-1]
            if o.released:
                if o.node == node:  # the other node never sends it (aedes)
                    resends.append(_wire.encode_ack(PacketType.PUBREL, o.pid,
                                                    protocol=self.protocol))
            else:
                resends.append(self._publish(o, dup=o.node == node))  # aedes: DUP=0
                o.node = node
        return present, resends

    def disconnect(self) -> None:
        self.online = False
        for q in self.replies.values():
            q.clear()

    def _publish(self, o: _Out, dup: bool) -> bytes:
        if o.qos == 1:
            self.q1_order.append(o.pid)
        return _wire.encode_publish("in", o.payload, qos=o.qos, packet_id=o.pid, dup=dup,
                                    protocol=self.protocol)

    def send(self, payload: bytes, qos: int) -> bytes:
        """A new message for the client."""
        pid = self.last_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.outbound:
                break
        self.last_pid = pid
        o = _Out(pid, payload, qos, node=self.node)
        self.outbound[pid] = o
        self.sent[payload] = qos
        return self._publish(o, dup=False)

    def _deliver(self, payload: bytes, qos: int) -> None:
        self.delivered[payload] += 1
        if qos == 2 and payload not in self.allowed_dups:
            assert self.delivered[payload] == 1, f"QoS 2 message {payload!r} delivered twice"

    def _reply(self, kind: PacketType, pid: int) -> None:
        self.replies[kind].append(_wire.encode_ack(kind, pid, protocol=self.protocol))

    def receive(self, data: bytes, app: AppModel) -> list[bytes]:
        """A packet from the client; returns what the broker writes back at once (PUBREL)."""
        p = _wire.decode_packet(data, self.protocol)
        pid = p.packet_id or 0
        if p.type is PacketType.PUBLISH:
            assert p.qos in (1, 2) and p.topic == "t"
            if p.payload not in self.seen:  # in publish order on each connection [MQTT-4.6.0-1]
                self.seen.add(p.payload)
                n = int(p.payload[1:])
                assert n > self.last_seen, f"PUBLISH {p.payload!r} after o{self.last_seen}"
                self.last_seen = n
            if p.qos == 1:
                self._deliver(p.payload, 1)
                self._reply(PacketType.PUBACK, pid)
                return []
            old = self.held.setdefault(pid, p.payload)
            assert old == p.payload, (
                f"packet id {pid} reused while in flight: holds {old!r}, got {p.payload!r}")
            self._reply(PacketType.PUBREC, pid)
        elif p.type is PacketType.PUBREL:
            payload = self.held.pop(pid, None)
            if payload is not None:
                self._deliver(payload, 2)
            self._reply(PacketType.PUBCOMP, pid)
        elif p.type is PacketType.PUBACK:
            o = self.outbound.get(pid)
            if o is not None and o.qos == 1:
                # [MQTT-4.6.0-2] PUBACKs in the order the PUBLISHes arrived
                i = self.q1_order.index(pid)
                missing = [x for x in self.q1_order[:i] if x not in self.q1_acked]
                assert not missing, f"PUBACK {pid} before PUBACK {missing}"
                self.q1_acked.add(pid)
                assert o.payload in app.acked, f"PUBACK for {o.payload!r} the app never took"
                self._complete(o)
        elif p.type is PacketType.PUBREC:
            o = self.outbound.get(pid)
            if o is not None and o.qos == 2:
                o.released = True
                o.node = self.node
            return [_wire.encode_ack(PacketType.PUBREL, pid, protocol=self.protocol)]
        elif p.type is PacketType.PUBCOMP:
            o = self.outbound.get(pid)
            if o is not None and o.qos == 2 and o.released:
                assert app.committed[o.payload] == 1, (
                    f"PUBCOMP for {o.payload!r}, which the app has not taken")
                self._complete(o)
        else:  # pragma: no cover - no subscriptions in this model
            raise AssertionError(f"unexpected {p.describe()}")
        return []

    def _complete(self, o: _Out) -> None:
        del self.outbound[o.pid]


# ------------------------------------------------------------------------------ application


class AppModel:
    """What the application was handed and took. A QoS 2 message is taken when its removal
    (``Released``, or a ``SessionReset`` releasing it) ran; a crash before that undoes the
    hand-over (the callback never completed)."""

    def __init__(self) -> None:
        self.pending: list[MessageEvent] = []  # delivered, ack() not called yet
        self.acked: set[bytes] = set()  # ack() called (QoS 1 and 2)
        self.handed: dict[int, bytes] = {}  # QoS 2 delivered, removal not run, by packet id
        self.orphans: set[bytes] = set()  # orphans delivered, removal not run (any packet id)
        self.committed: Counter[bytes] = Counter()

    def deliver(self, m: MessageEvent, orphan: bool = False) -> None:
        assert m.qos in (1, 2) and m.topic == "in"
        if orphan:  # out of packet-id space: a new message may come under its id
            assert not self.committed[m.message], (
                f"orphan {m.message!r} delivered again after the app took it")
            assert m.message not in self.orphans, f"orphan {m.message!r} handed out twice"
            self.orphans.add(m.message)
        elif m.qos == 2:
            assert not self.committed[m.message], (
                f"QoS 2 message {m.message!r} delivered again after the app took it")
            assert m.packet_id not in self.handed, f"QoS 2 id {m.packet_id} handed out twice"
            self.handed[m.packet_id] = m.message
        self.pending.append(m)

    def removed(self, pid: int) -> None:
        payload = self.handed.pop(pid, None)
        if payload is not None:
            self.committed[payload] += 1
            assert self.committed[payload] == 1, f"QoS 2 message {payload!r} taken twice"

    def removed_orphan(self, payload: bytes) -> None:
        assert payload in self.orphans, f"orphan {payload!r} removed, never handed out"
        self.orphans.discard(payload)
        self.committed[payload] += 1
        assert self.committed[payload] == 1, f"orphan {payload!r} taken twice"

    def crashed(self) -> None:
        self.pending.clear()
        self.handed.clear()
        self.orphans.clear()


# ------------------------------------------------------------------------------ the machine


class EngineCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.settings = EngineSettings()
        self.protocol = 4
        self.receive_maximum = 65535
        self.broker = ModelBroker(4)
        self.app = AppModel()
        self.now = 1000.0
        self.counter = 0
        self.mode = "always"  # SessionSync
        self.promised: set[bytes] = set()  # Accepted durable: publish returned
        self.order: list[bytes] = []  # the promised ones, in publish order
        self.sync_mark = 0  # interval: len(order) at the last sync of everything (the timer)
        self.may_lose: set[bytes] = set()  # interval: the tails power cuts took
        self.failed: set[bytes] = set()  # publish whose Persist failed (retracted)
        self.held: list[tuple[int, bytes]] = []  # group commit: written, not yet synced
        self.crash_in: int | None = None  # actions left before an armed crash
        self.power_cut = False
        self.possible_dups: set[bytes] | None = None  # on_session_lost must name these
        self.broken = False
        self.online = False
        self.c2b: deque[bytes] = deque()
        self.b2c: deque[bytes] = deque()
        self.inflight: set[int] = set()  # seqs whose flow is unfinished on this connection
        # a read batch (``read_batch``): its syncs wait for its end, and so do its packets,
        # but for the PUBLISHes no record of the batch is needed for (``Persist.ack``)
        self.batch: list[Write] | None = None
        self.batch_publish_held = False
        self.acking: MessageEvent | None = None  # the message ``ack`` is taking now
        self._fresh(SessionState())

    def _fresh(self, state: SessionState, queue: list[OutgoingMessage] | None = None) -> None:
        """A new process: its engine, its store holding ``state`` as the snapshot, and the
        disk queue the crash left (``MemoryStore.recover`` placed its reading back)."""
        old = getattr(self, "store", None)
        self.store = MemoryStore(state)
        self.store.sync_policy = self.mode != "none"
        if queue is not None and old is not None:
            self.store.queue, self.store.queue_read = queue, old.queue_read
            self.store.queue_durable = len(queue)
        self.store.ready = self.settings.queue_in_memory > 0
        self.durable_view = codec.decode(self.store.snapshot)
        self.durable_applied = 0
        self.written_view = codec.decode(self.store.snapshot)
        self.written_applied = 0
        self.sync_mark = len(self.order)  # the store holds only a (synced) snapshot
        self.engine = Engine(self.settings, state)
        self.engine.spool = self.store

    @initialize(protocol=st.sampled_from([4, 5]), max_inflight=st.sampled_from([1, 2, 3, 20]),
                receive_maximum=st.sampled_from([1, 2, 65535]),
                republish_interval=st.sampled_from([0.0, 1.0]),
                queue_in_memory=st.sampled_from([0, 0, 1, 2, 3]),
                mode=st.sampled_from(["always", "interval", "interval", "none"]),
                block=st.sampled_from([1, 3, 256]))
    def setup(self, protocol: int, max_inflight: int, receive_maximum: int,
              republish_interval: float, queue_in_memory: int, mode: str, block: int) -> None:
        """``mode``: SessionSync (the driver: ``interval`` writes a publish's records at once and
        syncs them later, reserving packet ids ``block`` at a time; ``none`` never syncs, and a
        power cut is then outside what it promises)."""
        self.protocol = protocol
        self.mode = mode
        self.receive_maximum = receive_maximum if protocol == 5 else 65535
        self.settings = EngineSettings(max_inflight=max_inflight,
                                       republish_interval=republish_interval,
                                       queue_in_memory=queue_in_memory,
                                       reserve_packet_ids=block if mode == "interval" else 0)
        self.broker = ModelBroker(protocol)
        state = SessionState()
        state.configure(client_id="model", clean_session=False, protocol_version=protocol)
        self._fresh(state)

    # ---------------------------------------------------------------- the driver

    def durable(self) -> SessionState:
        """What a power cut now would leave (the synced records, applied incrementally);
        ``none`` promises only what a kill -9 leaves."""
        if self.mode == "none":
            return self.written()
        for rec in self.store.written[self.durable_applied:self.store.durable]:
            self.durable_view.apply(rec)
        self.durable_applied = max(self.durable_applied, self.store.durable)
        return self.durable_view

    def written(self) -> SessionState:
        """What a kill -9 now would leave (the records the OS holds)."""
        for rec in self.store.written[self.written_applied:]:
            self.written_view.apply(rec)
        self.written_applied = len(self.store.written)
        return self.written_view

    def run(self, actions: Sequence[Action], publishing: bool = False) -> None:
        """Carry out the actions in order, as the Client does; an armed crash cuts them.
        ``publishing``: a publish call's list, whose syncs ``interval`` defers (``Driver.run``'s
        ``later_sync``) but for a forced one (a packet-id reservation)."""
        self.check_list_order(actions)
        later = publishing and self.mode == "interval"
        for a in actions:
            self.crash_point()
            self.execute(a, later)

    def crash_point(self) -> None:
        """An action boundary: an armed crash counts down, and strikes at 0."""
        if self.crash_in is not None:
            if self.crash_in == 0:
                raise _Crash
            self.crash_in -= 1

    def execute(self, a: Action, later_sync: bool = False) -> None:
        if isinstance(a, Persist):
            if self.batch is not None and a.sync:  # written now, synced at the batch's end
                _persist(self.store, self.engine.state, Persist(a.records, False, a.lazy))
                if not a.ack:  # the PUBLISHes after it wait too
                    self.batch_publish_held = True
            elif later_sync and a.sync and not a.force:  # written now, synced by the timer
                _persist(self.store, self.engine.state, Persist(a.records, False, a.lazy))
            else:
                _persist(self.store, self.engine.state, a)
            for rec in a.records:
                if isinstance(rec, (Accepted, Spooled)):
                    # the engine asks for point 1; under ``interval`` the driver syncs it later
                    assert a.sync, "an accepted message must be synced (point 1)"
                    self.promised.add(rec.message.payload)
                    self.order.append(rec.message.payload)
                elif isinstance(rec, Reserved):
                    assert a.sync and a.force, "a reservation is synced at once"
                elif isinstance(rec, (Released, Taken)):  # Taken: delivered at a move
                    assert a.sync, "a released incoming message must be synced (point 4)"
                    self.app.removed(rec.packet_id)
                elif isinstance(rec, SessionReset):
                    for pid in rec.released:
                        self.app.removed(pid)
                elif isinstance(rec, OrphansReleased):
                    assert a.sync, "released orphans must be synced (point 4)"
                    for pid in rec.packet_ids:
                        self.app.removed(pid)
                elif isinstance(rec, Orphaned):  # handed out, not taken: an orphan now
                    for pid in rec.packet_ids:
                        payload = self.app.handed.pop(pid, None)
                        if payload is not None:
                            self.app.orphans.add(payload)
                elif isinstance(rec, OrphanReleased):  # the one ``ack`` took, or taken before
                    assert a.sync, "a released orphan must be synced (point 4)"
                    if self.acking is not None:
                        self.app.removed_orphan(self.acking.message)
        elif isinstance(a, Write):
            if self.batch is not None and (a.kind is not PacketType.PUBLISH
                                           or self.batch_publish_held):
                self.batch_publish_held |= a.kind is PacketType.PUBLISH
                self.batch.append(a)  # (``_paho.PahoConnection.write``)
                return
            self.check_durable_before(a)
            self.check_window(a)
            if self.online:
                self.c2b.append(a.packet)
        elif isinstance(a, Deliver):
            m = a.message
            self.app.deliver(m, orphan=any(im.payload == m.message and im.packet_id == m.packet_id
                                           for im in self.engine.state.orphans))
        elif a.name == "on_session_lost":
            assert isinstance(a.event, SessionLostEvent)
            named = {m.message for m in a.event.possible_duplicates}
            assert named == self.possible_dups, f"possible duplicates: {named}"

    def check_list_order(self, actions: Sequence[Action]) -> None:
        """Within one list, the sync Persist a Write depends on comes first: a publish's list
        starts with its Accepted; PUBREC follows Received (or, for a duplicate, a bare sync);
        PUBREL of a held message follows its PUBREC step (or a bare sync); PUBCOMP follows the
        Released record the same list carries."""
        synced: set[object] = set()  # what sync Persists so far covered: records, "bare"
        for i, a in enumerate(actions):
            if isinstance(a, Persist):
                if any(isinstance(r, (Accepted, Spooled)) for r in a.records):
                    # first, or after the reservation its packet id needs
                    assert a.sync and all(
                        isinstance(b, Persist) and b.records
                        and all(isinstance(r, Reserved) for r in b.records)
                        for b in actions[:i]), "point 1: Accepted first, synced"
                if a.sync:
                    synced.update(a.records if a.records else ("bare",))
                if a.ack:  # only acks wait for it (a PUBLISH in a read batch does not)
                    assert a.sync and all(
                        isinstance(r, (Received, Released, Taken, OrphanReleased))
                        or (isinstance(r, Stepped) and r.event is Event.PUBREC)
                        for r in a.records), f"an acknowledgement's Persist holds {a.records}"
                continue
            if not isinstance(a, Write):
                continue
            pid = a.packet_id
            if a.kind is PacketType.PUBREC:
                assert "bare" in synced or any(isinstance(r, Received) and r.message.packet_id
                                               == pid for r in synced), f"point 3: PUBREC {pid}"
            elif a.kind is PacketType.PUBREL:
                m = self.engine.state.outgoing_by_packet_id(pid)
                if m is not None:
                    assert "bare" in synced or Stepped(m.seq, Event.PUBREC, pid) in synced, (
                        f"point 2: PUBREL {pid}")
            elif a.kind is PacketType.PUBCOMP:
                later = [r for b in actions[i:] if isinstance(b, Persist) for r in b.records]
                assert Released(pid) not in later, f"point 4: PUBCOMP {pid} before its removal"

    def check_window(self, w: Write) -> None:
        """[MQTT-3.3.4-7] at most min(max_inflight, Receive Maximum) QoS 1/2 flows unfinished
        on a connection (a flow's PUBLISH or PUBREL written on it, the message still held)."""
        m = self.engine.state.outgoing_by_packet_id(w.packet_id)
        if w.kind not in (PacketType.PUBLISH, PacketType.PUBREL) or m is None:
            return
        outgoing = self.engine.state.outgoing
        self.inflight = {seq for seq in self.inflight if seq in outgoing} | {m.seq}
        window = max(1, min(self.settings.max_inflight, self.receive_maximum))
        assert len(self.inflight) <= window, f"{len(self.inflight)} in flight, window {window}"

    def check_durable_before(self, w: Write) -> None:
        """The persistence points, against what a power cut at this moment would leave."""
        p = _wire.decode_packet(w.packet, self.protocol)
        pid = p.packet_id or 0
        d = self.durable()
        if p.type is PacketType.PUBLISH and p.qos:
            held = [m for m in d.outgoing.values() if m.payload == p.payload]
            if self.mode == "interval":
                # the promise of ``interval``: the message is in the OS (kill -9 keeps it), and
                # a power cut that takes it leaves its packet id inside a durable reservation
                assert any(m.payload == p.payload for m in self.written().outgoing.values()), (
                    f"PUBLISH {p.payload!r} before its message is written")
                if any(m.packet_id != pid for m in held) or not held:
                    assert pid in id_range(d.reserved_first, d.reserved_last), (
                        f"PUBLISH {p.payload!r} with packet id {pid} outside the durable"
                        f" reservation {d.reserved_first}..{d.reserved_last}")
            else:
                assert held, f"point 1: PUBLISH {p.payload!r} before its message is durable"
                assert all(m.packet_id == pid for m in held), (
                    f"PUBLISH {p.payload!r} with packet id {pid} before the id is durable")
            phases = [m.phase for m in held]
            assert Phase.AWAIT_PUBCOMP not in phases, (
                f"[MQTT-4.3.3-6] PUBLISH {p.payload!r} again after its release is durable")
        elif p.type is PacketType.PUBREL:
            m = self.engine.state.outgoing_by_packet_id(pid)
            if m is not None:
                dm = d.outgoing.get(m.seq)
                assert dm is not None and dm.phase is Phase.AWAIT_PUBCOMP, (
                    f"point 2: PUBREL {pid} before 'released' is durable")
        elif p.type is PacketType.PUBREC:
            assert pid in d.incoming, f"point 3: PUBREC {pid} before the message is durable"
        elif p.type is PacketType.PUBCOMP:
            assert pid not in d.incoming, f"point 4: PUBCOMP {pid} before the removal is durable"

    def crash(self) -> None:
        """The process is gone: recover the store as the crash left it, start again."""
        if self.mode == "none":
            self.power_cut = False  # ``none`` promises nothing for a power cut
        state = self.store.recover(power_cut=self.power_cut)
        state.check_invariants()
        self.check_loss(state)
        self.crash_in = None
        self.held = []  # those calls never returned: nothing was promised
        self.drop_network()
        self.app.crashed()
        self._fresh(state, self.store.queue)

    def check_loss(self, state: SessionState) -> None:
        """What the crash took of the promised messages (neither in the recovered session, nor
        delivered, nor on their way: a QoS 2 one the broker holds is released by the PUBRELs
        of the reservation, unless the broker forgets the session). kill -9, and a power cut under ``always``: nothing. A power cut
        under ``interval``: only messages published since the last timer sync, and only a
        suffix of the publish order (nothing after them survived)."""
        present = {m.payload for m in state.outgoing.values()}
        present |= {m.payload for m in self.store.queue[self.store.queue_read:]}
        delivered = set(self.broker.delivered)  # not those the broker holds: it may forget
        gone = [i for i, p in enumerate(self.order)
                if p not in present and p not in delivered and p not in self.may_lose]
        if not (self.power_cut and self.mode == "interval"):
            assert not gone, f"a crash took promised messages: {[self.order[i] for i in gone]}"
            return
        if gone:
            assert gone[0] >= self.sync_mark, (
                f"a power cut took {self.order[gone[0]]!r}, published before the last sync")
            survived = [p for p in self.order[gone[0]:] if p in present]
            assert not survived, f"a power cut took a message before these survived: {survived}"
        self.may_lose |= {self.order[i] for i in gone}

    def drop_network(self) -> None:
        self.online = False
        self.c2b.clear()
        self.b2c.clear()
        self.broker.disconnect()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        try:
            yield
        except _Crash:
            self.crash()
        except BaseException:
            self.broken = True
            raise

    @contextlib.contextmanager
    def read_batch(self) -> Iterator[None]:
        """The packets read in one round, handled as the network thread does: their syncs
        become one at the end, the packets written wait for it, except the PUBLISHes that
        no record of the batch is needed for: those leave at once (a crash may cut in between,
        and a power cut then takes the batch's records). (The CONNACK's round is not one
        here: ``Driver._paho_on_connect`` syncs its records before anything it wrote leaves.)"""
        self.batch, self.batch_publish_held = [], False
        try:
            yield
            self.crash_point()
            if self.mode != "none":
                self.store.sync_pending()
            held, self.batch = self.batch, None
            for w in held:  # (their lists' order was checked when they were carried out)
                self.crash_point()
                self.execute(w)
        finally:
            self.batch = None

    def payload(self, prefix: str) -> bytes:
        self.counter += 1
        return f"{prefix}{self.counter}".encode()

    # ---------------------------------------------------------------- application

    @rule(qos=st.sampled_from([1, 2]))
    def publish(self, qos: int) -> None:
        with self.step():
            _, actions = self.engine.publish("t", self.payload("o"), qos, False)
            self.run(actions, publishing=True)

    @rule(n=st.integers(1, 4), qos=st.sampled_from([1, 2]))
    def publish_many(self, n: int, qos: int) -> None:
        with self.step():
            items = [("t", self.payload("o"), qos, False, b"") for _ in range(n)]
            _, actions = self.engine.publish_many(items, self.now)
            self.run(actions, publishing=True)

    @precondition(lambda self: self.mode == "interval")
    @rule()
    def interval_sync(self) -> None:
        """SessionSync=interval's timer: everything written is synced."""
        self.store.sync_pending()
        self.store.queue_durable = len(self.store.queue)
        self.sync_mark = len(self.order)

    @precondition(lambda self: self.mode == "always")  # group commit is ``always``'s
    @rule(qos=st.sampled_from([1, 2]))
    def publish_held(self, qos: int) -> None:
        """A group-commit publish (``Client._publish_begin``): its record is written, not
        synced, and its PUBLISH waits for ``durable``; the call has not returned."""
        with self.step():
            payload = self.payload("o")
            _, actions = self.engine.publish("t", payload, qos, False, hold=True)
            rec = self.engine.accepted
            first = actions[0] if actions else None
            if not isinstance(rec, Accepted) or not isinstance(first, Persist):
                self.run(actions)  # the disk queue took it: the usual synced path
                return
            assert first.records[-1] == rec
            for a in actions:  # the driver's ``deferred`` run: no sync for point 1
                if self.crash_in is not None:
                    if self.crash_in == 0:
                        raise _Crash
                    self.crash_in -= 1
                if isinstance(a, Persist) and rec in a.records:
                    _persist(self.store, self.engine.state, Persist(a.records, False, a.lazy))
                else:
                    self.execute(a)
            self.held.append((rec.message.seq, payload))

    @precondition(lambda self: bool(self.held))
    @rule()
    def group_sync(self) -> None:
        """The shared fdatasync: the held publishes return, their PUBLISHes may go."""
        with self.step():
            self.store.sync_pending()
            held, self.held = self.held, []
            self.promised |= {p for _, p in held}
            self.run(self.engine.durable([seq for seq, _ in held]))

    @rule(qos=st.sampled_from([1, 2]))
    def publish_persist_fails(self, qos: int) -> None:
        """The store refuses the Accepted record: the driver retracts, nothing else runs."""
        with self.step():
            before = self.engine.state.snapshot_fields()
            payload = self.payload("f")
            _, actions = self.engine.publish("t", payload, qos, False)
            rec = next(r for a in actions if isinstance(a, Persist) for r in a.records
                       if isinstance(r, (Accepted, Spooled)))
            self.engine.retract(rec)
            assert self.engine.state.snapshot_fields() == before
            self.failed.add(payload)

    @precondition(lambda self: bool(self.app.pending))
    @rule(i=st.integers(0, 7))
    def app_acks(self, i: int) -> None:
        with self.step():
            self.ack(self.app.pending.pop(i % len(self.app.pending)))

    def ack(self, m: MessageEvent) -> None:
        self.app.acked.add(m.message)
        self.acking = m
        try:
            self.run(self.engine.ack(m)[1])
        finally:
            self.acking = None

    @rule()
    def tick(self) -> None:
        with self.step():
            self.now += 1.0
            self.run(self.engine.tick(self.now, self.now))

    # ---------------------------------------------------------------- network and broker

    @precondition(lambda self: not self.online)
    @rule(forget=st.sampled_from([False, False, True]), node=st.sampled_from(NODES + NODES[:1]))
    def connect(self, forget: bool, node: str) -> None:
        with self.step():
            self.do_connect(forget, node)

    def do_connect(self, forget: bool, node: str = NODES[0]) -> None:
        """A connection to ``node`` of the broker (the other one: the client moved there, and
        delivers at once the QoS 2 messages it holds, ``Engine._deliver_unreleased``)."""
        self.now += 1.0
        self.run(self.engine.reset())
        self.engine.connecting(node)
        if self.crash_in == 0:
            # dying before the CONNACK is read is dying before the CONNECT was sent: a broker
            # that forgot the session would answer the next CONNECT SessionPresent=1 (its new
            # session), which no client can tell from the old one
            raise _Crash
        present, resends = self.broker.connect(forget, node)
        if not present:  # past PUBREC: republished, a possible duplicate (state.py)
            self.possible_dups = {m.payload for m in self.engine.state.outgoing.values()
                                  if m.phase is Phase.AWAIT_PUBCOMP}
            self.broker.allowed_dups |= self.possible_dups
        self.online = True
        self.inflight = set()
        self.b2c.extend(resends)
        # the driver runs CONNACK's actions, on_connected, then the resume plan: one list here
        actions = self.engine.connack(0, "", present, self.receive_maximum, None, self.now)
        actions += self.engine.lost_incoming()  # delivered before resume() removes them
        actions += self.engine.resume()
        reset = [i for i, a in enumerate(actions)
                 if isinstance(a, Persist) and any(isinstance(r, SessionReset) for r in a.records)]
        if STEER_KNOWN_BUGS and reset and self.crash_in is not None and self.crash_in <= reset[-1]:
            # bug 1, incoming side: no crash between Connected and the SessionReset that
            # releases the incoming QoS 2 messages the broker forgot
            self.crash_in = reset[-1] + 1
        self.run(actions)

    @precondition(lambda self: self.online)
    @rule()
    def drop(self) -> None:
        """The connection breaks: packets not read yet are lost."""
        with self.step():
            self.drop_network()
            self.now += 1.0
            self.run(self.engine.connection_lost(self.now, 0, "model drop"))

    @precondition(lambda self: self.online)
    @rule(forget=st.sampled_from([False, False, True]), node=st.sampled_from(NODES + NODES[:1]))
    def reconnect(self, forget: bool, node: str) -> None:
        """A drop and a new connection in one step (the broker may restart without the session)."""
        with self.step():
            self.drop_network()
            self.now += 1.0
            self.run(self.engine.connection_lost(self.now, 0, "model drop"))
            self.do_connect(forget, node)

    @precondition(lambda self: self.online and bool(self.c2b))
    @rule(n=st.integers(1, 4))
    def broker_reads(self, n: int) -> None:
        with self.step():
            for _ in range(min(n, len(self.c2b))):
                self.b2c.extend(self.broker.receive(self.c2b.popleft(), self.app))

    @precondition(lambda self: self.online and any(self.broker.replies.values()))
    @rule(kind=st.sampled_from(ACKS), n=st.integers(1, 3))
    def broker_answers(self, kind: PacketType, n: int) -> None:
        q = self.broker.replies[kind]
        for _ in range(min(n, len(q))):
            self.b2c.append(q.popleft())

    @precondition(lambda self: self.online and bool(self.c2b or any(self.broker.replies.values())))
    @rule()
    def broker_round(self) -> None:
        """The broker reads everything and answers it all."""
        with self.step():
            while self.c2b:
                self.b2c.extend(self.broker.receive(self.c2b.popleft(), self.app))
            for q in self.broker.replies.values():
                self.b2c.extend(q)
                q.clear()

    @precondition(lambda self: self.online and bool(self.b2c))
    @rule()
    def client_round(self) -> None:
        """The client reads everything the broker wrote, as one read batch."""
        with self.step(), self.read_batch():
            while self.b2c:
                self.run(self.engine.receive(self.incoming(self.b2c.popleft())))

    @precondition(lambda self: self.online)
    @rule(qos=st.sampled_from([1, 2]))
    def broker_sends(self, qos: int) -> None:
        self.b2c.append(self.broker.send(self.payload("i"), qos))

    @precondition(lambda self: self.online and bool(self.b2c))
    @rule(n=st.integers(1, 4))
    def client_reads(self, n: int) -> None:
        with self.step():
            for _ in range(min(n, len(self.b2c))):
                self.run(self.engine.receive(self.incoming(self.b2c.popleft())))

    def incoming(self, data: bytes) -> Packet:
        return _wire.decode_packet(data, self.protocol)

    @precondition(lambda self: self.online)
    @rule(acks=st.booleans())
    def settle(self, acks: bool) -> None:
        """Run the network until nothing is in flight (the app acks too, if ``acks``)."""
        with self.step():
            self.exchange(acks)

    def exchange(self, acks: bool) -> bool:
        """One round of everything pending; True if anything moved."""
        moved = False
        for _ in range(50):
            busy = bool(self.c2b or self.b2c or any(self.broker.replies.values())
                        or (acks and self.app.pending))
            if not busy:
                break
            moved = True
            while self.c2b:
                self.b2c.extend(self.broker.receive(self.c2b.popleft(), self.app))
            for q in self.broker.replies.values():
                self.b2c.extend(q)
                q.clear()
            while self.b2c:
                self.run(self.engine.receive(self.incoming(self.b2c.popleft())))
            while acks and self.app.pending:
                self.ack(self.app.pending.pop(0))
        return moved

    # ---------------------------------------------------------------- crashes

    @precondition(lambda self: self.crash_in is None)
    @rule(after=st.integers(0, 6), power_cut=st.booleans())
    def arm_crash(self, after: int, power_cut: bool) -> None:
        """The process dies after ``after`` more actions (0: before the next one)."""
        self.crash_in = after
        self.power_cut = power_cut

    @precondition(lambda self: self.mode == "interval" and self.online)
    @rule(qos=st.sampled_from([1, 2]))
    def publish_then_power_cut(self, qos: int) -> None:
        """The window ``interval`` opens: a publish returns, the broker reads its PUBLISH (a
        QoS 2 one it holds awaiting PUBREL), the power fails before the record is synced."""
        self.publish(qos)
        with self.step():
            while self.c2b:
                self.b2c.extend(self.broker.receive(self.c2b.popleft(), self.app))
        self.power_cut = True
        self.crash()

    @rule(power_cut=st.booleans())
    def crash_now(self, power_cut: bool) -> None:
        self.power_cut = power_cut
        self.crash()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def packet_ids_unique(self) -> None:
        with self.step():
            st_ = self.engine.state
            ids = [m.packet_id for m in st_.outgoing.values() if m.packet_id]
            assert len(ids) == len(set(ids)), f"outgoing packet ids collide: {ids}"
            assert st_._by_packet_id == {m.packet_id: s for s, m in st_.outgoing.items()
                                         if m.packet_id}
            assert not set(ids) & self.engine.busy_packet_ids()
            assert not self.failed & set(self.broker.delivered), "a retracted message went out"

    def teardown(self) -> None:
        """Quiescence: reconnect, run until idle, then everything promised is through."""
        if self.broken:
            return
        self.crash_in = None
        if self.held:
            self.group_sync()
        # each node in turn, the last one first: a node sends the PUBRELs of its own flows only
        for node in [self.broker.node] + [n for n in NODES if n != self.broker.node]:
            if self.online and self.broker.node != node:
                self.drop_network()
                self.now += 1.0
                self.run(self.engine.connection_lost(self.now, 0, "model drop"))
            for _ in range(20):
                if not self.online:
                    self.do_connect(False, node)
                self.now += 1.0
                self.run(self.engine.tick(self.now, self.now))
                if not self.exchange(acks=True):
                    break
        lost = self.promised - set(self.broker.delivered)
        # interval: only what power cuts took of the messages published since the last sync;
        # nothing published after a restart
        assert lost <= self.may_lose, (
            f"published, durable, never delivered: {sorted(lost - self.may_lose)}")
        assert not self.broker.held, f"the broker still holds QoS 2 flows {self.broker.held}"
        assert not self.failed & set(self.broker.delivered)
        assert not self.engine.state.outgoing, f"stuck: {self.engine.state.outgoing}"
        assert not self.engine.state.spooled, "stuck in the disk queue"
        assert not self.engine.state.incoming, f"stale incoming: {self.engine.state.incoming}"
        assert not self.broker.outbound, f"broker flows unfinished: {self.broker.outbound}"
        for payload, qos in self.broker.sent.items():
            if payload in self.broker.forgotten:
                continue
            assert payload in self.app.acked, f"QoS {qos} {payload!r} never reached the app"
            if qos == 2:
                assert self.app.committed[payload] == 1, f"QoS 2 {payload!r} not taken once"


EngineCrashMachine.TestCase.settings = SETTINGS
TestEngineCrash = pytest.mark.heavy(EngineCrashMachine.TestCase)


# ------------------------------------------------------------------------------ known engine bugs


class _Process:
    """One client process: an engine whose actions go to a MemoryStore; writes are decoded."""

    def __init__(self, state: SessionState | None = None) -> None:
        if state is None:
            state = SessionState()
            state.configure(client_id="c", clean_session=False)
        self.store = MemoryStore(state)
        self.engine = Engine(EngineSettings(), state)

    def run(self, actions: Sequence[Action]) -> list[Packet | MessageEvent]:
        out: list[Packet | MessageEvent] = []
        for a in actions:
            if isinstance(a, Persist):
                _persist(self.store, self.engine.state, a)
            elif isinstance(a, Write):
                out.append(_wire.decode_packet(a.packet))
            elif isinstance(a, Deliver):
                out.append(a.message)
        return out

    def connack(self, session_present: bool) -> list[Action]:
        self.engine.reset()
        self.engine.connecting("broker:1883")
        return self.engine.connack(0, "", session_present, 65535, None, 1.0)

    def connect(self, session_present: bool) -> list[Packet | MessageEvent]:
        out = self.run(self.connack(session_present))
        out += self.run(self.engine.lost_incoming())
        return out + self.run(self.engine.resume())

    def kill9(self) -> _Process:
        """kill -9, then a new process restores the session from the store."""
        return _Process(self.store.recover())

    def feed(self, data: bytes) -> list[Packet | MessageEvent]:
        return self.run(self.engine.receive(_wire.decode_packet(data)))


def _summary(out: Sequence[Packet | MessageEvent]) -> list[tuple[str, int, bytes]]:
    return [(p.type.name, p.packet_id or 0, p.payload) if isinstance(p, Packet)
            else ("DELIVER", p.packet_id, p.message) for p in out]


def test_bug1_crash_after_connack_sp0_loses_released_message() -> None:
    """A QoS 2 message past PUBREC; its PUBREL is lost with the connection; the broker restarts
    without the session (SessionPresent=0: with the default ReleasedOnSessionLost=republish the
    message is published again). The process dies after Persist(Connected), before resume();
    the broker keeps the session that CONNECT made, so the next CONNACK says SessionPresent=1
    and the restored engine sends PUBREL: a method-B broker answers PUBCOMP for an id it does not
    hold and the message is never delivered."""
    p = _Process()
    p.connect(False)
    pid, actions = p.engine.publish("t", b"A", 2, False)
    p.run(actions)
    assert _summary(p.feed(_wire.encode_ack(PacketType.PUBREC, pid))) == [("PUBREL", pid, b"")]
    p.run(p.engine.connection_lost(2.0, 0, "lost"))  # the PUBREL never reached the broker
    connack = p.connack(False)  # the broker restarted without the session
    assert isinstance(connack[0], Persist)
    p.run(connack[:1])  # Persist(Connected) done, then kill -9 (resume() never ran)
    q = p.kill9()
    out = _summary(q.connect(True))  # the broker's new session: SessionPresent=1
    assert any(k == "PUBLISH" and b == b"A" for k, _, b in out), f"A not published again: {out}"


def test_bug1_crash_after_connack_sp0_keeps_stale_incoming() -> None:
    """The client holds an incoming QoS 2 message (PUBREC sent, no PUBREL yet); the broker
    restarts without the session; the process dies after Persist(Connected). After the restart
    the broker's new session (SessionPresent=1) numbers from 1 and sends a new QoS 2 message
    with packet id 1: the engine takes it for a duplicate of the stale one [MQTT-4.3.3-10] and on
    PUBREL delivers the stale message; the new one is lost."""
    p = _Process()
    p.connect(False)
    assert _summary(p.feed(_wire.encode_publish("in", b"old", qos=2, packet_id=1))) == [
        ("PUBREC", 1, b"")]
    p.run(p.engine.connection_lost(2.0, 0, "lost"))
    connack = p.connack(False)
    p.run(connack[:1])  # Persist(Connected), then kill -9
    q = p.kill9()
    q.connect(True)
    q.feed(_wire.encode_publish("in", b"new", qos=2, packet_id=1))
    delivered = _summary(q.feed(_wire.encode_ack(PacketType.PUBREL, 1)))
    assert delivered == [("DELIVER", 1, b"new")], delivered


def test_bug2_lost_send_record_reuses_a_packet_id_the_broker_holds() -> None:
    """SessionPresent=0 requeues a sent QoS 2 message A with packet id 0; resume() sends it with
    a new id (2) recorded lazily; the broker stores A under id 2 (method B, awaiting PUBREL). kill
    -9 loses the lazy record: A is QUEUED with no id again and last_packet_id is 1. The restarted
    application publishes B, which takes id 2; on reconnect (SessionPresent=1) A goes as id 3 and
    B as id 2: the broker takes B for a resend of A (id 2 in flight), so A is delivered twice (ids
    2 and 3) and B never."""
    p = _Process()
    p.connect(False)
    _, actions = p.engine.publish("t", b"A", 2, False)
    p.run(actions)
    p.run(p.engine.connection_lost(2.0, 0, "lost"))
    out = _summary(p.connect(False))  # the broker forgot the session
    assert out == [("PUBLISH", 2, b"A")]  # the broker now holds id 2 -> A, awaiting PUBREL
    q = p.kill9()
    _, actions = q.engine.publish("t", b"B", 2, False)
    q.run(actions)
    resent = _summary(q.connect(True))
    ids = {b: i for k, i, b in resent if k == "PUBLISH"}
    assert ids[b"B"] != 2, f"the broker holds id 2 for A; sent {resent}"
