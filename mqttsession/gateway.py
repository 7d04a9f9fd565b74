"""Many device sessions in one process: ``Gateway`` and its asyncio form ``AsyncGateway``.

A gateway speaks for many devices, each with its own MQTT identity and durable session.
``Gateway(state_dir)`` runs the connections of all its sessions on ONE asyncio loop in a thread
of its own (paho's socket callbacks, ``pump.AsyncioPump``, as ``AsyncSession`` does): no
network thread or timer thread per session; blocking TCP connects (with TLS and WebSocket
handshakes) wait in a pool of up to ``CONNECT_THREADS`` threads, so a server that drops SYNs
holds up no other session, and fdatasyncs run in a thread of their own, so the loop never waits
for the disk (the acks that depend on a sync wait for it, the other sessions' traffic does not). Each session is a
full ``Client`` (``gateway.client(client_id, ...)``); its events run on the gateway's thread,
so a callback that blocks holds up every session.
``AsyncGateway`` does the same on the running loop with ``AsyncSession`` values.

The sessions' records go to one store in ``state_dir`` (``sharedlog.SharedLog``): file
descriptors grow with sockets only, and one fdatasync covers the records of every session
waiting on it. Connection attempts, the first ones and every reconnect, take turns at
``connect_rate`` a second, and reconnect backoff is jittered per session, so sessions cut off
together (a broker restart) come back spread out, not all at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Callable, Coroutine, Iterable, TypeVar, Union, cast

from .actions import Action
from .aio import AsyncSession
from .client import Client, _connect_params, _target
from .publishing import check_messages, store_items
from .combining import Item, spooling
from .errors import (ConnectError, MQTTSessionError, PersistenceError, PublishManyError,
                     UsageError)
from .events import ErrorEvent, PublishRequest
from .forgotten import Forgotten
from .hosting import (FD_RESERVE, DaemonPool, StoreSync, SyncThread, made_in_thread,
                      queue_path, raise_fd_limit, report_cancelled)
from .options import Options
from .pacing import Pacer
from .queuelimits import DropLog
from .recovery import _fsync_dir, check_dir, makedirs_durable, own_dir, refuse_foreign
from .spool import QUEUE_SUFFIX
from .sharedlog import SharedLog
from .statelock import forks
from .turns import _Request, run_batch

__all__ = ["AsyncGateway", "Gateway", "raise_fd_limit"]

log = logging.getLogger("mqttsession")

#: Connection attempts a second, by default (the first connects and every reconnect).
CONNECT_RATE = 200.0
#: Blocking TCP connects (TLS, WebSocket handshakes) that may wait at once: one each to a dead
#: server (up to 5 s a reconnect, ``connect()``'s timeout a first connect) leaves the rest.
CONNECT_THREADS = 32
#: An ``AsyncGateway``'s threads storing its sessions' disk-queue batches side by side.
SPOOL_THREADS = 8

_T = TypeVar("_T")

#: A message for ``Gateway.publish_many``: its session, then what ``Client.publish_many`` takes.
GatewayMessage = Union[tuple[Client, str, int, Union[bytes, str]], tuple[Client, PublishRequest]]
#: The same for ``AsyncGateway.publish_many``, with its ``AsyncSession``.
AsyncGatewayMessage = Union[tuple[AsyncSession, str, int, Union[bytes, str]],
                            tuple[AsyncSession, PublishRequest]]


def _released(c: Client | None) -> bool:
    """A session closed whose view of the store is released (None: never made, a failed
    ``session()``)."""
    return c is not None and c._closed and c._file.journal is None  # noqa: SLF001


class _Sessions:
    """What both gateway forms share: the state directory, the pacer, the sessions' count."""

    def __init__(self, state_dir: str | os.PathLike[str], connect_rate: float,
                 hold_publishes: bool = False) -> None:
        # one form for the log, the queues and their directory syncs (``check_dir``)
        self.state_dir = check_dir(state_dir)
        try:
            makedirs_durable(self.state_dir)  # (power cuts)
            refuse_foreign(os.stat(self.state_dir), self.state_dir)  # (a symlink to it: as given)
            makedirs_durable(os.path.join(self.state_dir, "queues"))  # (nothing made before)
            own_dir(os.path.join(self.state_dir, "queues"))
        except OSError as exc:  # (a full disk, a file in the way)
            raise PersistenceError(exc.errno, f"cannot make {self.state_dir}: {exc}") from exc
        #: Connection attempts of every session take turns at ``connect_rate`` a second.
        self.pacer = Pacer(connect_rate)
        #: Where they wait: a server that never answers holds one thread, not every session.
        self._connects = DaemonPool(CONNECT_THREADS, "mqttsession-gateway-connect")
        self._ids: set[str] = set()
        self._dropping: set[str] = set()  # ids a ``forget`` holds
        self._drops = DropLog(shared=True, lock=threading.Lock())  # its sessions' dropped messages in the log
        self._lock = threading.Lock()  # (``Gateway``: its sessions' map, and the ids with it)
        self._closed = False
        self._born = forks()  # (in a fork()'s child: the parent's; ``_foreign``)
        #: The sessions' store: one log in ``state_dir`` (``StateError`` when it is damaged:
        #: kept aside; ``StateLockedError`` when another process has the directory).
        self.store = SharedLog(self.state_dir, hold_publishes=hold_publishes)
        try:  #: the ids ``forget`` dropped: their next sessions start clean
            self.forgotten = Forgotten(self.state_dir)
        except BaseException:
            self.store.close()
            raise
        self._syncs = SyncThread()

    def _foreign(self) -> bool:
        """Made before a fork() that made this process: the parent's (its store's lock and
        files, its sessions' sockets), never touched here."""
        return self._born != forks()

    def _add(self, client_id: str) -> None:
        if self._foreign():
            raise UsageError("a gateway made before fork() belongs to the parent process:"
                             " make a new Gateway in the child")
        if self._closed:
            raise UsageError("the gateway is closed")
        if not client_id or not isinstance(client_id, str):
            raise UsageError("each session of a gateway needs its own client_id")
        # sessions closed, their views of the store released: forgotten (their ids may be asked
        # for again; a device that comes and goes costs neither memory nor a descriptor)
        for gone in [i for i in self._ids if _released(self._hosted(i))]:
            self._ids.discard(gone)
            self._forget(gone)
        if client_id in self._ids:
            raise UsageError(f"a forget() of {client_id!r} is under way" if client_id in
                             self._dropping else f"the gateway already has a session {client_id!r}")
        # a socket each, and one with a disk queue holds its open segment and that segment's
        # mapping too (two more): raised for those, refused only below the sockets' need
        n = len(self._ids) + 1
        raise_fd_limit(3 * n + FD_RESERVE, n + FD_RESERVE)
        self._ids.add(client_id)

    def _hosted(self, client_id: str) -> Client | None:
        """The ``Client`` of the session ``client_id`` (None: none)."""
        raise NotImplementedError

    def _forget(self, client_id: str) -> None:
        """A closed session leaves the gateway's map."""
        raise NotImplementedError

    def _share(self, c: Client) -> str:
        """Make ``c``'s records go to the gateway's store; its ``SessionStateFile`` name."""
        f = c._driver.file  # noqa: SLF001
        c._driver.background_sync = self._syncs  # noqa: SLF001
        c._driver.engine.drops = self._drops  # noqa: SLF001  (one log of drops: no flood)
        f.shared = self.store
        f.queue_path = queue_path(self.state_dir, c.client_id)
        c._driver.clean_once = c.client_id in self.forgotten.ids  # noqa: SLF001
        c._driver.on_clean_start = functools.partial(self.forgotten.discard_later, c.client_id)  # noqa: SLF001
        return f"{self.store.path}#{c.client_id}"

    def stored_sessions(self) -> list[str]:
        """The client ids whose sessions the store holds (hosted now or not)."""
        return self.store.sessions()

    def _reserve(self, client_id: str) -> None:
        """``forget``'s hold on ``client_id``: no session of it starts until ``_drop_stored``."""
        with self._lock:
            if client_id in self._ids and not _released(self._hosted(client_id)) \
                    and client_id not in self._dropping:
                raise UsageError(f"the gateway hosts a session {client_id!r}: close it before"
                                 " forget()")
            self._add(client_id)
            self._dropping.add(client_id)

    def _drop_stored(self, client_id: str) -> bool:
        """``forget`` (``_reserve`` held the id): the disk queue deleted, then the records out
        of the store (synced); the id let go."""
        try:
            queue = queue_path(self.state_dir, client_id) + QUEUE_SUFFIX
            try:
                if os.path.lexists(queue):  # (first: a cut leaves a session to forget again)
                    shutil.rmtree(queue)
                    _fsync_dir(queue)
                if not self.store.has(client_id):
                    return False
                self.forgotten.add(client_id)  # (its next session starts clean: before the
                # session goes, so a cut between leaves it to forget again)
                view = self.store.session(client_id)
            except OSError as exc:
                raise PersistenceError(exc.errno, f"cannot forget {client_id!r}: {exc}") from exc
            try:
                return view.discard()
            finally:
                view.close()
        finally:
            with self._lock:
                self._ids.discard(client_id)
                self._dropping.discard(client_id)


def _locked(c: Client, topic: str, qos: int, payload: bytes, retain: bool, props: bytes
            ) -> Callable[[], tuple[tuple[int, list[Action]], tuple[int, int, int] | None]]:
    """One of ``publish_many``'s messages stored, under its session's lock (a group commit's:
    with ``SessionSync=always`` a token for the sync it waits for)."""

    def locked() -> tuple[tuple[int, list[Action]], tuple[int, int, int] | None]:
        with c._lock:  # noqa: SLF001  (an RLock: Turns may hold it already)
            return c._publish_locked(topic, qos, payload, retain, props, True)  # noqa: SLF001
    return locked


def _spool_many(c: Client, items: list[Item]) -> list[int | Exception]:
    """A session's messages bound for its disk queue, as one ``publish_many`` (one
    fdatasync); refused (it would drop messages to make room) or failed, one at a time, each
    its own fate: each message's packet id or error."""
    ids: list[int] = []
    try:
        after = store_items(c, items, len(items) > 1, ids, "publish_many")
    except Exception as exc:  # noqa: BLE001 - one message: its error; more: each alone
        if ids:  # (raised once stored: stored)
            return list(ids)
        if len(items) == 1:
            return [exc]
        return [got for item in items for got in _spool_many(c, [item])]
    after()
    return list(ids)


class Gateway(_Sessions):
    """Hosts any number of sessions on one loop thread; ``with Gateway(dir) as gw:`` closes
    them all (each disconnected cleanly, its session kept) and stops the loop."""

    def __init__(self, state_dir: str | os.PathLike[str], *,
                 connect_rate: float = CONNECT_RATE) -> None:
        # a group commit's records (``publish_many``; threads sharing a session) wait in
        # memory for the sync that covers them, which writes every session's with one write
        super().__init__(state_dir, connect_rate, hold_publishes=True)
        self._clients: dict[str, Client] = {}
        try:
            self._loop = self.loop = asyncio.new_event_loop()  # (``Host.loop``)
            # the loop's other jobs (an interval sync, a disk-queue segment's removal)
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="mqttsession-gateway-jobs")
            self._loop.set_default_executor(self._executor)
            started = threading.Event()
            #: The thread that runs every session's connection and events.
            self.thread = threading.Thread(target=self._run_loop, args=(started,),
                                           name="mqttsession-gateway", daemon=True)
            self.thread.start()
        except BaseException as exc:  # (no file descriptor, no thread): the store released
            self.store.close()  # (its lock too: a later Gateway on the directory may run)
            if getattr(self, "_loop", None) is not None:
                self._loop.close()
            if isinstance(exc, OSError):
                raise PersistenceError(exc.errno, f"cannot start the gateway: {exc}") from exc
            if isinstance(exc, RuntimeError):  # ("can't start new thread")
                raise MQTTSessionError(f"cannot start the gateway's thread: {exc}") from exc
            raise
        started.wait()

    def _run_loop(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(started.set)
        self._loop.run_forever()

    # ------------------------------------------------------------------ the Host of drivers

    def run(self, coro: Coroutine[Any, Any, None], timeout: float | None) -> None:
        """Run ``coro`` on the gateway's loop and wait for it (``Client.connect``)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise UsageError("connect() inside an event callback of a gateway session would"
                             " wait forever: call it from another thread")
        if not self._loop.is_running():
            coro.close()
            raise UsageError("the gateway is closed")
        self._wait(asyncio.run_coroutine_threadsafe(coro, self._loop), timeout)

    def _wait(self, fut: concurrent.futures.Future[_T], timeout: float | None) -> _T:
        """``fut``'s result; ``ConnectError`` when the gateway closes first (its loop's tasks
        cancelled, or the loop stopped before it ran)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return fut.result(1.0 if end is None else min(1.0, max(0.0, end - time.monotonic())))
            except concurrent.futures.CancelledError:
                raise ConnectError("the gateway closed while connecting") from None
            except RuntimeError as exc:  # ("can't start new thread": the connect pool's)
                raise ConnectError(f"cannot connect: {exc}") from exc
            except concurrent.futures.TimeoutError:
                if end is not None and time.monotonic() >= end:
                    raise
                if not self._loop.is_running():
                    fut.cancel()
                    raise ConnectError("the gateway closed while connecting") from None

    # ------------------------------------------------------------------ sessions

    def client(self, client_id: str, *, on_error: Callable[[ErrorEvent], None] | None = None,
               **kwargs: Any) -> Client:
        """A session of this gateway: a ``Client`` built with these keyword arguments, its
        session restored from the gateway's store (procedure 1: found there, resumed on
        connect). Its connection and events run on the gateway's thread. ``on_error`` is set
        before the restore, so what it found (records a cut took, a damaged segment) is told."""
        if kwargs.get("clean_session", False) is not False:  # (restored: it would be False)
            raise UsageError("a gateway's sessions are persistent (its store keeps them):"
                             " clean_session=True is for a Client of its own")
        with self._lock:
            self._add(client_id)
            c = None
            try:
                c = Client(client_id=client_id, **kwargs)
                c.on_error = on_error
                c._driver.host, c._driver.pacer = self, self.pacer  # noqa: SLF001
                c._driver.connects = self._connects  # noqa: SLF001
                c.config(f"SessionStateFile={self._share(c)}")
                c.restore_session("")
            except BaseException:
                self._ids.discard(client_id)
                if c is not None:  # its view of the store released: the id can be asked again
                    with contextlib.suppress(Exception):
                        c._file.close()  # noqa: SLF001
                raise
            self._clients[client_id] = c
            return c

    def _hosted(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def forget(self, client_id: str) -> bool:
        """Drop the stored session of ``client_id`` for good (a device retired): its disk
        queue deleted, then its records out of the store (synced); its held messages are
        never sent, and the next session of the id asks for a clean start (``forgotten``), so
        the broker's session goes too. Not while this gateway hosts it
        (``UsageError``: close that session first). False when the store held none. Copies
        set aside before (``*.damaged-*``, ``aside/``) are kept."""
        self._reserve(client_id)
        return self._drop_stored(client_id)

    def _forget(self, client_id: str) -> None:
        self._clients.pop(client_id, None)

    @property
    def clients(self) -> dict[str, Client]:
        """The sessions, by client id (a copy)."""
        with self._lock:
            return dict(self._clients)

    def connect_all(self, host: str = "localhost", port: int = 1883,
                    timeout: float = 30.0) -> dict[str, ConnectError]:
        """Connect every session not connected nor connecting (reconnecting: left to it),
        together (at ``connect_rate``); those that failed, with their errors (one whose link
        was lost under ``AutoReconnect=False`` among them). ``timeout`` per session and server."""
        host, port, timeout = _target(host, port, timeout)  # (``UsageError``, as connect())
        todo = [c for c in self.clients.values() if c._driver.conn is None and not c._closed]  # noqa: SLF001
        dead = {c.client_id: ConnectError("its connection was lost and AutoReconnect is off:"
                                          " disconnect() it, then connect() again")
                for c in self.clients.values() if not c._closed and c._driver.lost_for_good()}  # noqa: SLF001

        async def each(c: Client) -> None:
            await c._driver.connect_async(host, port, timeout, _connect_params(c))  # noqa: SLF001

        async def every() -> list[BaseException | None]:
            return await asyncio.gather(*(each(c) for c in todo), return_exceptions=True)

        if threading.current_thread() is self.thread:
            raise UsageError("connect_all() inside an event callback would wait forever")
        if not self._loop.is_running():
            raise UsageError("the gateway is closed")
        results = self._wait(asyncio.run_coroutine_threadsafe(every(), self._loop), None)
        failed: dict[str, ConnectError] = dead
        for c, r in zip(todo, results):
            if isinstance(r, ConnectError):
                failed[c.client_id] = r
            elif isinstance(r, BaseException):
                raise r
        return failed

    def publish_many(self, messages: Iterable[GatewayMessage]) -> list[int]:
        """Publish the messages of several sessions together: under ``SessionSync=always``
        ONE fdatasync makes all of them durable before this returns (the group commit across
        sessions, from one thread; ``publish_data`` in a loop pays one a message). Each is
        ``(client, topic, qos, data)`` or ``(client, PublishRequest)``, ``client`` a session
        of this gateway; each session's QoS 1/2 messages go out in the order given (QoS 0 at
        once, as ``Client.publish_many``'s). Returns their packet ids.

        A bad message (topic, QoS, type: ``UsageError``) raises before any is stored. One its
        session refuses (over its ``MaxMessageSize``, ``QueueFullError``, ``PersistenceError``,
        closed) does not stop the others: once durable, ``PublishManyError`` says which.
        """
        batch: list[_Request] = []
        places: list[int] = []  # each request's message's index
        first: dict[int, int] = {}  # a session's place: its first message's index
        # sessions bound for their disk queue (``always``): theirs as one publish_many each
        spools: dict[int, tuple[Client, list[int], list[Item]]] = {}
        n = 0
        for n, m in enumerate(messages):
            c = m[0] if isinstance(m, tuple) and m else None
            # (one of its sessions, closed too: forgotten since, it fails alone below)
            if not isinstance(c, Client) or c._driver.host is not self:  # noqa: SLF001
                raise UsageError("publish_many takes (client, topic, qos, data) or (client,"
                                 " PublishRequest) tuples, client a session of this gateway")
            item = check_messages(c, [m[1] if len(m) == 2 else m[1:]])[0]
            d = c._driver  # noqa: SLF001
            if item[2] and d.group_commit() and (id(d) in spools or spooling(d.engine)):
                spools.setdefault(id(d), (c, [], []))[1].append(n)
                spools[id(d)][2].append(item)
                continue
            topic, payload, qos, retain, props = item
            batch.append(_Request(d, _locked(c, topic, qos, payload, retain, props)))
            places.append(n)
            first.setdefault(id(d), len(batch) - 1)
        order = sorted(range(len(batch)), key=lambda i: first[id(batch[i].owner)])
        run_batch([batch[i] for i in order])  # each session's together, in its order
        ids: list[int | None] = [None] * (n + 1 if places or spools else 0)
        errors: dict[int, Exception] = {}
        for i, r in zip(places, batch):
            if r.result is not None:
                ids[i], rest = cast("tuple[int, list[Action]]", r.result[0])
                r.owner.finish(rest)
            if r.error is not None:
                errors[i], ids[i] = r.error, None
        for c, where, items in spools.values():
            for i, got in zip(where, _spool_many(c, items)):
                if isinstance(got, Exception):
                    errors[i] = got
                else:
                    ids[i] = got
        if errors:
            raise PublishManyError(ids, errors)
        return cast("list[int]", ids)

    def close(self) -> None:
        """Close every session (a clean DISCONNECT; each session stays in the store) and stop
        the loop. Idempotent. Not from an event callback (the gateway's thread: it would
        have to wait for itself): ``UsageError``."""
        if threading.current_thread() is self.thread:
            raise UsageError("Gateway.close() inside an event callback would wait for itself;"
                             " call it from another thread")
        if self._foreign():
            self._closed = True
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients = list(self._clients.values())
        try:
            for c in clients:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - the others still close
                    log.exception("closing gateway session %r", c.client_id)
        finally:
            self._syncs.close()  # (their futures are answered on the loop, still running)
            if self._loop.is_running():
                asyncio.run_coroutine_threadsafe(self._wind_down(), self._loop)
            self.thread.join(10.0)
            if not self.thread.is_alive():
                self._loop.close()
            self._executor.shutdown(wait=False)
            self._connects.shutdown(wait=False)
            self.forgotten.close()
            self.store.close()

    async def _wind_down(self) -> None:
        """The loop's last tasks (a connect waiting) cancelled and run out; the loop stops."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        asyncio.get_running_loop().stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Gateway {self.state_dir!r} {len(self._ids)} sessions>"


class AsyncGateway(_Sessions):
    """The asyncio form: sessions are ``AsyncSession`` values on the running loop; threads of
    the gateway's own run their blocking TCP connects (``CONNECT_THREADS`` at once), and one
    more their fdatasyncs, one at a time. ``async with AsyncGateway(dir) as gw:`` closes them all."""

    def __init__(self, state_dir: str | os.PathLike[str], *,
                 connect_rate: float = CONNECT_RATE) -> None:
        # the loop never writes the records of ``always`` publishes: the sync thread does,
        # every session's in one write before its fdatasync
        super().__init__(state_dir, connect_rate, hold_publishes=True)
        self._sessions: dict[str, AsyncSession] = {}
        self._forgetting: set[asyncio.Future[bool]] = set()  # ``forget`` jobs under way
        # the loop's other jobs (a SessionSync=interval sync, a disk-queue segment's removal)
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="mqttsession-gateway-jobs")
        # and the fdatasyncs in the sync thread (one covers every session's records before it);
        # sessions bound for their disk queues store their batches side by side (each its
        # own file to sync; one session's batches one at a time: ``Combiner``)
        self._sync = StoreSync(self.store, self._syncs.executor)
        self._spools = ThreadPoolExecutor(max_workers=SPOOL_THREADS,
                                          thread_name_prefix="mqttsession-gateway-spool")

    @classmethod
    async def open(cls, state_dir: str | os.PathLike[str], *,
                   connect_rate: float = CONNECT_RATE) -> AsyncGateway:
        """``AsyncGateway(state_dir)`` made in a thread: the directory's making and syncs and
        the store's reading (tens of milliseconds, more for a long log) never stop the loop."""
        return await made_in_thread(functools.partial(cls, state_dir, connect_rate=connect_rate),
                                    cls._release)

    def _hosted(self, client_id: str) -> Client | None:
        s = self._sessions.get(client_id)
        return None if s is None else s.client

    def _forget(self, client_id: str) -> None:
        self._sessions.pop(client_id, None)

    async def forget(self, client_id: str) -> bool:
        """``Gateway.forget`` off the loop (its deletions and fdatasync run in the gateway's
        jobs thread)."""
        self._reserve(client_id)  # (on the loop: refused here, or held until the job ends)
        try:
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, self._drop_stored, client_id)
        except BaseException:
            with self._lock:
                self._ids.discard(client_id)
                self._dropping.discard(client_id)
            raise
        self._forgetting.add(job)  # (close() waits for it before it closes the store)
        try:
            return await asyncio.shield(job)
        finally:
            if job.done():
                self._forgetting.discard(job)

    async def session(self, client_id: str, options: Options | None = None, *,
                      session_sync: str | None = None, connect: bool = True) -> AsyncSession:
        """A started session of this gateway (restored from its store; connected unless
        ``connect=False``): ``AsyncSession`` with these arguments."""
        self._add(client_id)
        try:
            s = AsyncSession(options, client_id=client_id, clean_session=False,
                             state_file=f"{self.store.path}#{client_id}",
                             session_sync=session_sync)
            s.client._driver.pacer = self.pacer  # noqa: SLF001
            s.client._driver.executor = self._executor  # noqa: SLF001
            s.client._driver.spool_executor = self._spools  # noqa: SLF001
            s.client._driver.connects = self._connects  # noqa: SLF001
            s._group = self._sync  # noqa: SLF001
            self._share(s.client)
            self._sessions[client_id] = s  # (before its start: close() ends that start too)
            await s.start(connect=connect)
        except BaseException:
            self._ids.discard(client_id)
            self._sessions.pop(client_id, None)
            raise
        return s

    async def publish_many(self, messages: Iterable[AsyncGatewayMessage]) -> list[int]:
        """``Gateway.publish_many`` on the loop: ``(session, topic, qos, data)`` or ``(session,
        PublishRequest)`` messages of several sessions stored together, ONE fdatasync and one
        await for all of them under ``SessionSync=always``; their packet ids. ``UsageError``
        before anything is stored; ``PublishManyError`` for the messages a session could not
        store, once the others are durable."""
        items = []
        for m in messages:
            s = m[0] if isinstance(m, tuple) and m else None
            if not isinstance(s, AsyncSession) or s._group is not self._sync:  # noqa: SLF001
                raise UsageError("publish_many takes (session, topic, qos, data) or (session,"
                                 " PublishRequest) tuples, session one of this gateway's")
            items.append((s, check_messages(s.client, [m[1] if len(m) == 2 else m[1:]])[0]))
        ids: list[int | None] = [None] * len(items)
        errors: dict[int, Exception] = {}
        waits: list[tuple[int, Client, tuple[int, int, int]]] = []
        spooled: list[tuple[int, asyncio.Future[list[int]]]] = []  # (its session's batches)
        sizes: dict[int, tuple[AsyncSession, int, int]] = {}  # (bytes and messages: a
        for s, (topic, payload, qos, _, _) in items:  # compaction or reservation due, ahead)
            _, size, n = sizes.get(id(s), (s, 0, 0))
            sizes[id(s)] = (s, size + len(topic) + len(payload) * bool(qos), n + 1)

        def store(i: int) -> None:
            s, (topic, payload, qos, retain, props) = items[i]
            c = s.client
            try:  # (closing or closed: refused as ``AsyncSession.publish``)
                s._check(publish=True)  # noqa: SLF001
            except UsageError as exc:
                errors[i] = exc
                return
            if qos and s._to_combiner(c, *sizes[id(s)][1:], held=True):  # noqa: SLF001  (off the loop)
                spooled.append((i, s._spool(c, [(topic, payload, qos, retain, props)])))  # noqa: SLF001
                return
            try:
                (pid, rest), token = _locked(c, topic, qos, payload, retain, props)()
            except Exception as exc:  # this session's to report; the others go on
                errors[i] = exc
                return
            c._driver.finish(rest)  # noqa: SLF001
            ids[i] = pid
            if token is not None:
                waits.append((i, c, token))

        cancelled = False
        async with contextlib.AsyncExitStack() as turns:  # (each session's in order, by id:
            # every one's, so none has a later call overtake this one while it waits)
            for s, size, n in sorted(sizes.values(), key=lambda x: id(x[0])):
                await turns.enter_async_context(s._turn.held(s.client._driver, size, free=False,  # noqa: SLF001
                                                             count=n))
            later: dict[int, list[int]] = {}  # a session whose lock a disk-queue batch holds:
            for i, (s, _) in enumerate(items):  # its messages stored once it is free, off the
                if id(s) in later or s.client._driver.lock_busy():  # loop (a review: 124-185
                    later.setdefault(id(s), []).append(i)  # ms stops); never cut in between
                else:
                    store(i)
            for idxs in later.values():
                while items[idxs[0]][0].client._driver.lock_busy():
                    try:
                        await asyncio.sleep(0.001)
                    except asyncio.CancelledError:
                        cancelled = True  # (raised once every message is stored and settled)
                for i in idxs:
                    store(i)
        done = 0
        try:
            if waits:
                await self._sync.settle(waits, ids, errors)
            for i, f in spooled:
                try:
                    ids[i] = (await asyncio.shield(f))[0]
                except Exception as exc:  # noqa: BLE001 - reported by publish_many
                    errors[i] = exc
                done += 1
        except asyncio.CancelledError:  # its failures to on_error: nobody else hears of them
            report_cancelled(errors, spooled[done:], lambda i: items[i][0].client._driver)
            raise
        if cancelled:
            report_cancelled(errors, [], lambda i: items[i][0].client._driver)
            raise asyncio.CancelledError
        if errors:
            raise PublishManyError(ids, errors)
        return cast("list[int]", ids)

    @property
    def sessions(self) -> dict[str, AsyncSession]:
        """The sessions, by client id (a copy)."""
        return dict(self._sessions)

    async def close(self) -> None:
        """Close every session (flushed, disconnected, kept in the store). Idempotent."""
        if self._closed or self._foreign():
            return
        self._closed = True
        try:
            sessions = list(self._sessions.values())  # (one failing to start leaves it)
            results = await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
            await asyncio.gather(*self._forgetting, return_exceptions=True)
            for s, r in zip(sessions, results):
                if isinstance(r, BaseException):
                    log.error("closing gateway session %r: %r", s.client_id, r)
        finally:
            self._release()

    def _release(self) -> None:
        """Its threads ended, its store and the directory's lock released."""
        self._closed = True
        self._executor.shutdown(wait=False)
        self._spools.shutdown(wait=False)
        self._connects.shutdown(wait=False)
        self._syncs.close()
        self.forgotten.close()  # (a clean start's note: one write, seldom under way)
        self.store.close()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncGateway {self.state_dir!r} {len(self._ids)} sessions>"
