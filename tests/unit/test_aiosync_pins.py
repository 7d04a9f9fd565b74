"""``aiosync.HeldSyncs``: an ``AsyncSession``'s publishes under ``SessionSync=always`` are
released to the wire only once an fdatasync covers their records. A stand-in driver (the
journal's synced position, the executor job and the answers recorded) and a real loop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from mqttsession.aiosync import HeldSyncs

Token = tuple[int, int, int]


class _Driver:
    """What ``HeldSyncs`` asks of a ``Driver``: records up to ``synced`` (gen, pos) are on
    disk; ``wait_durable`` syncs up to a token; every step is recorded in ``events``."""

    executor = None

    def __init__(self, synced: tuple[int, int]) -> None:
        self.synced = synced
        self.events: list[tuple[str, Any]] = []

    def is_durable(self, token: Token) -> bool:
        return token[1:] <= self.synced

    def wait_durable(self, token: Token) -> Exception | None:
        self.events.append(("sync", token))
        self.synced = max(self.synced, token[1:])
        return None

    def release_then(self, then: Callable[[], None]) -> None:
        then()

    def answer(self, answers: Sequence[tuple[tuple[Token, ...], Any, Any]]) -> None:
        for tokens, waiter, res in answers:
            self.events.append(("released", (tokens[-1], self.synced)))
            if not waiter.done():
                waiter.set_result(res)


class _Held(HeldSyncs):
    def __init__(self, driver: _Driver) -> None:
        self._client = SimpleNamespace(_driver=driver)  # type: ignore[assignment]
        self._group = None
        self._awaiting_sync, self._sync_job, self._syncing = [], None, False


def _two_held(synced: tuple[int, int]) -> tuple[list[tuple[str, Any]], bool]:
    """Two publishes (records ending at 100 and 200) wait together, the journal synced up
    to ``synced``: the driver's events once both are answered, and whether a job still runs."""
    async def run() -> tuple[list[tuple[str, Any]], bool]:
        d = _Driver(synced)
        h = _Held(d)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        h._awaiting_sync = [(((1, 0, 100),), first), (((2, 0, 200),), second)]
        h._sync_awaiting()
        assert await asyncio.wait_for(second, 5) is None
        assert await asyncio.wait_for(first, 5) is None
        return d.events, h._syncing

    return asyncio.run(run())


def test_a_batch_is_released_only_once_its_last_record_is_synced() -> None:
    """Two publishes wait together: the first one's record was synced already (by the job
    before), the second's not. The batch waits for a sync up to the LAST one's record;
    released on the first one's (``batch[0]``), the second would go to the wire with its
    record not on disk (a power cut then loses a message the broker may have taken)."""
    events, _ = _two_held(synced=(0, 100))
    assert events[0] == ("sync", (2, 0, 200))
    released = [info for kind, info in events if kind == "released"]
    assert len(released) == 2 and all(synced >= (0, 200) for _tok, synced in released)


def test_a_batch_a_sync_before_covered_whole_is_released_without_a_job() -> None:
    """A batch whose last record an earlier fdatasync covered is released at once: no
    executor job (one thread hop saved per batch)."""
    events, syncing = _two_held(synced=(0, 300))
    assert [kind for kind, _ in events] == ["released", "released"]
    assert not syncing
