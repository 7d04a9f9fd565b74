"""The MQTT client session model, and every transition of it.

This module owns all session state transitions; nothing else changes a ``SessionState``.
It is pure: no I/O, no paho, no sockets, no threads, no clock (times are passed in).

Each transition is a *record* (a small frozen dataclass) applied by ``SessionState.apply``.
The public transition methods build the record, check it against the current state and
apply it; an illegal transition raises ``TransitionError`` and changes nothing. The same
records are what the journal stores, so replaying a journal runs exactly this code.

Outgoing QoS 1 / QoS 2 flows, as a table a reader can check against the spec
(``OUTGOING_TRANSITIONS``; ``None`` = the message leaves the session)::

    qos  phase           event           -> phase
    1    QUEUED          SEND            -> AWAIT_PUBACK
    1    AWAIT_PUBACK    PUBACK          -> None            [MQTT-4.3.2] (any reason code)
    2    QUEUED          SEND            -> AWAIT_PUBREC
    2    AWAIT_PUBREC    PUBACK          -> None            a broker that downgrades QoS 2 to 1 (RabbitMQ 3.x)
    1    AWAIT_PUBACK    PUBREC(_FAILED) -> None            a broker that took it as QoS 2 (PUBREL answers)
    2    AWAIT_PUBREC    PUBREC          -> AWAIT_PUBCOMP   [MQTT-4.3.3-6] released: never resend PUBLISH
    2    AWAIT_PUBREC    PUBREC_FAILED   -> None            [MQTT-4.4.0-2] reason >= 0x80 ends the flow
    2    AWAIT_PUBCOMP   PUBCOMP         -> None
    1,2  AWAIT_PUBACK/REC SESSION_LOST   -> QUEUED, new id  [MQTT-3.2.2-5] broker forgot it: publish anew
    2    AWAIT_PUBCOMP   SESSION_LOST    -> QUEUED, new id  the broker may have lost it before PUBREL
                                                        (mosquitto delivers on PUBREL): published
                                                        anew, a possible duplicate; or dropped
    1,2  QUEUED          SESSION_LOST    -> QUEUED          never sent: simply sent later
    1,2  QUEUED/AWAIT_PUBACK/REC TOO_LARGE -> None          over the broker's Maximum Packet Size
    1,2  QUEUED          DROPPED         -> None            the queue is full (drop-oldest)
    1,2  QUEUED          EXPIRED         -> None            its Message Expiry Interval passed unsent

Incoming QoS 2 (delivery on PUBREL, "method B" of the spec)::

    PUBLISH(id) not held   -> held, PUBREC sent        (persist before PUBREC)
    PUBLISH(id) held       -> unchanged, PUBREC sent   [MQTT-4.3.3-10] not delivered twice
    PUBREL(id) held        -> delivered, removed, PUBCOMP sent
    PUBREL(id) not held    -> PUBCOMP sent only        (already delivered before a crash)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Container, Final, Mapping, Sequence

from .errors import PacketIdsExhausted, StateError, TransitionError, UsageError
from .validation import (
    check_expiry as _check_expiry,
    check_text as _check_text,
    check_time as _check_time,
    MAX_REMAINING_LENGTH,
    publish_packet_size,
    validate_filter,
    validate_qos,
    validate_topic,
)
from .records import (
    MAX_EXPIRY,
    MAX_PACKET_ID,
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
    Record,
    Released,
    ResumePlan,
    SessionLost,
    SessionReset,
    Spooled,
    Loaded,
    Orphaned,
    OrphansReleased,
    Stepped,
    Subscribed,
    Unsubscribed,
)

__all__ = [
    "MAX_PACKET_ID",
    "MAX_EXPIRY",
    "Phase",
    "Event",
    "OUTGOING_TRANSITIONS",
    "PHASES_FOR_QOS",
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
    "Subscribed",
    "Unsubscribed",
    "Connected",
    "SessionReset",
    "Disconnected",
    "Activity",
    "Spooled",
    "Loaded",
    "Orphaned",
    "OrphansReleased",
    "validate_topic",
    "validate_filter",
    "validate_qos",
    "MAX_REMAINING_LENGTH",
    "publish_packet_size",
    "message_bytes",
]



Q, A1, A2, A3 = Phase.QUEUED, Phase.AWAIT_PUBACK, Phase.AWAIT_PUBREC, Phase.AWAIT_PUBCOMP

OUTGOING_TRANSITIONS: Final[Mapping[tuple[int, Phase, Event], Phase | None]] = {
    (1, Q, Event.SEND): A1,
    (1, A1, Event.PUBACK): None,
    (2, Q, Event.SEND): A2,
    (2, A2, Event.PUBACK): None,  # an acknowledgement of the wrong kind ends the flow as the
    (1, A1, Event.PUBREC): None,  # broker meant it: it has the message (never a silent stall)
    (1, A1, Event.PUBREC_FAILED): None,
    (2, A2, Event.PUBREC): A3,  # [MQTT-4.3.3-6]
    (2, A2, Event.PUBREC_FAILED): None,  # [MQTT-4.4.0-2]
    (2, A3, Event.PUBCOMP): None,
    (1, Q, Event.SESSION_LOST): Q,
    (2, Q, Event.SESSION_LOST): Q,
    (1, A1, Event.SESSION_LOST): Q,  # [MQTT-3.2.2-5]
    (2, A2, Event.SESSION_LOST): Q,  # [MQTT-3.2.2-5]
    (2, A3, Event.SESSION_LOST): Q,  # possible duplicate; ReleasedOnSessionLost=drop: None
    (1, Q, Event.TOO_LARGE): None,  # [MQTT-3.2.2-15] never send a packet over Maximum Packet Size
    (1, A1, Event.TOO_LARGE): None,
    (2, Q, Event.TOO_LARGE): None,
    (2, A2, Event.TOO_LARGE): None,
    (1, Q, Event.DROPPED): None,  # QueueFullPolicy=drop-oldest: only a message never sent
    (2, Q, Event.DROPPED): None,
    (1, Q, Event.EXPIRED): None,  # as the broker would [MQTT-3.3.2-5]: never sent once expired
    (2, Q, Event.EXPIRED): None,
}


PHASES_FOR_QOS: Final[Mapping[int, frozenset[Phase]]] = {
    1: frozenset({Q, A1}),
    2: frozenset({Q, A2, A3}),
}


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP  # "leave this setting as it is"

class _Either:
    """Membership in either of two containers."""

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b


def message_bytes(m: OutgoingMessage) -> int:
    """What a held message counts against MaxQueuedBytes: payload, topic and properties."""
    return len(m.payload) + len(m.topic) + len(m.properties)


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
    # incoming QoS 2 messages a broker that lost the session will never release: out of
    # packet-id space, delivered from here (``Orphaned``, ``OrphansReleased``)
    orphans: list[IncomingMessage] = field(default_factory=list)
    _by_packet_id: dict[int, int] = field(default_factory=dict, repr=False)  # outgoing id -> seq
    _undo_last_packet_id: int = field(default=0, repr=False)  # for ``retract``
    outgoing_bytes: int = field(default=0, repr=False, compare=False)  # held payload+topic+props
    # the disk queue (``spool``): every queued message below spool_next was read back into
    # ``outgoing`` (durable); how many it holds and their bytes (the store counts them)
    spool_next: int = 0
    spooled: int = field(default=0, repr=False, compare=False)
    spooled_bytes: int = field(default=0, repr=False, compare=False)

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
            list(self.outgoing.items()),
            sorted(self.incoming.items()),
            sorted(self.subscriptions.items()),
            list(self.orphans),
        )

    # ----------------------------------------------------------------- queries

    @property
    def empty(self) -> bool:
        """True when there are no messages or subscriptions to carry over."""
        return not (self.outgoing or self.incoming or self.subscriptions or self.spooled
                    or self.orphans)

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
        if not 0 <= self.spool_next <= self.next_seq:
            raise StateError(f"spool_next {self.spool_next!r} is past next_seq {self.next_seq}")
        for name in ("connected_at", "disconnected_at", "last_activity"):
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
        self.outgoing_bytes += len(payload) + len(topic) + len(properties)
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
        self.outgoing_bytes -= len(m.payload) + len(m.topic) + len(m.properties)
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

    def orphan(self) -> Orphaned | None:
        """SessionPresent=0: the incoming QoS 2 messages leave packet-id space (None: none)."""
        if not self.incoming:
            return None
        rec = Orphaned(tuple(sorted(self.incoming)))
        self.apply(rec)
        return rec

    def release_orphans(self) -> tuple[tuple[IncomingMessage, ...], OrphansReleased | None]:
        """The orphans were handed to the application: they leave the session."""
        gone = tuple(self.orphans)
        if not gone:
            return gone, None
        rec = OrphansReleased(tuple(im.packet_id for im in gone))
        self.apply(rec)
        return gone, rec

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

    def on_connack(
        self, session_present: bool, republish: bool = True, republish_released: bool = True,
        release_incoming: bool = True,
    ) -> tuple[SessionReset | None, ResumePlan]:
        """What a successful CONNACK means for the session (mqttproto's ``reset``).

        SessionPresent=1: everything is kept and resent in order [MQTT-4.4.0-1] [MQTT-4.6.0-1].
        SessionPresent=0 while holding state [MQTT-3.2.2-5]: the broker forgot the session; the
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
        handler = _APPLY.get(type(rec))
        if handler is None:
            raise TransitionError(f"not a session record: {rec!r}")
        handler(self, rec)

    def _apply_configured(self, rec: Configured) -> None:
        if rec.protocol_version not in (4, 5) or type(rec.protocol_version) is not int:
            raise UsageError(f"protocol version must be 4 or 5, got {rec.protocol_version!r}")
        exp = rec.session_expiry_interval
        _check_expiry(exp)
        try:
            _check_text("client_id", rec.client_id)
        except TransitionError as exc:
            raise UsageError(str(exc)) from None
        self.client_id = rec.client_id
        self.protocol_version = rec.protocol_version
        self.clean_session = bool(rec.clean_session)
        self.session_expiry_interval = exp

    def _apply_accepted(self, rec: Accepted) -> None:
        m = rec.message
        if m.seq != self.next_seq:
            raise TransitionError(f"accepted seq {m.seq}, expected {self.next_seq}")
        if m.phase is not Phase.QUEUED:
            raise TransitionError("an accepted message starts QUEUED")
        if type(m.qos) is not int or m.qos not in (1, 2):
            raise TransitionError(f"accepted qos must be 1 or 2, got {m.qos}")
        try:
            validate_topic(m.topic)
        except UsageError as exc:
            raise TransitionError(f"accepted message: {exc}") from None
        if not isinstance(m.payload, bytes) or not isinstance(m.properties, bytes):
            raise TransitionError("accepted message: payload and properties must be bytes")
        at = m.accepted_at
        if type(at) is not float or not 0.0 <= at < math.inf:
            raise TransitionError(f"accepted time {at!r} is not a time")
        if m.packet_id:
            if not 1 <= m.packet_id <= MAX_PACKET_ID or m.packet_id in self._by_packet_id:
                raise TransitionError(f"packet id {m.packet_id} is taken or out of range")
            self._by_packet_id[m.packet_id] = m.seq
            self._undo_last_packet_id = self.last_packet_id
            self.last_packet_id = m.packet_id
        self.outgoing[m.seq] = m
        self.outgoing_bytes += message_bytes(m)
        self.next_seq = m.seq + 1

    def _apply_spooled(self, rec: Spooled) -> None:
        m = rec.message
        if m.seq != self.next_seq:
            raise TransitionError(f"spooled seq {m.seq}, expected {self.next_seq}")
        if m.packet_id or m.phase is not Phase.QUEUED or m.qos not in (1, 2):
            raise TransitionError("a spooled message is QUEUED, QoS 1 or 2, without a packet id")
        self.next_seq = m.seq + 1
        self.spooled += 1
        self.spooled_bytes += message_bytes(m)

    def _apply_loaded(self, rec: Loaded) -> None:
        if type(rec.spool_next) is not int or rec.spool_next < self.spool_next:
            raise TransitionError(f"disk queue read back to {rec.spool_next!r}, behind"
                                  f" {self.spool_next}")
        last = next(reversed(self.outgoing), 0)
        ids: set[int] = set()
        for m in rec.messages:
            if not (max(last, self.spool_next - 1) < m.seq < rec.spool_next):
                raise TransitionError(f"message seq {m.seq} read back out of order")
            last = m.seq
            if m.phase is not Phase.QUEUED or m.qos not in (1, 2):
                raise TransitionError(f"message seq {m.seq} read back not QUEUED QoS 1/2")
            pid = m.packet_id
            if pid and (not 1 <= pid <= MAX_PACKET_ID or pid in self._by_packet_id or pid in ids):
                raise TransitionError(f"packet id {pid} is taken or out of range")
            ids.add(pid)
        n = 0
        for m in rec.messages:
            if m.packet_id:
                self._by_packet_id[m.packet_id] = m.seq
                self.last_packet_id = m.packet_id
            self.outgoing[m.seq] = m
            n += message_bytes(m)
        self.outgoing_bytes += n
        self.spool_next = rec.spool_next
        self.next_seq = max(self.next_seq, rec.spool_next)
        self.spooled = max(0, self.spooled - len(rec.messages))
        self.spooled_bytes = max(0, self.spooled_bytes - n)

    def _apply_stepped(self, rec: Stepped) -> None:
        m = self.outgoing.get(rec.seq)
        if m is None:
            raise TransitionError(f"{rec.event.value}: no outgoing message with seq {rec.seq}")
        key = (m.qos, m.phase, rec.event)
        if key not in OUTGOING_TRANSITIONS:
            raise TransitionError(
                f"{rec.event.value} is illegal for a QoS {m.qos} message in phase {m.phase.value}"
                f" (seq {m.seq}, packet id {m.packet_id})"
            )
        nxt = OUTGOING_TRANSITIONS[key]
        pid = rec.packet_id
        if type(pid) is not int or not 0 <= pid <= MAX_PACKET_ID:
            raise TransitionError(f"packet id {pid!r} out of range")
        if nxt is not None and nxt is not Phase.QUEUED and pid == 0:
            raise TransitionError(f"{rec.event.value}: a sent message must hold a packet id")
        if pid != m.packet_id:
            # only SEND assigns an id (to an id-less message), only SESSION_LOST clears one
            if rec.event is Event.SEND and m.packet_id == 0:
                if not 1 <= pid <= MAX_PACKET_ID or pid in self._by_packet_id:
                    raise TransitionError(f"packet id {pid} is taken or out of range")
            elif not (rec.event is Event.SESSION_LOST and pid == 0):
                raise TransitionError(f"{rec.event.value} may not change the packet id")
        if nxt is None:
            del self.outgoing[m.seq]
            self._by_packet_id.pop(m.packet_id, None)
            self.outgoing_bytes -= message_bytes(m)
            return
        if pid != m.packet_id:
            self._by_packet_id.pop(m.packet_id, None)
            if pid:
                self._by_packet_id[pid] = m.seq
                self.last_packet_id = pid
        self.outgoing[m.seq] = OutgoingMessage(  # not dataclasses.replace: 6x cheaper
            m.seq, pid, m.topic, m.payload, m.qos, m.retain, m.properties, nxt, m.accepted_at
        )

    def _apply_received(self, rec: Received) -> None:
        m = rec.message
        if not 1 <= m.packet_id <= MAX_PACKET_ID:
            raise TransitionError(f"incoming packet id {m.packet_id} out of range")
        if m.packet_id in self.incoming:
            raise TransitionError(f"incoming packet id {m.packet_id} is already held")
        if m.qos != 2:
            raise TransitionError("only QoS 2 incoming messages are kept in the session")
        try:
            validate_topic(m.topic)
        except UsageError as exc:
            raise TransitionError(f"incoming packet id {m.packet_id}: {exc}") from None
        self.incoming[m.packet_id] = m

    def _apply_released(self, rec: Released) -> None:
        if rec.packet_id not in self.incoming:
            raise TransitionError(f"PUBREL for packet id {rec.packet_id}, which is not held")
        del self.incoming[rec.packet_id]

    def _apply_subscribed(self, rec: Subscribed) -> None:
        try:
            validate_filter(rec.topic_filter)
            validate_qos(rec.qos)
        except UsageError as exc:
            raise TransitionError(f"subscribe: {exc}") from None
        self.subscriptions[rec.topic_filter] = rec.qos

    def _apply_unsubscribed(self, rec: Unsubscribed) -> None:
        try:
            validate_filter(rec.topic_filter)
        except UsageError as exc:
            raise TransitionError(f"unsubscribe: {exc}") from None
        self.subscriptions.pop(rec.topic_filter, None)

    def _apply_connected(self, rec: Connected) -> None:
        at = _check_time("connect time", rec.at)
        _check_text("broker", rec.broker, optional=True)
        self.connected_at = at
        self.last_activity = at
        self.broker = rec.broker

    def _apply_reset(self, rec: SessionReset) -> None:
        named = rec.requeued + rec.dropped
        if len(set(named)) != len(named) or len(set(rec.released)) != len(rec.released):
            raise TransitionError("session reset names a message twice")
        for seq in named:
            if seq not in self.outgoing:
                raise TransitionError(f"session reset names seq {seq}, which is not held")
        for seq in rec.requeued:
            if self.outgoing[seq].phase is Phase.QUEUED:
                raise TransitionError(f"session reset requeues seq {seq}, which was never sent")
        for pid in rec.released:
            if pid not in self.incoming:
                raise TransitionError(f"session reset releases packet id {pid}, not held")
        for seq in rec.dropped:
            m = self.outgoing.pop(seq)
            self._by_packet_id.pop(m.packet_id, None)
            self.outgoing_bytes -= message_bytes(m)
        for seq in rec.requeued:
            m = self.outgoing[seq]
            self._by_packet_id.pop(m.packet_id, None)
            self.outgoing[seq] = replace(m, phase=Phase.QUEUED, packet_id=0)
        for pid in rec.released:
            del self.incoming[pid]

    def _apply_disconnected(self, rec: Disconnected) -> None:
        at = _check_time("disconnect time", rec.at)
        try:
            _check_expiry(rec.session_expiry_interval)
        except UsageError as exc:
            raise TransitionError(str(exc)) from None
        self.disconnected_at = at
        self.last_activity = at
        self.session_expiry_interval = rec.session_expiry_interval

    def _apply_orphaned(self, rec: Orphaned) -> None:
        if len(set(rec.packet_ids)) != len(rec.packet_ids):
            raise TransitionError("orphaned names a packet id twice")
        for pid in rec.packet_ids:
            if pid not in self.incoming:
                raise TransitionError(f"orphaned packet id {pid}, which is not held")
        for pid in rec.packet_ids:
            self.orphans.append(self.incoming.pop(pid))

    def _apply_orphans_released(self, rec: OrphansReleased) -> None:
        n = len(rec.packet_ids)
        if not n or tuple(im.packet_id for im in self.orphans[:n]) != rec.packet_ids:
            raise TransitionError(f"orphans {rec.packet_ids} released, not the first held")
        del self.orphans[:n]

    def _apply_activity(self, rec: Activity) -> None:
        self.last_activity = _check_time("activity time", rec.at)


_APPLY: Final[dict[type, Callable[[SessionState, Any], None]]] = {
    Configured: SessionState._apply_configured,
    Accepted: SessionState._apply_accepted,
    Stepped: SessionState._apply_stepped,
    Received: SessionState._apply_received,
    Released: SessionState._apply_released,
    Subscribed: SessionState._apply_subscribed,
    Unsubscribed: SessionState._apply_unsubscribed,
    Connected: SessionState._apply_connected,
    SessionReset: SessionState._apply_reset,
    Disconnected: SessionState._apply_disconnected,
    Activity: SessionState._apply_activity,
    Spooled: SessionState._apply_spooled,
    Loaded: SessionState._apply_loaded,
    Orphaned: SessionState._apply_orphaned,
    OrphansReleased: SessionState._apply_orphans_released,
}
