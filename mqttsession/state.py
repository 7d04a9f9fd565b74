"""The MQTT client session model, and every transition of it.

This module and ``transitions.py`` own all session state transitions; nothing else changes a
``SessionState``. Pure: no I/O, no paho, no sockets, no threads, no clock (times are passed in).

Each transition is a *record* (a small frozen dataclass) applied by ``SessionState.apply``.
The public transition methods here build the record; ``transitions.py`` (the transition
table, ``OUTGOING_TRANSITIONS``, and one handler per record) checks it against the current
state and applies it; an illegal transition raises ``TransitionError`` and changes nothing.
The same records are what the journal stores, so replaying a journal runs exactly this code.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Container, Final, Sequence

from .errors import PacketIdsExhausted, StateError, TransitionError, UsageError
from .transitions import APPLY, OUTGOING_TRANSITIONS, PHASES_FOR_QOS, message_bytes
from .validation import (
    MAX_REMAINING_LENGTH,
    publish_packet_size,
    topic_bytes,
    validate_filter,
    validate_qos,
    validate_topic,
)
from .records import (
    MAX_EXPIRY,
    MAX_PACKET_ID,
    Accepted,
    Activity,
    ClockOffset,
    Configured,
    Connected,
    Disconnected,
    Event,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    Received,
    Record,
    Released,
    Reserved,
    Answered,
    ResumePlan,
    SessionLost,
    SessionReset,
    Spooled,
    Loaded,
    Orphaned,
    OrphansReleased,
    OrphanReleased,
    Stepped,
    Subscribed,
    Taken,
    Unsubscribed,
)

__all__ = [
    "MAX_PACKET_ID", "MAX_EXPIRY", "Phase", "Event", "OUTGOING_TRANSITIONS", "PHASES_FOR_QOS",
    "KEEP",
    "OutgoingMessage",
    "IncomingMessage",
    "SessionState",
    "ResumePlan",
    "SessionLost",
    "Record",
    "Configured",
    "Accepted",
    "Stepped",
    "Received",
    "Released",
    "Taken",
    "Subscribed",
    "Unsubscribed",
    "Connected",
    "SessionReset",
    "Disconnected",
    "Activity",
    "ClockOffset",
    "Spooled",
    "Loaded",
    "Orphaned",
    "OrphansReleased",
    "OrphanReleased",
    "Reserved",
    "Answered",
    "id_range",
    "validate_topic",
    "validate_filter",
    "validate_qos",
    "MAX_REMAINING_LENGTH",
    "publish_packet_size",
    "topic_bytes",
    "message_bytes",
]


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP  # "leave this setting as it is"

def _after(pid: int, n: int = 1) -> int:
    """The id ``n`` places after ``pid`` in allocation order (65535 is followed by 1)."""
    return (pid - 1 + n) % MAX_PACKET_ID + 1


def id_range(first: int, last: int) -> list[int]:
    """The packet ids ``first`` to ``last`` in allocation order ([] for 0, 0)."""
    if not first:
        return []
    return [_after(first, i) for i in range((last - first) % MAX_PACKET_ID + 1)]


class _Either:
    """Membership in either of two containers."""

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b


# --------------------------------------------------------------------------- the state


@dataclass(eq=False)
class SessionState:
    """One client's session: identity, times, outgoing and incoming messages, subscriptions."""

    client_id: str = ""
    protocol_version: int = 4
    clean_session: bool = True
    session_expiry_interval: int | None = None  # MQTT 5; None = absent (= 0)
    broker: str | None = None
    connected_at: float | None = None
    disconnected_at: float | None = None
    last_activity: float | None = None
    next_seq: int = 1
    last_packet_id: int = 0
    outgoing: dict[int, OutgoingMessage] = field(default_factory=dict)  # by seq, in seq order
    incoming: dict[int, IncomingMessage] = field(default_factory=dict)  # by packet id
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> qos
    unanswered: set[str] = field(default_factory=set)  # SUBSCRIBE / UNSUBSCRIBE not acked
    # incoming QoS 2 messages a broker that lost the session will never release: out of
    # packet-id space, delivered from here (``Orphaned``, ``OrphanReleased``)
    orphans: list[IncomingMessage] = field(default_factory=list)
    _by_packet_id: dict[int, int] = field(default_factory=dict, repr=False)  # outgoing id -> seq
    _undo_last_packet_id: int = field(default=0, repr=False)  # for ``retract``
    outgoing_bytes: int = field(default=0, repr=False, compare=False)  # held payload+topic+props
    # the disk queue (``spool``): every queued message below spool_next was read back into
    # ``outgoing`` (durable); how many it holds and their bytes (the store counts them)
    spool_next: int = 0
    # the last message appended there (a snapshot names it: ``StateFile._recover``)
    spool_last: int = field(default=0, compare=False)
    spooled: int = field(default=0, repr=False, compare=False)
    spooled_bytes: int = field(default=0, repr=False, compare=False)
    # SessionSync=interval: the packet ids reserved (``Reserved``), reserved_first to
    # reserved_last in allocation order; 0, 0: none
    reserved_first: int = 0
    reserved_last: int = 0
    # held messages' times are on the wall clock plus this (``ClockOffset``; 0: the wall's)
    clock_offset: float = 0.0

    def __post_init__(self) -> None:
        self._by_packet_id = {m.packet_id: s for s, m in self.outgoing.items() if m.packet_id}
        self.outgoing_bytes = sum(map(message_bytes, self.outgoing.values()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionState):
            return NotImplemented
        return self.snapshot_fields() == other.snapshot_fields()

    def snapshot_fields(self) -> tuple[object, ...]:
        """Every persistent field, for comparisons."""
        return (
            self.client_id,
            self.protocol_version,
            self.clean_session,
            self.session_expiry_interval,
            self.broker,
            self.connected_at,
            self.disconnected_at,
            self.last_activity,
            self.next_seq,
            self.last_packet_id,
            self.spool_next,
            self.reserved_first,
            self.reserved_last,
            self.clock_offset,
            list(self.outgoing.items()),
            sorted(self.incoming.items()),
            sorted(self.subscriptions.items()),
            sorted(self.unanswered),
            list(self.orphans),
        )

    # ----------------------------------------------------------------- queries

    @property
    def empty(self) -> bool:
        """True when there are no messages or subscriptions to carry over."""
        return not (self.outgoing or self.incoming or self.subscriptions or self.spooled
                    or self.orphans or self.unanswered)

    @property
    def held(self) -> int:
        """Outgoing QoS 1/2 messages held: in memory and in the disk queue."""
        return len(self.outgoing) + self.spooled

    @property
    def held_bytes(self) -> int:
        """Their bytes (``message_bytes``), counted against MaxQueuedBytes."""
        return self.outgoing_bytes + self.spooled_bytes

    def outgoing_by_packet_id(self, packet_id: int) -> OutgoingMessage | None:
        seq = self._by_packet_id.get(packet_id)
        return None if seq is None else self.outgoing[seq]

    def check_invariants(self, topics_checked: Container[str] = ()) -> None:
        """Raise ``StateError`` naming the first inconsistency (used when loading state).

        ``topics_checked``: topic names the caller has already passed through validate_topic.
        """
        if self.protocol_version not in (4, 5):
            raise StateError(f"protocol_version must be 4 or 5, got {self.protocol_version!r}")
        exp = self.session_expiry_interval
        if exp is not None and not 0 <= exp <= MAX_EXPIRY:
            raise StateError(f"session_expiry_interval out of range: {exp!r}")
        if not 0 <= self.last_packet_id <= MAX_PACKET_ID:
            raise StateError(f"last_packet_id out of range: {self.last_packet_id!r}")
        first, last = self.reserved_first, self.reserved_last
        if not (0 <= first <= MAX_PACKET_ID and 0 <= last <= MAX_PACKET_ID
                and (first == 0) == (last == 0)):
            raise StateError(f"reserved packet ids out of range: {first!r}..{last!r}")
        if not 0 <= self.spool_next <= self.next_seq:
            raise StateError(f"spool_next {self.spool_next!r} is past next_seq {self.next_seq}")
        for name in ("connected_at", "disconnected_at", "last_activity", "clock_offset"):
            t = getattr(self, name)
            if t is not None and not math.isfinite(t):
                raise StateError(f"{name} must be a finite time, got {t!r}")
        ids: set[int] = set()
        prev = 0
        for seq, m in self.outgoing.items():
            where = f"outgoing message seq {seq}"
            if m.seq != seq or seq <= prev:
                raise StateError(f"{where}: sequence numbers must rise strictly")
            prev = seq
            if seq >= self.next_seq:
                raise StateError(f"{where}: seq is not below next_seq {self.next_seq}")
            if m.qos not in (1, 2):
                raise StateError(f"{where}: qos must be 1 or 2, got {m.qos!r}")
            if m.phase not in PHASES_FOR_QOS[m.qos]:
                raise StateError(f"{where}: phase {m.phase.value} is not valid for qos {m.qos}")
            if not 0 <= m.packet_id <= MAX_PACKET_ID:
                raise StateError(f"{where}: packet_id out of range: {m.packet_id}")
            if m.packet_id == 0 and m.phase is not Phase.QUEUED:
                raise StateError(f"{where}: a sent message must hold a packet id")
            if m.packet_id:
                if m.packet_id in ids:
                    raise StateError(f"{where}: packet_id {m.packet_id} is held twice")
                ids.add(m.packet_id)
            if m.topic not in topics_checked:
                try:
                    validate_topic(m.topic)
                except UsageError as exc:
                    raise StateError(f"{where}: {exc}") from None
        for pid, im in self.incoming.items():
            if im.packet_id != pid or not 1 <= pid <= MAX_PACKET_ID:
                raise StateError(f"incoming message {pid}: bad packet_id")
            if im.qos != 2:
                raise StateError(f"incoming message {pid}: qos must be 2")
        for im in self.orphans:
            if im.qos != 2 or not 1 <= im.packet_id <= MAX_PACKET_ID:
                raise StateError(f"orphaned incoming message {im.packet_id}: bad qos or packet id")
        for flt, qos in self.subscriptions.items():
            try:
                validate_filter(flt)
                validate_qos(qos)
            except UsageError as exc:
                raise StateError(f"subscription {flt!r}: {exc}") from None

    # ----------------------------------------------------------------- transitions

    def configure(
        self,
        *,
        client_id: str | None = None,
        protocol_version: int | None = None,
        clean_session: bool | None = None,
        session_expiry_interval: int | None | _Keep = KEEP,
    ) -> Configured:
        """Change identity or options; arguments left out keep their value."""
        rec = Configured(
            client_id=self.client_id if client_id is None else client_id,
            protocol_version=self.protocol_version if protocol_version is None else protocol_version,
            clean_session=self.clean_session if clean_session is None else clean_session,
            session_expiry_interval=(
                self.session_expiry_interval
                if isinstance(session_expiry_interval, _Keep)
                else session_expiry_interval
            ),
        )
        self.apply(rec)
        return rec

    # SessionSync=interval: a record that hands out a packet id reaches the OS at once and the
    # disk within SessionSyncInterval, and its PUBLISH leaves at once. A broker delivering QoS 2
    # on PUBREL keeps the flow after a power cut took the record; an id the restarted session
    # gave another message would be taken for a duplicate of it [MQTT-4.3.3-10] and the new
    # message lost. So ids are handed out from a reservation synced first (``Reserved``): the
    # engine asks ``covers`` after each allocation and ``reserve``s a block when it does not.

    def covers(self, before: int, last: int) -> bool:
        """Whether the ids handed out since ``last_packet_id`` was ``before``, up to ``last``
        (allocation goes forward from ``before``), all lie in the reservation."""
        first = self.reserved_first
        if not first:
            return False
        lo = (before - first + 1) % MAX_PACKET_ID  # offsets from first: the id after before,
        hi = (last - first) % MAX_PACKET_ID  # the last one handed out, the reservation's end
        return lo <= hi <= (self.reserved_last - first) % MAX_PACKET_ID

    def reserve(self, before: int, n: int, keep_first: bool = False) -> Reserved:
        """A new reservation: from the id after ``before`` (or, ``keep_first``, from the
        current reservation's first: its ids may still be held by the broker) through
        ``last_packet_id`` and ``n - 1`` ids more; at most every id."""
        first = self.reserved_first if keep_first and self.reserved_first else _after(before)
        span = (self.last_packet_id - first) % MAX_PACKET_ID + n
        last = _after(first, span - 1) if span < MAX_PACKET_ID else _after(first, -1)
        rec = Reserved(first, last)
        self.apply(rec)
        return rec

    def reserve_none(self) -> Reserved:
        """The reservation is given up (every record is on disk)."""
        rec = Reserved(0, 0)
        self.apply(rec)
        return rec

    def allocate_packet_id(self, avoid: Container[int] = ()) -> int:
        """The next free outgoing packet id after the last one, wrapping 65535 -> 1.

        ``avoid``: ids held outside the session (in-flight SUBSCRIBE / UNSUBSCRIBE).
        """
        if len(self._by_packet_id) >= MAX_PACKET_ID:
            raise PacketIdsExhausted("all 65535 packet ids are held by unacknowledged messages")
        pid = self.last_packet_id
        for _ in range(MAX_PACKET_ID):
            pid = pid + 1 if pid < MAX_PACKET_ID else 1
            # never collide with a held id (PEERS pain 1)
            if pid not in self._by_packet_id and pid not in avoid:
                return pid
        raise PacketIdsExhausted("every free packet id is held by a SUBSCRIBE or UNSUBSCRIBE")

    def accept(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: bytes = b"",
        avoid: Container[int] = (),
        accepted_at: float = 0.0,
    ) -> Accepted:
        """publish_* of a QoS 1/2 message: it joins the session as QUEUED with a packet id.

        When all packet ids are taken the message is still accepted, with packet id 0; it gets
        one when it is sent. ``accepted_at``: the wall time (for expiry and the queue's age).
        """
        validate_topic(topic)
        validate_qos(qos, (1, 2))
        if not isinstance(payload, (bytes, bytearray)):
            raise UsageError(f"payload must be bytes, got {type(payload).__name__}")
        try:
            pid = self.allocate_packet_id(avoid)
        except PacketIdsExhausted:
            pid = 0
        msg = OutgoingMessage(self.next_seq, pid, topic, bytes(payload), qos, bool(retain),
                              bytes(properties), Phase.QUEUED, float(accepted_at))
        rec = Accepted(msg)
        self.apply(rec)
        return rec

    def retract(self, rec: Accepted) -> None:
        """Undo the latest ``accept`` (its record could not be made durable)."""
        m = rec.message
        if m.seq != self.next_seq - 1 or self.outgoing.get(m.seq) != m:
            raise TransitionError(f"only the latest accepted message can be retracted (seq {m.seq})")
        del self.outgoing[m.seq]
        self.outgoing_bytes -= message_bytes(m)
        self.next_seq = m.seq
        if m.packet_id:
            del self._by_packet_id[m.packet_id]
            self.last_packet_id = self._undo_last_packet_id

    def spool(self, topic: str, payload: bytes, qos: int, retain: bool = False,
              properties: bytes = b"", accepted_at: float = 0.0) -> Spooled:
        """publish_* of a QoS 1/2 message into the disk queue (``accept`` without a packet id
        and without a place in ``outgoing``: it is read back by ``load``)."""
        validate_topic(topic)
        validate_qos(qos, (1, 2))
        if not isinstance(payload, (bytes, bytearray)):
            raise UsageError(f"payload must be bytes, got {type(payload).__name__}")
        rec = Spooled(OutgoingMessage(self.next_seq, 0, topic, bytes(payload), qos, bool(retain),
                                      bytes(properties), Phase.QUEUED, float(accepted_at)))
        self.apply(rec)
        return rec

    def spool_checked(self, topic: str, payload: bytes, qos: int, retain: bool,
                      properties: bytes, accepted_at: float) -> Spooled:
        """``spool`` of a message the caller validated (bytes, QoS 1/2, a topic)."""
        seq = self.next_seq
        m = OutgoingMessage(seq, 0, topic, payload, qos, retain, properties, Phase.QUEUED,
                            accepted_at)
        self.next_seq = seq + 1
        self.spooled += 1
        self.spooled_bytes += len(payload) + topic_bytes(topic) + len(properties)
        return Spooled(m)

    def retract_spooled(self, rec: Spooled) -> None:
        """Undo the latest ``spool`` (the queue could not store it)."""
        m = rec.message
        if m.seq != self.next_seq - 1:
            raise TransitionError(f"only the latest spooled message can be retracted (seq {m.seq})")
        self.next_seq = m.seq
        self.spooled = max(0, self.spooled - 1)
        self.spooled_bytes = max(0, self.spooled_bytes - message_bytes(m))

    def load(self, messages: Sequence[OutgoingMessage], spool_next: int,
             avoid: Container[int] = ()) -> Loaded:
        """Messages read back from the disk queue, in order, join ``outgoing``, each with a
        free packet id (0 while none is free: it gets one when sent)."""
        taken: set[int] = set()
        either = _Either(avoid, taken)
        ready, orig = [], self.last_packet_id
        for m in messages:
            try:
                pid = self.allocate_packet_id(either)
            except PacketIdsExhausted:
                pid = 0
            if pid:
                taken.add(pid)
                self.last_packet_id = pid  # the next search starts after it
            ready.append(OutgoingMessage(m.seq, pid, m.topic, m.payload, m.qos, m.retain,
                                         m.properties, Phase.QUEUED, m.accepted_at))
        self.last_packet_id = orig  # the record sets it
        rec = Loaded(tuple(ready), spool_next)
        self.apply(rec)
        return rec

    def withdraw(self, seq: int) -> None:
        """Take back a QUEUED message whose record never became durable (a failed group
        commit: the journal is rewritten from memory by its next write)."""
        m = self.outgoing.get(seq)
        if m is None or m.phase is not Phase.QUEUED:
            return
        del self.outgoing[seq]
        if m.packet_id and self._by_packet_id.get(m.packet_id) == seq:
            del self._by_packet_id[m.packet_id]
        self.outgoing_bytes -= message_bytes(m)

    def _step(
        self, seq: int, event: Event, packet_id: int | None = None, avoid: Container[int] = ()
    ) -> Stepped:
        m = self.outgoing.get(seq)
        if m is None:
            raise TransitionError(f"{event.value}: no outgoing message with seq {seq}")
        if packet_id is None:
            packet_id = m.packet_id
            if event is Event.SEND and packet_id == 0:
                packet_id = self.allocate_packet_id(avoid)
            elif event is Event.SESSION_LOST and m.phase is not Phase.QUEUED:
                packet_id = 0  # a new id is taken when it is sent again
        rec = Stepped(seq, event, packet_id)
        self.apply(rec)
        return rec

    def send(self, seq: int, avoid: Container[int] = ()) -> Stepped:
        """A QUEUED message's PUBLISH is about to be written (assigns a packet id if it has none)."""
        return self._step(seq, Event.SEND, avoid=avoid)

    # The usual steps of one message, for the engine's hot path: the same records and the
    # same state as ``accept`` / ``send`` / ``_step`` give, for inputs the caller checked
    # (a validated topic and QoS, bytes; a message in the phase the step needs).

    def accept_checked(self, topic: str, payload: bytes, qos: int, retain: bool,
                       properties: bytes, avoid: Container[int], accepted_at: float) -> Accepted:
        """``accept`` of a message the caller validated."""
        by_id, last = self._by_packet_id, self.last_packet_id
        pid = last + 1 if last < MAX_PACKET_ID else 1
        if pid in by_id or pid in avoid:  # the usual next id is taken: search
            try:
                pid = self.allocate_packet_id(avoid)
            except PacketIdsExhausted:
                pid = 0
        seq = self.next_seq
        m = OutgoingMessage(seq, pid, topic, payload, qos, retain, properties, Phase.QUEUED,
                            accepted_at)
        if pid:
            by_id[pid] = seq
            self._undo_last_packet_id = last
            self.last_packet_id = pid
        self.outgoing[seq] = m
        self.outgoing_bytes += len(payload) + topic_bytes(topic) + len(properties)
        self.next_seq = seq + 1
        return Accepted(m)

    def moved(self, m: OutgoingMessage, event: Event, phase: Phase) -> Stepped:
        """``m`` (held, with a packet id) takes the step ``event`` to ``phase`` (SEND from
        QUEUED, PUBREC from AWAIT_PUBREC: ``OUTGOING_TRANSITIONS``)."""
        self.outgoing[m.seq] = OutgoingMessage(
            m.seq, m.packet_id, m.topic, m.payload, m.qos, m.retain, m.properties, phase,
            m.accepted_at)
        return Stepped(m.seq, event, m.packet_id)

    def finished(self, m: OutgoingMessage, event: Event) -> Stepped:
        """``m``'s flow ended as expected (PUBACK in AWAIT_PUBACK, PUBCOMP in AWAIT_PUBCOMP):
        it leaves the session."""
        del self.outgoing[m.seq]
        del self._by_packet_id[m.packet_id]
        self.outgoing_bytes -= len(m.payload) + topic_bytes(m.topic) + len(m.properties)
        return Stepped(m.seq, event, m.packet_id)

    def _by_ack(self, packet_id: int, what: str) -> int:
        seq = self._by_packet_id.get(packet_id)
        if seq is None:
            raise TransitionError(f"{what} for packet id {packet_id}, which no message holds")
        return seq

    def puback(self, packet_id: int) -> Stepped:
        """PUBACK (any reason code) ends a QoS 1 flow, and a QoS 2 one the broker downgraded."""
        return self._step(self._by_ack(packet_id, "PUBACK"), Event.PUBACK)

    def pubrec(self, packet_id: int, reason_code: int = 0) -> Stepped:
        """PUBREC: release the message (before PUBREL is written), or end it on failure; it
        ends a QoS 1 flow the broker took as QoS 2."""
        event = Event.PUBREC_FAILED if reason_code >= 0x80 else Event.PUBREC  # [MQTT-4.4.0-2]
        return self._step(self._by_ack(packet_id, "PUBREC"), event)

    def expire(self, seq: int) -> Stepped:
        """A never-sent message whose MQTT 5 Message Expiry Interval has passed."""
        return self._step(seq, Event.EXPIRED)

    def drop(self, seq: int) -> Stepped:
        """A never-sent message removed to make room (QueueFullPolicy=drop-oldest)."""
        return self._step(seq, Event.DROPPED)

    def too_large(self, seq: int) -> Stepped:
        """A message that can no longer be sent (over the broker's Maximum Packet Size)."""
        return self._step(seq, Event.TOO_LARGE)

    def pubcomp(self, packet_id: int) -> Stepped:
        """PUBCOMP ends a QoS 2 flow."""
        return self._step(self._by_ack(packet_id, "PUBCOMP"), Event.PUBCOMP)

    def receive(
        self,
        packet_id: int,
        topic: str,
        payload: bytes,
        retain: bool = False,
        dup: bool = False,
        properties: bytes = b"",
    ) -> Received | None:
        """An incoming QoS 2 PUBLISH; None when it is a duplicate of one held [MQTT-4.3.3-10]."""
        if packet_id in self.incoming:
            return None
        rec = Received(
            IncomingMessage(packet_id, topic, bytes(payload), 2, bool(retain), bool(dup),
                            bytes(properties))
        )
        self.apply(rec)
        return rec

    def release(self, packet_id: int) -> tuple[IncomingMessage, Released]:
        """PUBREL for a held incoming QoS 2 message: hand it out and remove it."""
        msg = self.incoming.get(packet_id)
        if msg is None:
            raise TransitionError(f"PUBREL for packet id {packet_id}, which is not held")
        rec = Released(packet_id)
        self.apply(rec)
        return msg, rec

    def take(self, packet_id: int) -> Taken:
        """A held incoming QoS 2 message delivered ahead of its PUBREL was taken by the
        application: it is not delivered again; its packet id stays held until PUBREL."""
        rec = Taken(packet_id)
        self.apply(rec)
        return rec

    def orphan(self, ids: tuple[int, ...] = ()) -> Orphaned | None:
        """SessionPresent=0: the incoming QoS 2 messages (``ids``: those) leave packet-id space."""
        if not self.incoming:
            return None
        rec = Orphaned(ids or tuple(sorted(self.incoming)))
        self.apply(rec)
        return rec

    def release_orphan(self, im: IncomingMessage) -> OrphanReleased | None:
        """The application took orphan ``im`` (this object): it leaves the session (None: it
        is not in the list, a session restored meanwhile)."""
        for i, o in enumerate(self.orphans):
            if o is im:
                rec = OrphanReleased(i, im.packet_id)
                self.apply(rec)
                return rec
        return None

    def subscribe(self, topic_filter: str, qos: int) -> Subscribed:
        validate_filter(topic_filter)
        validate_qos(qos)
        rec = Subscribed(topic_filter, qos)
        self.apply(rec)
        return rec

    def unsubscribe(self, topic_filter: str) -> Unsubscribed:
        validate_filter(topic_filter)
        rec = Unsubscribed(topic_filter)
        self.apply(rec)
        return rec

    def connected(self, at: float, broker: str | None, session_present: bool) -> Connected:
        rec = Connected(at, broker, session_present)
        self.apply(rec)
        return rec

    def disconnected(self, at: float) -> Disconnected:
        rec = Disconnected(at, self.session_expiry_interval)
        self.apply(rec)
        return rec

    def activity(self, at: float) -> Activity:
        rec = Activity(at)
        self.apply(rec)
        return rec

    def set_clock_offset(self, offset: float) -> ClockOffset:
        rec = ClockOffset(offset)
        self.apply(rec)
        return rec

    def on_connack(
        self, session_present: bool, republish: bool = True, republish_released: bool = True,
        release_incoming: bool = True,
    ) -> tuple[SessionReset | None, ResumePlan]:
        """What a successful CONNACK means for the session (mqttproto's ``reset``).

        SessionPresent=1: everything is kept and resent in order [MQTT-4.4.0-1] [MQTT-4.6.0-1].
        SessionPresent=0 while holding state (5: [MQTT-3.2.2-5]): the broker forgot the session; the
        returned ``SessionReset`` (already applied) says what was requeued, dropped or released.
        ``republish``: sent messages not past PUBREC are published anew (else dropped);
        ``republish_released``: so are those past PUBREC (a broker that delivers QoS 2 on PUBREL
        lost them with the session; one that delivers on PUBLISH will deliver them twice).
        """
        subs = tuple(self.subscriptions.items())
        if session_present or self.empty:
            plan = ResumePlan(session_present, tuple(self.outgoing.values()), subs, None)
            return None, plan
        requeued: list[OutgoingMessage] = []
        dropped: list[OutgoingMessage] = []
        queued: list[OutgoingMessage] = []
        maybe_twice: list[OutgoingMessage] = []
        for m in self.outgoing.values():
            if m.phase is Phase.QUEUED:
                queued.append(m)
            elif m.phase is Phase.AWAIT_PUBCOMP:
                (maybe_twice if republish_released else dropped).append(m)
            elif republish:
                requeued.append(m)
            else:
                dropped.append(m)
        requeued = sorted(requeued + maybe_twice, key=lambda m: m.seq)  # [MQTT-4.6.0-1]
        delivered = tuple(self.incoming.values()) if release_incoming else ()
        rec: SessionReset | None = None
        if requeued or dropped or delivered:
            rec = SessionReset(
                tuple(m.seq for m in requeued),
                tuple(m.seq for m in dropped),
                tuple(sorted(m.packet_id for m in delivered)),
            )
            self.apply(rec)
        lost = SessionLost(tuple(requeued), tuple(dropped), tuple(queued), delivered, subs,
                           tuple(maybe_twice))
        return rec, ResumePlan(False, tuple(self.outgoing.values()), subs, lost)

    # ----------------------------------------------------------------- apply

    def apply(self, rec: Record) -> None:
        """Apply one record; raise ``TransitionError`` (changing nothing) if it does not fit."""
        handler = APPLY.get(type(rec))
        if handler is None:
            raise TransitionError(f"not a session record: {rec!r}")
        handler(self, rec)
