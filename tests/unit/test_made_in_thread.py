"""``hosting.made_in_thread`` (``AsyncGateway.open``): what a thread made is the caller's, or,
once the caller's wait was cancelled, undone exactly once, whenever the cancel came."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from mqttsession.hosting import made_in_thread


class _Thing:
    """What ``make`` makes: notes the threads that undid it."""

    def __init__(self) -> None:
        self.undone: list[str] = []


def _undo(thing: _Thing) -> None:
    thing.undone.append(threading.current_thread().name)


def test_what_was_made_is_returned_and_kept() -> None:
    made: list[_Thing] = []

    def make() -> _Thing:
        made.append(_Thing())
        return made[0]

    async def main() -> _Thing:
        return await made_in_thread(make, _undo)

    got = asyncio.run(main())
    assert got is made[0] and got.undone == []


def test_a_failure_is_raised_and_nothing_undone() -> None:
    def make() -> _Thing:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        await made_in_thread(make, _undo)

    with pytest.raises(OSError, match="No space"):
        asyncio.run(main())


def test_cancelled_while_making_the_thread_undoes_it() -> None:
    """The wait cancelled while ``make`` runs: the thread undoes what it then made."""
    made: list[_Thing] = []
    cancelled = threading.Event()

    async def main() -> None:
        def make() -> _Thing:
            assert cancelled.wait(10)  # (returns after the caller gave up)
            made.append(_Thing())
            return made[0]

        task = asyncio.ensure_future(made_in_thread(make, _undo))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled.set()
        for _ in range(200):
            if made and made[0].undone:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert len(made) == 1 and made[0].undone == [made[0].undone[0]]
    assert made[0].undone[0] != threading.main_thread().name  # (in the thread)


class _Noting(ThreadPoolExecutor):
    """The loop's default executor, noting when a job's function has returned (before its
    result reaches the loop)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.returned = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                self.returned.set()
        return super().submit(run)


def test_cancelled_as_the_thing_was_made_the_caller_undoes_it() -> None:
    """The cancel comes once ``make`` returned but before the caller took the result (the
    loop busy meanwhile): the caller undoes it, on the loop (a mutation hunt: dropping that
    undo left such a gateway, and the directory's lock, held for good)."""
    made: list[_Thing] = []
    ex = _Noting()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ex)
        task: asyncio.Future[_Thing] | None = None

        def busy_then_cancel() -> None:  # (on the loop: until the thread's job returned)
            assert ex.returned.wait(10) and task is not None
            task.cancel()

        def make() -> _Thing:
            made.append(_Thing())
            loop.call_soon_threadsafe(busy_then_cancel)
            return made[0]

        task = asyncio.ensure_future(made_in_thread(make, _undo))
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert len(made) == 1 and made[0].undone == [threading.main_thread().name]
