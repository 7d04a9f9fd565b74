"""The driver: carries out the engine's actions on paho and the state file, in order.

One per ``Client``. It owns the lock that guards the engine, the connection (``_paho``) and the
``store.StateFile``; it implements the ``_paho.Hooks`` the network thread calls, and hands
events to the Client's callbacks (``fire``) never under the lock. Threads: the caller's and
paho's network thread, which runs the timers too (``_hook_tick``): none of its own."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable, cast

from . import codec
from ._config import ClientSettings, ConnectParams
from ._paho import PahoConnection
from .hooks import Sync
from .properties import server_reference
from .pump import AsyncioPump
from ._wire import Packet, PacketType
from .engine import (Action, ConnState, Deliver, Engine, EngineSettings, Notify, Persist,
                     QueueSource, Write)
from .errors import PersistenceError, ProtocolViolation, UsageError
from .events import ErrorEvent, Message, MessageEvent
from .failover import REDIRECT_CODES, ServerRotation
from .options import format_address, same_server
from .pacing import Pacer
from .state import Accepted, Spooled
from .connecting import _TICK_EVERY, Connecting
from .durability import Cancellable, Host, since_boot
from .behind import SLOW_SYNC, SyncBehind
from .combining import Combiner
from .compacting import Turn
from .turns import Turns
from .store import StateFile

__all__ = ["ConnectParams", "Driver", "Host"]

log = logging.getLogger("mqttsession")


def _after_note(sync: Callable[[], None] | None, noting: threading.Thread) -> None:
    """A CONNACK's batch's sync (``sync``), then the forgotten id's note written (``noting``)."""
    if sync is not None:
        sync()
    noting.join()


def _unsent_qos0(driver: weakref.ref[Driver]) -> int:
    """The QoS 0 PUBLISH bytes the driver's connection holds unwritten (QoS0BacklogBytes)."""
    conn = d.conn if (d := driver()) is not None else None
    return conn.unsent_qos0 if conn is not None else 0


class Driver(Connecting):
    """Runs one session: the engine, its state file and its paho connection."""

    def __init__(self, fire: Callable[[str, object], None], settings: ClientSettings,
                 engine_settings: EngineSettings) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._fire = fire
        self._settings = settings
        self.engine = Engine(engine_settings)
        self.file = StateFile()
        # the disk queue (a proxy: the engine's cycle must not keep the file open, Client gone)
        self.engine.spool = cast(QueueSource, weakref.proxy(self.file))
        self.engine.unsent_qos0 = functools.partial(_unsent_qos0, weakref.ref(self))
        self.conn: PahoConnection | None = None
        self.delivering: dict[int, Message] = {}  # QoS 1 in on_message_in, auto-acknowledged
        self.delivering_in: int | None = None  # the thread in on_message_in (auto-ack)
        self.close_after: Callable[[], None] | None = None  # a close() there: after its ack
        self._connack = threading.Event()
        self._connack_result: tuple[int, str] = (-1, "")
        self._connack_heard = False  # an accepting CONNACK came; on_connected may still run
        self._next_tick = 0.0
        self.pump: AsyncioPump | None = None  # asyncio: the loop drives the connection
        self.host: Host | None = None  # a Gateway's loop runs the connection (through ``pump``)
        self.home_loop: asyncio.AbstractEventLoop | None = None  # an asyncio session's
        self.pacer: Pacer | None = None  # a gateway's: connection attempts spread, jittered
        # a gateway's session of a forgotten client id: a clean start until a CONNACK accepts
        # one, then ``on_clean_start`` (``forgotten``)
        self.clean_once = False
        self._connect_props: Any = None  # Client.connect_properties, checked (``_new_connection``)
        self.on_clean_start: Callable[[], threading.Thread] | None = None
        self._noting: threading.Thread | None = None  # its write, the CONNACK's batch waits
        self.executor: Executor | None = None  # an AsyncGateway's (None: the loop's default)
        # where a loop's disk-queue batches are stored (an AsyncGateway's pool; None: executor)
        self.spool_executor: Executor | None = None
        self.releasing: asyncio.Future[None] | None = None  # ``release_then``'s job
        self.loop_waits = 0  # the loop reads, releases, or waits to (``let_loop_in``)
        self._release_due: deque[Callable[[], None]] | None = None
        self.taking_back: set[asyncio.Future[None]] = set()  # ``take_back``'s jobs
        self.settling = 0  # ``AsyncGateway.publish_many`` calls waiting for its syncs
        self.loop_turn = Turn()  # a loop's calls in order while a compaction runs off it
        self.connects: Executor | None = None  # a gateway's TCP connects' pool (None: executor)
        # a read batch's sync off the loop (a gateway's sync thread, an AsyncSession's executor)
        self.background_sync: Callable[[Callable[[], None]], asyncio.Future[None]] | None = None
        self._connack_waiter: Callable[[], None] | None = None
        self.on_idle: Callable[[], None] | None = None  # no outgoing message left (lock held)
        self._sync_timer: Cancellable | None = None  # SessionSync=interval
        self._awaiting: deque[tuple[int, int, int]] = deque()  # group commit: seq, gen, pos
        self.turns = Turns()  # publishers in several threads take turns
        self.combiner = Combiner()  # theirs bound for the disk queue: stored as one batch
        self.stashed: list[Action] = []  # callbacks of a run that raised (``finish``)
        self._tries = 0  # network connections tried since the last CONNACK (the log's count)
        self._lost = False  # the last connection was lost, not closed: a reconnect is under way
        self._connack_within, self._connack_by = 30.0, 0.0  # a reconnect's CONNACK: by then
        self.servers: ServerRotation | None = None  # of the last connect() (FailoverServers)
        self._fresh = False  # the next paho reconnect() is connect()'s own: same server
        self._gen = 0  # one more at each connect() and disconnect() (``Connecting``)
        self._batch_sync = False  # a read batch deferred a sync to its end
        self.behind = SyncBehind(self.file.sync_pending)  # paho's thread's batches (no cycle)

    def require_disconnected(self, what: str) -> None:
        if self.conn is not None:
            raise UsageError(f"{what} cannot change while connected")

    def configure(self, what: str, **change: Any) -> None:
        """A Client property kept in the session state changed (``Configured``); disconnected."""
        with self.lock:
            self.require_disconnected(what)
            st = self.engine.state
            if "client_id" in change and change["client_id"] != st.client_id and (
                    self.file.shared is not None or self.file.journal is not None):
                raise UsageError(f"the state file holds client id {st.client_id!r}'s session"
                                 " (its journal, disk queue, a gateway's store): set client_id"
                                 " before the file is opened (restore_session)")
            if any(getattr(st, k) != v for k, v in change.items()):
                self.file.append([st.configure(**change)], st)

    def save(self, closing: bool = False) -> str:
        """The state file's snapshot written (the disk queue by reference); its text."""
        with self.lock:
            if self.engine.connected:
                self.engine.state.activity(time.time())  # part of the snapshot written below
            self.engine.read_clock(time.time(), since_boot())  # (a jump seen: in it too)
            text = codec.encode(self.engine.state)
            self.file.save(self.engine.state, text, closing)
            return text

    def run(self, actions: list[Action],
            accepted: Accepted | Spooled | list[Accepted | Spooled] | None = None,
            quiet: str = "", deferred: bool = False,
            later: list[Action] | None = None) -> list[Action]:
        """Carry out the engine's records and packets in order (lock held); its callbacks for
        ``finish`` (after the lock is released; nothing in the list depends on a delivery). A
        failed ``Persist`` stops them all (its ``accepted`` message retracted), unless ``quiet``
        names what failed: no packet depends on these records, so it is reported and the rest
        goes on. A due compaction waits for the whole list. In a read batch (not a publish)
        syncs wait for the batch's end: one fsync, which writes the records only its acks wait
        for (``batched``); ``later``: the caller's list for the callbacks (it keeps those
        before a failure)."""
        conn, st, f = self.conn, self.engine.state, self.file
        # a group commit's record waits in memory for the fdatasync that covers it (a Journal)
        held = deferred and getattr(f.journal, "writes_lazy_at_sync", False)
        batch: bool | None = False if accepted is not None or conn is None else None  # None: ask
        # SessionSync=interval: a publish's records reach the disk within the interval
        later_sync = accepted is not None and (
            deferred or self._settings.session_sync == "interval")
        later = [] if later is None else later
        durable = False  # a record that is not lazy: a compaction may be due
        joined: list[Write] = []  # consecutive PUBLISHes written with one ``write`` (one send)
        # ``actions``' records are applied: a snapshot written meanwhile (broken, cut) has them
        folds = f.compactions
        for a in actions:
            if type(a) is Write:
                if conn is not None:
                    if a.qos:  # a QoS 1/2 PUBLISH
                        joined.append(a)
                        continue
                    if joined:
                        self._write_joined(joined)
                    conn.write(a.packet, a.kind, a.packet_id, a.qos)
                continue
            if type(a) is Persist:
                if joined and not a.lazy:  # (no packet depends on a lazy record)
                    self._write_joined(joined)
                sync = a.sync
                if sync:
                    if batch is None:
                        batch = conn is not None and conn.in_batch()
                    # a packet-id reservation is synced before its ids leave (``force``)
                    sync = not batch and (not later_sync or a.force)
                    if batch:
                        self._batch_sync = True  # at the batch's end (``_hook_batch_end``)
                        if not a.ack and conn is not None:  # a PUBLISH after it may need it
                            conn.hold_publishes()
                if not a.lazy:
                    durable = True
                if a.records and f.compactions != folds and type(a.records[0]) is not Spooled:
                    continue  # in that snapshot: a second copy after it would not replay
                try:
                    f.append(a.records, st, sync=sync, lazy=a.lazy,
                             held=held and not a.force and not a.lazy
                             or a.batched and bool(batch) and self.gathers())
                except BaseException as exc:  # (KeyboardInterrupt too: never left held)
                    if joined:  # written before it: they do not depend on it
                        self._write_joined(joined)
                    if accepted is not None:  # publish_many: all of them, last first
                        for rec in reversed(accepted) if isinstance(accepted, list) \
                                else (accepted,):
                            self.engine.retract(rec)
                        f.rewrite(st)  # (a snapshot written before the failure may hold it)
                        # the drops made to make room stay made (before or after it): reported
                        k = next(i for i, x in enumerate(actions) if x is a)
                        self.stashed += later + [x for x in actions[k + 1:] if type(x) is Notify
                                                 and x.name == "on_message_dropped"]
                    if not quiet or not isinstance(exc, Exception):
                        raise
                    later.append(Notify("on_error", ErrorEvent(
                        getattr(exc, "errno", None) or -1, f"{quiet}: {exc}")))
            else:
                later.append(a)
        if joined:
            self._write_joined(joined)
        if durable and deferred and accepted is not None:  # a held record is not durable:
            try:  # a failed compaction dropped it, so the publish fails (not on_error)
                f.compact_before_publish(st)
            except BaseException:
                for rec in reversed(accepted) if isinstance(accepted, list) else (accepted,):
                    self.engine.retract(rec)
                f.rewrite(st)  # (its snapshot may be in place, holding them)
                raise
        elif durable:
            if f.off_loop is None or self.conn is None or \
                    self.conn.loop_thread is not threading.current_thread() or \
                    not self.loop_turn.compact_soon(self):  # (a loop's read batch, ack())
                f.compact_if_due(st)
            if later_sync and not deferred:
                self._sync_later()
        if self._awaiting and not deferred and accepted is not None:
            ready = self._take_durable()  # a sync here covered them
            if ready:
                later += self.run(self.engine.durable(ready))
        if not st.outgoing and not st.spooled:
            self.changed.notify_all()  # flush() waits for exactly this
            if self.on_idle is not None:
                self.on_idle()
        return later

    def _write_joined(self, writes: list[Write]) -> None:
        """QoS 1/2 PUBLISHes, in order, as one write (one ``send``); emptied."""
        conn, w = self.conn, writes[0]
        if conn is not None and len(writes) == 1:
            conn.write(w.packet, w.kind, w.packet_id, w.qos)
        elif conn is not None:  # (paho looks at a queued packet's kind and QoS only for QoS 0)
            conn.write(b"".join([x.packet for x in writes]), w.kind, 0, w.qos)
        writes.clear()

    def finish(self, later: list[Action]) -> None:
        """Run the callbacks ``run`` left (never under the lock)."""
        later = self.take_stashed() + later if self.stashed else later
        for code, text in self.file.take_errors() if self.file.has_errors else ():
            self.error(code, text)
        for a in later:
            if type(a) is Deliver:
                self._deliver(a.message)
            elif type(a) is Notify:
                if a.name == "on_error":
                    log.warning("%s", getattr(a.event, "description", a.event))
                self._fire(a.name, a.event)

    def _deliver(self, e: MessageEvent) -> None:
        """``on_message_in``; then, unless ManualAck, its acknowledgement."""
        if e.qos == 0 or self._settings.manual_ack:
            self._fire("on_message_in", e)
            return
        if e.qos == 1:
            self.delivering[e.packet_id] = Message(e.packet_id, e.topic, 1, e.message,
                                                    e.retained, e.duplicate, e.properties)
        self.delivering_in = threading.get_ident()  # a close() in it waits for the ack
        try:
            try:
                self._fire("on_message_in", e)  # delivered BEFORE its ack (at least once)
            finally:
                self.delivering.pop(e.packet_id, None)
            self.ack(e)
        finally:
            self.delivering_in, close, self.close_after = None, self.close_after, None
            if close is not None:
                try:
                    if self.conn is not None and self.conn.in_batch():
                        self._release_batch()  # this ack (and those before) before DISCONNECT
                    close()
                except Exception as exc:  # (on the network thread: never raised into paho)
                    self.error(getattr(exc, "errno", None) or -1, f"close(): {exc}")

    def do(self, step: Callable[[], list[Action]]) -> None:
        """One engine input and its actions."""
        with self.lock:
            rest = self.run(step())
        self.finish(rest)

    def error(self, code: int, description: str) -> None:
        log.warning("%s", description)
        self._fire("on_error", ErrorEvent(code, description))

    def _hook_failure(self, exc: Exception, context: str) -> None:
        """A hook failed on the network thread (dropped without the ack): reported."""
        retry = ", reconnecting" if self._connack.is_set() else ""
        if isinstance(exc, ProtocolViolation):
            code = exc.code
            description = f"{context}: {exc}; connection closed{retry}, the session is unchanged"
        else:
            code = getattr(exc, "errno", None) or -1
            what = ("the state file could not be written" if isinstance(exc, PersistenceError)
                    else "the session could not process it")
            description = f"{context}: {what} ({exc}); connection dropped{retry}"
        if not self._connack.is_set():
            self._end_connect(-3, f"{context}: {exc}")
        self.error(code, description)

    def _guarded(self, step: Callable[[], list[Action]], context: str) -> None:
        """``step`` where no packet depends on the records: a failure goes to on_error."""
        with self.lock:
            rest = self.run(step(), quiet=context)
        self.finish(rest)

    def _hook_connection_reset(self) -> tuple[str, int] | None:
        """A new network connection: the old flows forgotten; the server a reconnect goes to
        (FailoverServers, a Server Reference); None: connect()'s own attempt's."""
        self._tries += 1
        self._guarded(self.engine.reset, "recording a refused subscription failed")
        with self.lock:
            rot = self.servers
            if self._fresh or rot is None:
                self._fresh = False
                target = before = None
            else:
                before = rot.current
                target = rot.next()
                self.engine.broker = format_address(*target)
        self._connack_by = -1.0 if self._lost else 0.0  # (its clock starts with the socket)
        if self._lost:
            moved = (f"; the last connection was to {format_address(*before)}"
                     if before is not None and target != before else "")
            log.info("reconnecting to %s (attempt %d%s)", self.engine.broker, self._tries, moved)
        return target

    def _follow(self, code: int, reference: str | None) -> str | None:
        """0x9C / 0x9D (MQTT 5 4.11) with FollowServerReference: the next attempt goes where
        the Server Reference says (``failover.MAX_REDIRECTS`` in a row); that server, or None."""
        if code not in REDIRECT_CODES:
            return None
        with self.lock:
            rot, where = self.servers, self.engine.broker or "the server"
            if not self._settings.follow_server_reference or rot is None:
                if reference:
                    log.info("%s names another server (%r, reason 0x%02X); FollowServerReference"
                             " is off", where, reference, code)
                return None
            target = rot.redirect(code, reference, where)
        return None if target is None else format_address(*target)

    def _hook_connack(self, rc: int, reason: str, session_present: bool, receive_maximum: int,
                      maximum_packet_size: int | None, server_reference: str | None = None,
                      max_qos: int = 2, retain_available: bool = True) -> None:
        redirect = self._follow(rc, server_reference) if rc != 0 else None
        self._connack_by = 0.0
        if rc == 0:
            self._connack_heard = True
            if self.clean_once and (cb := self.on_clean_start) is not None:
                self.clean_once = False  # (this CONNECT asked for it: ``_new_connection``)
                noting, conn = cb(), self.conn
                if conn is not None and conn.in_batch() and self.background_sync is not None \
                        and self.pump is not None:  # (a gateway's: its loop reads the batch)
                    # the resume plan (SUBSCRIBE, PUBLISH) waits until the id is out of the
                    # file: a kill before starts clean again, nothing at the broker to lose
                    self._noting = noting
                    conn.hold_publishes()
            with self.lock:
                if self.servers is not None:
                    self.servers.accepted()
            if self.pump is not None:  # the backoff starts low again (not before a CONNACK)
                self.pump.accepted()
            st = self.engine.state
            log.info("%s %s as %r (MQTT %s, SessionPresent=%d)", "reconnected to" if self._lost
                     else "connected to", self.engine.broker, st.client_id,
                     "5" if st.protocol_version == 5 else "3.1.1", session_present)
            self._tries, self._lost = 0, False
            prev, conn = st.broker, self.conn  # the session's last server, this one named
            # otherwise? (resolved here, not under the lock; on a loop: IP addresses only)
            self.engine.same_as = prev if prev and prev != self.engine.broker and conn and \
                same_server(prev, conn.peer(), resolve=self.pump is None) else None
        self.file.deferring = rc == 0  # on_connected may still restore the file's session
        try:
            self.do(lambda: self.engine.connack(rc, reason, session_present, receive_maximum,
                                                  maximum_packet_size, time.time(), redirect,
                                                  since_boot(), (max_qos, retain_available)))
            if rc != 0:
                if not self._connack.is_set():
                    self._end_connect(rc, reason)
                return
        finally:
            self.file.deferring = False
        if self.conn is not None:  # (on_connected may have closed or disconnected it)
            with self.lock:
                if self.file.unrestored is not None:
                    self.file.settle(self.engine.state)
                lost = self.run(self.engine.lost_incoming())
            self.finish(lost)  # delivered before resume() removes them
        if self.conn is not None:
            self.do(self.engine.resume)
            if self.background_sync is None or self.pump is None:  # (a loop's session: the
                self._release_batch()  # batch's end syncs off the loop, the plan after it)
        self._end_connect(0, reason)  # the resume plan on its way (or waiting for that sync)

    def _hook_packet(self, packet: Packet) -> None:
        if self.conn is not None:  # else a callback closed or disconnected: the broker resends
            self.do(lambda: self.engine.receive(packet))

    def _hook_ack(self, kind: PacketType, packet_id: int) -> None:
        self._hook_acks([(kind, packet_id)])

    def _hook_acks(self, acks: list[tuple[PacketType, int]]) -> None:
        if self.conn is None:  # a callback closed or disconnected: these go unheard
            return
        rest: list[Action] = []
        try:
            with self.lock:  # once for them all: the publishing threads wait once
                flows: list[Action] = []  # the flows' acks: one run, their PUBLISHes one write
                try:
                    for kind, packet_id in acks:
                        if kind is PacketType.PUBREL:  # a delivery: its own run, after the
                            ready, flows = flows, []  # others' (none computed past a failure)
                            if ready:
                                self.run(ready, later=rest)
                            self.run(self.engine.receive_ack(kind, packet_id), later=rest)
                        else:
                            flows += self.engine.receive_ack(kind, packet_id)
                finally:
                    if flows:
                        self.run(flows, later=rest)
        finally:
            self.finish(rest)  # the callbacks of those handled, also if one failed

    def _hook_publisher_waits(self) -> bool:
        return self._settings.session_sync == "always"

    def _hook_batch_waits(self) -> bool:
        return self._batch_sync and self.file.journal is not None \
            and self._settings.session_sync != "none"  # (none: nothing to wait for)

    def _hook_batch_end(self) -> Sync | None:
        """Before a read batch's held packets are written, their records made durable (points
        2-4): one fsync, not locked, when the batch deferred one; an asyncio session's off its
        loop, paho's thread's by the sync thread (the packets wait for the future returned)."""
        if self._noting is not None:  # the CONNACK's batch: after the forgotten id's note too
            sync, self._batch_sync, noting, self._noting = self._batch_sync, False, self._noting, None
            assert self.background_sync is not None  # (``_hook_connack``)
            return self.background_sync(functools.partial(
                _after_note, self.file.sync_pending if sync else None, noting))
        if self._batch_sync:  # set and cleared on the network thread only
            waits, self._batch_sync = self._hook_batch_waits(), False
            if waits and self.background_sync is not None and self.pump is not None:
                return self.background_sync(self.file.sync_pending)
            conn = self.conn  # paho's own thread, a slow disk: the sync thread's, that one reads on
            if waits and self.pump is None and conn is not None and conn.loop_thread is None \
                    and self.sync_time() >= SLOW_SYNC \
                    and (behind := self.behind.request(conn.wake)) is not None:
                return behind
            self.file.sync_pending()
        return None

    def _hook_tick(self) -> None:
        now = time.monotonic()
        self.net_timer_run(now)
        if self._connack_by < 0 and self.conn is not None and self.conn.tcp() is not None:
            self._connack_by = now + self._connack_within  # (not while resolving, connecting)
        if self._connack_by > 0 and now > self._connack_by and self.conn is not None:
            self._connack_by = 0.0  # a server silent after the TCP connect (no keep-alive
            log.info("no CONNACK from %s within %s s", self.engine.broker, self._connack_within)
            self.conn.drop()  # ends that wait when it is 0): the reconnect tries the next one
        if now >= self._next_tick:
            self._next_tick = now + _TICK_EVERY
            self.engine.drops.flush()  # (the drops counted in a window over, summed up)
            tick = functools.partial(self._guarded, lambda: self.engine.tick(
                time.time(), since_boot()), "recording activity failed")
            conn = self.conn  # on a loop: as a read batch, its records' sync off the loop (the
            if conn is not None and self.pump is not None:  # messages it takes from the disk
                conn.as_batch(tick)  # queue wait for it), not one fdatasync a session a tick
            else:
                tick()

    def _paho_on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        was = self.engine.conn
        code = int(getattr(reason, "value", reason) or 0)
        conn = self.conn
        if was in (ConnState.RESUMING, ConnState.CONNECTED):
            if conn is not None and conn.wants_reconnect():
                self._lost = True
                log.info("connection to %s lost (%s); reconnecting", self.engine.broker, reason)
            else:
                log.info("connection to %s lost (%s)", self.engine.broker, reason)
        elif was is ConnState.CLOSING:
            log.info("disconnected from %s", self.engine.broker)
        if code in REDIRECT_CODES:  # a DISCONNECT naming another server (MQTT 5 4.11)
            try:
                self._follow(code, server_reference(props))
            except Exception as exc:  # never into paho's thread
                self.error(-1, f"following the server's Server Reference failed: {exc}")
        self._guarded(lambda: self.engine.connection_lost(time.time(), code, str(reason)),
                      "recording the disconnect time failed")
        self.net_timer_run(0.0, lost=True)  # interval: before reconnect waits, once unconnected
        if was in (ConnState.CONNECTING, ConnState.RESUMING) and not self._connack.is_set():
            # closed before any CONNACK (a TLS client certificate refused): fail connect() now
            self._end_connect(-2, f"paho: {reason}")

