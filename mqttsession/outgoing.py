"""The outgoing half of the session engine: what the application publishes, until its flow ends.

Pure, like ``engine.py`` (whose ``Engine`` builds on ``Outgoing``): the size limits, the
queue in memory and in the disk queue (``QueueSource``: MaxQueuedMessages / MaxQueuedBytes,
drop-oldest, message expiry), the in-flight window and DrainRateLimit (``_pump``), each
PUBLISH and PUBREL written (``_write``: persistence points 1 and 2), and the PUBACK / PUBREC /
PUBCOMP that end a flow (point 5). Each method returns the engine's ordered actions."""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Container, Final, Sequence

from . import _wire
from ._wire import PacketType
from .actions import PACKET_COST, Action, ConnState, EngineSettings, Notify, Persist, Write
from .errors import MQTTSessionError, PacketIdsExhausted, UsageError
from .events import (
    DIRECTION_CLIENT,
    ErrorEvent,
    MessageAckEvent,
    MessageDroppedEvent,
    MessageEvent,
    QueueStats,
)
from .expiry import MessageClock, message_remaining, with_remaining
from .records import Event
from .state import (
    MAX_REMAINING_LENGTH,
    Accepted,
    OutgoingMessage,
    Phase,
    Record,
    SessionState,
    Spooled,
    Stepped,
    id_range,
    publish_packet_size,
    topic_bytes,
)
from .queuelimits import DropLog, QueueLimits, QueueSource
from .reserving import Reserving
from .subscriptions import Subscriptions

__all__ = ["Outgoing", "QueueSource"]

log = logging.getLogger("mqttsession")

_DEBUG: Final = logging.DEBUG
_CONNECTED: Final = ConnState.CONNECTED


class _Everyone:
    def __contains__(self, name: object) -> bool:
        return True


_ALL: Final = _Everyone()


def _event(m: OutgoingMessage) -> MessageEvent:
    return MessageEvent(m.packet_id, m.topic, m.qos, m.payload, m.retain, m.sent, m.properties)


# ------------------------------------------------------------------------------------ outgoing


class Outgoing(QueueLimits, Reserving):
    """The outgoing flows of one session (``Engine`` is one); ``state`` is the durable
    part (``state.SessionState``)."""

    def __init__(self, settings: EngineSettings | None = None,
                 state: SessionState | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self.state = state if state is not None else SessionState()
        self.conn = ConnState.DISCONNECTED
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5 CONNACK)
        self.max_qos, self.retain_available = 2, True  # the broker's (MQTT 5 CONNACK)
        self.mismatched_acks = 0  # acknowledgements of the wrong kind, ever
        self._receive_max = 65535  # the broker's Receive Maximum (``_window``)
        self._pending: deque[int] = deque()  # seqs to write, in order
        self._inflight: dict[int, float] = {}  # seq -> when written on this connection
        self.subs = Subscriptions(self)
        self._mismatch_logged = False  # on this connection
        self._beyond_logged = False  # flows beyond the Receive Maximum (the engine's), the same
        self.listeners: Container[str] = _ALL  # events anyone listens to (others are not built)
        self.accepted: Accepted | Spooled | None = None  # the last publish()'s (for retract)
        self.accepted_many: list[Accepted | Spooled] = []  # the last publish_many()'s
        self.spool: QueueSource | None = None  # the disk queue, with a state file
        self._holding: set[int] = set()  # accepted, record not durable yet: not written
        self.dropped = 0  # messages removed without delivery since made or restored
        self.expired, self.drops = 0, DropLog()
        self.unsent_qos0: Callable[[], int] = lambda: 0  # QoS 0 bytes the connection holds
        self._expiry_scan = float("-inf")  # when a full queue was last searched for expired
        self.now = 0.0  # the MessageClock's time at the latest input (publish, tick, CONNACK)
        self.clock = MessageClock()
        self._tokens = 0.0  # DrainRateLimit: new PUBLISHes that may go now
        # FailoverRepublish: the QoS 1 messages the current server acknowledged last
        self.recent_acked: deque[OutgoingMessage] = deque()
        self._tokens_at = 0.0  # when the bucket was last filled (monotonic)
        # SessionSync=interval: a reservation read back (first, last ids) whose ids the session
        # does not hold get a PUBREL on the next SessionPresent=1 connection; _releasing: the
        # last of them sent, whose PUBCOMP ends it, as does the end of a flow published after
        # them (seq _released_before and later: a broker that answers no PUBCOMP for an id it
        # does not hold read them); _release_out: those unanswered (a window slot each, up to
        # _release_cap); _unreserve: the seq of the publish that made the latest reservation
        # and the one before it (for ``retract``)
        self._unreleased: tuple[int, int] | None = None
        self._releasing = self._released_before = self._release_cap = 0
        self._release_out: set[int] = set()
        self._unreserve: tuple[int, int, int] | None = None
        self._recovered()

    # ---------------------------------------------------------------- views

    @property
    def connected(self) -> bool:
        return self.conn is ConnState.CONNECTED

    @property
    def v5(self) -> bool:
        return self.state.protocol_version == 5

    @property
    def _live(self) -> bool:
        """A connection with CONNACK seen: packets may be written."""
        return self.conn in (ConnState.RESUMING, ConnState.CONNECTED)

    # ---------------------------------------------------------------- encoding

    def _remaining(self, m: OutgoingMessage) -> int | None:
        """Seconds left of its Message Expiry Interval (None: none, or MQTT 3.1.1)."""
        return message_remaining(m.properties, m.accepted_at, self.now) if self.v5 else None

    def _with_remaining(self, m: OutgoingMessage) -> bytes:
        """Its properties with the Message Expiry Interval counted down [MQTT-3.3.2-6]."""
        left = self._remaining(m)
        return m.properties if left is None else with_remaining(m.properties, left)

    def _publish(self, m: OutgoingMessage, dup: bool) -> Write:
        props = ((self._with_remaining(m) if m.properties else b"\x00")) if self.v5 else b""
        if props and not self.v5:  # pragma: no cover - accept() refuses it
            raise UsageError("MQTT 3.1.1 has no properties")
        topic = m.topic.encode("utf-8")
        flags = (0x08 if dup else 0) | (m.qos << 1) | (0x01 if m.retain else 0)
        body = b"".join((len(topic).to_bytes(2, "big"), topic, m.packet_id.to_bytes(2, "big"),
                         props, m.payload))
        return Write(_wire.encode_packet(0x30 | flags, body), PacketType.PUBLISH,
                     m.packet_id, m.qos)

    def _ack(self, kind: PacketType, packet_id: int) -> Write:
        if log.isEnabledFor(_DEBUG):
            log.debug("%s for packet id %d", kind.name, packet_id)
        first = (kind << 4) | (0x02 if kind is PacketType.PUBREL else 0)
        return Write(bytes((first, 2, packet_id >> 8, packet_id & 0xFF)), kind, packet_id)

    def clock_time(self, now: float, mono: float | None) -> tuple[float, float]:
        """The ``MessageClock``'s time at wall time ``now`` (``mono``: the monotonic clock's;
        None: no jump is seen) and the session's clock offset it implies: changed by a jump;
        0 again once no message is held; never a time before 1970 (a message's time would
        be unknown: it would never expire) (``clock_record`` makes it durable)."""
        st, clock = self.state, self.clock
        offset = st.clock_offset
        if not (offset or now < 0.0 or clock.mono is None):  # (the usual case)
            return clock.read(now, mono, offset)
        if not st.held and not self.recent_acked:  # none is counted on it: the wall clock's
            if offset != (natural := 0.0 if now >= 0.0 else 1.0 - now):
                clock.reset()
                offset = natural
        elif mono is not None and clock.fresh:
            # a new process whose clock is behind the newest held message's time: it went
            # back while none ran, and how much time passed is unknown: none is counted
            sp, m = self.spool, next(reversed(st.outgoing.values()), None)
            try:
                queued = (sp.tail_time() if st.spooled and sp is not None else None) or 0.0
            except (OSError, MQTTSessionError):  # (a queue that cannot be read: reported there)
                queued = 0.0
            newest = max(queued, m.accepted_at if m is not None else 0.0)
            if now + offset < newest:
                offset = newest - now
            elif now + offset < 0.0:  # (every held message's time unknown)
                offset = 1.0 - now
        return clock.read(now, mono, offset)

    def read_clock(self, now: float, mono: float | None) -> list[Record]:
        """A reading with no record of its own to ride on (a restore, a snapshot, a close):
        the ``ClockOffset`` record (applied) of what it found."""
        self.now, offset = self.clock_time(now, mono)
        return self.clock_record(offset)

    def clock_record(self, offset: float) -> list[Record]:
        """The ``ClockOffset`` record (applied) of a new ``offset``. Made only with the
        records stored with it: a reading whose offset was never stored sees the jump again."""
        st = self.state
        if offset == st.clock_offset:
            return []
        if offset:
            log.warning("the wall clock jumped by %+.1f s: held messages' ages are counted"
                        " across it (their clock is %+.1f s from the wall clock's)",
                        st.clock_offset - offset, offset)
        return [st.set_clock_offset(offset)]

    def _stored(self, offset: float, records: tuple[Record, ...]) -> list[Action]:
        """The ``Persist`` of a publish's records (persistence point 1), after the record of
        a new clock ``offset``: in it, or before it on its own (the journal's) when they are
        the disk queue's."""
        if offset == self.state.clock_offset:
            return [Persist(records, True)]
        clock = tuple(self.clock_record(offset))
        if type(records[0]) is Spooled:
            return [Persist(clock, True), Persist(records, True)]
        return [Persist((*clock, *records), True)]

    # ---------------------------------------------------------------- packet ids

    def _recovered(self) -> None:
        """A session read back (a new process, or ``restore``): a reservation it holds may
        cover ids that records a power cut took gave to messages whose PUBLISHes reached the
        broker. They are never handed out again before their PUBRELs are sent: allocation goes
        on after the reservation (until it wraps round to them, 65,000 ids later)."""
        self.clock.reset()
        st = self.state
        # a session that ended connected (killed: no Disconnected after its Connected) may
        # have sent QUEUED messages whose lazy SEND step was never written: each one's first
        # PUBLISH now may be a re-delivery, so it carries DUP=1 [MQTT-3.3.1-1]
        ended_connected = st.connected_at is not None and (
            st.disconnected_at is None or st.disconnected_at < st.connected_at)
        self._maybe_sent: set[int] = {
            m.seq for m in st.outgoing.values() if m.phase is Phase.QUEUED and m.packet_id
        } if ended_connected else set()
        first, last = self.state.reserved_first, self.state.reserved_last
        self._unreleased, self._releasing, self._release_out = (first, last) if first else None, 0, set()
        if first:
            # not recorded: the next record that hands out an id sets it, and until then the
            # file's last_packet_id is in the reservation or (after a restart that did not
            # record this) before it: either way the next process moves it here again
            self.state.last_packet_id = last

    def _release_reserved(self) -> list[Action]:
        """SessionPresent=1 after a session with a reservation was read back: PUBREL for each
        reserved id the session does not hold. A broker holding a QoS 2 flow whose record a
        power cut took completes it (the message was published before the cut: delivering it
        is allowed); one holding none answers PUBCOMP all the same [MQTT-4.3.3-11]. After it
        the id is a new message's again [MQTT-4.3.3-12]."""
        if self._unreleased is None:
            return []
        first, last = self._unreleased
        held = self.state.outgoing_by_packet_id
        ids = [pid for pid in id_range(first, last) if held(pid) is None]
        # a window slot each, but one new PUBLISH always goes beside the resends in flight (its
        self._release_out = set(ids)  # ack shows a broker that never answers them read them)
        self._release_cap = max(0, self._window - len(self._inflight) - 1)
        log.info("%d PUBREL sent for packet ids %d..%d reserved before the restart (interval:"
                 " a power cut may have taken the records of messages the broker holds)",
                 len(ids), first, last)
        self._unreleased, self._releasing = (self._unreleased, ids[-1]) if ids else (None, 0)
        self._released_before = self.state.next_seq
        return [self._ack(PacketType.PUBREL, pid) for pid in ids]

    def _end_release(self) -> None:
        """The reserved ids read back need no PUBREL any more (the broker holds no flow)."""
        self._unreleased, self._releasing, self._release_out = None, 0, set()

    def _session_absent(self) -> None:
        """SessionPresent=0: the broker holds no flow of a reserved id, and no earlier attempt
        of a message maybe sent before a kill (published anew: DUP=0)."""
        self._end_release()
        self._maybe_sent.clear()

    # ---------------------------------------------------------------- publishing

    def size_limit(self, topic: str, payload_size: int, qos: int, properties_size: int = 0,
                   own: bool = True) -> str | None:
        """Why a PUBLISH of this size cannot be sent (None: it can); ``own``: MaxMessageSize too."""
        cap, broker = self.settings.max_message_size if own else 0, self.max_packet
        most = MAX_REMAINING_LENGTH
        if not cap and broker is None and payload_size < 65536 and properties_size < 65536:
            return None  # the usual message: far below MQTT's own limit
        bound = min(most, cap or most, broker or most)
        if payload_size + 4 * len(topic) + properties_size + 16 <= bound:
            return None  # fits with room to spare (UTF-8 is at most 4 bytes a character)
        remaining, size = publish_packet_size(topic, payload_size, qos, properties_size, self.v5)
        if remaining > MAX_REMAINING_LENGTH:
            return f"{size} bytes, over MQTT's packet limit (Remaining Length {MAX_REMAINING_LENGTH})"
        if cap and size > cap:
            return f"{size} bytes, over MaxMessageSize={cap}"
        if broker is not None and size > broker:
            # [MQTT-3.2.2-15] never send a packet over the server's Maximum Packet Size
            return f"{size} bytes, over the broker's Maximum Packet Size {broker}"
        return None

    def unsupported(self, qos: int, retain: bool) -> str | None:
        """Why the broker would refuse a PUBLISH with this QoS and retain flag (None: it takes
        it); the limits of its last CONNACK."""
        if qos > self.max_qos:  # [MQTT-3.2.2-11]
            return f"QoS {qos} is over the broker's Maximum QoS {self.max_qos}"
        if retain and not self.retain_available:  # [MQTT-3.2.2-14]
            return "the broker takes no retained messages (Retain Available 0)"
        return None

    def _qos0(self, topic: str, payload: bytes, retain: bool, properties: bytes,
              ahead: int = 0) -> list[Action]:
        """A QoS 0 message (checked): its PUBLISH, or nothing when it is dropped (not
        connected, or the connection behind with ``ahead`` more bytes: ``_behind``)."""
        if not self.connected:
            self.drops.dropped(None, topic, "not connected (QoS 0)", self.state.client_id)
            return []
        t = topic.encode("utf-8")
        props = (properties or b"\x00") if self.v5 else b""
        body = _wire.encode_packet(0x30 | int(retain), len(t).to_bytes(2, "big") + t + props
                                   + payload)
        if self._behind(topic, len(body), ahead):  # (the packet, as the connection counts it)
            return []
        if "on_message_out" not in self.listeners:  # (no event built for no one)
            return [Write(body, PacketType.PUBLISH)]
        event = MessageEvent(-1, topic, 0, payload, retain, False, properties)
        return [Write(body, PacketType.PUBLISH), Notify("on_message_out", event)]

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                properties: bytes = b"", now: float | None = None,
                hold: bool = False, mono: float | None = None) -> tuple[int, list[Action]]:
        """The application published (topic and QoS validated by the caller). Returns the
        packet id (0 for QoS 0) and the actions: for QoS 1/2 ``Persist(sync)`` of the message
        (persistence point 1, after the records of what ``QueueFullPolicy=drop-oldest`` took
        out to make room), then its PUBLISH when the window has room.

        ``UsageError`` when it is too large to send, ``QueueFullError`` when the queue is full
        and nothing may go. A driver whose ``Persist`` fails calls ``retract`` with the
        ``Accepted`` record (``self.accepted``) and skips the rest.
        """
        why = self.size_limit(topic, len(payload), qos, len(properties))
        if why is not None:
            raise UsageError(f"message to {topic!r} too large to send: {why}")
        if qos > self.max_qos or retain and not self.retain_available:
            raise UsageError(f"message to {topic!r} cannot be sent: {self.unsupported(qos, retain)}")
        self.accepted = None
        if qos == 0:
            return 0, self._qos0(topic, payload, retain, properties)
        st, s = self.state, self.settings
        offset = st.clock_offset
        if now is not None:
            self.now, offset = self.clock_time(now, mono)
        if s.max_queued_bytes or s.max_queued_messages:
            out = self._make_room(len(payload) + topic_bytes(topic) + len(properties))
        else:
            out = []
        at = float(self.now) if now is not None and self.now > 0.0 else 0.0
        sp, limit = self.spool, s.queue_in_memory
        if (sp is not None and sp.ready  # (behind messages queued there, whatever the limit)
                and (st.spooled or limit and len(st.outgoing) >= limit)):
            # beyond what memory holds: the disk queue. Nothing is read back here (its
            # record is not written yet); acks, resume and ticks read it back
            spooled = st.spool_checked(topic, payload, qos, retain, properties, at)
            self.accepted = spooled
            out += self._stored(offset, (spooled,))
            return 0, out
        rec = st.accept_checked(topic, payload, qos, retain, properties, self.subs.busy(), at)
        self.accepted = rec
        self._pending.append(rec.message.seq)
        if hold:  # group commit: its PUBLISH waits for ``durable`` (persistence point 1)
            self._holding.add(rec.message.seq)
        if s.reserve_packet_ids and rec.message.packet_id:  # SessionSync=interval
            # _undo_last_packet_id: last_packet_id before this accept (``retract``'s)
            out += self._reserve(st._undo_last_packet_id, rec.message.seq)
        if offset == st.clock_offset:  # (the usual case: no new clock correction)
            out.append(Persist((rec,), True))
        else:
            out += self._stored(offset, (rec,))
        if self.conn is _CONNECTED:
            out += self._pump()
        return rec.message.packet_id, out

    def publish_many(self, items: Sequence[tuple[str, bytes, int, bool, bytes]],
                     now: float, mono: float | None = None, hold: bool = False
                     ) -> tuple[list[int], list[Action]]:
        """Several messages (topic, payload, qos, retain, properties; validated by the
        caller) in one step: their records in ONE ``Persist`` (one write, one sync), all in
        memory or all in the disk queue, then their PUBLISHes. All or nothing: too large,
        or no room (``QueueFullError``), raises before anything is stored; a driver whose
        ``Persist`` fails calls ``retract`` with each of ``self.accepted_many``, last first.
        ``hold``: as ``publish``'s (a group commit), for those kept in memory."""
        for topic, payload, qos, retain, props in items:
            why = self.size_limit(topic, len(payload), qos, len(props))
            if why is not None:
                raise UsageError(f"message to {topic!r} too large to send: {why}")
            if (why := self.unsupported(qos, retain)) is not None:
                raise UsageError(f"message to {topic!r} cannot be sent: {why}")
        self.accepted = None
        self.accepted_many = []
        self.now, offset = self.clock_time(now, mono)
        st, s = self.state, self.settings
        durable = [i for i in items if i[2]]
        out: list[Action] = []
        if durable and (s.max_queued_bytes or s.max_queued_messages):
            out = self._make_room(sum(len(p) + topic_bytes(t) + len(x)
                                      for t, p, _q, _r, x in durable),
                                  len(durable))
        sp, limit = self.spool, s.queue_in_memory
        spool = bool(sp is not None and sp.ready
                     and (st.spooled or limit and len(st.outgoing) + len(durable) > limit))
        records: list[Record] = []
        ids: list[int] = []
        quick: list[Action] = []
        before, first_seq = st.last_packet_id, st.next_seq
        at = self.now if self.now > 0.0 else 0.0  # (a clock before 1970: unknown, as ``publish``)
        ahead = 0  # QoS 0 bytes this call wrote (they reach the connection after the loop)
        for topic, payload, qos, retain, props in items:
            if not qos:
                if (written := self._qos0(topic, payload, retain, props, ahead)):
                    quick += written
                    ahead += sum(len(a.packet) + PACKET_COST for a in written if isinstance(a, Write))
                ids.append(0)
                continue
            if spool:
                rec: Accepted | Spooled = st.spool_checked(topic, payload, qos, retain, props,
                                                           at)
            else:
                rec = st.accept(topic, payload, qos, retain, props, avoid=self.subs.busy(),
                                accepted_at=at)
                self._pending.append(rec.message.seq)
                if hold:  # its PUBLISH waits for ``durable`` (persistence point 1)
                    self._holding.add(rec.message.seq)
            self.accepted_many.append(rec)
            records.append(rec)
            ids.append(rec.message.packet_id)
        if records:
            if not spool:
                out += self._reserve(before, first_seq, any(ids))
            out += self._stored(offset, tuple(records))
        out += quick
        if records and not spool and self.conn is _CONNECTED:
            out += self._pump()
        return ids, out

    def durable(self, seqs: Sequence[int]) -> list[Action]:
        """Held messages whose records a group commit made durable (in seq order): they may
        be written now."""
        self._holding.difference_update(seqs)
        return self._pump()

    def withdraw(self, seq: int) -> None:
        """A held message whose record never became durable: out of the session."""
        self._holding.discard(seq)
        self.state.withdraw(seq)

    def _refill(self) -> list[Action]:
        """Read messages back from the disk queue while fewer than half of
        ``queue_in_memory`` wait to be written."""
        sp, limit = self.spool, self.settings.queue_in_memory
        if sp is None or len(self._pending) >= max(1, limit // 2):
            return []
        return self._read_back(max(1, limit - len(self._pending)))[1]

    def _loaded(self, messages: list[OutgoingMessage]) -> list[Action]:
        """Messages read back join the session; their packet ids are durable before any of
        them is written [MQTT-2.3.1-2]."""
        st, sp = self.state, self.spool
        upto = max(messages[-1].seq + 1 if messages else 0, sp.read_to() if sp is not None else 0)
        before = st.last_packet_id
        rec = st.load(messages, upto, avoid=self.subs.busy()) if messages or upto > st.spool_next \
            else None
        if sp is not None:  # a damaged segment the queue skipped (on_error named it): dropped
            self.dropped += max(0, st.spooled - sp.queued()[0])
            st.spooled, st.spooled_bytes = sp.queued()
        if rec is None:
            return []
        self._pending.extend(m.seq for m in messages)
        return [*self._reserve(before, 0, any(m.packet_id for m in rec.messages)),
                Persist((rec,), sync=True)]

    def _dropped(self, m: OutgoingMessage, rec: Stepped | None, reason: str) -> list[Action]:
        """A message left without delivery: its record, and ``on_message_dropped``."""
        if reason == "expired":
            self.expired += 1
        else:
            self.dropped += 1
        out: list[Action] = [Persist((rec,))] if rec is not None else []
        out.append(Notify("on_message_dropped", MessageDroppedEvent(m.topic, m.qos, m.seq, reason)))
        self.drops.dropped(m.seq, m.topic, reason, self.state.client_id)  # (no flood)
        # the seqs to write hold it until the next write reaches it (offline: never, a day's
        # drops piled up): those gone are taken out, in place (``_pump`` may be reading it)
        pending, held = self._pending, self.state.outgoing
        while pending and pending[0] not in held:
            pending.popleft()
        if len(pending) > 2 * len(held) + 64:
            kept = [seq for seq in pending if seq in held]
            pending.clear()
            pending.extend(kept)
        return out

    def queue_stats(self, now: float, mono: float | None = None) -> QueueStats:
        """What the outgoing queue holds (``now``, ``mono``: the wall and monotonic clocks,
        for the oldest's age on the ``MessageClock``)."""
        st, sp = self.state, self.spool
        now = self.clock.peek(now, mono, st.clock_offset)[0]
        first = next(iter(st.outgoing.values()), None)
        at = first.accepted_at if first is not None else (
            (sp.head_time() or 0.0) if st.spooled and sp is not None else 0.0)
        return QueueStats(st.held, st.held_bytes,
                          max(0.0, now - at) if at else None, self.dropped, self.expired)

    def retract(self, rec: Accepted | Spooled) -> None:
        """Undo ``publish`` whose ``Persist`` failed (nothing after it was carried out)."""
        if isinstance(rec, Spooled):
            self.state.retract_spooled(rec)
            return
        seq = rec.message.seq
        u = self._unreserve
        if u is not None and u[0] == seq:  # the reservation made for it: never synced
            self._unreserve = None
            self.state.reserved_first, self.state.reserved_last = u[1], u[2]
        self._holding.discard(seq)
        m = self.state.outgoing.get(seq)
        if m is not None and m.phase is not Phase.QUEUED:  # pumped: undo the SEND step too
            self.state.outgoing[seq] = rec.message
        self.state.retract(rec)
        self._inflight.pop(seq, None)
        if self._pending and self._pending[-1] == seq:
            self._pending.pop()

    def _pump(self, resends_only: bool = False) -> list[Action]:
        """Write pending messages while the window has room [MQTT-3.3.4-7] (less the reserved
        ids' unanswered PUBRELs, ``_release_cap`` at most); ``resends_only``: to the first new."""
        if self.conn is not _CONNECTED:
            return []
        out: list[Action] = self._refill() if self.state.spooled else []
        pending, inflight, outgoing = self._pending, self._inflight, self.state.outgoing
        rate, room = self.settings.drain_rate_limit, self._window
        if self._release_out:  # (their flows hold the broker's quota)
            room -= min(len(self._release_out), self._release_cap)
        while len(inflight) < room:
            if not pending:  # (all dropped as expired, say): more from the disk queue now,
                if not self.state.spooled:  # not at the next tick
                    break
                out += self._refill()
                if not pending:
                    break
            seq = pending[0]
            if seq in self._holding:
                break  # its record is not on disk yet: it, and all after it, wait [MQTT-4.6.0-1]
            m = outgoing.get(seq)
            if m is None or seq in inflight:
                pending.popleft()
                continue
            if resends_only and m.phase is Phase.QUEUED:
                break
            if m.phase is Phase.QUEUED and m.properties and self._remaining(m) == 0:
                pending.popleft()  # (before the rate: an expired one is never written)
                out += self._dropped(m, self.state.expire(seq), "expired")
                continue
            if rate and m.phase is Phase.QUEUED:  # DrainRateLimit: new PUBLISHes only
                if self._tokens < 1.0:
                    break  # the next tick lets more go
                self._tokens -= 1.0
            pending.popleft()
            if m.phase is not Phase.AWAIT_PUBCOMP:
                why = self.size_limit(m.topic, len(m.payload), m.qos, len(m.properties), False)
                reason, code = "too-large", 0x95
                if why is None and (why := self.unsupported(m.qos, m.retain)) is not None:
                    # 0x9B QoS not supported, 0x9A Retain not supported
                    reason, code = "unsupported", 0x9B if m.qos > self.max_qos else 0x9A
                if why is not None:  # it became unsendable (the broker's limits): out
                    out += self._dropped(m, self.state.too_large(seq), reason)
                    out.append(self.error(code, f"message seq {seq} (packet id {m.packet_id})"
                                                f" to {m.topic!r} taken out of the session: {why}"))
                    continue
            try:
                out += self._write(m)
            except PacketIdsExhausted:  # it needs an id and SUBSCRIBEs hold the free ones:
                pending.appendleft(seq)  # it waits for one (an ack's)
                break
            inflight[seq] = 0.0
        return out

    def _write(self, m: OutgoingMessage) -> list[Action]:
        if m.phase is Phase.QUEUED:
            if m.packet_id:
                # lazy: if lost, the message is read back QUEUED, its id kept, and sent again
                # with DUP=1 (``_recovered``); but a QoS 2 one that could be taken out as never
                # sent (expired, dropped for room) is written before its PUBLISH leaves: taken
                # out after a kill -9, its flow would hold a slot of the broker's Receive
                # Maximum for good (a later one refused)
                step = self.state.moved(m, Event.SEND,
                                        Phase.AWAIT_PUBACK if m.qos == 1 else Phase.AWAIT_PUBREC)
                keep = m.qos == 2 and (bool(m.properties)
                                       or self.settings.queue_full_policy == "drop-oldest")
                maybe = self._maybe_sent
                dup = bool(maybe) and m.seq in maybe
                if dup:
                    maybe.discard(m.seq)
                return [Persist((step,), lazy=not keep), self._publish(m, dup)]
            before = self.state.last_packet_id
            step = self.state.send(m.seq, avoid=self.subs.busy())
            # an id given now (published anew after SessionPresent=0, or every id was taken)
            # is durable before the broker holds it: a lost record would hand the same id to
            # another message while the broker still holds it [MQTT-2.3.1-2]
            m = self.state.outgoing[m.seq]
            return [*self._reserve(before, 0), Persist((step,), sync=True),
                    self._publish(m, False)]
        if m.phase is Phase.AWAIT_PUBCOMP:
            # point 2: "released" is durable before this PUBREL [MQTT-4.3.3-6]: PUBREL, never
            # the PUBLISH again
            return [Persist((), sync=True, ack=True), self._ack(PacketType.PUBREL, m.packet_id)]
        # [MQTT-4.4.0-1] original packet id, [MQTT-3.3.1-1] DUP=1
        return [self._publish(m, True)]

    # ---------------------------------------------------------------- acknowledgements

    def _finished(self, m: OutgoingMessage, reason_code: int, out: list[Action],
                  refused: bool = False) -> list[Action]:
        """An outgoing flow ended: free the window, then the events (built for listeners
        only: this runs once per message). ``refused``: by the PUBACK / PUBREC's reason code
        (a PUBCOMP's, 0x92 for a flow the broker already ended, refuses nothing)."""
        self._inflight.pop(m.seq, None)
        if self._unreleased is not None and self._releasing and m.seq >= self._released_before:
            self._end_release()  # the broker read the PUBRELs
        pending = self._pending
        if (pending and pending[0] not in self._holding) or self.state.spooled:
            out += self._pump()  # (the next one held for its sync: nothing to write yet)
        if "on_message_ack" in self.listeners:
            out.append(Notify("on_message_ack", MessageAckEvent(m.packet_id, DIRECTION_CLIENT,
                                                                reason_code)))
        if refused:  # (MQTT 5) the flow ends, the message undelivered
            self.dropped += 1
            log.info("message seq %d to %r dropped: refused", m.seq, m.topic)
            out.append(Notify("on_message_dropped", MessageDroppedEvent(m.topic, m.qos, m.seq,
                                                                        "refused")))
            out.append(self.error(reason_code, f"message seq {m.seq} to {m.topic!r} refused by"
                                               f" the broker (0x{reason_code:02X})"))
        elif "on_message_out" in self.listeners:
            out.append(Notify("on_message_out", _event(m)))
        return out

    def _mismatched(self, kind: str, m: OutgoingMessage) -> None:
        """An acknowledgement of the wrong kind: counted, logged once a connection."""
        self.mismatched_acks += 1
        if not self._mismatch_logged:
            self._mismatch_logged = True
            log.warning("the broker answered a QoS %d PUBLISH (packet id %d) with %s: the flow"
                        " ends as the broker meant it (it downgrades QoS 2 to 1, or the reverse);"
                        " config('MismatchedAcks') counts them", m.qos, m.packet_id, kind)

    def _puback(self, pid: int, code: int) -> list[Action]:
        m = self.state.outgoing_by_packet_id(pid)
        if m is not None and m.phase is Phase.AWAIT_PUBREC:
            self._mismatched("PUBACK", m)  # RabbitMQ 3.x: QoS 2 taken as QoS 1
        elif m is None or m.phase is not Phase.AWAIT_PUBACK:
            log.debug("PUBACK for packet id %d, which awaits none: ignored", pid)
            return []
        elif code < 0x80 and self.settings.failover_republish > 0:  # (memory only)
            self.recent_acked.append(m)
            while len(self.recent_acked) > self.settings.failover_republish:
                self.recent_acked.popleft()
        # point 5: a lost removal only costs a resend
        return self._finished(m, code, [Persist((self.state.finished(m, Event.PUBACK),),
                                                lazy=True)], code >= 0x80)

    def _pubrec(self, pid: int, code: int) -> list[Action]:
        m = self.state.outgoing_by_packet_id(pid)
        pubrel: list[Action] = [self._ack(PacketType.PUBREL, pid)]
        if m is None:
            return pubrel if code < 0x80 else []  # let the broker finish a flow we no longer hold
        if m.phase is Phase.AWAIT_PUBCOMP:
            return [Persist((), sync=True, ack=True), *pubrel]  # a repeated PUBREC: PUBREL again
        if m.phase is Phase.AWAIT_PUBACK:
            self._mismatched("PUBREC", m)  # QoS 1 taken as QoS 2: it has the message
            out = self._finished(m, code, [Persist((self.state.pubrec(pid, code),), lazy=True)],
                                 code >= 0x80)
            return out + pubrel if code < 0x80 else out  # PUBREL lets the broker finish
        if m.phase is Phase.AWAIT_PUBREC:
            # persistence point 2: "released" is durable before PUBREL [MQTT-4.3.3-6]
            if code < 0x80:
                rec = self.state.moved(m, Event.PUBREC, Phase.AWAIT_PUBCOMP)
                return [Persist((rec,), sync=True, ack=True, batched=True), *pubrel]
            rec = self.state.pubrec(pid, code)
            return self._finished(m, code, [Persist((rec,))], True)  # [MQTT-4.4.0-2] ends it
        log.debug("PUBREC for packet id %d in phase %s: ignored", pid, m.phase.value)
        return []

    def _pubcomp(self, pid: int, code: int) -> list[Action]:
        m = self.state.outgoing_by_packet_id(pid)
        if m is None or m.phase is not Phase.AWAIT_PUBCOMP:
            if m is None and pid in self._release_out:  # a reserved id's flow ended
                self._release_out.discard(pid)
                if pid == self._releasing:  # the reserved ids read back are free
                    self._end_release()  # [MQTT-4.3.3-12]
                return self._pump()  # (its slot of the window free)
            log.debug("PUBCOMP for packet id %d, which awaits none: ignored", pid)
            return []
        rec = self.state.finished(m, Event.PUBCOMP)
        return self._finished(m, code, [Persist((rec,), lazy=True)])  # point 5

    def error(self, code: int, description: str) -> Notify:
        return Notify("on_error", ErrorEvent(code, description))
