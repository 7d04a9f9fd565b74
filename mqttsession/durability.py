"""When records reach the disk: the group commit of SessionSync=always (publishers in several
threads, or concurrent asyncio publishes, share one fdatasync) and SessionSync=interval's
timer. A part of ``Driver`` (its base class): the same lock, state file and engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Final, Protocol, cast

from ._config import ClientSettings
from .pump import AsyncioPump
from .combining import run_all, spooling
from .compacting import MARGIN
from .actions import Notify, Persist
from .engine import Action, ConnState, Engine
from .errors import PersistenceError, QueueFullError, UsageError
from .events import ErrorEvent, Message, MessageEvent
from .state import Accepted, Spooled
from .store import StateFile
from .turns import Turns

if TYPE_CHECKING:
    from ._paho import PahoConnection
    from .compacting import Turn
    from .driver import Driver

__all__ = ["Answer", "Cancellable", "Durability", "since_boot"]

log = logging.getLogger(__name__)
_BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", None)


def since_boot() -> float:
    """The clock held messages age by (``expiry.MessageClock``): monotonic, and counting a
    suspend too (Linux's ``CLOCK_BOOTTIME``; elsewhere ``time.monotonic``)."""
    return time.monotonic() if _BOOTTIME is None else time.clock_gettime(_BOOTTIME)


class Host(Protocol):
    """A loop in a thread of its own that runs many sessions' connections and timers."""

    thread: threading.Thread
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, None], timeout: float | None) -> None:
        """Run ``coro`` on the loop and wait for it (from another thread)."""


def _on_loop(*loops: asyncio.AbstractEventLoop | None) -> bool:
    """Whether the caller runs on one of ``loops``."""
    try:
        return asyncio.get_running_loop() in loops
    except RuntimeError:
        return False


#: A held publish's tokens (one, or a ``publish_many``'s), its waiter, and its sync's result.
Answer = tuple[tuple[tuple[int, int, int], ...], "asyncio.Future[Exception | None]",
               "Exception | None"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class _LoopTimer:
    """``fn`` on ``loop`` in ``delay`` seconds, armed from any thread; ``cancel`` from any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float,
                 fn: Callable[[], None]) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._cancelled = False

        def arm() -> None:
            if not self._cancelled:
                self._handle = loop.call_later(delay, fn)
        loop.call_soon_threadsafe(arm)

    def cancel(self) -> None:
        self._cancelled = True
        if self._handle is not None:
            self._handle.cancel()


class _NetTimer:
    """Due at ``due`` (``time.monotonic``) on paho's network thread: ``_hook_tick`` runs it,
    ``_hook_wait`` shortens select() to it."""

    __slots__ = ("due",)

    def __init__(self, due: float) -> None:
        self.due = due

    def cancel(self) -> None:
        self.due = float("inf")


class Durability:
    """Group commit and the interval sync timer, over the ``Driver``'s state."""

    lock: threading.RLock
    file: StateFile
    engine: Engine
    _settings: ClientSettings
    _awaiting: deque[tuple[int, int, int]]  # held publishes: seq, and where their record ends
    _sync_timer: Cancellable | None  # SessionSync=interval, armed while records wait
    pump: AsyncioPump | None
    executor: Executor | None  # where a loop's sessions sync (None: the loop's default one)
    releasing: asyncio.Future[None] | None  # ``release_then``'s job under way
    loop_waits: int  # the loop reads, releases, or waits to (``let_loop_in``)
    _release_due: deque[Callable[[], None]] | None  # what runs after it, in order
    taking_back: set[asyncio.Future[None]]  # failed syncs' take-backs under way
    settling: int  # an AsyncGateway's ``publish_many`` waits for this session's syncs
    host: Host | None  # a Gateway's loop: its sessions' timers, connected or not
    home_loop: asyncio.AbstractEventLoop | None  # an asyncio session's (an AsyncGateway's)
    conn: PahoConnection | None
    turns: Turns  # publishers in several threads take turns (``turns.Turns``)
    loop_turn: Turn  # a loop's calls in order while a compaction (a take-back) runs off it
    stashed: list[Action]  # callbacks of a ``run`` that raised, for the next ``finish``
    delivering: dict[int, Message]  # QoS 1 in on_message_in, auto-acknowledged
    changed: threading.Condition  # notified when messages leave the session
    closed = False  # the Client closed (``end``)
    _batch_sync: bool  # a read batch deferred a sync to its end (the Driver's)

    def flush(self, timeout: float | None) -> bool:
        """``Client.flush``: wait until no outgoing message is held; False on timeout, or
        when the Client closes meanwhile with messages held."""
        if self.in_callback():
            raise UsageError("flush() inside an event callback would wait forever")
        if self.closed:
            raise UsageError("flush() after close()")
        with self.changed:
            self.changed.wait_for(lambda: self.closed or not (
                self.engine.state.outgoing or self.engine.state.spooled), timeout)
            return not (self.engine.state.outgoing or self.engine.state.spooled)

    def in_callback(self) -> bool:
        """Whether the caller runs the session's events: paho's thread, or the loop that
        runs the session (connected or not: it would connect it), where nothing may wait."""
        conn, pump, host = self.conn, self.pump, self.host
        return conn is not None and conn.in_network_thread() or _on_loop(
            pump.loop if pump is not None else None, host.loop if host is not None else None)

    def _release_batch(self) -> None:
        """The read batch's records so far made durable, then its held packets written."""
        with self.lock:
            self.file.sync_pending()
            self._batch_sync = False  # (that sync covers the batch's records so far)
            if self.conn is not None:
                self.conn.release_held()

    def end(self) -> None:
        """The Client closed: a ``flush`` waiting returns."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def run(self, actions: list[Action],
            accepted: Accepted | Spooled | list[Accepted | Spooled] | None = None,
            quiet: str = "", deferred: bool = False) -> list[Action]:
        raise NotImplementedError  # the Driver's

    def finish(self, later: list[Action]) -> None:
        raise NotImplementedError  # the Driver's

    def error(self, code: int, description: str) -> None:
        raise NotImplementedError  # the Driver's

    def run_refused(self, exc: QueueFullError) -> None:
        """A publish refused for room after its search changed the session (read back from
        the disk queue, expired ones dropped): those records written all the same (lock
        held), their callbacks stashed for the caller's ``finish_stashed``."""
        if exc.pending:
            self.stashed += self.run(cast("list[Action]", list(exc.pending)))

    def take_stashed(self) -> list[Action]:
        """The callbacks a ``run`` that raised left (a drop made before the record that
        failed): for the next ``finish``, in the thread that got the error."""
        with self.lock:
            stashed, self.stashed = self.stashed, []
        return stashed

    def finish_stashed(self) -> None:
        """A failed publish's callbacks (a drop made to make room for it), before its error."""
        if self.stashed:
            self.finish([])

    def ack(self, message: MessageEvent | int) -> bool:
        """``Client.ack``: the engine's ``ack`` and its actions. When the removal's record
        fails (persistence point 4) its PUBCOMP waits for the state to be rewritten from
        memory; if that fails too, the connection is dropped (the broker sends the PUBREL
        again after reconnecting) and ``PersistenceError`` raised, never the flow left open."""
        with self.lock:
            acked, actions = self.engine.ack(message)
            try:
                rest, failed = self.run(actions), None
            except PersistenceError as exc:
                self.file.rewrite(self.engine.state)
                j, code = self.file.journal, exc.errno or -1
                failed = exc if j is not None and j.broken else None
                what = ("connection dropped, the broker sends it again" if failed else
                        "the state was rewritten from memory and the acknowledgement sent")
                rest = [Notify("on_error", ErrorEvent(code, "acknowledging a message: the state"
                                                            f" file failed ({exc}); {what}"))]
                if failed is None:
                    rest += self.run([a for a in actions if type(a) is not Persist])
                elif self.conn is not None:
                    self.conn.drop()
        self.finish(rest)
        if failed is not None:
            raise failed
        return acked

    def incoming_messages(self) -> tuple[Message, ...]:
        """``Client.incoming_messages``: the QoS 1 messages in ``on_message_in`` now, those
        whose ack is owed, then the QoS 2 ones held (the orphans last)."""
        with self.lock:
            owed = [Message(e.packet_id, e.topic, 1, e.message, e.retained, e.duplicate,
                            e.properties)
                    for e in self.engine.owed_messages() if e.packet_id not in self.delivering]
            st = self.engine.state
            held = [Message.incoming(m) for m in [*st.incoming.values(), *st.orphans]]
            return tuple(list(self.delivering.values()) + owed + held)

    def ack_many(self, messages: Sequence[MessageEvent]) -> None:
        """``ack`` each; on a connection an asyncio loop drives, as one batch: the removals'
        records written at once, one fsync for them all off the loop, then the PUBCOMPs."""
        conn = self.conn
        if conn is None or self.pump is None or len(messages) == 0:
            for m in messages:
                self.ack(m)
            return
        conn.as_batch(lambda: self._ack_each(messages))

    def _ack_each(self, messages: Sequence[MessageEvent]) -> None:
        errors: list[Exception] = []
        for m in messages:  # one failure does not keep the others back
            try:
                self.ack(m)
            except Exception as exc:  # noqa: BLE001 - raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def group_commit(self) -> bool:
        """Whether a publish may wait for its sync outside the lock (SessionSync=always with
        the journal open): threads publishing together then share one fdatasync."""
        return self._settings.session_sync == "always" and self.file.journal is not None \
            and self.file.unrestored is None

    def gathers(self) -> bool:
        """Whether a read batch's records that only its acks wait for wait in memory for the
        batch's sync, which writes them with one ``write`` (a journal that syncs)."""
        return getattr(self.file.journal, "gathers_batch_records", False) \
            and self._settings.session_sync != "none"

    def sync_time(self) -> float:
        """How long the state file's fdatasyncs take (seconds; 0.0 without a journal)."""
        j = self.file.journal
        return 0.0 if j is None else j.sync_time

    def is_durable(self, token: tuple[int, int, int]) -> bool:
        """Whether the held publish ``token``'s record is on disk (``wait_durable`` would
        return None at once; no lock)."""
        j = self.file.journal
        return j is None or j.is_synced(token[1], token[2])

    def holds(self) -> bool:
        """Whether publishes wait for their records to be durable (``_awaiting``)."""
        return bool(self._awaiting)

    def hold(self, seq: int) -> tuple[int, int, int] | None:
        """After ``run`` wrote a held message's record (lock held): what ``settle`` waits for,
        where the store's append put it (not where the store ends now: another thread's
        failed sync may have cut it since, and a token at or before the cut counts as
        synced)."""
        j = self.file.journal
        if j is None:
            return None
        gen, pos = j.appended_at
        token = (seq, gen, pos)
        self._awaiting.append(token)
        return token

    def wait_durable(self, token: tuple[int, int, int], release: bool = False
                     ) -> Exception | None:
        """Group commit (no lock): the record is on disk; the error when the sync failed.
        ``release``: the thread that ran the fdatasync writes every message it covered (the
        others need not take the session lock for theirs)."""
        j = self.file.journal
        try:
            # (publishers in several threads take turns: a turn's batch is whole, no linger)
            if j is not None and j.sync_to(token[1], token[2]) and release:
                self.release_durable()
        except Exception as exc:  # reported to the publisher by ``release``
            return exc
        return None

    def release(self, token: tuple[int, int, int], err: Exception | None,
                batch: Sequence[tuple[int, int, int]] = ()) -> None:
        """After ``wait_durable``: the durable held messages are written, in order (by
        whichever publisher gets here first); a failed one is withdrawn and ``err`` raised.
        ``batch``: ``publish_many``'s tokens (``token`` the last; one record, one fate),
        withdrawn together before the file is rewritten: all or none stay."""
        with self.lock:
            err = self._withdraw(token, err, batch)
            if err is not None:  # its record may reach the disk yet (written, its sync
                # interrupted; or cut, in a snapshot rewritten since): rewritten without it
                self.file.rewrite(self.engine.state)
            # the durable ones behind it go out (a failed one never blocks those after it)
            rest = self._write_durable()
        self.finish(rest)
        if err is not None:
            raise err

    def _withdraw(self, token: tuple[int, int, int], err: Exception | None,
                  batch: Sequence[tuple[int, int, int]]) -> Exception | None:
        """``release``'s part in memory (lock held): a failed publish's messages withdrawn
        from the session; its error, or None (durable after all: kept)."""
        j = self.file.journal
        if err is not None and j is not None and token in self._awaiting \
                and j.is_synced(token[1], token[2]):
            # the sync failed and cut the record, but a record of another thread then
            # rewrote the file whole from memory, this message with it (the lock held
            # there, as here): it is durable, so it stays and the publish succeeds; taken
            # back, it would come back after a restart though the publisher was told it
            # failed (a duplicate once published again)
            return None
        gone = [t for t in batch or (token,) if t in self._awaiting]
        if err is not None and not gone:  # pragma: no cover - released by a sync that
            return None  # covered it
        if err is not None:
            for t in reversed(gone):
                self._awaiting.remove(t)
                self.engine.withdraw(t[0])
        return err

    def compact_ahead(self) -> None:
        """In a thread: the state file compacted before a loop's publish would (its syncs
        off the loop); raises what fails. The loop's read under way goes first."""
        with self.lock_between_reads():
            self.file.compact_ahead(self.engine.state)

    def reservation_near(self, count: int = 1) -> bool:
        """SessionSync=interval: whether a publish (of ``count`` messages) would soon need a
        new packet-id reservation, synced at once (a loop's has it made first, off the loop)."""
        return self.file.journal is not None and self.engine.reservation_near(count)  # (ids are
        # reserved under interval only: ``reserve_packet_ids``)

    def reserve_ahead(self, count: int = 1) -> None:
        """In a thread: the next packet-id reservation written and synced before a loop's
        publish would need it (a hunt: 46-234 ms stops on a 20 ms card); raises what fails,
        the reservation taken back (the file rewritten without it)."""
        with self.lock_between_reads():
            if not self.reservation_near(count):
                return
            actions, undo = self.engine.reserve_ahead(count)
            try:
                rest = self.run(actions)
            except BaseException:
                self.engine.unreserve(undo)
                self.file.rewrite(self.engine.state)
                raise
        self.finish(rest)  # (its callbacks, on_error of a sync it made good: not locked)

    def passes_bound(self, size: int, count: int) -> bool:
        """Whether the records of a batch of ``count`` messages of ``size`` bytes alone pass
        the state file's bound: its compaction would run inside it (a loop's: stored off the
        loop, a hunt: 40-205 ms stops on a 20 ms card)."""
        j = self.file.journal
        return j is not None and size + MARGIN * count > j.bound

    def queue_sync_near(self) -> bool:
        """SessionSync=interval: whether a publish now goes to the disk queue and would first
        sync (``StateFile.queue_sync_due``): a loop's publish has that made first, off the loop."""
        return self.file.queue_sync_due() and spooling(self.engine)

    def queue_sync_ahead(self) -> None:
        """In a thread: those syncs (the journal's records before the queue's, a full segment
        sealed, the next begun) made before a loop's publish would make them (a hunt: 80-140 ms
        stops on a 20 ms card per segment); raises what fails (the publish then makes them)."""
        with self.lock_between_reads():
            f = self.file
            if f.spool is not None and f.unrestored is None and self.queue_sync_near():
                f.sync_before_queue(self.engine.state)
                f.spool.roll_ahead(self.engine.state.next_seq)

    def release_durable(self) -> None:
        """Group commit: write every held message whose record is durable now (once for a
        batch of publishes). Their records are on disk: a failure here goes to on_error."""
        with self.lock:
            rest = self._write_durable()
        self.finish(rest)

    def lock_busy(self) -> bool:
        """Whether another thread holds the session's lock now (no waiting)."""
        if self.lock.acquire(blocking=False):
            self.lock.release()
            return False
        return True

    def let_loop_in(self) -> None:
        """Called by a thread about to take the session's lock for a disk-queue batch (or a
        compaction, ``compact_ahead``): the loop's read or release under way, or waiting for
        the lock (a release deferred to the jobs thread too), goes first (up to 20 ms); batch
        after batch, the lock is rarely free when the loop looks."""
        deadline = time.monotonic() + 0.02
        while self.loop_waits and time.monotonic() < deadline:
            time.sleep(0.0005)

    @contextlib.contextmanager
    def lock_between_reads(self, patience: float = 1.0) -> Iterator[None]:
        """In a thread, for a long job (a compaction's or a take-back's syncs): the session's
        lock, taken while the loop neither reads nor waits to (up to ``patience`` seconds);
        a read that began as the lock was taken has it given back first. With
        ``let_loop_in``'s 20 ms the job took it between two packets of a long read batch:
        the loop waited for the whole compaction (a review: 100-140 ms on a 20 ms card)."""
        deadline = time.monotonic() + patience
        while True:
            while self.loop_waits and time.monotonic() < deadline:
                time.sleep(0.0005)
            self.lock.acquire()
            if not self.loop_waits or time.monotonic() >= deadline:
                break
            self.lock.release()
            time.sleep(0.0005)  # (the loop's read takes it now)
        try:
            yield
        finally:
            self.lock.release()

    def release_then(self, then: Callable[[], None]) -> asyncio.Future[None] | None:
        """On the loop: ``release_durable``, then ``then()``. While another thread holds the
        session's lock (a disk-queue batch's write and fdatasync: tens of ms on an SD card,
        batch after batch), the release waits for it in a thread and ``then`` runs on the loop
        after it, in order with those deferred before: the loop, which runs every session's
        sockets, never waits for the disk. The job under way (None: done now)."""
        if self._release_due is None and not self.lock_busy():
            self.loop_waits += 1  # (a batch about to take the lock lets it in first)
            try:
                self.release_durable()
            finally:
                self.loop_waits -= 1
                then()
            return None
        if self._release_due is None:
            self._release_due = deque()
            self._release_due.append(then)
            self._start_release(asyncio.get_running_loop())
        else:  # (the next job releases it: its records were synced before it starts)
            self._release_due.append(then)
        return self.releasing

    def answer(self, answers: Sequence[Answer]) -> None:
        """Each held publish of a sync gets its result (None: durable, its message released
        by then; else taken back); a cancelled one is settled here (one record, one fate)."""
        for tokens, waiter, res in answers:
            if waiter.cancelled() and res is not None:
                self.take_back(tokens[-1], res, tokens, quiet=True)
            elif waiter.cancelled() and self.awaits(tokens[-1]):
                self.release_quietly(tokens[-1], None, batch=tokens)
            elif not waiter.done():
                waiter.set_result(res)

    def take_back(self, token: tuple[int, int, int], err: Exception,
                  batch: Sequence[tuple[int, int, int]] = (), quiet: bool = False
                  ) -> asyncio.Future[None]:
        """On the loop: ``release`` of publishes whose sync failed, withdrawn now (nothing
        sends them; a compaction drops them) and the file rewritten without them and synced
        in a thread (seconds on a failing card: never on the loop). The job raises ``err``
        (None: durable after all; ``quiet``: a publisher gone, to on_error, as ``orphan``);
        ``close()`` waits for it."""
        with self.lock:
            failed = self._withdraw(token, err, batch)
            rest = self._write_durable()
        self.finish(rest)
        if failed is not None:  # (its turn: the session's calls on the loop wait for it)
            job = self.loop_turn.run(cast("Driver", self), functools.partial(self._rewrite, failed))
        else:
            job = asyncio.get_running_loop().create_future()
            job.set_result(None)
        self.taking_back.add(job)
        job.add_done_callback(self._taken_back)
        if quiet:
            self.orphan(job, token[0])
        return job

    def _rewrite(self, err: Exception | None) -> None:
        if err is not None:
            with self.lock_between_reads():
                self.file.rewrite(self.engine.state)
            raise err

    def orphan(self, job: asyncio.Future[None], seq: int) -> None:
        """A take-back whose publisher is gone (cancelled): its error to on_error, on the
        loop (``release_quietly``'s)."""
        def report(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and (exc := f.exception()) is not None:
                self.error(getattr(exc, "errno", None) or -1, f"publish (seq {seq}): {exc}")
        job.add_done_callback(report)

    def _taken_back(self, job: asyncio.Future[None]) -> None:
        self.taking_back.discard(job)
        if not job.cancelled():
            job.exception()  # (read here: an orphan's is reported, a publisher's raised)

    def _start_release(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._release_due
        assert due is not None
        n = len(due)  # (their messages are durable: the job releases them all)
        try:  # (the jobs thread, not the spool pool: its threads may all be storing)
            job = loop.run_in_executor(self.executor, self.release_durable)
        except RuntimeError:  # (the executor is shut down: closing) here, waiting
            self.release_durable()
            self._released(n, None)
            return
        self.releasing = job
        self.loop_waits += 1  # (the next batch lets it take the lock first)
        job.add_done_callback(lambda f: self._released(n, f))

    def _released(self, n: int, f: asyncio.Future[None] | None) -> None:
        if f is not None:
            self.loop_waits -= 1
            if not f.cancelled() and (exc := f.exception()) is not None:
                self.error(getattr(exc, "errno", None) or -1,
                           f"releasing durable messages: {exc}")
        due = self._release_due
        assert due is not None
        thens = [due.popleft() for _ in range(n)]
        if due:
            self._start_release(asyncio.get_running_loop())
        else:
            self._release_due = self.releasing = None
        run_all(thens)

    def _write_durable(self) -> list[Action]:
        """The held messages whose records are durable now, written (lock held). A record
        failing on the way (the disk queue's read-back, synced at once) leaves them sent in the
        session but not on the wire: the connection is dropped (they go again after
        reconnecting) and the failure reported; their publishes succeeded all the same."""
        try:
            return self.run(self.engine.durable(self._take_durable()))
        except Exception as exc:
            if self.conn is not None:
                self.conn.drop()
            return [Notify("on_error", ErrorEvent(getattr(exc, "errno", None) or -1, "writing"
                           f" durable messages: {exc}; connection dropped, they go again"))]

    def settle(self, token: tuple[int, int, int]) -> None:
        """``wait_durable`` then ``release``, in the calling thread. Interrupted in between
        (KeyboardInterrupt), the message is released if its record made it to disk, else
        taken back: a held message never blocks the ones after it."""
        try:
            err = self.wait_durable(token, release=True)
        except BaseException:
            self.release_quietly(token, None)
            raise
        if err is not None or self.awaits(token):  # not released by the syncing thread
            self.release(token, err)

    def awaits(self, token: tuple[int, int, int]) -> bool:
        """Whether the held publish ``token`` still waits to be released."""
        return token in self._awaiting

    def release_quietly(self, token: tuple[int, int, int], err: Exception | None,
                        batch: Sequence[tuple[int, int, int]] = ()) -> None:
        """``release`` for a publisher that is gone (cancelled): a failure goes to on_error."""
        j = self.file.journal
        if err is None and j is not None and not j.is_synced(token[1], token[2]):
            err = PersistenceError(None, "the publish was interrupted before its record was"
                                         " synced: the message was taken back")
        try:
            self.release(token, err, batch)
        except Exception as exc:
            self.error(getattr(exc, "errno", None) or -1, f"publish (seq {token[0]}): {exc}")

    def _take_durable(self) -> list[int]:
        """Held messages (in order) whose records are on disk now (lock held)."""
        j, out, waiting = self.file.journal, [], self._awaiting
        while waiting:
            seq, gen, pos = waiting[0]
            if j is not None and not j.is_synced(gen, pos):
                break
            out.append(seq)
            waiting.popleft()
        return out

    def _sync_later(self) -> None:
        """SessionSync=interval: one fsync within SessionSyncInterval of the oldest record not
        yet on disk, armed only while such records wait: a timer on the loop that runs the
        connection (or the session, unconnected), or on paho's network thread while
        connected (no thread of its own), else a timer thread."""
        if self._sync_timer is not None:
            return
        delay = self._settings.session_sync_interval / 1000
        pump, host = self.pump, self.host
        loop = pump.loop if pump is not None else None
        if loop is None and host is not None and host.loop.is_running():
            loop = host.loop  # (no timer thread for each offline session of a gateway)
        if loop is None and self.home_loop is not None and self.home_loop.is_running():
            loop = self.home_loop  # (nor of an asyncio one: a hunt saw 5,390 in 10 s)
        if loop is not None and not loop.is_closed():
            self._sync_timer = _LoopTimer(loop, delay, self._interval_sync_off_loop)
            return
        conn = self.conn
        if conn is not None and self.engine.conn is ConnState.CONNECTED:
            # paho's network thread runs it: a connected session has no other thread
            self._sync_timer = _NetTimer(time.monotonic() + delay)
            conn.wake()  # (its select() waits only until then)
            return
        t = threading.Timer(delay, self._interval_sync)
        t.daemon = True
        t.name = "mqttsession-sync"
        try:
            t.start()
        except RuntimeError as exc:  # no thread to be had: synced now (the record is kept;
            log.warning("no sync timer thread (%s): synced at once", exc)  # never raised)
            self._interval_sync(retry=False)
            return
        self._sync_timer = t

    def _interval_sync_off_loop(self) -> None:
        """The loop's timer: the sync in the executor (the loop never waits for the disk)."""
        try:
            asyncio.get_running_loop().run_in_executor(self.executor, self._interval_sync)
        except RuntimeError:  # the executor is shut down: closing, which syncs anyway
            self._interval_sync()

    def _interval_sync(self, retry: bool = True) -> PersistenceError | None:
        """The interval's sync. A failed fdatasync keeps the records in the files (a kill -9
        loses nothing) but leaves the page cache suspect: the state is rewritten from memory
        at once and synced, then the disk queue; if that fails too, it is tried again after
        the interval (``retry``; not when closing: the error is returned)."""
        with self.lock:
            self._sync_timer = None
        try:
            self.file.sync_pending()  # the journal's and the queue's own locks
            return None
        except Exception as exc:
            failed = exc
        code = getattr(failed, "errno", None) or -1
        try:
            with self.lock:
                self.file.resync(self.engine.state)
        except Exception as exc:
            text = (f"SessionSync=interval: the state file could not be synced ({failed};"
                    f" rewriting it: {exc}); the records since the last sync are in the OS,"
                    " not on disk")
            self.error(getattr(exc, "errno", None) or code,
                       text + ("; tried again after the interval" if retry else ""))
            if retry:
                with self.lock:
                    self._sync_later()
            return PersistenceError(getattr(exc, "errno", None) or code, text)
        self.error(code, f"SessionSync=interval: a sync of the state file failed ({failed});"
                         " the state was rewritten from memory and synced")
        return None

    def _hook_wait(self, timeout: float) -> float:
        """paho's select() timeout, shortened to the interval sync's (network thread)."""
        t = self._sync_timer
        if type(t) is _NetTimer:
            return max(0.0, min(timeout, t.due - time.monotonic()))
        return timeout

    def net_timer_run(self, now: float, lost: bool = False) -> None:
        """The interval sync on the network thread when due, or at once when the connection
        is ``lost`` (reconnect waits would delay it)."""
        t = self._sync_timer
        if type(t) is _NetTimer and (lost or now >= t.due):
            self._interval_sync()

    def rearm_sync_timer(self) -> None:
        """SessionSyncInterval lowered: an armed interval sync armed again with the new one."""
        with self.lock:
            t, self._sync_timer = self._sync_timer, None
            if t is not None:
                t.cancel()
                self._sync_later()

    def cancel_sync_timer(self) -> PersistenceError | None:
        """Closing: the pending interval sync runs now instead; the error if it failed."""
        with self.lock:
            t, self._sync_timer = self._sync_timer, None
        if t is not None:
            t.cancel()
            return self._interval_sync(retry=False)
        return None
