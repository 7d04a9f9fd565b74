"""asyncio sessions in the Coherence style: ``session = await AsyncSession.create(options)``.

``AsyncSession`` runs its session on the event loop itself, as aiomqtt 2.x drives paho: paho's
socket callbacks put the connection's socket in the loop (``pump.AsyncioPump``), so reads,
writes, acknowledgements and timers are loop callbacks, and there is no thread of its own (the
blocking TCP connect, the fsyncs, the restore of ``start()`` and the DISCONNECT and last
snapshot of ``disconnect()`` / ``close()`` wait in the loop's default executor, so the loop
never waits for the disk):

* calls (publish, subscribe, config, save, ack) run in the order they were awaited; concurrent
  ``publish`` calls keep their order and share one fsync under ``SessionSync=always`` (one
  executor job syncs every publish waiting);
* incoming messages go into an ``asyncio.Queue`` read by ``receive()`` or
  ``async for msg in session.messages():`` (an async generator that ends when the session
  closes). Once more than ``options.inbound_queue_size`` messages wait, the socket is not read
  until the application has taken half of them (back-pressure).
* a QoS 1/2 message is acknowledged (PUBACK, or its removal made durable and PUBCOMP) only once
  the application has taken it: when it asks for the next one, calls ``ack()``, or closes the
  session. One still in the queue at a crash is sent again by the broker (the Client runs with
  ``ManualAck``).

Durable like the sync client: ``state_file=`` sets ``SessionStateFile`` and restores it (a
missing file is an empty session), so messages published while disconnected, or left
unacknowledged by a killed process, go out after the next ``create()``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import handover
from .client import Client, _connect_params
from .aiosync import GroupSync, HeldSyncs, _Token
from .compacting import size_of
from .pump import in_executor
from .publishing import check_item, check_messages, store_checked, store_items
from .combining import Combiner, Item, spooling
from .errors import MQTTSessionError, UsageError
from .events import MessageEvent, PublishRequest, SubscribedEvent
from .mesh import new_client
from .options import Options
from .validation import split_filters, text_payload

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

__all__ = ["AsyncSession"]

log = logging.getLogger("mqttsession.aio")

T = TypeVar("T")


class _Closed:
    pass


_CLOSED: Final = _Closed()


def _on_loop(loop: asyncio.AbstractEventLoop, c: Client, items: list[Item], batch: bool,
             got: list[int]) -> Callable[[], None]:
    """``store_items`` in the executor, its callbacks handed to the loop (where the session's
    callbacks run: ``on_message_dropped`` of a drop made for room, ``on_error``)."""
    after = store_items(c, items, batch, got)

    def on_loop() -> None:
        try:
            loop.call_soon_threadsafe(after)
        except RuntimeError:  # (the loop closed meanwhile: here, rather than never)
            after()
    return on_loop

def _held(c: Client) -> int:
    """The outgoing messages ``c`` holds, counted (``outgoing_messages`` reads the disk
    queue's back: a read error there raised from ``flush()``)."""
    return c._driver.engine.state.held


class AsyncSession(HeldSyncs):
    """An MQTT session for asyncio code.

    ``await AsyncSession.create(options, ...)`` builds and connects one;
    ``async with AsyncSession(options, ...) as session:`` does the same and closes it at exit.
    ``options`` defaults to ``Options.from_env()``. ``state_file`` (needs ``client_id``) makes
    the session durable and restores it; ``clean_session`` defaults to False with a state file
    (True is refused there), else True. ``session_sync``: ``"always"`` (the default),
    ``"none"`` or ``"interval"``.
    """

    def __init__(
        self,
        options: Options | None = None,
        *,
        client_id: str = "",
        clean_session: bool | None = None,
        state_file: str | os.PathLike[str] | None = None,
        session_sync: str | None = None,
    ) -> None:
        self._options = Options.from_env() if options is None else options
        if state_file is not None and not client_id:
            raise UsageError("a state_file belongs to one client: pass client_id too")
        if state_file is not None and clean_session:
            raise UsageError("a state_file keeps a session: it cannot have clean_session=True")
        clean = (state_file is None) if clean_session is None else clean_session
        self._client = new_client(self._options, client_id, clean_session=clean)
        self._client.config("ManualAck=True")
        self._state_file = None if state_file is None else os.path.join(  # (a chdir before
            os.getcwd(), os.fspath(state_file))  # start() moves nothing)
        self._session_sync = session_sync
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[MessageEvent | _Closed] = asyncio.Queue()
        self._handed: list[MessageEvent] = []  # taken by the application, not yet acked
        self._subacks: dict[str, list[asyncio.Future[int]]] = {}
        self._idle: list[asyncio.Future[bool]] = []  # flush() calls waiting
        # SessionSync=always: publishes waiting for their record's fdatasync, and whether the
        # one executor job that syncs for all of them is under way
        # (a publish_many's tokens together: one record, one fate)
        self._awaiting_sync: list[tuple[tuple[_Token, ...], asyncio.Future[Exception | None]]] = []
        self._sync_job: asyncio.Future[Exception | None] | None = None
        # the read (and ack) batches' fsync running in the executor, and the one after it
        self._bg_sync: asyncio.Future[None] | None = None
        self._bg_next: asyncio.Future[None] | None = None
        self._syncing = False
        # publishes bound for the disk queue (``always``): stored as one batch by one
        # executor job (one fdatasync, off the loop), which the next ones wait for
        self._combiner = Combiner()
        self._turn = self._client._driver.loop_turn  # calls in order while a compaction runs
        self._spool_job: asyncio.Future[None] | None = None
        self._group: GroupSync | None = None  # an AsyncGateway's shared sync
        self._started = False
        self._closing: asyncio.Future[None] | None = None  # close() under way: its end
        self._ending: asyncio.Future[None] | None = None  # ``_off_loop``'s call under way
        self._offs = 0  # ``_off_loop`` calls under way or waiting for their turn
        self._closed = False
        self._client.on_message_in = self._on_loop(self._on_message_in)
        self._client.on_subscribed = self._on_loop(self._on_subscribed)
        self._client._driver.on_idle = self._on_loop(lambda _e: self._wake_idle())

    @classmethod
    async def create(
        cls,
        options: Options | None = None,
        *,
        client_id: str = "",
        clean_session: bool | None = None,
        state_file: str | os.PathLike[str] | None = None,
        session_sync: str | None = None,
        connect: bool = True,
    ) -> AsyncSession:
        """A started session (state file restored), connected unless ``connect=False``."""
        session = cls(options, client_id=client_id, clean_session=clean_session,
                      state_file=state_file, session_sync=session_sync)
        await session.start(connect=connect)
        return session

    async def start(self, connect: bool = True) -> None:
        """Apply the settings, restore the state file, connect (unless ``connect=False``).

        Done once (``create()`` and ``async with`` call it); a failure closes the session.
        """
        if self._started:
            if connect and not self._client.connected:
                await self.connect()
            return
        self._started = True
        driver = self._client._driver
        self._loop = driver.home_loop = asyncio.get_running_loop()  # (its timers, unconnected)
        if driver.background_sync is None:  # (a gateway's session has its sync thread)
            driver.background_sync = self._sync_off_loop
        try:
            if self._session_sync is not None:
                await self.config(f"SessionSync={self._session_sync}")
            if self._state_file is not None:
                await self.config(f"SessionStateFile={self._state_file}")
                if await self._off_loop(functools.partial(self._client.restore_session, "")):
                    raise asyncio.CancelledError  # (its reads and syncs: an AsyncGateway's
                    # other sessions run meanwhile; cancelled, it ends first, then closes)
            elif not self._client.clean_session:  # what one closed before still held
                handover.restore(self._options.address, self._client)
            else:
                handover.discard(self._options.address, self._client.client_id)
            if connect:
                await self.connect()
        except BaseException:
            await self.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def _sync_off_loop(self, sync: Callable[[], None]) -> asyncio.Future[None]:
        """A batch's fsync (the records its PUBRECs or PUBCOMPs wait for) in the executor, not
        on the loop: the loop never waits for the disk; the acks wait for the future. One runs
        at a time; the batches that end meanwhile share the next one, which starts after their
        records were written (group commit)."""
        loop = asyncio.get_running_loop()
        if self._bg_sync is None:
            job = in_executor(loop, self._client._driver.executor, sync)
            self._bg_sync = job
            job.add_done_callback(lambda _f: self._next_sync(sync))
            return job
        if self._bg_next is None:
            self._bg_next = loop.create_future()
        return self._bg_next

    def _next_sync(self, sync: Callable[[], None]) -> None:
        # (every ``sync`` given is the state file's sync_pending: any of them does for all)
        self._bg_sync = None
        waiter, self._bg_next = self._bg_next, None
        if waiter is None:
            return
        job = self._sync_off_loop(sync)

        def answer(f: asyncio.Future[None]) -> None:
            if waiter.done():
                return
            if f.cancelled():
                waiter.cancel()
            elif (exc := f.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)
        job.add_done_callback(answer)

    def _check(self, started: bool = True, publish: bool = False) -> Client:
        if self._closed or publish and self._closing is not None:  # (close() waits for the
            raise UsageError("the session is closed" if self._closed else  # publishes under
                             "publish during close(): the session is closing")  # way: none new)
        if started and not self._started:  # (start() restores: it would replace what came)
            raise UsageError("the session is not started: await start() first (create() and"
                             " async with start it)")
        return self._client

    def _on_loop(self, fn: Callable[[T], None]) -> Callable[..., None]:
        """A Client callback that runs ``fn(event)`` on the loop (it is called there, except
        for a few events of a reconnect, which runs in the loop's executor)."""
        def callback(event: T | None = None) -> None:  # (logged by its kind: no payload)
            loop = self._loop
            # (no event: the idle notice that ends ``flush()`` waits)
            kind = "idle notice" if event is None else type(event).__name__
            if loop is None:
                log.warning("%s dropped: the session was never started", kind)
                return
            try:
                running = asyncio.get_running_loop() is loop
            except RuntimeError:
                running = False
            if running:
                fn(event)  # type: ignore[arg-type]
                return
            try:
                loop.call_soon_threadsafe(fn, event)  # type: ignore[arg-type]
            except RuntimeError:  # the loop is closed: nobody is listening any more
                log.warning("%s dropped: its event loop is closed", kind)
        return callback

    def _on_message_in(self, e: MessageEvent) -> None:
        """Queue ``e`` (not acknowledged yet); past the bound, stop reading the socket."""
        if self._closed:
            return  # never handed out, never acked; the broker sends it again
        self._queue.put_nowait(e)
        pump = self._client._driver.pump
        if pump is not None and self._queue.qsize() > self._options.inbound_queue_size:
            pump.pause_reading()

    def _on_subscribed(self, e: SubscribedEvent) -> None:
        pending = self._subacks.get(e.topic_filter)
        while pending:
            fut = pending.pop(0)
            if not fut.done():
                fut.set_result(e.response_code)
                return

    def _wake_idle(self, flushed: bool = True) -> None:
        for fut in self._idle:
            if not fut.done():
                fut.set_result(flushed)
        self._idle.clear()

    # ------------------------------------------------------------------ properties

    @property
    def options(self) -> Options:
        return self._options

    @property
    def client(self) -> Client:
        """The wrapped ``Client``; call it only from outside the loop (or via ``config``)."""
        return self._client

    @property
    def client_id(self) -> str:
        return self._client.client_id

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def session_present(self) -> bool:
        """The SessionPresent flag of the last CONNACK."""
        return self._client.config("SessionPresent") == "True"

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ calls

    async def connect(self) -> None:
        """Connect to ``options.address``; ``ConnectError`` on failure."""
        self._check()
        await self._off_loop_done()  # (a disconnect() under way or waiting ends first)
        o, c = self._options, self._check()
        await c._driver.connect_async(o.host, o.port, o.request_timeout_seconds,
                                      _connect_params(c))

    async def disconnect(self) -> None:
        """A clean DISCONNECT; the session stays usable (``connect()`` again)."""
        if await self._off_loop(self._check().disconnect):
            raise asyncio.CancelledError

    async def config(self, setting: str) -> str:
        """``Client.config``: ``"Name=Value"`` sets, ``"Name"`` reads; a started session's
        ``SessionStateFile`` (its file written and synced) in the executor, in its turn."""
        c = self._check(started=False)
        name, eq, _ = setting.partition("=") if isinstance(setting, str) else ("", "", "")
        if eq and self._started and name.strip().lower() == "sessionstatefile":
            return await self._in_turn(c, lambda: c.config(setting))
        return c.config(setting)

    async def _in_turn(self, c: Client, call: Callable[[], str]) -> str:
        """``call`` (a write of the whole state file: its syncs) in the session's executor,
        in the calls' turn, the loop's reads first (a hunt: 85-143 ms stops on a 20 ms card)."""
        out: list[str] = []

        def run() -> None:
            with c._driver.lock_between_reads():
                out.append(call())
        await self._turn.run(c._driver, run)
        return out[0]

    async def publish(self, topic: str, payload: str | bytes, qos: int = 1, *,
                      retain: bool | None = None, properties: Properties | None = None) -> int:
        """Publish (text is UTF-8); returns the packet id once the message is in the session
        (durable with a state file); it goes out now, or on connect."""
        c = self._check(publish=True)
        data = text_payload(payload) if isinstance(payload, str) else payload
        if qos and self._to_combiner(c):
            item = check_item(c, topic, qos, data, retain, properties)  # (its errors first)
            return (await self._spool(c, [item]))[0]
        # in the order awaited (nothing here awaits before the message is in the session but
        # a compaction due, off the loop: ``compacting.Turn``); always the group commit: the
        # fsync waits in the executor, not on the loop
        async with self._turn.if_due(c._driver, size_of(topic, data), bool(qos)):
            try:
                pid, token = c._publish_begin(topic, qos, data, retain, properties)
            except BaseException:
                c._driver.finish_stashed()
                raise
        if token is not None:  # SessionSync=always: concurrent publishes share the fdatasync
            await self._durable(c, (token,))
        return pid

    def _to_combiner(self, c: Client, size: int = 0, count: int = 1, held: bool = False
                     ) -> bool:
        """Whether a publish goes to the disk queue under ``SessionSync=always``, or is a
        batch of ``count`` messages whose records alone pass the state file's bound (its
        compaction would run inside it; not past calls waiting their turn, unless ``held``:
        its own), or comes after one still being stored (it must not overtake it)."""
        d = c._driver
        return self._combiner.busy or spooling(d.engine) and d.group_commit() or (
            count > 1 and (held or not self._turn.waiting) and d.passes_bound(size, count))

    def _spool(self, c: Client, items: list[Item]) -> asyncio.Future[list[int]]:
        """A call's messages (validated) bound for the disk queue, queued now: stored with
        the calls awaiting as one batch, by one executor job (``Combiner``: one fdatasync,
        none on the loop); the calls after them join them, so none overtakes them."""
        fut, start = self._combiner.add(items)
        if start:
            loop = asyncio.get_running_loop()
            d = c._driver
            try:
                self._spool_job = loop.run_in_executor(
                    d.spool_executor or d.executor, self._combiner.drain,
                    functools.partial(_on_loop, loop, c))
            except BaseException as exc:  # (no thread, the executor shut down): none stored
                self._combiner.abandon(exc)
                raise
        return asyncio.wrap_future(fut)

    async def publish_many(self, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest]
                           ) -> list[int]:
        """``Client.publish_many``: all of them in the session with one write and one sync
        (under ``SessionSync=always`` that fdatasync waits in the executor, not on the loop)."""
        c = self._check(publish=True)
        items = check_messages(c, messages)
        size, n = sum(len(i[0]) + len(i[1]) for i in items), len(items)
        if self._to_combiner(c, size, n):  # (stored by the executor job)
            return await self._spool(c, items) if items else []
        async with self._turn.if_due(c._driver, size, count=n):
            if self._to_combiner(c, size, n, held=True):  # (its turn come: past the bound)
                spooled = self._spool(c, items)
            else:
                spooled, (ids, tokens, rest) = None, store_checked(c, items, group=True)
                c._driver.finish(rest)
        if spooled is not None:
            return await spooled
        if tokens:
            await self._durable(c, tokens)
        return ids

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe; while connected, wait for the SUBACK (``MQTTSessionError`` if refused)."""
        c = self._check()
        delimiter = c.config("TopicDelimiter")
        filters = split_filters(topic_filter, delimiter)
        futures: list[tuple[str, asyncio.Future[int]]] = []
        if c.connected:
            for f in filters:
                fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self._subacks.setdefault(f, []).append(fut)
                futures.append((f, fut))
        try:
            async with self._turn.if_due(c._driver, record=False):  # (as unsubscribe)
                c.subscribe(topic_filter, qos)
            timeout = self._options.request_timeout_seconds
            for f, fut in futures:
                try:
                    code = await asyncio.wait_for(fut, timeout)
                except asyncio.TimeoutError:  # (3.12+: also with the SUBACK there at the deadline)
                    if not fut.done() or fut.cancelled():
                        raise MQTTSessionError(f"no SUBACK for {f!r} within {timeout} s") from None
                    code = fut.result()
                if code >= 0x80:
                    raise MQTTSessionError(f"the broker refused the subscription to {f!r}")
        finally:
            for f, fut in futures:
                fut.cancel()
                pending = self._subacks.get(f, [])
                if fut in pending:
                    pending.remove(fut)

    async def unsubscribe(self, topic_filter: str) -> None:
        c = self._check()
        async with self._turn.if_due(c._driver, record=False):  # (a compaction runs: after it)
            c.unsubscribe(topic_filter)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every outgoing QoS 1/2 message is acknowledged; False on timeout."""
        c = self._check()
        if not _held(c):
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._idle.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return not _held(c)
        finally:
            if fut in self._idle:
                self._idle.remove(fut)

    async def save_session(self) -> str:
        """``Client.save_session``: the state text (and the compacted state file, written in
        the executor, in the calls' turn)."""
        c = self._check()
        return await self._in_turn(c, c.save_session)

    async def receive(self, timeout: float | None = None) -> MessageEvent | None:
        """The next incoming message; None after ``timeout`` seconds or once closed.

        Acknowledges the messages handed out before (``ack()``) first.
        """
        if self._closing is not None:  # the queued ones are never acknowledged: the next session
            return None  # start gets them again (handed out now, they would come twice)
        await self.ack()
        try:  # (one waiting already: no task and timer for wait_for)
            item = self._queue.get_nowait() if not self._queue.empty() else \
                await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, _Closed) or self._closed:  # (closed while it waited: not handed
            self._queue.put_nowait(_CLOSED)  # out, the next session gets it; every later
            return None  # reader sees the end too)
        pump = self._client._driver.pump
        # reading goes on once half the bound is taken: toggling the socket's watch at each
        # message would cost two epoll changes a message
        if pump is not None and self._queue.qsize() <= self._options.inbound_queue_size // 2:
            pump.resume_reading()
        if item.qos > 0:
            self._handed.append(item)
        return item

    async def ack(self) -> None:
        """Acknowledge the messages handed out so far: PUBACK for QoS 1; QoS 2: the removal
        made durable, then PUBCOMP. ``receive()``, ``messages()`` and ``close()`` call it."""
        async with self._turn.if_due(self._client._driver, record=False):  # (as unsubscribe)
            self._ack_now()

    def _ack_now(self) -> None:
        handed, self._handed = self._handed, []
        if not self._closed and handed:
            self._client._driver.ack_many(handed)  # one fsync for their removals

    async def messages(self) -> AsyncIterator[MessageEvent]:
        """``async for msg in session.messages():`` until the session closes."""
        while (m := await self.receive()) is not None:
            yield m

    async def close(self) -> None:
        """Flush (up to ``request_timeout_seconds``) while connected, disconnect, release the
        state file (saved, compacted) and end ``messages()``; a publish called once it began
        gets ``UsageError``. Idempotent."""
        if self._closed:
            return
        if self._closing is not None:  # another task closes it: done when that one is
            await asyncio.shield(self._closing)
            return
        self._closing = closing = asyncio.get_running_loop().create_future()
        c = self._client
        cancelled = False
        try:
            try:
                await self.ack()  # taken; those still queued stay unacknowledged
                await self._off_loop_done()  # (a disconnect() under way: no flush after it)
                if c.connected and _held(c) and not await self.flush(
                        self._options.request_timeout_seconds):
                    log.warning("%s closes with %d unacknowledged messages",
                                c.client_id, _held(c))
            except asyncio.CancelledError:
                cancelled = True  # the flush cut short; never what follows (raised after it)
            tail = asyncio.ensure_future(self._syncs_settled())  # (never cut: a publish taken
            while not tail.done():  # back after the file closed could be in its snapshot)
                try:
                    await asyncio.shield(tail)
                except asyncio.CancelledError:
                    cancelled = True
            tail.result()
        finally:
            acked: Exception | None = None
            try:  # one a receive() already waiting handed out meanwhile (none after it:
                self._ack_now()  # closed, ``_on_message_in`` queues nothing more)
            except Exception as exc:  # (raised once closed)
                acked = exc
            self._closed = True
            try:
                try:  # without a state file: what it holds goes to the next (handover.py)
                    if self._state_file is None and not c.clean_session and self._started:
                        c.disconnect()
                        handover.keep(self._options.address, c)
                finally:
                    cancelled = await self._off_loop(c.close) or cancelled
            finally:
                self._queue.put_nowait(_CLOSED)
                self._wake_idle(False)  # flush() calls waiting: not all acknowledged
                closing.set_result(None)
        if cancelled:
            raise asyncio.CancelledError
        if acked is not None:
            raise acked

    async def _off_loop(self, call: Callable[[], None]) -> bool:
        """``call`` (``Client.restore_session``, ``disconnect`` or ``close``: reads, a
        DISCONNECT, a snapshot's fdatasync) in the executor, not on the loop (an
        ``AsyncGateway``'s: every session's), after the one under way (two at once would both
        stop the connection); never cut short. Whether the caller was cancelled meanwhile."""
        cancelled = False
        self._offs += 1
        if self._closing is not None:  # close()'s flush ends: no acks come once disconnected
            self._wake_idle(False)
        try:
            while (prev := self._ending) is not None and not prev.done():
                try:
                    await asyncio.wait([prev])
                except asyncio.CancelledError:
                    cancelled = True
            try:
                job = asyncio.get_running_loop().run_in_executor(
                    self._client._driver.executor, call)
            except RuntimeError:  # (the executor is shut down) here
                call()
                return cancelled
            self._ending = job
            while not job.done():
                try:
                    await asyncio.shield(job)
                except asyncio.CancelledError:
                    cancelled = True
            job.result()
            return cancelled
        finally:
            self._offs -= 1

    async def _off_loop_done(self) -> None:
        """Until no ``_off_loop`` call is under way or waiting for its turn."""
        while self._offs:
            prev = self._ending
            if prev is not None and not prev.done():
                await asyncio.wait([prev])
            else:
                await asyncio.sleep(0)

    async def _syncs_settled(self) -> None:
        """Publishes waiting for their sync end (released, or taken back and raised) before
        the file closes: one taken back after it could still be in the closing snapshot
        (up to ``request_timeout_seconds``); a gateway's session, its shared syncs."""
        deadline = asyncio.get_running_loop().time() + self._options.request_timeout_seconds
        group, d = self._group, self._client._driver
        while self._syncing or self._awaiting_sync or self._combiner.busy or (
                group is not None and group.pending(d) is not None) or d.releasing or \
                d.taking_back or d.settling or d.loop_turn.pending():
            left = deadline - asyncio.get_running_loop().time()
            job: asyncio.Future[Any] | None = (  # (a batch for the disk queue: its job)
                self._spool_job if self._combiner.busy else d.releasing or next(iter(
                    d.taking_back), None) or d.loop_turn.pending() or (
                    self._sync_job if group is None else group.pending(d)))
            if left <= 0:
                return
            if job is not None and not job.done():
                await asyncio.wait([job], timeout=left)
            else:
                await asyncio.sleep(0.001)

    async def __aenter__(self) -> AsyncSession:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "disconnected"
        return f"<AsyncSession {self.client_id!r} {state} on {self._options.address}>"
