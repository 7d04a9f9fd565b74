"""What a gateway's sessions share besides the store: the open files limit raised for their
sockets, one thread for their fdatasyncs (and an ``AsyncGateway``'s group commit over it),
and daemon threads for their TCP connects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar
from urllib.parse import quote

from .errors import PersistenceError, UsageError

if TYPE_CHECKING:
    from .client import Client
    from .driver import Driver
    from .durability import Answer
    from .sharedlog import SharedLog

__all__ = ["FD_RESERVE", "DaemonPool", "StoreSync", "SyncThread", "made_in_thread",
           "queue_name", "queue_path", "raise_fd_limit", "report_cancelled"]

log = logging.getLogger("mqttsession")

_T = TypeVar("_T")

def queue_name(client_id: str) -> str:
    """The file name of a session's disk queue (``.queue`` is added): its id %-encoded, and
    a long one cut, with a hash of the whole id, to fit the file system's 255 bytes; ``!``
    (never in an encoded id) marks a cut one, so no id's name is another's (``~`` was)."""
    name = quote(client_id, safe="")
    if len(name) <= 200:
        return name
    return f"{name[:160]}!{hashlib.sha256(client_id.encode('utf-8')).hexdigest()[:32]}"


def queue_path(state_dir: str, client_id: str) -> str:
    """Where a session's disk queue lives in a gateway's directory (``.queue`` is added)."""
    return os.path.join(state_dir, "queues", queue_name(client_id))


async def made_in_thread(make: Callable[[], _T], undo: Callable[[_T], None]) -> _T:
    """``make()`` in the loop's default executor, the loop free meanwhile. A cancelled wait
    lets it end, then ``undo``es what it made (a gateway's directory lock is not left held)."""
    lock = threading.Lock()
    wanted, made = True, None  # (both under ``lock``)

    def run() -> _T:
        nonlocal made
        result = make()
        with lock:
            if wanted:
                made = result
                return result
        undo(result)  # (abandoned while it was being made)
        return result

    job = asyncio.get_running_loop().run_in_executor(None, run)
    try:
        return await asyncio.shield(job)
    except BaseException:
        with lock:
            wanted, left = False, made
        job.add_done_callback(lambda j: j.cancelled() or j.exception())  # (seen: not logged)
        if left is not None:  # made, never taken (a cancel as it ended): on the loop, rare
            undo(left)
        raise


#: File descriptors a gateway needs beyond one a session (its store, the loop, the process's).
FD_RESERVE = 64


def raise_fd_limit(needed: int, least: int | None = None) -> int:
    """The soft limit on open files, raised to the hard limit when ``needed`` descriptors
    would pass it; ``UsageError`` when even the hard limit is below ``least`` (default
    ``needed``: what cannot do without). Returns the limit."""
    import resource  # noqa: PLC0415 - Unix only; a gateway elsewhere just does not raise it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return needed if soft == resource.RLIM_INFINITY else soft
    must = needed if least is None else least
    if hard != resource.RLIM_INFINITY and must > hard:
        raise UsageError(
            f"{must} file descriptors are needed (one a session and {FD_RESERVE} more), but"
            f" the hard limit on open files is {hard}: raise it (ulimit -Hn, or LimitNOFILE= in"
            " a systemd unit) or host fewer sessions in this process")
    # no hard limit (BSD's, macOS's; never Linux's): the soft one raised to what is needed, as
    # those refuse an unlimited soft limit on open files
    new = needed if hard == resource.RLIM_INFINITY else hard
    if soft >= new:  # at the hard limit already: said once (not "raised from N to N")
        if not _FD_WARNED:
            _FD_WARNED.append(needed)
            log.warning("open files limit %d is the hard limit; %d may be needed (three a"
                        " session whose disk queue spilled): raise it (ulimit -Hn)", soft, needed)
        return int(soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    log.info("open files limit raised from %d to %d (%d needed)", soft, new, needed)
    return int(new)


_FD_WARNED: list[int] = []  # (``raise_fd_limit``'s one warning a process)


class SyncThread:
    """The fdatasyncs of a gateway's sessions, one at a time in a thread of their own, never
    on the loop that reads every session's socket: a slow disk (an SD card's 2-20 ms) holds up
    only the packets that wait for the records, not the other sessions' traffic."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix="mqttsession-gateway-sync")

    def __call__(self, sync: Callable[[], None]) -> asyncio.Future[None]:
        """``sync`` run in the sync thread; its future on the running loop."""
        return asyncio.wrap_future(self.executor.submit(sync), loop=asyncio.get_running_loop())

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class DaemonPool(concurrent.futures.Executor):
    """Up to ``size`` daemon threads, started as jobs wait at once: a TCP connect to a dead
    server (``CONNECT_THREADS``) never holds the interpreter's exit after ``close()``, as a
    ``ThreadPoolExecutor``'s threads (joined at exit) would, for the connect's whole timeout."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads, self._idle, self._shut = 0, 0, False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[_T]:
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def job() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    fut.set_exception(exc)
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle == 0 and self._threads < self._size:
                threading.Thread(target=self._work, daemon=True,  # (raises: no thread to be
                                 name=f"{self._name}_{self._threads}").start()  # had: not queued)
                self._threads += 1
            else:
                self._idle -= 1
            self._jobs.put(job)
        return fut

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            for _ in range(self._threads):
                self._jobs.put(None)


class StoreSync:
    """``AsyncGateway``'s group commit: one executor job makes the shared log durable up to
    the furthest record any session waits for; then every session whose records it covered
    sends its held messages, and every publish waiting is answered, in one loop callback (one
    thread hop for all of them, not one per session or publish)."""

    def __init__(self, store: SharedLog, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._waiting: list[_Held] = []
        self._batch: list[_Held] = []  # the job's (none: no job under way)
        self._job: asyncio.Future[Exception | None] | None = None

    def wait_held(self, driver: Driver, tokens: tuple[tuple[int, int, int], ...]
                  ) -> asyncio.Future[Exception | None]:
        fut: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((driver, tokens, fut))
        if not self._batch:
            self._next()
        return fut

    def pending(self, driver: Driver) -> asyncio.Future[Exception | None] | None:
        """The job ``driver``'s held publishes wait for (``AsyncSession.close``)."""
        if any(d is driver for d, _, _ in self._waiting + self._batch):
            return self._job
        return None

    async def settle(self, waits: list[tuple[int, Client, tuple[int, int, int]]],
                     ids: list[int | None], errors: dict[int, Exception]) -> None:
        """``publish_many``'s held messages: one future for the last record, whose sync covers
        the others (one log); each session then writes its own. A failed sync takes each
        message back as its error; cancelled, each is released once the sync under way ends
        if durable, else taken back."""
        last_i, last_c, last_token = waits[-1]
        settled: set[int] = set()
        awaiting = last_i  # its future, cancelled, is the sync callback's to settle
        fut = self.wait_held(last_c._driver, (last_token,))  # noqa: SLF001
        drivers = {id(c._driver): c._driver for _, c, _ in waits}  # noqa: SLF001
        backs: dict[int, tuple[Driver, int, asyncio.Future[None]]] = {}  # taken back
        for d in drivers.values():  # (their close() waits: nothing saved before withdrawn)
            d.settling += 1
        try:
            err = await fut
            settled.add(last_i)
            done = {id(last_c._driver)}  # noqa: SLF001  (the sync's callback released it)
            for i, c, token in waits:
                d = c._driver  # noqa: SLF001
                if i != last_i and self._store.is_synced(token[1], token[2]):
                    if id(d) not in done:
                        done.add(id(d))
                        d.release_then(lambda: None)  # this session's held messages, in order
                    settled.add(i)
                    continue
                awaiting = i
                if i != last_i:
                    fut = self.wait_held(d, (token,))
                e = err if i == last_i else await fut
                settled.add(i)
                if e is not None:  # withdrawn now, the file rewritten off the loop
                    backs[i] = (d, token[0], d.take_back(token, e))
            for i, (_, _, job) in list(backs.items()):
                try:
                    await asyncio.shield(job)
                except Exception as exc:  # noqa: BLE001 - reported by publish_many
                    errors[i], ids[i] = exc, None
                del backs[i]
        finally:
            for d, seq, job in backs.values():  # cancelled: their errors to on_error
                d.orphan(job, seq)
            for d in drivers.values():
                d.settling -= 1
            for i, c, token in waits:
                if i not in settled and i != awaiting:  # cancelled: the sync under way
                    # decides (its callback releases each if durable, else takes it back)
                    self.wait_held(c._driver, (token,)).cancel()  # noqa: SLF001
                elif i not in settled and fut.done() and not fut.cancelled() and (
                        failed := fut.result()) is not None:
                    c._driver.take_back(token, failed, quiet=True)  # noqa: SLF001

    def _sync(self, gen: int, pos: int) -> Exception | None:
        try:
            self._store.sync_to(gen, pos)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting publish
            return exc
        return None

    def _next(self) -> None:
        batch, self._waiting = self._waiting, []
        self._batch, self._job = batch, None
        if not batch:
            return
        gen, pos = max(tokens[-1][1:] for _, tokens, _ in batch)
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._sync, gen, pos)
        job.add_done_callback(lambda f: self._done(batch, f))
        self._job = job

    def _done(self, batch: list[_Held], f: asyncio.Future[Exception | None]) -> None:
        try:
            err = f.result()
        except BaseException as exc:  # noqa: BLE001 - the job itself ended (shutdown)
            err = PersistenceError(None, f"the shared log sync did not run: {exc!r}")
        sessions: dict[int, tuple[Driver, list[Answer], bool]] = {}
        for driver, tokens, waiter in batch:  # (by session, each's in order)
            synced = self._store.is_synced(tokens[-1][1], tokens[-1][2])
            res = None if synced else err or PersistenceError(
                None, "a failed sync of the shared log cut the record")
            _, answers, durable = sessions.setdefault(id(driver), (driver, [], False))
            answers.append((tokens, waiter, res))
            sessions[id(driver)] = (driver, answers, durable or synced)
        for driver, answers, durable in sessions.values():
            if durable:  # its durable held messages out first, in order (``release_then``:
                driver.release_then(functools.partial(driver.answer, answers))  # in a
            else:  # thread while a disk-queue batch holds the session's lock)
                driver.answer(answers)
        self._next()


_Held = tuple["Driver", tuple[tuple[int, int, int], ...], "asyncio.Future[Exception | None]"]


def report_cancelled(errors: dict[int, Exception],
                     spooled: Sequence[tuple[int, asyncio.Future[list[int]]]],
                     driver_of: Callable[[int], Driver]) -> None:
    """A cancelled ``AsyncGateway.publish_many``: its caller gone, what failed (and what its
    disk-queue batches under way will fail) goes to each message's session's on_error."""
    def report(d: Driver, exc: BaseException) -> None:
        d.error(getattr(exc, "errno", None) or -1, f"publish_many (cancelled): {exc}")

    def reporter(d: Driver) -> Callable[[asyncio.Future[list[int]]], None]:
        return lambda f: None if f.cancelled() or (exc := f.exception()) is None \
            else report(d, exc)

    for i, exc in errors.items():
        report(driver_of(i), exc)
    for i, f in spooled:
        f.add_done_callback(reporter(driver_of(i)))
