"""Publishes bound for the disk queue, stored together under ``SessionSync=always``.

A message published while the session holds ``QueueInMemory`` messages (or has some in its
disk queue) goes to the disk queue, whose append is made durable before the publish returns
(persistence point 1). The group commit of the journal (``turns``, ``AsyncSession``'s sync
job) does not reach there: each such publish paid one fdatasync, whatever the concurrency,
and an ``AsyncSession``'s paid it on its event loop. Here the publishes of several threads
(or concurrent ``await session.publish`` / ``publish_many`` calls) queue, and one of them (or
the executor) stores every one queued as ONE batch, the way ``publish_many`` does: one record,
one write, one fdatasync; the publishes that queue meanwhile form the next batch. A batch the
store refuses (it would have to drop messages to make room: ``Alone``), or that fails (no room
for all of them, a full disk), is stored one publish at a time, so that each publish meets the
fate it would have met alone. Each publish gets its packet ids before the callbacks the store
made run (``on_message_dropped``...): an interrupt in one of those never tells a publish whose
message is on disk that it failed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from .errors import PersistenceError
from .validation import topic_bytes

__all__ = ["Alone", "Combiner", "Item", "needs_room", "run_all", "spooling"]

#: A message as ``publish_many`` stores it: topic, payload, QoS, retain, packed properties.
Item = tuple[str, bytes, int, bool, bytes]
After = Callable[[], None]  # the callbacks a store made, run once its publishes have their ids
#: ``store(items, batch, got)``: the messages as one ``publish_many``, their packet ids put in
#: ``got`` once their records are durable (an interrupt after that point loses none); the
#: callbacks it made returned. ``batch``: several calls together, which it may refuse (``Alone``)
Store = Callable[[list[Item], bool, list[int]], After]
_Entry = tuple[list[Item], "Future[list[int]]"]
_POLL = 0.00005  # seconds between looks at the queue while a batch gathers


class Alone(Exception):
    """Raised by a store given a batch it must not take whole: its publishes go one by one."""


def spooling(engine: Any) -> bool:
    """Whether a publish now goes to ``engine``'s disk queue (``Outgoing.publish``'s test,
    read without the session lock: it only chooses the path, both of which are right)."""
    sp, st = engine.spool, engine.state
    limit = engine.settings.queue_in_memory
    return bool(sp is not None and sp.ready and (st.spooled or limit and len(st.outgoing) >= limit))


def needs_room(engine: Any, items: list[Item]) -> bool:
    """Whether storing ``items`` together would first make room (``QueueFullPolicy``): then
    each is stored alone, as it would have been (a batch that failed after its drops would
    have dropped messages for publishes that never stored anything)."""
    s, st = engine.settings, engine.state
    n, size = len(items), sum(len(p) + topic_bytes(t) + len(x) for t, p, _q, _r, x in items)
    return bool(s.max_queued_messages and st.held + n > s.max_queued_messages
                or s.max_queued_bytes and st.held_bytes + size > s.max_queued_bytes)


class Combiner:
    """The publishes of one session waiting to be stored together; each queued entry is one
    call's messages (one for ``publish``, a ``publish_many``'s all), stored together or not
    at all."""

    def __init__(self) -> None:
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._storing = False  # a batch is being stored (by a publisher, or the executor)
        self._holder = 0  # the thread storing it (``threading.get_ident``), 0: none

    @property
    def busy(self) -> bool:
        """Publishes queued or being stored: a later publish joins them, so that it never
        overtakes them into the session."""
        return self._storing or bool(self._queue)

    def publish(self, item: Item, store: Store,
                gather: Callable[[], tuple[int, float]] | None = None) -> int:
        """``item`` stored with the others queued (a publisher's thread); its packet id.
        The first thread to find no batch under way stores one (its own message in it); the
        others sleep until theirs is stored, or until the batch under way ends and one of
        them takes the next. ``gather``: (publishers under way, an fdatasync's seconds): the
        thread that stores first waits, half an fdatasync at most, for the publishers the
        last batch released to queue again (``Turns._gather``'s rule)."""
        if self._holder == threading.get_ident():
            # a callback the batch runs (on_message_dropped, on_error) publishes: stored
            # alone (queued, it would wait for this very batch)
            got: list[int] = []
            store([item], False, got)()
            return got[0]
        fut: Future[list[int]] = Future()
        with self._cond:
            self._queue.append(([item], fut))
        try:
            while not fut.done():
                with self._cond:
                    if self._storing:
                        self._cond.wait()
                        continue
                    if fut.done():
                        break
                    self._storing = True
                try:
                    if gather is not None:
                        self._gather(*gather())
                    self._store(store)
                finally:
                    with self._cond:
                        self._storing = False
                        self._cond.notify_all()
        except BaseException:  # (KeyboardInterrupt) not taken yet: never stored
            with self._cond:
                mine = [i for i, e in enumerate(self._queue) if e[1] is fut]
                if mine:  # (by identity: two equal messages are two publishes)
                    del self._queue[mine[0]]
            raise
        return fut.result()[0]

    def add(self, items: list[Item]) -> tuple[Future[list[int]], bool]:
        """``items`` (one call's) queued by an event loop; with True when no batch is being
        stored: the caller starts ``drain`` (in an executor)."""
        fut: Future[list[int]] = Future()
        with self._cond:
            self._queue.append((items, fut))
            start = not self._storing
            self._storing = True
        return fut, start

    def abandon(self, exc: BaseException) -> None:
        """``add``'s caller could not start ``drain`` (no thread, an executor shut down):
        what is queued fails with ``exc``, never stored, and the next ``add`` starts anew."""
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._storing = False
            self._cond.notify_all()
        for _, fut in left:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)

    def drain(self, store: Store) -> None:
        """Store what is queued, a batch at a time, until nothing is (``add``'s executor job)."""
        while True:
            with self._cond:
                if not self._queue:
                    self._storing = False
                    self._cond.notify_all()
                    return
            try:
                self._store(store)
            except BaseException:  # (interrupted): the ones queued since fail too, none waits
                with self._cond:
                    self._storing = False
                    self._cond.notify_all()
                self._store(_interrupted)
                raise

    def _gather(self, publishers: int, sync_time: float) -> None:
        deadline = time.monotonic() + sync_time / 2
        while len(self._queue) < publishers and time.monotonic() < deadline:
            time.sleep(_POLL)

    def _store(self, store: Store) -> None:
        """Take what is queued and store it (``_store_entries``), this thread the holder."""
        self._holder = threading.get_ident()
        try:
            _store_entries(self._take, store)
        finally:
            self._holder = 0

    def _take(self, into: list[_Entry]) -> None:
        with self._cond:  # (copied before it is cleared: an interrupt between leaves them
            into.extend(self._queue)  # in both, and each is settled once, by the first)
            self._queue.clear()


def _interrupted(_items: list[Item], _batch: bool, _got: list[int]) -> After:
    raise PersistenceError(None, "not published: the job storing the disk queue's batches"
                                 " was interrupted")


def _attempt(store: Store, entries: list[_Entry], batch: bool) -> After | Exception:
    """``entries``' messages in one store call; each future gets its ids once the records
    are durable, even when the call is interrupted after that point. The call's callbacks,
    or its ``Exception`` when nothing was stored."""
    got: list[int] = []
    try:
        return store([item for items, _ in entries for item in items], batch, got)
    except Exception as exc:
        return exc if not got else _nothing  # (raised after they were stored: stored)
    finally:
        if got:
            at = 0
            for items, fut in entries:
                if not fut.done():
                    fut.set_result(got[at:at + len(items)])
                at += len(items)


def _store_entries(take: Callable[[list[_Entry]], None], store: Store) -> None:
    """One batch (``take`` fills it): all of its entries as one ``publish_many`` (one record,
    one fdatasync), else each entry alone, so that each call gets its own result or error;
    the stores' callbacks run once every call has its result, all of them even if one
    raises. A call never stored (this thread was interrupted first) gets ``PersistenceError``."""
    taken: list[_Entry] = []
    batch = taken
    afters: list[After] = []
    try:
        take(taken)
        # (an ``add``'s publish cancelled before its batch began: never stored; once begun,
        # its future can no longer be cancelled)
        batch = [(items, fut) for items, fut in taken
                 if not fut.done() and fut.set_running_or_notify_cancel()]
        if len(batch) > 1:
            done = _attempt(store, batch, True)  # (``Alone``, no room, a full disk: each alone)
            if not isinstance(done, Exception):
                afters.append(done)
                batch = []
        for entry in batch:
            done = _attempt(store, [entry], False)
            if isinstance(done, Exception):
                entry[1].set_exception(done)
            else:
                afters.append(done)
    finally:
        for _, fut in taken:
            if not fut.done():
                fut.set_exception(PersistenceError(None, "not published: the thread that was"
                                                         " storing it was interrupted first"))
        run_all(afters)


def run_all(afters: list[After]) -> None:
    """Each of the callbacks, the first exception (an interrupt) raised once all ran."""
    first: BaseException | None = None
    for after in afters:
        try:
            after()
        except BaseException as exc:  # noqa: BLE001 - raised below, after the others
            first = first or exc
    if first is not None:
        raise first


def _nothing() -> None:
    pass
