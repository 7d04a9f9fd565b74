"""The session engine: MQTT session behaviour apart from all I/O (sans-I/O, like h11).

Pure: no paho, sockets, threads or clock (times are passed in). Each input is a method call
(the application published, subscribed or acknowledged a delivery; a CONNACK, a session packet
or the loss of the connection arrived; a tick); each returns the ordered list of actions the
driver must carry out, in that order:

* ``Persist(records, sync)``: make the records durable (they are already applied to
  ``engine.state``); ``sync``: on disk before the next action (under ``SessionSync=always``);
  ``lazy``: may wait for the next record or a tick (losing it costs only a resend);
  ``force``: synced even where the driver defers a publish's sync (``SessionSync=interval``:
  the packet-id reservation, ``state.Reserved``, that the ids of the next records come from).
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

``Engine`` builds on ``outgoing.Outgoing`` (publishing, the queue in memory and on disk, the
in-flight window, the acknowledgements that end an outgoing flow); this module adds the
connection (CONNACK, the resume plan, a lost connection, ticks), the incoming flows (PUBLISH,
PUBREL, ``ack``) and restoring a saved session.

The engine is not thread-safe: one owner calls it (under the Client's lock)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Final, Sequence

from ._wire import Packet, PacketType, received_publish_fault
from .errors import MQTTSessionError, ProtocolViolation, StateError, TransitionError, UsageError
from .actions import Action, ConnState, Deliver, EngineSettings, Notify, Persist, Write
from .outgoing import Outgoing, QueueSource
from .subscriptions import SUBSCRIBE_TRIES
from .stalls import HeadCloses, oldest_publish
from .events import (DIRECTION_SERVER, ConnectedEvent, DisconnectedEvent, MessageAckEvent,
                     MessageEvent, SessionLostEvent)
from .expiry import effective_interval, message_remaining, with_remaining
from .expiry import expired as _expired
from .state import IncomingMessage, Phase, Record, SessionLost, SessionState

__all__ = [
    "Action", "ConnState", "Deliver", "Engine", "EngineSettings", "Notify", "Persist", "Write",
    "QueueSource", "SUBSCRIBE_TRIES",
]

log = logging.getLogger("mqttsession")

_DEBUG: Final = logging.DEBUG
ACTIVITY_EVERY: Final = 5.0  # seconds between Activity records while connected


@dataclass
class _Owed:
    """A QoS 1 message delivered on this connection whose PUBACK waits for ``ack()``."""

    event: MessageEvent
    acked: bool = False


@dataclass
class _Held:
    """A QoS 2 message delivered (on PUBREL) whose removal and PUBCOMP wait for ``ack()``;
    ``pubcomp_due``: the current connection received its PUBREL; ``early``: delivered ahead
    of it, at a move (``Engine._deliver_unreleased``)."""

    event: MessageEvent
    pubcomp_due: bool
    early: bool = False


_ACKS: Final = frozenset({PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
                          PacketType.PUBCOMP})


# ------------------------------------------------------------------------------------- engine


class Engine(Outgoing):
    """One client session's behaviour: the outgoing flows (``outgoing.Outgoing``), and here
    the connection, the incoming flows and restoring. ``state`` is the durable part
    (``state.SessionState``); the rest lives for one connection or one process."""

    def __init__(self, settings: EngineSettings | None = None,
                 state: SessionState | None = None) -> None:
        super().__init__(settings, state)
        self.broker: str | None = None
        # the session's recorded server when the driver found it is this connection's under
        # another name (a restart naming the broker otherwise is no move)
        self.same_as: str | None = None
        self.session_present = False
        self.restored_expired = False  # the client's clock said the restored session expired
        self._owed: deque[_Owed] = deque()  # QoS 1, in arrival order [MQTT-4.6.0-2]
        self._closes = HeadCloses()  # a message the broker closes the connection on
        self._held: dict[int, _Held] = {}  # QoS 2, by packet id
        # orphans handed to the application and not taken yet: each leaves the session when
        # it is (``ack``); a restart delivers the others again
        self._orphans_out: list[tuple[MessageEvent, IncomingMessage]] = []
        self._orphans_now: list[IncomingMessage] = []  # delivered by ``lost_incoming``
        self._last_activity = 0.0
        self._early_lost: SessionLost | None = None  # CONNACK's SessionPresent=0 reset
        self._never_accepted = False  # no broker accepted this session before this CONNACK
        self._moved_from: str | None = None  # this connection's server is another: the one before
        self.sent_expiry: int | None = None  # the Session Expiry Interval of the last CONNECT
        self._accepted_by: str | None = None  # the server of the connection accepted last

    # ---------------------------------------------------------------- views

    @property
    def server(self) -> str:
        """``host:port`` a CONNACK accepted (also in on_connected), ``""`` without one."""
        return (self.broker or "") if self._live else ""

    def owed_messages(self) -> list[MessageEvent]:
        """QoS 1 messages delivered and not yet acknowledged, in arrival order."""
        return [o.event for o in self._owed if not o.acked]

    def busy_packet_ids(self) -> set[int]:
        """Packet ids held by SUBSCRIBE / UNSUBSCRIBE awaiting their ack."""
        return self.subs.ids()

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
                redirect: str | None = None, mono: float | None = None,
                limits: tuple[int, bool] = (2, True)) -> list[Action]:
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
        self._mismatch_logged = self._beyond_logged = False
        self._accepted_by = self.broker
        st = self.state  # what this connection's CONNECT carried (its DISCONNECT may not
        # raise it from 0, MQTT 5 3.14.2.2.2; a later setting or restore waits for the next one)
        self.sent_expiry = effective_interval(st.protocol_version, st.clean_session,
                                              st.session_expiry_interval)
        self.session_present = session_present
        self._moving()
        self._receive_max = receive_maximum  # (``_window``: MaxInflight within it)
        self.max_packet = maximum_packet_size
        self.max_qos, self.retain_available = limits  # MQTT 5 Maximum QoS, Retain Available
        self._last_activity = now
        self.now, offset = self.clock_time(now, mono)
        self._never_accepted = st.connected_at is None  # (durable with the Connected record)
        records: list[Record] = [self.state.connected(now, self.broker, session_present),
                                 *self.clock_record(offset)]
        self._early_lost = None
        if not session_present:
            self._session_absent()  # the broker holds no flow of ours
            # MQTT 5 [MQTT-3.2.2-5]: incoming QoS 2 messages awaiting PUBREL are never released:
            # out of packet-id space now, durably (the new session's PUBLISH with the same id
            # is never a duplicate of one [MQTT-4.3.3-10]); delivered from the orphans list
            orphaned = self.state.orphan()
            if orphaned is not None:
                records.append(orphaned)
        if not session_present and self.state.outgoing:
            # MQTT 5 [MQTT-3.2.2-5]: the broker forgot the session: what it means for the outgoing
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
        process did not finish). They are delivered now; each leaves the session when the
        application has taken it (``ack``: persistence point 4), so a kill repeats only the
        ones not taken. First, the record of those a session restored in ``on_connected``
        brought."""
        out: list[Action] = []
        if not self.session_present:
            orphaned = self.state.orphan()  # a session restored in on_connected: its own
            if orphaned is not None:
                out.append(Persist((orphaned,), sync=True))
            for pid, h in list(self._held.items()):  # handed out before (on its PUBREL, or
                # at a move) and not taken yet: it stays handed out, an orphan now, never
                # delivered twice; ``ack`` then removes it as one
                im = next((o for o in reversed(self.state.orphans) if o.packet_id == pid), None)
                if im is not None and not im.taken:
                    del self._held[pid]
                    self._orphans_out.append((h.event, im))
        handed = [im for _, im in self._orphans_out]
        self._orphans_now = []
        for im in self.state.orphans:
            if im.taken or any(im is h for h in handed):
                continue  # taken at a move (``resume`` removes it), or handed out already
            event = MessageEvent(im.packet_id, im.topic, im.qos, im.payload, im.retain,
                                 im.dup, im.properties)
            self._orphans_out.append((event, im))
            self._orphans_now.append(im)
            out.append(Deliver(event))
        if self.session_present and self._moved_from is not None:
            out += self._deliver_unreleased()
        return out

    def disconnect_expiry(self) -> int | None:
        """The Session Expiry Interval a DISCONNECT carries (MQTT 3.1.1: None): the session's,
        never raised from the 0 its connection's CONNECT carried (MQTT 5 3.14.2.2.2)."""
        st = self.state
        if st.protocol_version != 5:
            return None
        now = effective_interval(5, st.clean_session, st.session_expiry_interval)
        return now if self.sent_expiry or not now else 0

    def holds_properties(self) -> bool:
        """Whether messages held to send carry MQTT 5 properties."""
        return _with_properties(self.state)

    def _moving(self) -> None:
        """Whether this connection's server is another than the session's last (its
        ``Connected`` record: also after a restart); then, if it found the session, what
        changed elsewhere goes to it (``Subscriptions.returned``)."""
        prev = self.state.broker
        moved = prev is not None and prev != self.broker and prev != self.same_as
        self._moved_from = prev if moved else None
        if self.session_present and self._moved_from is not None and self.broker is not None:
            self.subs.returned(self.broker)

    def _deliver_unreleased(self) -> list[Action]:
        """Moved to another server that found the session (SessionPresent=1): the QoS 2
        messages the server before sent (PUBREC answered, no PUBREL yet) are delivered now,
        not on a PUBREL a cluster node may never send (aedes, BROKERS.md). Once the application
        took one, ``Taken`` is durable and the message stays, holding its packet id, until the
        PUBREL (then removed, then PUBCOMP: point 4): the new server's resend of it gets PUBREC
        only, never a second delivery [MQTT-4.3.3-10], also after a restart. The spec allows
        delivery on PUBLISH (method A); a process killed before the application took one
        delivers it again at the next move, or on its PUBREL."""
        out: list[Action] = []
        for pid, im in sorted(self.state.incoming.items()):
            if pid in self._held or im.taken:
                continue  # handed out already
            event = MessageEvent(pid, im.topic, im.qos, im.payload, im.retain, im.dup,
                                 im.properties)
            self._held[pid] = _Held(event, pubcomp_due=False, early=True)
            out.append(Deliver(event))
        if out:
            log.info("moved from %s to %s: %d incoming QoS 2 messages %s sent are delivered"
                     " without waiting for their PUBREL", self._moved_from, self.broker,
                     len(out), self._moved_from)
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
        orphans, self._orphans_now = tuple(self._orphans_now), []  # delivered by lost_incoming
        taken = [im for im in st.orphans if im.taken]  # taken at a move: not again, gone now
        released = tuple(r for r in map(st.release_orphan, taken) if r is not None)
        if early is not None:  # the outgoing part was reset at CONNACK: report it all
            lost = SessionLost(early.republished, early.dropped, early.queued, orphans,
                               early.resubscribed, early.possible_duplicates)
        elif lost is not None:
            lost = SessionLost(lost.republished, lost.dropped, lost.queued, orphans,
                               lost.resubscribed, lost.possible_duplicates)
        if lost is not None and self._never_accepted and not (
                lost.republished or lost.dropped or lost.delivered_incoming):
            lost = None  # nothing reached a broker yet (made offline, or in on_connected)
        if reset is not None or released:
            out.append(Persist(((reset,) if reset is not None else ()) + released, sync=True))
        for m in lost.dropped if lost is not None else ():
            out += self._dropped(m, None, "session-lost")
        self._pending = deque(m.seq for m in plan.outgoing)
        self._inflight.clear()
        self.conn = ConnState.CONNECTED
        # MQTT 5 [MQTT-3.2.2-5]: a broker that forgot the session forgot its subscriptions too
        lost_subs = plan.resubscribe if not self.session_present and had_state else ()
        out += self.subs.resume(lost_subs)
        self._release_out = set()  # (the last connection's: sent again below)
        out += self._pump(resends_only=True)  # in seq order [MQTT-4.6.0-1]
        if not self.session_present:
            self._session_absent()  # a session restored in on_connected: the broker has none
        elif self._unreleased is not None:  # after the resends (published later), before any
            out += self._release_reserved()  # new PUBLISH: their flows fill the broker's quota
        out += self._pump()
        expired, self.restored_expired = self.restored_expired, False
        if self.session_present:
            resent = pubrel = 0
            for m in plan.outgoing:
                if m.phase is Phase.AWAIT_PUBCOMP:
                    pubrel += 1
                elif m.phase is not Phase.QUEUED:
                    resent += 1
            log.info("session of %r resumed (SessionPresent=1): %d PUBLISH resent (DUP), %d"
                     " PUBREL resent, %d never sent, %d on the disk queue; %d incoming QoS 2"
                     " awaiting PUBREL", st.client_id, resent, pubrel,
                     len(plan.outgoing) - resent - pubrel, st.spooled, len(st.incoming))
        elif lost is not None and not (st.clean_session and not expired):
            log.info("the broker lost the session of %r (SessionPresent=0%s): %d republished"
                     " (%d of them possible duplicates), %d dropped, %d never sent; %d incoming"
                     " QoS 2 delivered without PUBREL; %d subscriptions sent again",
                     st.client_id, ", expired" if expired else "", len(lost.republished),
                     len(lost.possible_duplicates), len(lost.dropped), len(lost.queued),
                     len(lost.delivered_incoming), len(lost.resubscribed))
        if expired and self.session_present:
            log.info("the broker still held the session this clock said had expired (did"
                     " the clock jump?): resumed")
        out += self._republish_acked()
        if lost is not None and not (st.clean_session and not expired):
            # a clean session expects SessionPresent=0: nothing was lost
            out.append(Notify("on_session_lost", SessionLostEvent.of(lost, expired)))
        return out

    def _republish_acked(self) -> list[Action]:
        """FailoverRepublish: on a server other than the one before, the QoS 1 messages that
        one acknowledged last are published again, as new messages after the resume plan. A
        cluster node can die with messages it acknowledged and had not yet handed on (aedes,
        BROKERS.md); QoS 1 allows the duplicates this makes when it had [MQTT-4.3.2]. Never
        QoS 2: a message published twice would be delivered twice."""
        acked, self.recent_acked = list(self.recent_acked), deque()  # the setting's last
        acked = acked[max(0, len(acked) - self.settings.failover_republish):]  # (0: none)
        if self._moved_from is None or not acked:
            return []
        items = []
        for m in acked:  # what is left of a Message Expiry Interval, not all of it again
            left = message_remaining(m.properties, m.accepted_at, self.now)
            if left is None:
                items.append((m.topic, m.payload, 1, m.retain, m.properties))
            elif left > 0:  # (expired meanwhile: not published again)
                items.append((m.topic, m.payload, 1, m.retain, with_remaining(m.properties, left)))
        if not items:
            return []
        try:
            # (the wall clock's time: ``self.now`` is the session's clock, offset already)
            _ids, out = self.publish_many(items, self.now - self.state.clock_offset)
        except MQTTSessionError as exc:  # no room: the queue limits win
            log.warning("moved from %s to %s: the last %d QoS 1 messages %s acknowledged were"
                        " not published again (FailoverRepublish): %s", self._moved_from,
                        self.broker, len(items), self._moved_from, exc)
            return []
        log.info("moved from %s to %s: the last %d QoS 1 messages %s acknowledged are published"
                 " again (FailoverRepublish)", self._moved_from, self.broker, len(items),
                 self._moved_from)
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
            out += self._head_closed()
        return out + self.reset()

    def _head_closed(self) -> list[Action]:
        """``on_error`` once ``SUBSCRIBE_TRIES`` connections in a row closed, no ack, the same
        message the oldest PUBLISH in flight (it holds the queue up; kept: a close is no proof)."""
        seq = None if self.subs.unanswered() else oldest_publish(self._inflight, self.state.outgoing)
        if self._closes.closed(seq) != SUBSCRIBE_TRIES or seq is None:
            return []
        m = self.state.outgoing[seq]
        return [self.error(0x80, f"the broker closed {SUBSCRIBE_TRIES} connections in a row, no"
                                 f" ack, message seq {seq} to {m.topic!r} first in flight (too"
                                 " large? a QoS, retain or topic it refuses?): the session keeps it")]

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
        if self._accepted_by is not None:  # (before the unanswered are requeued)
            self.subs.left(self._accepted_by)
            self._accepted_by = None
        return self.subs.requeue_unanswered()

    def disconnect(self, now: float, mono: float | None = None) -> list[Action]:
        """The application disconnects: the time (and a clock reading) is durable before
        DISCONNECT."""
        out: list[Action] = []
        if self.connected:
            st = self.state
            records: list[Record] = [st.disconnected(now), *self.read_clock(now, mono)]
            if st.reserved_first and self._unreleased is None:
                # every record is on disk with this one: the broker holds no flow for an id
                # the session does not hold, and the next process has nothing to release
                records.append(st.reserve_none())
            out.append(Persist(tuple(records), sync=True))
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
        self.now, offset = self.clock_time(now, monotonic)
        out: list[Action] = [Persist(tuple(self.clock_record(offset)), True)] \
            if offset != self.state.clock_offset else []
        rate = self.settings.drain_rate_limit
        if rate:  # a token bucket of at most one second's messages
            elapsed = max(0.0, monotonic - self._tokens_at) if self._tokens_at else 1.0
            self._tokens = min(float(rate), self._tokens + elapsed * rate)
            self._tokens_at = monotonic
            out += self._pump()
        elif self.state.spooled or self._pending:  # the disk queue, or a message that waited
            out += self._pump()  # for a packet id only SUBSCRIBEs held: nothing else pumps
        out += self.subs.retry()
        # (or at once when the clock went back: the last one would stand for hours)
        if now - self._last_activity >= ACTIVITY_EVERY or now < self._last_activity:
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
        if log.isEnabledFor(_DEBUG):
            log.debug("%s received for packet id %d (reason code %d)", kind.name, pid, code)
        self._closes.acked |= kind is not PacketType.PUBREL
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
        if self.v5 and (props or not topic):
            fault = received_publish_fault(topic, props)
            if fault is not None:  # nothing delivered, stored or acknowledged
                raise ProtocolViolation(fault[0], f"a PUBLISH with {fault[1]}")
        if qos == 0:
            return [Deliver(MessageEvent(-1, topic, 0, p.payload, p.retain, p.dup, props))]
        limit = self.settings.receive_maximum
        if (limit and self.v5 and not self._beyond_logged
                and len(self._owed) + len(self.state.incoming) >= limit
                and (qos == 1 or pid not in self.state.incoming)):  # (a resent QoS 2: no new flow)
            # [MQTT-3.3.4-9] broken: mosquitto 2.0.11 opens more flows than the CONNECT's Receive
            # Maximum when the application acks slowly. Closing the connection for it only
            # loops (each reconnect overshoots again): taken, logged once a connection
            self._beyond_logged = True
            log.warning("the broker opened more QoS 1/2 flows than the Receive Maximum %d"
                        " [MQTT-3.3.4-9]: taken all the same", limit)
        if qos == 1:
            event = MessageEvent(pid, topic, 1, p.payload, p.retain, p.dup, props)
            self._owed.append(_Owed(event))  # PUBACK after delivery, at ack()
            return [Deliver(event)]
        # persistence point 3: stored before PUBREC; a duplicate is not stored or delivered
        # twice [MQTT-4.3.3-10]
        out: list[Action] = []
        im = self.state.incoming.get(pid) if self.state.incoming else None
        if im is not None and (im.topic != topic or im.payload != p.payload):
            # a new message under a held one's id: the server forgot that flow (a resend is
            # the same message; aedes sends it with DUP=0)
            h = self._held.pop(pid, None)
            if im.taken or (h is not None and h.early):  # delivered at a move: it leaves
                out.append(Persist((self.state.release(pid)[1],), sync=True, ack=True))
            else:  # its PUBREL never comes (a server back from an older save): an orphan,
                out += self._orphaned(im, h)  # delivered once, as those of a lost session
        rec = self.state.receive(pid, topic, p.payload, p.retain, p.dup, props)
        out.append(Persist((rec,) if rec is not None else (), sync=True, ack=True,
                           batched=True))
        out.append(self._ack(PacketType.PUBREC, pid))
        return out

    def _orphaned(self, im: IncomingMessage, h: _Held | None) -> list[Action]:
        """Held incoming QoS 2 message ``im`` will never be released: an orphan (durable
        first), handed out unless it was (``h``); ``ack`` then removes it."""
        rec = self.state.orphan((im.packet_id,))
        assert rec is not None
        event = h.event if h is not None else MessageEvent(
            im.packet_id, im.topic, im.qos, im.payload, im.retain, im.dup, im.properties)
        self._orphans_out.append((event, im))
        log.warning("the server sent a new message under packet id %d, still held for another"
                    " (its flow forgotten: a restart from an older save); that one is delivered"
                    " now, without its PUBREL", im.packet_id)
        out: list[Action] = [Persist((rec,), sync=True)]
        return out if h is not None else [*out, Deliver(event)]

    def _pubrel(self, pid: int) -> list[Action]:
        if not pid:  # 5 [MQTT-2.2.1-4]/[MQTT-2.2.1-5], 3.1.1 [MQTT-2.3.1-6]: no flow has id 0
            raise ProtocolViolation(0x81, "a PUBREL with packet id 0")
        held = self._held.get(pid)
        if held is not None:
            held.pubcomp_due = True  # handed out before, not acknowledged: PUBCOMP at ack()
            return []
        im = self.state.incoming.get(pid)
        if im is None:
            return [self._ack(PacketType.PUBCOMP, pid)]  # delivered before a crash: PUBCOMP only
        if im.taken:  # delivered at a move and taken: removed (point 4), then PUBCOMP
            return [Persist((self.state.release(pid)[1],), sync=True, ack=True),
                    self._ack(PacketType.PUBCOMP, pid)]
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
                if not (h.pubcomp_due and self._live) and pid in self.state.incoming:
                    # no PUBCOMP can go now (taken ahead of its PUBREL, or its connection
                    # lost): its id stays held until the PUBREL, so that the broker's resend of
                    # the PUBLISH (mosquitto 2.0.11 sends one after a restart) is not new
                    out.append(Persist((self.state.take(pid),), sync=True, ack=True))
                elif pid in self.state.incoming:
                    _, rec = self.state.release(pid)
                    out.append(Persist((rec,), sync=True, ack=True))  # persistence point 4
                if h.pubcomp_due and self._live:
                    out.append(self._ack(PacketType.PUBCOMP, pid))
        if not acked and qos in (0, 2):
            for i, (event, im) in enumerate(self._orphans_out):
                if event is message or by_id and event.packet_id == pid:
                    del self._orphans_out[i]
                    acked = True
                    gone = self.state.release_orphan(im)
                    if gone is not None:  # persistence point 4 (no PUBCOMP: the broker forgot it)
                        out.append(Persist((gone,), sync=True, ack=True))
                    break
        if acked and "on_message_ack" in self.listeners:
            out.append(Notify("on_message_ack", MessageAckEvent(pid, DIRECTION_SERVER, 0)))
        return acked, out

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

    def restore(self, state: SessionState, now: float, mono: float | None = None
                ) -> list[Record]:
        """Replace the (empty) session with a saved one; the client's own settings win over
        those saved with it. Returns the settings record and the first clock reading's
        (``read_clock``: a clock behind the session's own times), already applied."""
        self.check_restorable()
        cur = self.state
        if cur.client_id and state.client_id and state.client_id != cur.client_id:
            raise StateError(f"the saved session belongs to client id {state.client_id!r},"
                             f" not {cur.client_id!r}")
        if cur.protocol_version != 5 and _with_properties(state):
            raise StateError("the saved session holds MQTT 5 messages with properties (their"
                             " expiry, their data), or in its disk queue: restore it with"
                             " protocol_version=5")
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
        self._orphans_out = []
        self._recovered()
        self.restored_expired = expired
        self.subs.restored()
        out = [rec, *self.read_clock(now, mono)]
        if self.conn is ConnState.RESUMING:  # in on_connected: a move judged by this session
            self._moving()  # (then this connection's record: a broker has accepted it now)
            self._never_accepted = state.connected_at is None
            out.append(state.connected(now, self.broker, self.session_present))
        self.dropped = self.expired = 0
        return out


def _with_properties(state: SessionState) -> bool:
    """Whether messages held to send may carry MQTT 5 properties (MQTT 3.1.1 would drop them
    without a word, their expiry with them): those in memory, or any of an MQTT 5 session in
    the disk queue (not read here: its length is not bounded)."""
    return (state.protocol_version == 5 and state.spooled > 0) or any(
        m.properties for m in state.outgoing.values())

