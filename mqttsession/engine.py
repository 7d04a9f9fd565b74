"""The session engine: MQTT session behaviour apart from all I/O (sans-I/O, like h11).

Pure: no paho, sockets, threads or clock (times are passed in). Each input is a method call
(the application published, subscribed or acknowledged a delivery; a CONNACK, a session packet
or the loss of the connection arrived; a tick); each returns the ordered list of actions the
driver must carry out, in that order:

* ``Persist(records, sync)``: make the records durable (they are already applied to
  ``engine.state``); ``sync``: on disk before the next action (under ``SessionSync=always``);
  ``lazy``: may wait for the next record or a tick (losing it costs only a resend).
* ``Write(packet)``: the bytes of one MQTT packet (``_wire``), on the current connection.
* ``Deliver(message)``: hand a received message to the application. A QoS 1/2 delivery is
  acknowledged by a later ``ack()`` call (the driver calls it when the callback returns unless
  the application acknowledges itself, ``ManualAck``).
* ``Notify(name, event)``: an ``on_*`` event for the application.

The order IS ARCHITECTURE.md's persistence points: a ``Persist`` comes before the ``Write``
that depends on it (1: the message before its PUBLISH, 2: "released" before PUBREL, 3: the
incoming QoS 2 message before PUBREC, 4: delivery, then its removal, then PUBCOMP). A driver
that stops executing after a failed action (and calls ``retract`` for a failed publish) keeps
them. ``tests/unit/test_engine_crash.py`` checks them against a model broker with crashes at
every action boundary.

The engine is not thread-safe: one owner calls it (under the Client's lock).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Container, Final, Protocol, Sequence

from . import _wire
from ._wire import Packet, PacketType
from .errors import QueueFullError, StateError, TransitionError, UsageError
from .actions import Action, ConnState, Deliver, EngineSettings, Notify, Persist, Write
from .subscriptions import SUBSCRIBE_TRIES, Subscriptions
from .events import (
    DIRECTION_CLIENT,
    DIRECTION_SERVER,
    ConnectedEvent,
    DisconnectedEvent,
    ErrorEvent,
    MessageAckEvent,
    MessageDroppedEvent,
    MessageEvent,
    QueueStats,
    SessionLostEvent,
)
from .expiry import effective_interval, message_remaining, with_remaining
from .expiry import expired as _expired
from .state import (
    MAX_REMAINING_LENGTH,
    Accepted,
    Configured,
    OutgoingMessage,
    Phase,
    Record,
    SessionLost,
    SessionState,
    Spooled,
    Stepped,
    message_bytes,
    publish_packet_size,
)

__all__ = [
    "Action", "ConnState", "Deliver", "Engine", "EngineSettings", "Notify", "Persist", "Write",
    "QueueSource", "SUBSCRIBE_TRIES",
]

log = logging.getLogger("mqttsession")

ACTIVITY_EVERY: Final = 5.0  # seconds between Activity records while connected


@dataclass
class _Owed:
    """A QoS 1 message delivered on this connection whose PUBACK waits for ``ack()``."""

    event: MessageEvent
    acked: bool = False


@dataclass
class _Held:
    """A QoS 2 message delivered (on PUBREL) whose removal and PUBCOMP wait for ``ack()``;
    ``pubcomp_due``: the current connection received its PUBREL."""

    event: MessageEvent
    pubcomp_due: bool


_CONNECTED: Final = ConnState.CONNECTED
_ACKS: Final = frozenset({PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
                          PacketType.PUBCOMP})


class _Everyone:
    def __contains__(self, name: object) -> bool:
        return True


_ALL: Final = _Everyone()


def _event(m: OutgoingMessage) -> MessageEvent:
    return MessageEvent(m.packet_id, m.topic, m.qos, m.payload, m.retain, m.sent, m.properties)


class QueueSource(Protocol):
    """The disk queue the engine reads back from (``store.StateFile``): messages go there
    (``Spooled`` records) beyond ``queue_in_memory``; it is read only after every ``Persist``
    the engine returned before was carried out."""

    @property
    def ready(self) -> bool:
        """Whether messages may go to the disk queue now."""

    def read(self, n: int) -> list[OutgoingMessage]:
        """Up to ``n`` of the oldest messages not read back yet, in publish order."""

    def head_time(self) -> float | None:
        """When the oldest of them was published."""

    def queued(self) -> tuple[int, int]:
        """How many are not read back yet, and their bytes."""

    def read_to(self) -> int:
        """Every message below this seq was read back (or lost to damage, reported)."""


# ------------------------------------------------------------------------------------- engine


class Engine:
    """One client session's behaviour. ``state`` is the durable part (``state.SessionState``);
    the rest lives for one connection or one process."""

    def __init__(self, settings: EngineSettings | None = None,
                 state: SessionState | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self.state = state if state is not None else SessionState()
        self.conn = ConnState.DISCONNECTED
        self.broker: str | None = None
        self.session_present = False
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5 CONNACK)
        self.mismatched_acks = 0  # acknowledgements of the wrong kind, ever
        self.restored_expired = False  # the client's clock said the restored session expired
        self._window = 65535
        self._pending: deque[int] = deque()  # seqs to write, in order
        self._inflight: dict[int, float] = {}  # seq -> when written on this connection
        self.subs = Subscriptions(self)
        self._owed: deque[_Owed] = deque()  # QoS 1, in arrival order [MQTT-4.6.0-2]
        self._held: dict[int, _Held] = {}  # QoS 2, by packet id
        self._mismatch_logged = False  # on this connection
        self._last_activity = 0.0
        self.listeners: Container[str] = _ALL  # events anyone listens to (others are not built)
        self._early_lost: SessionLost | None = None  # CONNACK's SessionPresent=0 reset
        self.accepted: Accepted | Spooled | None = None  # the last publish()'s (for retract)
        self.accepted_many: list[Accepted | Spooled] = []  # the last publish_many()'s
        self.spool: QueueSource | None = None  # the disk queue, with a state file
        self._holding: set[int] = set()  # accepted, record not durable yet: not written
        self.dropped = 0  # messages removed without delivery since made or restored
        self.expired = 0
        self.now = 0.0  # the latest wall time an input brought (publish, tick, CONNACK)
        self._tokens = 0.0  # DrainRateLimit: new PUBLISHes that may go now
        self._tokens_at = 0.0  # when the bucket was last filled (monotonic)

    # ---------------------------------------------------------------- views

    @property
    def connected(self) -> bool:
        return self.conn is ConnState.CONNECTED

    @property
    def server(self) -> str:
        """``host:port`` of the connection a CONNACK accepted (also inside on_connected),
        ``""`` without one."""
        return (self.broker or "") if self._live else ""

    @property
    def v5(self) -> bool:
        return self.state.protocol_version == 5

    @property
    def _live(self) -> bool:
        """A connection with CONNACK seen: packets may be written."""
        return self.conn in (ConnState.RESUMING, ConnState.CONNECTED)

    def owed_messages(self) -> list[MessageEvent]:
        """QoS 1 messages delivered and not yet acknowledged, in arrival order."""
        return [o.event for o in self._owed if not o.acked]

    def busy_packet_ids(self) -> set[int]:
        """Packet ids held by SUBSCRIBE / UNSUBSCRIBE awaiting their ack."""
        return self.subs.ids()

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
        first = (kind << 4) | (0x02 if kind is PacketType.PUBREL else 0)
        return Write(bytes((first, 2, packet_id >> 8, packet_id & 0xFF)), kind, packet_id)

    # ---------------------------------------------------------------- publishing

    def size_limit(self, topic: str, payload_size: int, qos: int,
                   properties_size: int = 0) -> str | None:
        """Why a PUBLISH of this size cannot be sent (None: it can)."""
        cap, broker = self.settings.max_message_size, self.max_packet
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

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                properties: bytes = b"", now: float | None = None,
                hold: bool = False) -> tuple[int, list[Action]]:
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
        self.accepted = None
        if qos == 0:
            if not self.connected:
                log.warning("QoS 0 message to %r dropped: not connected", topic)
                return 0, []
            event = MessageEvent(-1, topic, 0, payload, retain, False, properties)
            t = topic.encode("utf-8")
            props = (properties or b"\x00") if self.v5 else b""
            body = _wire.encode_packet(0x30 | int(retain), len(t).to_bytes(2, "big") + t + props
                                       + payload)
            return 0, [Write(body, PacketType.PUBLISH), Notify("on_message_out", event)]
        if now is not None:
            self.now = now
        st, s = self.state, self.settings
        if s.max_queued_bytes or s.max_queued_messages:
            out = self._make_room(len(payload) + len(topic) + len(properties))
        else:
            out = []
        at = now if now is not None and now > 0.0 else 0.0
        sp, limit = self.spool, s.queue_in_memory
        if (limit and sp is not None and (st.spooled or len(st.outgoing) >= limit)
                and sp.ready):
            # beyond what memory holds: the disk queue. Nothing is read back here (its
            # record is not written yet); acks, resume and ticks read it back
            spooled = st.spool(topic, payload, qos, retain, properties, at)
            self.accepted = spooled
            out.append(Persist((spooled,), True))
            return 0, out
        rec = st.accept(topic, payload, qos, retain, properties, avoid=self.subs.busy(),
                        accepted_at=at)
        self.accepted = rec
        self._pending.append(rec.message.seq)
        if hold:  # group commit: its PUBLISH waits for ``durable`` (persistence point 1)
            self._holding.add(rec.message.seq)
        out.append(Persist((rec,), True))
        if self.conn is _CONNECTED:
            out += self._pump()
        return rec.message.packet_id, out

    def publish_many(self, items: Sequence[tuple[str, bytes, int, bool, bytes]],
                     now: float) -> tuple[list[int], list[Action]]:
        """Several messages (topic, payload, qos, retain, properties; validated by the
        caller) in one step: their records in ONE ``Persist`` (one write, one sync), all in
        memory or all in the disk queue, then their PUBLISHes. All or nothing: too large,
        or no room (``QueueFullError``), raises before anything is stored; a driver whose
        ``Persist`` fails calls ``retract`` with each of ``self.accepted_many``, last first."""
        for topic, payload, qos, _r, props in items:
            why = self.size_limit(topic, len(payload), qos, len(props))
            if why is not None:
                raise UsageError(f"message to {topic!r} too large to send: {why}")
        self.accepted = None
        self.accepted_many = []
        if now > 0.0:
            self.now = now
        st, s = self.state, self.settings
        durable = [i for i in items if i[2]]
        out: list[Action] = []
        if durable and (s.max_queued_bytes or s.max_queued_messages):
            out = self._make_room(sum(len(p) + len(t) + len(x) for t, p, _q, _r, x in durable),
                                  len(durable))
        sp, limit = self.spool, s.queue_in_memory
        spool = bool(limit and sp is not None and sp.ready
                     and (st.spooled or len(st.outgoing) + len(durable) > limit))
        records: list[Record] = []
        ids: list[int] = []
        quick: list[Action] = []
        for topic, payload, qos, retain, props in items:
            if not qos:
                pid, actions = self.publish(topic, payload, 0, retain, props)
                quick += actions
                ids.append(0)
                continue
            if spool:
                rec: Accepted | Spooled = st.spool(topic, payload, qos, retain, props, now)
            else:
                rec = st.accept(topic, payload, qos, retain, props, avoid=self.subs.busy(),
                                accepted_at=now)
                self._pending.append(rec.message.seq)
            self.accepted_many.append(rec)
            records.append(rec)
            ids.append(rec.message.packet_id)
        if records:
            out.append(Persist(tuple(records), True))
        out += quick
        if records and not spool and self.conn is _CONNECTED:
            out += self._pump()
        return ids, out

    def _make_room(self, size: int, n: int = 1) -> list[Action]:
        """Room for ``n`` more messages of ``size`` bytes within MaxQueuedMessages and
        MaxQueuedBytes: nothing to do, the oldest never-sent messages dropped
        (``drop-oldest``), or ``QueueFullError`` (``reject``, or nothing that may go)."""
        s, st = self.settings, self.state
        max_n, max_b = s.max_queued_messages, s.max_queued_bytes
        count, used = st.held + n, st.held_bytes + size
        if (not max_n or count <= max_n) and (not max_b or used <= max_b):
            return []
        full = (f"the queue is full ({st.held} messages, {st.held_bytes} bytes;"
                f" MaxQueuedMessages={max_n}, MaxQueuedBytes={max_b})")
        if s.queue_full_policy != "drop-oldest":
            raise QueueFullError(f"{full}: nothing was stored (QueueFullPolicy=reject)")
        victims: list[OutgoingMessage] = []
        for m in st.outgoing.values():  # in publish order: the in-flight ones come first
            if (not max_n or count <= max_n) and (not max_b or used <= max_b):
                break
            if m.phase is Phase.QUEUED:
                victims.append(m)
                count -= 1
                used -= message_bytes(m)
        out: list[Action] = []
        sp = self.spool
        while ((max_n and count > max_n) or (max_b and used > max_b)) and st.spooled and sp:
            head = sp.read(1)  # the disk queue's oldest, read back to be dropped
            out += self._loaded(head)
            for m in head:
                victims.append(st.outgoing[m.seq])
                count -= 1
                used -= message_bytes(m)
        if (max_n and count > max_n) or (max_b and used > max_b):
            raise QueueFullError(f"{full}, and no message that was never sent can make room:"
                                 " nothing was stored")
        return out + [a for m in victims for a in self._dropped(m, st.drop(m.seq), "queue-full")]

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
        return self._loaded(sp.read(max(1, limit - len(self._pending))))

    def _loaded(self, messages: list[OutgoingMessage]) -> list[Action]:
        """Messages read back join the session; their packet ids are durable before any of
        them is written [MQTT-2.3.1-2]."""
        st, sp = self.state, self.spool
        upto = max(messages[-1].seq + 1 if messages else 0, sp.read_to() if sp is not None else 0)
        if not messages:
            if sp is not None:  # a damaged segment the queue skipped: its count
                st.spooled, st.spooled_bytes = sp.queued()
            if upto <= st.spool_next:
                return []
        rec = st.load(messages, upto, avoid=self.subs.busy())
        self._pending.extend(m.seq for m in messages)
        return [Persist((rec,), sync=True)]

    def _dropped(self, m: OutgoingMessage, rec: Stepped | None, reason: str) -> list[Action]:
        """A message left without delivery: its record, and ``on_message_dropped``."""
        if reason == "expired":
            self.expired += 1
        else:
            self.dropped += 1
        out: list[Action] = [Persist((rec,))] if rec is not None else []
        out.append(Notify("on_message_dropped", MessageDroppedEvent(m.topic, m.qos, m.seq, reason)))
        log.info("message seq %d to %r dropped: %s", m.seq, m.topic, reason)
        return out

    def queue_stats(self, now: float) -> QueueStats:
        """What the outgoing queue holds (``now``: the wall clock, for the oldest's age)."""
        st, sp = self.state, self.spool
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
        self._holding.discard(seq)
        m = self.state.outgoing.get(seq)
        if m is not None and m.phase is not Phase.QUEUED:  # pumped: undo the SEND step too
            self.state.outgoing[seq] = rec.message
        self.state.retract(rec)
        self._inflight.pop(seq, None)
        if self._pending and self._pending[-1] == seq:
            self._pending.pop()

    def _pump(self) -> list[Action]:
        """Write pending messages while the in-flight window has room [MQTT-3.3.4-7]."""
        if self.conn is not _CONNECTED:
            return []
        out: list[Action] = self._refill() if self.state.spooled else []
        pending, inflight, outgoing = self._pending, self._inflight, self.state.outgoing
        rate = self.settings.drain_rate_limit
        while pending and len(inflight) < self._window:
            seq = pending[0]
            if seq in self._holding:
                break  # its record is not on disk yet: it, and all after it, wait [MQTT-4.6.0-1]
            m = outgoing.get(seq)
            if m is None or seq in inflight:
                pending.popleft()
                continue
            if rate and m.phase is Phase.QUEUED:  # DrainRateLimit: new PUBLISHes only
                if self._tokens < 1.0:
                    break  # the next tick lets more go
                self._tokens -= 1.0
            pending.popleft()
            if m.phase is Phase.QUEUED and m.properties and self._remaining(m) == 0:
                out += self._dropped(m, self.state.expire(seq), "expired")
                continue
            if m.phase is not Phase.AWAIT_PUBCOMP:
                why = self.size_limit(m.topic, len(m.payload), m.qos, len(m.properties))
                if why is not None:  # it became unsendable (a smaller broker limit): out
                    out += self._dropped(m, self.state.too_large(seq), "too-large")
                    out.append(self.error(0x95, f"message seq {seq} (packet id {m.packet_id})"
                                                 f" to {m.topic!r} taken out of the session: {why}"))
                    continue
            out += self._write(m)
            inflight[seq] = 0.0
        return out

    def _write(self, m: OutgoingMessage) -> list[Action]:
        if m.phase is Phase.QUEUED:
            step = self.state.send(m.seq, avoid=self.subs.busy())
            if m.packet_id:
                # lazy: if lost, the message is resent as if never sent (same id; DUP=0)
                m = self.state.outgoing[m.seq]
                return [Persist((step,), lazy=True), self._publish(m, False)]
            # an id given now (the message was published anew after SessionPresent=0, or when
            # every id was taken) is durable before the broker holds it: a lost record would
            # hand the same id to another message while the broker still holds it
            # [MQTT-2.3.1-2]
            m = self.state.outgoing[m.seq]
            return [Persist((step,), sync=True), self._publish(m, False)]
        if m.phase is Phase.AWAIT_PUBCOMP:
            # point 2: "released" is durable before this PUBREL [MQTT-4.3.3-6]: PUBREL, never
            # the PUBLISH again
            return [Persist((), sync=True), self._ack(PacketType.PUBREL, m.packet_id)]
        # [MQTT-4.4.0-1] original packet id, [MQTT-3.3.1-1] DUP=1
        return [self._publish(m, True)]

    # ---------------------------------------------------------------- subscriptions

    def subscribe(self, filters: Sequence[str], qos: int) -> list[Action]:
        """The application subscribed (filters validated); works while disconnected."""
        return self.subs.subscribe(filters, qos, self.connected)

    def unsubscribe(self, filters: Sequence[str]) -> list[Action]:
        return self.subs.unsubscribe(filters, self.connected)

    # ---------------------------------------------------------------- connection

    def connecting(self, broker: str) -> None:
        """A connection is being made to ``broker`` (host:port)."""
        self.conn = ConnState.CONNECTING
        self.broker = broker

    def connack(self, rc: int, reason: str, session_present: bool, receive_maximum: int,
                maximum_packet_size: int | None, now: float,
                redirect: str | None = None) -> list[Action]:
        """CONNACK. Accepted: ``Connected`` is durable, then ``on_connected`` (which may call
        ``restore``); the driver then calls ``resume``. Refused: ``on_connected`` with the
        code, and ``on_error`` unless ``redirect`` names the server the client follows the
        broker's Server Reference to (MQTT 5 4.11)."""
        server = self.broker or ""
        if rc != 0:
            if redirect is not None:  # followed (FollowServerReference): not an error
                return [Notify("on_connected", ConnectedEvent(
                    rc, f"{reason}: redirected to {redirect}", False, server))]
            return [Notify("on_connected", ConnectedEvent(rc, reason, False, server)),
                    self.error(rc, f"connection refused: {reason}")]
        self.conn = ConnState.RESUMING
        self._mismatch_logged = False
        self.session_present = session_present
        self._window = max(1, min(self.settings.max_inflight, receive_maximum))
        self.max_packet = maximum_packet_size
        self._last_activity = self.now = now
        records: list[Record] = [self.state.connected(now, self.broker, session_present)]
        self._early_lost = None
        if not session_present:
            # [MQTT-3.2.2-5] incoming QoS 2 messages awaiting PUBREL will never be released:
            # out of packet-id space now, durably, so that the new session's PUBLISH with the
            # same id is never taken for a duplicate of one of them [MQTT-4.3.3-10], whenever
            # this process dies; they are delivered from the orphans list
            orphaned = self.state.orphan()
            if orphaned is not None:
                records.append(orphaned)
        if not session_present and self.state.outgoing:
            # [MQTT-3.2.2-5] the broker forgot the session: what that means for the outgoing
            # messages is durable with the CONNACK's own record. A process killed before
            # resume() would otherwise take the next CONNACK's SessionPresent=1 (the session
            # this CONNECT made) for the old one, and PUBREL a message the broker never had.
            s = self.settings
            reset, plan = self.state.on_connack(
                False, republish=s.republish_on_session_lost,
                republish_released=s.released_on_session_lost == "republish",
                release_incoming=False)
            if reset is not None:
                records.append(reset)
            self._early_lost = plan.lost
        return [Persist(tuple(records), sync=True),
                Notify("on_connected", ConnectedEvent(0, reason, session_present, server))]

    def lost_incoming(self) -> list[Action]:
        """After ``on_connected``, before ``resume``: incoming QoS 2 messages a broker that
        answered SessionPresent=0 will never release (the orphans, also those an earlier
        process did not finish). They are delivered now (the state does not change: ``resume``
        removes them once this has run); first, the record of those a session restored in
        ``on_connected`` brought."""
        out: list[Action] = []
        if not self.session_present:
            orphaned = self.state.orphan()  # a session restored in on_connected: its own
            if orphaned is not None:
                out.append(Persist((orphaned,), sync=True))
        out += [Deliver(MessageEvent(im.packet_id, im.topic, im.qos, im.payload, im.retain,
                                     im.dup, im.properties))
                for im in self.state.orphans if im.packet_id not in self._held]
        return out

    def resume(self) -> list[Action]:
        """After ``on_connected`` (and ``lost_incoming``): the resume plan ([MQTT-4.4.0-1],
        [MQTT-4.6.0-1])."""
        s = self.settings
        st = self.state
        had_state = not st.empty
        reset, plan = st.on_connack(
            self.session_present, republish=s.republish_on_session_lost,
            republish_released=s.released_on_session_lost == "republish",
        )
        out: list[Action] = []
        lost, early, self._early_lost = plan.lost, self._early_lost, None
        orphans, released = st.release_orphans()  # delivered by lost_incoming
        if early is not None:  # the outgoing part was reset at CONNACK: report it all
            lost = SessionLost(early.republished, early.dropped, early.queued, orphans,
                               early.resubscribed, early.possible_duplicates)
        elif lost is not None:
            lost = SessionLost(lost.republished, lost.dropped, lost.queued, orphans,
                               lost.resubscribed, lost.possible_duplicates)
        for im in orphans:  # handed out before and not acknowledged, or
            self._held.pop(im.packet_id, None)  # delivered by lost_incoming: not again
        if reset is not None or released is not None:
            out.append(Persist(tuple(r for r in (reset, released) if r is not None), sync=True))
        for m in lost.dropped if lost is not None else ():
            out += self._dropped(m, None, "session-lost")
        self._pending = deque(m.seq for m in plan.outgoing)
        self._inflight.clear()
        self.conn = ConnState.CONNECTED
        # [MQTT-3.2.2-5] a broker that forgot the session forgot its subscriptions too
        lost_subs = plan.resubscribe if not self.session_present and had_state else ()
        out += self.subs.resume(lost_subs)
        out += self._pump()  # in seq order [MQTT-4.6.0-1]
        expired, self.restored_expired = self.restored_expired, False
        if expired and self.session_present:
            log.info("the broker still held the session this clock said had expired (did"
                     " the clock jump?): resumed")
        if lost is not None and not (st.clean_session and not expired):
            # a clean session expects SessionPresent=0: nothing was lost
            out.append(Notify("on_session_lost", SessionLostEvent.of(lost, expired)))
        return out

    def connection_lost(self, now: float, reason_code: int, reason: str) -> list[Action]:
        """The connection ended (the broker, the network, or ``disconnect()``)."""
        was = self.conn
        out: list[Action] = []
        if was is ConnState.CLOSING:
            self.conn = ConnState.DISCONNECTED
            out.append(Notify("on_disconnected", DisconnectedEvent(0, "OK")))
        elif was in (ConnState.RESUMING, ConnState.CONNECTED):
            self.conn = ConnState.CONNECTING
            out.append(Persist((self.state.disconnected(now),)))
            out.append(Notify("on_disconnected",
                              DisconnectedEvent(reason_code or 0x80, f"connection lost: {reason}")))
        return out + self.reset()

    def reset(self) -> list[Action]:
        """A new network connection is about to be made: forget the old one's flows."""
        if self._live:
            self.conn = ConnState.CONNECTING
        self._inflight.clear()
        # acks owed to the old connection are forgotten: the broker resends the QoS 1
        # PUBLISH (DUP) and the QoS 2 PUBREL [MQTT-4.4.0-1]
        self._owed.clear()
        for h in self._held.values():
            h.pubcomp_due = False
        return self.subs.requeue_unanswered()

    def disconnect(self, now: float) -> list[Action]:
        """The application disconnects: the time is durable before DISCONNECT."""
        out: list[Action] = []
        if self.connected:
            out.append(Persist((self.state.disconnected(now),), sync=True))
        self.conn = ConnState.CLOSING
        self._inflight.clear()
        return out

    def closed(self) -> None:
        """The connection is gone for good (after ``disconnect`` or a failed connect)."""
        self.conn = ConnState.DISCONNECTED
        self._inflight.clear()

    def tick(self, now: float, monotonic: float) -> list[Action]:
        """Timers: an Activity record (bounds the disconnect time after a crash), the lazy
        records written out, MQTT 3.1.1 resends after ``republish_interval``."""
        if not self.connected:
            return []
        self.now = now
        out: list[Action] = []
        rate = self.settings.drain_rate_limit
        if rate:  # a token bucket of at most one second's messages
            elapsed = max(0.0, monotonic - self._tokens_at) if self._tokens_at else 1.0
            self._tokens = min(float(rate), self._tokens + elapsed * rate)
            self._tokens_at = monotonic
            out += self._pump()
        elif self.state.spooled and not self._pending:
            out += self._pump()  # the disk queue waits and nothing else would read it
        if now - self._last_activity >= ACTIVITY_EVERY:
            self._last_activity = now
            out.append(Persist((self.state.activity(now),)))
        else:
            out.append(Persist(()))  # lazy records wait at most one tick
        interval = self.settings.republish_interval
        if interval <= 0 or self.v5:
            return out  # MQTT 5: resend only on reconnect [MQTT-4.4.0-1]
        due = monotonic - interval
        for seq, sent_at in list(self._inflight.items()):
            m = self.state.outgoing.get(seq)
            if m is None:
                continue
            if not sent_at:
                self._inflight[seq] = monotonic  # written since the last tick
            elif sent_at <= due:
                out += self._write(m)
                self._inflight[seq] = monotonic
        return out

    # ---------------------------------------------------------------- receiving

    def receive_ack(self, kind: PacketType, pid: int, code: int = 0) -> list[Action]:
        """A PUBACK, PUBREC, PUBREL or PUBCOMP (what ``receive`` does for one, without a
        ``Packet``: the usual ack is read straight from its two bytes)."""
        if kind is PacketType.PUBACK:
            return self._puback(pid, code)
        if kind is PacketType.PUBREC:
            return self._pubrec(pid, code)
        if kind is PacketType.PUBCOMP:
            return self._pubcomp(pid, code)
        return self._pubrel(pid)

    def receive(self, p: Packet) -> list[Action]:
        """A session packet from the broker: PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK
        or UNSUBACK (decoded by ``_wire``)."""
        t = p.type
        pid = p.packet_id or 0
        if t is PacketType.PUBLISH:
            return self._publish_in(p)
        if t in _ACKS:
            return self.receive_ack(t, pid, p.reason_code or 0)
        if t is PacketType.SUBACK:
            return self.subs.suback(pid, p.reason_codes)
        if t is PacketType.UNSUBACK:
            return self.subs.unsuback(pid, p.reason_codes)
        raise TransitionError(f"not a session packet: {t.name}")

    def _publish_in(self, p: Packet) -> list[Action]:
        pid, qos = p.packet_id or 0, p.qos
        props = b"" if p.properties == b"\x00" else p.properties
        topic = p.topic or ""
        if qos == 0:
            return [Deliver(MessageEvent(-1, topic, 0, p.payload, p.retain, p.dup, props))]
        if qos == 1:
            event = MessageEvent(pid, topic, 1, p.payload, p.retain, p.dup, props)
            self._owed.append(_Owed(event))  # PUBACK after delivery, at ack()
            return [Deliver(event)]
        # persistence point 3: stored before PUBREC; a duplicate is not stored or delivered
        # twice [MQTT-4.3.3-10]
        rec = self.state.receive(pid, topic, p.payload, p.retain, p.dup, props)
        out: list[Action] = [Persist((rec,), sync=True)] if rec is not None else [Persist((), sync=True)]
        out.append(self._ack(PacketType.PUBREC, pid))
        return out

    def _pubrel(self, pid: int) -> list[Action]:
        held = self._held.get(pid)
        if held is not None:
            held.pubcomp_due = True  # handed out before, not acknowledged: PUBCOMP at ack()
            return []
        im = self.state.incoming.get(pid)
        if im is None:
            return [self._ack(PacketType.PUBCOMP, pid)]  # delivered before a crash: PUBCOMP only
        event = MessageEvent(im.packet_id, im.topic, im.qos, im.payload, im.retain, im.dup,
                             im.properties)
        self._held[pid] = _Held(event, pubcomp_due=True)
        return [Deliver(event)]  # persistence point 4: removal and PUBCOMP at ack()

    def ack(self, message: MessageEvent | int) -> tuple[bool, list[Action]]:
        """The application has taken ``message`` (a delivered event, or its packet id). QoS 1:
        its PUBACK, after those of the messages received before it [MQTT-4.6.0-2]; QoS 2: its
        removal durable, then PUBCOMP. False when nothing waited."""
        by_id = isinstance(message, int)
        pid = message if isinstance(message, int) else message.packet_id
        qos = 0 if isinstance(message, int) else message.qos
        out: list[Action] = []
        acked = False
        if qos in (0, 1):
            for o in self._owed:
                if not o.acked and (o.event.packet_id == pid if by_id else o.event is message):
                    o.acked = True
                    acked = True
                    break
            while self._owed and self._owed[0].acked:  # in arrival order [MQTT-4.6.0-2]
                o = self._owed.popleft()
                if self._live:
                    out.append(self._ack(PacketType.PUBACK, o.event.packet_id))
        if not acked and qos in (0, 2):
            h = self._held.get(pid)
            if h is not None and (by_id or h.event is message):
                del self._held[pid]
                acked = True
                if pid in self.state.incoming:
                    _, rec = self.state.release(pid)
                    out.append(Persist((rec,), sync=True))  # persistence point 4
                if h.pubcomp_due and self._live:
                    out.append(self._ack(PacketType.PUBCOMP, pid))
        if acked:
            out.append(Notify("on_message_ack", MessageAckEvent(pid, DIRECTION_SERVER, 0)))
        return acked, out

    def _finished(self, m: OutgoingMessage, reason_code: int, out: list[Action]) -> list[Action]:
        """An outgoing flow ended: free the window, then the events (built for listeners
        only: this runs once per message)."""
        self._inflight.pop(m.seq, None)
        if self._pending or self.state.spooled:
            out += self._pump()
        if "on_message_ack" in self.listeners:
            out.append(Notify("on_message_ack", MessageAckEvent(m.packet_id, DIRECTION_CLIENT,
                                                                reason_code)))
        if "on_message_out" in self.listeners:
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
        # point 5: a lost removal only costs a resend
        return self._finished(m, code, [Persist((self.state.puback(pid),), lazy=True)])

    def _pubrec(self, pid: int, code: int) -> list[Action]:
        m = self.state.outgoing_by_packet_id(pid)
        pubrel: list[Action] = [self._ack(PacketType.PUBREL, pid)]
        if m is None:
            return pubrel if code < 0x80 else []  # let the broker finish a flow we no longer hold
        if m.phase is Phase.AWAIT_PUBCOMP:
            return [Persist((), sync=True), *pubrel]  # a repeated PUBREC: PUBREL again
        if m.phase is Phase.AWAIT_PUBACK:
            self._mismatched("PUBREC", m)  # QoS 1 taken as QoS 2: it has the message
            out = self._finished(m, code, [Persist((self.state.pubrec(pid, code),), lazy=True)])
            return out + pubrel if code < 0x80 else out  # PUBREL lets the broker finish
        if m.phase is Phase.AWAIT_PUBREC:
            # persistence point 2: "released" is durable before PUBREL [MQTT-4.3.3-6]
            rec = self.state.pubrec(pid, code)
            if code < 0x80:
                return [Persist((rec,), sync=True), *pubrel]
            return self._finished(m, code, [Persist((rec,))])  # [MQTT-4.4.0-2] ends the flow
        log.debug("PUBREC for packet id %d in phase %s: ignored", pid, m.phase.value)
        return []

    def _pubcomp(self, pid: int, code: int) -> list[Action]:
        m = self.state.outgoing_by_packet_id(pid)
        if m is None or m.phase is not Phase.AWAIT_PUBCOMP:
            log.debug("PUBCOMP for packet id %d, which awaits none: ignored", pid)
            return []
        return self._finished(m, code, [Persist((self.state.pubcomp(pid),), lazy=True)])  # point 5

    # ---------------------------------------------------------------- restore

    def check_restorable(self) -> None:
        """``UsageError`` unless a session may be restored now: before connecting, or in
        ``on_connected``, and never over messages held."""
        if self.connected:
            raise UsageError(
                "restore_session while connected: call it before connect() or in on_connected")
        cur = self.state
        if cur.outgoing or cur.incoming or cur.spooled or cur.orphans:
            raise UsageError(f"restore_session would replace {cur.held} outgoing and"
                             f" {len(cur.incoming)} incoming messages this client holds")

    def restore(self, state: SessionState, now: float) -> Configured:
        """Replace the (empty) session with a saved one; the client's own settings win over
        those saved with it. Returns the settings record (already applied)."""
        self.check_restorable()
        cur = self.state
        if cur.client_id and state.client_id and state.client_id != cur.client_id:
            raise StateError(f"the saved session belongs to client id {state.client_id!r},"
                             f" not {cur.client_id!r}")
        state.client_id = state.client_id or cur.client_id
        expired = False
        if self.conn is not ConnState.RESUMING and state.protocol_version == 5 and not state.empty:
            expired = _expired(
                5, effective_interval(5, False, state.session_expiry_interval),
                state.connected_at, state.disconnected_at, state.last_activity, now,
            ) is True
        rec = state.configure(
            protocol_version=cur.protocol_version, clean_session=False,
            session_expiry_interval=(cur.session_expiry_interval
                                     if cur.session_expiry_interval is not None
                                     else state.session_expiry_interval),
        )
        if expired:
            log.info("saved session of %r has expired by this clock (MQTT 5); connecting with"
                     " Clean Start 0 all the same: SessionPresent decides", state.client_id)
        self.state = state
        self.restored_expired = expired
        self.subs.restored()
        self.dropped = self.expired = 0
        return rec

    def error(self, code: int, description: str) -> Notify:
        return Notify("on_error", ErrorEvent(code, description))
