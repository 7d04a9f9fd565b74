"""A loop's session compacts its state file off the loop: the publish whose record would pass
the journal's bound first has the compaction (a snapshot written and synced; an
``AsyncGateway``'s session: a record in the shared log and its fdatasync) run in the
session's executor, the session's publishes meanwhile waiting their turn in the order they
were awaited. Without it the compaction ran inside that publish, on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .driver import Driver

__all__ = ["MARGIN", "Turn"]

log = logging.getLogger("mqttsession")

#: Bytes added to a publish's payload and topic for its record's frame, fields and properties.
MARGIN = 256


class Turn:
    """One session's publishes in order while its compaction runs off the loop."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None  # (made on the loop, at first use)
        self.waiting = 0  # publishes queued for or holding the turn

    def due(self, driver: Driver, size: int) -> bool:
        """Whether a publish of ``size`` bytes must take its turn first: a compaction runs or
        others wait (it must not overtake them), or its record would compact (a hint)."""
        return self.waiting > 0 or driver.file.compaction_near(size + MARGIN)

    def if_due(self, driver: Driver, size: int, qos: int = 1
               ) -> contextlib.AbstractAsyncContextManager[None]:
        """``held`` when a publish of ``size`` bytes must take its turn (``due``), else
        nothing to wait for."""
        if qos and self.due(driver, size):
            return self.held(driver, size)
        return contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def held(self, driver: Driver, size: int) -> AsyncIterator[None]:
        """The session's turn, its compaction run first in the executor if still due (never
        cut short: a cancel is raised after it); the caller stores while it holds the turn,
        with no await in between, so the publishes keep the order they were awaited in."""
        self.waiting += 1
        try:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if driver.file.compaction_near(size + MARGIN):
                    await _compacted(driver)
                yield
        finally:
            self.waiting -= 1


async def _compacted(driver: Driver) -> None:
    job = asyncio.get_running_loop().run_in_executor(driver.executor, driver.compact_ahead)
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            cancelled = True
    if not job.cancelled() and (exc := job.exception()) is not None:  # the next write rewrites
        driver.error(getattr(exc, "errno", None) or -1, f"state file compaction failed: {exc}")
    if cancelled:
        raise asyncio.CancelledError
