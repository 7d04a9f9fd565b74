"""An ``AsyncSession``'s publishes under ``SessionSync=always`` waiting for their record's
fdatasync off the loop: one executor job syncs for every publish waiting so far (an
``AsyncGateway``'s sessions: the gateway's shared job, ``GroupSync``); then they are released
to the wire, or taken back and the error raised."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .errors import PersistenceError

if TYPE_CHECKING:
    from .client import Client
    from .driver import Driver

__all__ = ["GroupSync", "HeldSyncs"]

_Token = tuple[int, int, int]  # a held publish: its seq and where its record ends (gen, pos)


class GroupSync(Protocol):
    """Makes a shared store durable for the held publishes of many sessions at once."""

    def wait_held(self, driver: Driver, tokens: tuple[_Token, ...]
                  ) -> asyncio.Future[Exception | None]:
        """A future: None once the record of the held publishes ``tokens`` (one, or a
        ``publish_many``'s) is on disk and they are released to the wire, else the error (the
        caller takes them back). Cancelled, they are released or taken back all the same,
        together."""

    def pending(self, driver: Driver) -> asyncio.Future[Exception | None] | None:
        """The sync job under way or due that ``driver``'s held publishes wait for (None:
        none waits)."""


class HeldSyncs:
    """``AsyncSession``'s part that waits for held publishes' syncs."""

    _client: Client
    _group: GroupSync | None
    # SessionSync=always: publishes waiting for their record's fdatasync, and whether the
    # one executor job that syncs for all of them is under way
    # (a publish_many's tokens together: one record, one fate)
    _awaiting_sync: list[tuple[tuple[_Token, ...], asyncio.Future[Exception | None]]]
    _sync_job: asyncio.Future[Exception | None] | None
    _syncing: bool

    def _sync_awaiting(self) -> None:
        """One executor job makes the records of every publish waiting so far durable (one
        fdatasync: the last one's position covers those before it); the publishes that
        arrive meanwhile wait for the next job. One thread hop per batch, not per publish,
        and none for a batch whose records the job before already synced."""
        driver = self._client._driver
        while True:
            batch, self._awaiting_sync = self._awaiting_sync, []
            if not batch:
                self._syncing = False
                return
            self._syncing = True
            if not driver.is_durable(batch[-1][0][-1]):
                break
            self._settle(batch, None)  # (appended before that job's fdatasync wrote them)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(driver.executor, driver.wait_durable, batch[-1][0][-1])
        self._sync_job = job

        def done(f: asyncio.Future[Exception | None]) -> None:
            try:
                err = f.result()
            except BaseException as exc:  # noqa: BLE001 - the job itself ended (loop shutdown)
                err = PersistenceError(None, f"the state file sync did not run: {exc!r}")
            self._settle(batch, err)
            self._sync_awaiting()

        job.add_done_callback(done)

    def _settle(self, batch: list[tuple[tuple[_Token, ...], asyncio.Future[Exception | None]]],
                err: Exception | None) -> None:
        """A batch's sync ended: its messages go out (those written after them wait), and
        each publish gets ``err`` (None: durable); the release waits in a thread while a
        disk-queue batch holds the session's lock (``Driver.release_then``)."""
        driver = self._client._driver
        answers = [(held, waiter, err) for held, waiter in batch]
        if err is None:
            driver.release_then(functools.partial(driver.answer, answers))
        else:
            driver.answer(answers)

    async def _durable(self, c: Client, tokens: Sequence[_Token]) -> None:
        """Held publishes (one, or a ``publish_many``'s: one record): wait, off the loop, for
        the fdatasync that covers their record; then they are released to the wire, or all
        taken back and the error raised. Cancelled, the same happens once that sync ends."""
        loop = asyncio.get_running_loop()
        held = tuple(tokens)
        if self._group is not None:  # an AsyncGateway's session
            fut = self._group.wait_held(c._driver, held)
        else:
            fut = loop.create_future()
            self._awaiting_sync.append((held, fut))
            if not self._syncing:  # after the publishes ready to run now have appended theirs
                self._syncing = True
                loop.call_soon(self._sync_awaiting)
        try:
            err = await fut
        except asyncio.CancelledError:  # after ``fut`` got its error: taken back here
            if fut.done() and not fut.cancelled() and (err := fut.result()) is not None:
                c._driver.take_back(held[-1], err, held, quiet=True)
            raise
        if err is not None:  # all taken back (one record: one fate; off the loop), and raised
            job = c._driver.take_back(held[-1], err, held)
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                c._driver.orphan(job, held[-1][0])
                raise
