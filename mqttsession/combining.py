"""Publishes bound for the disk queue, stored together under ``SessionSync=always``.

A message published while the session holds ``QueueInMemory`` messages (or has some in its
disk queue) goes to the disk queue, whose append is made durable before the publish returns
(persistence point 1). The group commit of the journal (``turns``, ``AsyncSession``'s sync
job) does not reach there: each such publish paid one fdatasync, whatever the concurrency,
and an ``AsyncSession``'s paid it on its event loop. Here the publishes of several threads
(or concurrent ``await session.publish`` calls) queue, and one of them (or the executor)
stores every one queued as ONE batch, the way ``publish_many`` does: one record, one write,
one fdatasync; the publishes that queue meanwhile form the next batch. A batch that fails
(no room for all of them, a full disk) is stored again one message at a time, so that each
publish meets the fate it would have met alone.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from .errors import PersistenceError

__all__ = ["Combiner", "Item", "spooling"]

#: A message as ``publish_many`` stores it: topic, payload, QoS, retain, packed properties.
Item = tuple[str, bytes, int, bool, bytes]
StoreMany = Callable[[list[Item]], list[int]]
StoreOne = Callable[[Item], int]


def spooling(engine: Any) -> bool:
    """Whether a publish now goes to ``engine``'s disk queue (``Outgoing.publish``'s test,
    read without the session lock: it only chooses the path, both of which are right)."""
    sp, st = engine.spool, engine.state
    limit = engine.settings.queue_in_memory
    return bool(sp is not None and sp.ready and (st.spooled or limit and len(st.outgoing) >= limit))


class Combiner:
    """The publishes of one session waiting to be stored together."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Item, Future[int]]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._storing = False  # a batch is being stored (by a publisher, or the executor)
        self._holder = 0  # the thread storing it (``threading.get_ident``), 0: none

    @property
    def busy(self) -> bool:
        """Publishes queued or being stored: a later publish joins them, so that it never
        overtakes them into the session."""
        return self._storing or bool(self._queue)

    def publish(self, item: Item, many: StoreMany, one: StoreOne) -> int:
        """``item`` stored with the others queued (a publisher's thread); its packet id.
        The first thread to find no batch under way stores one (its own message in it); the
        others sleep until theirs is stored, or until the batch under way ends and one of
        them takes the next."""
        if self._holder == threading.get_ident():
            # a callback the batch runs (on_message_dropped, on_error) publishes: stored
            # alone (queued, it would wait for this very batch)
            return one(item)
        fut: Future[int] = Future()
        with self._cond:
            self._queue.append((item, fut))
        try:
            while not fut.done():
                with self._cond:
                    if self._storing:
                        self._cond.wait()
                        continue
                    if fut.done():
                        break
                    self._storing = True
                    batch = list(self._queue)
                    self._queue.clear()
                try:
                    self._store(batch, many, one)
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
        return fut.result()

    def add(self, item: Item) -> tuple[Future[int], bool]:
        """``item`` queued (an event loop's publish); with True when no batch is being
        stored: the caller starts ``drain`` (in an executor)."""
        fut: Future[int] = Future()
        with self._cond:
            self._queue.append((item, fut))
            start = not self._storing
            self._storing = True
        return fut, start

    def drain(self, many: StoreMany, one: StoreOne) -> None:
        """Store what is queued, a batch at a time, until nothing is (``add``'s executor job)."""
        while True:
            with self._cond:
                batch = list(self._queue)
                self._queue.clear()
                if not batch:
                    self._storing = False
                    self._cond.notify_all()
                    return
            try:
                self._store(batch, many, one)
            except BaseException:  # (interrupted): the ones queued since fail too, none waits
                with self._cond:
                    left = list(self._queue)
                    self._queue.clear()
                    self._storing = False
                    self._cond.notify_all()
                _store(left, _interrupted, _interrupted)
                raise
            with self._cond:
                self._cond.notify_all()


    def _store(self, batch: list[tuple[Item, Future[int]]], many: StoreMany,
               one: StoreOne) -> None:
        self._holder = threading.get_ident()
        try:
            _store(batch, many, one)
        finally:
            self._holder = 0


def _interrupted(_items: object) -> Any:
    raise PersistenceError(None, "not published: the job storing the disk queue's batches"
                                 " was interrupted")


def _store(batch: list[tuple[Item, Future[int]]], many: StoreMany, one: StoreOne) -> None:
    """One batch: as one ``publish_many`` (one record, one fdatasync), else each alone, so
    that each gets its own result or error. A publish never stored (this thread was
    interrupted first) gets ``PersistenceError``."""
    # (an ``add``'s publish cancelled before its batch began: never stored; once begun,
    # its future can no longer be cancelled)
    batch = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
    try:
        if len(batch) > 1:
            try:
                ids = many([item for item, _ in batch])
            except Exception:  # (no room for all, a full disk): each meets its own fate
                pass
            else:
                for (_, fut), pid in zip(batch, ids):
                    fut.set_result(pid)
                return
        for item, fut in batch:
            try:
                fut.set_result(one(item))
            except Exception as exc:
                fut.set_exception(exc)
    finally:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(PersistenceError(None, "not published: the thread that was"
                                                         " storing it was interrupted first"))
