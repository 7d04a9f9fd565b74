"""The transition table, and the one ``apply`` of each record to a ``SessionState``.

A record (``records.py``) is applied here, and only here: each ``_apply_*`` checks the record
against the state (an illegal one raises ``TransitionError`` and changes nothing), then makes
the change. ``SessionState.apply`` looks the record's handler up in ``APPLY``; its transition
methods (``state.py``) build the records, and replaying a journal runs exactly this code.
Pure: no I/O, no paho, no clock.

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
    1,2  AWAIT_PUBACK/REC SESSION_LOST   -> QUEUED, new id  5: [MQTT-3.2.2-5] session lost: publish anew
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

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping

from .errors import TransitionError, UsageError
from .validation import (
    check_expiry as _check_expiry,
    check_text as _check_text,
    check_time as _check_time,
    topic_bytes,
    validate_filter,
    validate_qos,
    validate_topic,
)
from .records import (
    MAX_PACKET_ID,
    Accepted,
    Activity,
    ClockOffset,
    Configured,
    Connected,
    Disconnected,
    Event,
    Loaded,
    SpoolMark,
    OutgoingMessage,
    Orphaned,
    OrphansReleased,
    OrphanReleased,
    Phase,
    Received,
    Released,
    Taken,
    Reserved,
    Answered,
    SessionReset,
    Spooled,
    Stepped,
    Subscribed,
    Unsubscribed,
)

if TYPE_CHECKING:
    from .state import SessionState

__all__ = ["APPLY", "OUTGOING_TRANSITIONS", "PHASES_FOR_QOS", "message_bytes"]


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
    (1, A1, Event.SESSION_LOST): Q,  # MQTT 5 [MQTT-3.2.2-5]
    (2, A2, Event.SESSION_LOST): Q,  # MQTT 5 [MQTT-3.2.2-5]
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


def message_bytes(m: OutgoingMessage) -> int:
    """What a held message counts against MaxQueuedBytes: payload, topic and properties."""
    return len(m.payload) + topic_bytes(m.topic) + len(m.properties)


# --------------------------------------------------------------------------- apply


def _apply_configured(st: SessionState, rec: Configured) -> None:
    if rec.protocol_version not in (4, 5) or type(rec.protocol_version) is not int:
        raise UsageError(f"protocol version must be 4 or 5, got {rec.protocol_version!r}")
    exp = rec.session_expiry_interval
    _check_expiry(exp)
    try:
        _check_text("client_id", rec.client_id)
    except TransitionError as exc:
        raise UsageError(str(exc)) from None
    if len(rec.client_id) > 16383 and len(rec.client_id.encode("utf-8")) > 65535:
        # a UTF-8 string's length is two bytes (MQTT 5 1.5.4, 3.1.1 1.5.3): no CONNECT carries it
        raise UsageError(f"client_id is {len(rec.client_id.encode('utf-8'))} bytes of UTF-8;"
                         " at most 65535")
    st.client_id = rec.client_id
    st.protocol_version = rec.protocol_version
    st.clean_session = bool(rec.clean_session)
    st.session_expiry_interval = exp


def _apply_accepted(st: SessionState, rec: Accepted) -> None:
    m = rec.message
    if m.seq != st.next_seq:
        raise TransitionError(f"accepted seq {m.seq}, expected {st.next_seq}")
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
        if not 1 <= m.packet_id <= MAX_PACKET_ID or m.packet_id in st._by_packet_id:
            raise TransitionError(f"packet id {m.packet_id} is taken or out of range")
        st._by_packet_id[m.packet_id] = m.seq
        st._undo_last_packet_id = st.last_packet_id
        st.last_packet_id = m.packet_id
    st.outgoing[m.seq] = m
    st.outgoing_bytes += message_bytes(m)
    st.next_seq = m.seq + 1


def _apply_spooled(st: SessionState, rec: Spooled) -> None:
    m = rec.message
    if m.seq != st.next_seq:
        raise TransitionError(f"spooled seq {m.seq}, expected {st.next_seq}")
    if m.packet_id or m.phase is not Phase.QUEUED or m.qos not in (1, 2):
        raise TransitionError("a spooled message is QUEUED, QoS 1 or 2, without a packet id")
    st.next_seq = m.seq + 1
    st.spooled += 1
    st.spooled_bytes += message_bytes(m)


def _apply_spool_mark(st: SessionState, rec: SpoolMark) -> None:
    if type(rec.seq) is not int or rec.seq < 1:
        raise TransitionError(f"disk queue mark {rec.seq!r}: not a seq")
    st.spool_last = max(st.spool_last, rec.seq)


def _apply_loaded(st: SessionState, rec: Loaded) -> None:
    if type(rec.spool_next) is not int or rec.spool_next < st.spool_next:
        raise TransitionError(f"disk queue read back to {rec.spool_next!r}, behind"
                              f" {st.spool_next}")
    last = next(reversed(st.outgoing), 0)
    ids: set[int] = set()
    for m in rec.messages:
        if not (max(last, st.spool_next - 1) < m.seq < rec.spool_next):
            raise TransitionError(f"message seq {m.seq} read back out of order")
        last = m.seq
        if m.phase is not Phase.QUEUED or m.qos not in (1, 2):
            raise TransitionError(f"message seq {m.seq} read back not QUEUED QoS 1/2")
        pid = m.packet_id
        if pid and (not 1 <= pid <= MAX_PACKET_ID or pid in st._by_packet_id or pid in ids):
            raise TransitionError(f"packet id {pid} is taken or out of range")
        ids.add(pid)
    n = 0
    for m in rec.messages:
        if m.packet_id:
            st._by_packet_id[m.packet_id] = m.seq
            st.last_packet_id = m.packet_id
        st.outgoing[m.seq] = m
        n += message_bytes(m)
    st.outgoing_bytes += n
    st.spool_next = rec.spool_next
    st.next_seq = max(st.next_seq, rec.spool_next)
    st.spooled = max(0, st.spooled - len(rec.messages))
    st.spooled_bytes = max(0, st.spooled_bytes - n)


def _apply_stepped(st: SessionState, rec: Stepped) -> None:
    m = st.outgoing.get(rec.seq)
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
            if not 1 <= pid <= MAX_PACKET_ID or pid in st._by_packet_id:
                raise TransitionError(f"packet id {pid} is taken or out of range")
        elif not (rec.event is Event.SESSION_LOST and pid == 0):
            raise TransitionError(f"{rec.event.value} may not change the packet id")
    if nxt is None:
        del st.outgoing[m.seq]
        st._by_packet_id.pop(m.packet_id, None)
        st.outgoing_bytes -= message_bytes(m)
        return
    if pid != m.packet_id:
        st._by_packet_id.pop(m.packet_id, None)
        if pid:
            st._by_packet_id[pid] = m.seq
            st.last_packet_id = pid
    st.outgoing[m.seq] = OutgoingMessage(  # not dataclasses.replace: 6x cheaper
        m.seq, pid, m.topic, m.payload, m.qos, m.retain, m.properties, nxt, m.accepted_at
    )


def _apply_received(st: SessionState, rec: Received) -> None:
    m = rec.message
    if not 1 <= m.packet_id <= MAX_PACKET_ID:
        raise TransitionError(f"incoming packet id {m.packet_id} out of range")
    if m.packet_id in st.incoming:
        raise TransitionError(f"incoming packet id {m.packet_id} is already held")
    if m.qos != 2:
        raise TransitionError("only QoS 2 incoming messages are kept in the session")
    try:
        validate_topic(m.topic)
    except UsageError as exc:
        raise TransitionError(f"incoming packet id {m.packet_id}: {exc}") from None
    st.incoming[m.packet_id] = m


def _apply_released(st: SessionState, rec: Released) -> None:
    if rec.packet_id not in st.incoming:
        raise TransitionError(f"PUBREL for packet id {rec.packet_id}, which is not held")
    del st.incoming[rec.packet_id]


def _apply_taken(st: SessionState, rec: Taken) -> None:
    m = st.incoming.get(rec.packet_id)
    if m is None or m.taken:
        raise TransitionError(f"incoming packet id {rec.packet_id} taken, but it is not held"
                              " untaken")
    st.incoming[rec.packet_id] = replace(m, taken=True)


def _apply_subscribed(st: SessionState, rec: Subscribed) -> None:
    try:
        validate_filter(rec.topic_filter)
        validate_qos(rec.qos)
    except UsageError as exc:
        raise TransitionError(f"subscribe: {exc}") from None
    st.subscriptions[rec.topic_filter] = rec.qos
    st.unanswered.add(rec.topic_filter)  # until its SUBACK (``Answered``)


def _apply_unsubscribed(st: SessionState, rec: Unsubscribed) -> None:
    try:
        validate_filter(rec.topic_filter)
    except UsageError as exc:
        raise TransitionError(f"unsubscribe: {exc}") from None
    st.subscriptions.pop(rec.topic_filter, None)
    st.unanswered.add(rec.topic_filter)  # until its UNSUBACK (``Answered``)


def _apply_answered(st: SessionState, rec: Answered) -> None:
    st.unanswered.difference_update(rec.filters)


def _apply_connected(st: SessionState, rec: Connected) -> None:
    at = _check_time("connect time", rec.at)
    _check_text("broker", rec.broker, optional=True)
    st.connected_at = at
    st.last_activity = at
    st.broker = rec.broker


def _apply_reset(st: SessionState, rec: SessionReset) -> None:
    named = rec.requeued + rec.dropped
    if len(set(named)) != len(named) or len(set(rec.released)) != len(rec.released):
        raise TransitionError("session reset names a message twice")
    for seq in named:
        if seq not in st.outgoing:
            raise TransitionError(f"session reset names seq {seq}, which is not held")
    for seq in rec.requeued:
        if st.outgoing[seq].phase is Phase.QUEUED:
            raise TransitionError(f"session reset requeues seq {seq}, which was never sent")
    for pid in rec.released:
        if pid not in st.incoming:
            raise TransitionError(f"session reset releases packet id {pid}, not held")
    for seq in rec.dropped:
        m = st.outgoing.pop(seq)
        st._by_packet_id.pop(m.packet_id, None)
        st.outgoing_bytes -= message_bytes(m)
    for seq in rec.requeued:
        m = st.outgoing[seq]
        st._by_packet_id.pop(m.packet_id, None)
        st.outgoing[seq] = replace(m, phase=Phase.QUEUED, packet_id=0)
    for pid in rec.released:
        del st.incoming[pid]


def _apply_disconnected(st: SessionState, rec: Disconnected) -> None:
    at = _check_time("disconnect time", rec.at)
    try:
        _check_expiry(rec.session_expiry_interval)
    except UsageError as exc:
        raise TransitionError(str(exc)) from None
    st.disconnected_at = at
    st.last_activity = at
    st.session_expiry_interval = rec.session_expiry_interval


def _apply_orphaned(st: SessionState, rec: Orphaned) -> None:
    if len(set(rec.packet_ids)) != len(rec.packet_ids):
        raise TransitionError("orphaned names a packet id twice")
    for pid in rec.packet_ids:
        if pid not in st.incoming:
            raise TransitionError(f"orphaned packet id {pid}, which is not held")
    for pid in rec.packet_ids:
        st.orphans.append(st.incoming.pop(pid))


def _apply_orphans_released(st: SessionState, rec: OrphansReleased) -> None:
    n = len(rec.packet_ids)
    if not n or tuple(im.packet_id for im in st.orphans[:n]) != rec.packet_ids:
        raise TransitionError(f"orphans {rec.packet_ids} released, not the first held")
    del st.orphans[:n]


def _apply_orphan_released(st: SessionState, rec: OrphanReleased) -> None:
    if not (rec.index < len(st.orphans) and st.orphans[rec.index].packet_id == rec.packet_id):
        raise TransitionError(f"orphan {rec.packet_id} released at {rec.index}, not held there")
    del st.orphans[rec.index]


def _apply_activity(st: SessionState, rec: Activity) -> None:
    st.last_activity = _check_time("activity time", rec.at)


def _apply_clock_offset(st: SessionState, rec: ClockOffset) -> None:
    st.clock_offset = _check_time("clock offset", rec.offset)


def _apply_reserved(st: SessionState, rec: Reserved) -> None:
    first, last = rec.first, rec.last
    if (type(first) is not int or type(last) is not int or not 0 <= first <= MAX_PACKET_ID
            or not 0 <= last <= MAX_PACKET_ID or (first == 0) != (last == 0)):
        raise TransitionError(f"reserved packet ids {first!r}..{last!r}: not a range of ids")
    st.reserved_first, st.reserved_last = first, last


APPLY: Final[dict[type, Callable[[SessionState, Any], None]]] = {
    Configured: _apply_configured,
    Accepted: _apply_accepted,
    Stepped: _apply_stepped,
    Received: _apply_received,
    Released: _apply_released,
    Taken: _apply_taken,
    Subscribed: _apply_subscribed,
    Unsubscribed: _apply_unsubscribed,
    Connected: _apply_connected,
    SessionReset: _apply_reset,
    Disconnected: _apply_disconnected,
    Activity: _apply_activity,
    ClockOffset: _apply_clock_offset,
    Spooled: _apply_spooled,
    Loaded: _apply_loaded,
    SpoolMark: _apply_spool_mark,
    Orphaned: _apply_orphaned,
    OrphansReleased: _apply_orphans_released,
    OrphanReleased: _apply_orphan_released,
    Reserved: _apply_reserved,
    Answered: _apply_answered,
}
