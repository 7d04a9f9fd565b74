"""A loop's session compacts its state file off the loop: the publish whose record would pass
the journal's bound first has the compaction (a snapshot written and synced; an
``AsyncGateway``'s session: a record in the shared log and its fdatasync) run in the
session's executor, the session's publishes meanwhile waiting their turn in the order they
were awaited. Without it the compaction ran inside that publish, on the loop. A read batch's
(or an ``ack()``'s) records that pass the bound have a task take the same turn for it
(``Turn.compact_soon``), as a failed sync's take-back does for its rewrite (``Turn.run``),
so every call of the session on the loop waits for either; and a call whose session lock
another thread holds (a disk-queue batch's write and fdatasync) takes its turn too, the
lock polled off the loop. Under SessionSync=interval the next packet-id reservation (synced at
once) is made the same way before the ids run out (``reserving``), as are the syncs a publish
into the disk queue would make first (a segment sealed or begun: ``Spool.roll_ahead``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

from .pump import in_executor

if TYPE_CHECKING:
    from .driver import Driver

__all__ = ["MARGIN", "Turn", "size_of"]

log = logging.getLogger("mqttsession")

#: Bytes added to a publish's payload and topic for its record's frame, fields and properties.
MARGIN = 256
_LOCK_POLL = 0.001  # seconds between looks at a session lock another thread holds


class Turn:
    """One session's calls on the loop in order while its compaction runs off the loop."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None  # (made on the loop, at first use)
        self.waiting = 0  # calls (and ``compact_soon``'s task) queued for or holding the turn
        self._task: asyncio.Task[None] | None = None  # ``compact_soon``'s, until it ends

    def compact_soon(self, driver: Driver) -> bool:
        """On the loop, under the session's lock (a read batch's records, an ``ack()``'s): a
        journal past its bound is compacted by a task that takes the turn, so the session's
        calls on the loop wait for it, not for the lock its job holds (a review: an ``ack()``
        stopped the loop for the whole compaction); one at a time. False: no running loop
        here (the caller compacts)."""
        j = driver.file.journal
        if j is None or not j.needs_compaction or self.pending() is not None:
            return True  # (a task of a loop that ended never runs: one is made anew)
        try:
            self._task = asyncio.get_running_loop().create_task(self._compact(driver))
        except RuntimeError:
            return False
        return True

    def run(self, driver: Driver, call: Callable[[], None]) -> asyncio.Future[None]:
        """On the loop: ``call`` run in the executor once its turn comes (a failed sync's
        take-back rewriting the file), the session's calls on the loop waiting theirs
        meanwhile instead of the session lock it holds; raises what ``call`` raised."""
        return asyncio.ensure_future(self._run(driver, call))

    async def _run(self, driver: Driver, call: Callable[[], None]) -> None:
        async with self._queued():
            exc, cancelled = await _to_its_end(driver, call)
        if exc is not None:  # (cancelled too: what it did is the outcome)
            raise exc
        if cancelled:
            raise asyncio.CancelledError

    def pending(self) -> asyncio.Task[None] | None:
        """``compact_soon``'s task, while it runs (a session closing waits for it)."""
        t = self._task
        return None if t is None or t.done() or t.get_loop().is_closed() else t

    async def _compact(self, driver: Driver) -> None:
        async with self.held(driver, 0):
            pass

    def due(self, driver: Driver, size: int, record: bool = True, count: int = 1) -> bool:
        """Whether a call must take its turn first: a compaction runs or others wait (it
        must not overtake them; it would wait for the session lock the job holds), the
        record of a publish of ``size`` bytes would compact (a hint), or another thread
        holds the session's lock (a disk-queue batch's write and fdatasync); ``count``:
        messages (a batch's: its packet ids)."""
        return self.waiting > 0 or record and (driver.file.compaction_near(size + MARGIN)
                                               or driver.reservation_near(count)
                                               or driver.queue_sync_near()) \
            or driver.lock_busy()

    def if_due(self, driver: Driver, size: int = 0, record: bool = True, count: int = 1
               ) -> contextlib.AbstractAsyncContextManager[None]:
        """``held`` when a call (a publish of ``size`` bytes; ``record``: one the state file
        keeps) must take its turn (``due``), else nothing to wait for."""
        if self.due(driver, size, record, count):
            return self.held(driver, size, count=count)
        return contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def held(self, driver: Driver, size: int, free: bool = True, count: int = 1
                   ) -> AsyncIterator[None]:
        """The session's turn, its compaction run first in the executor if still due (never
        cut short: a cancel is raised after it), then the session's lock free (``free``; else
        the caller waits for it); the caller stores while it holds the turn, with no await in
        between, so the publishes keep the order they were awaited in."""
        async with self._queued():
            for _ in range(2):  # (again if the loop's reads wrote enough meanwhile)
                if not driver.file.compaction_near(size + MARGIN):
                    break
                await _ahead(driver, driver.compact_ahead, "state file compaction failed")
            if driver.reservation_near(count):  # (SessionSync=interval: synced at once)
                await _ahead(driver, functools.partial(driver.reserve_ahead, count),
                             "packet-id reservation failed")
            if driver.queue_sync_near():  # (interval: the disk queue's syncs)
                await _ahead(driver, driver.queue_sync_ahead, "disk queue sync failed")
            driver.loop_waits += 1  # (a batch about to take the lock lets this call in)
            try:
                while free and driver.lock_busy():  # (a hunt: a QoS 0 publish waited on
                    await asyncio.sleep(_LOCK_POLL)  # the loop for a disk-queue batch)
                yield
            finally:
                driver.loop_waits -= 1

    @contextlib.asynccontextmanager
    async def _queued(self) -> AsyncIterator[None]:
        """The turn itself: FIFO, counted in ``waiting`` from the moment it is asked for."""
        self.waiting += 1
        try:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                yield
        finally:
            self.waiting -= 1


def size_of(topic: object, data: object) -> int:
    """A publish's bytes for ``Turn.due`` (0 for values its checks will refuse)."""
    try:
        return len(topic) + len(data)  # type: ignore[arg-type]
    except TypeError:
        return 0


async def _ahead(driver: Driver, call: Callable[[], None], what: str) -> None:
    """``call`` (a compaction, a packet-id reservation) made ahead of a call, off the loop."""
    exc, cancelled = await _to_its_end(driver, call)
    if exc is not None:  # the publish goes on: its own write rewrites the file (and fails as
        # any write would, if the disk does)
        driver.error(getattr(exc, "errno", None) or -1, f"{what}: {exc}")
    if cancelled:
        raise asyncio.CancelledError


async def _to_its_end(driver: Driver, call: Callable[[], None]
                      ) -> tuple[Exception | None, bool]:
    """``call`` run in the session's executor (here once that is shut down), awaited to its
    end: what it raised, and whether the wait was cancelled meanwhile."""
    job = in_executor(asyncio.get_running_loop(), driver.executor, call)
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # noqa: BLE001, S110 - returned below
            pass
    return (None if job.cancelled() else cast("Exception | None", job.exception())), cancelled
