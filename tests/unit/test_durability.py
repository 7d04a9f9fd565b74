"""``durability.Durability``'s turns for publishers in several threads (flat combining): a turn
gathers the publishers under way before it runs them. No network."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

from mqttsession.durability import Durability


def _durability(publishers: int, sync_time: float) -> Any:
    d: Any = Durability.__new__(Durability)
    d.publishers = publishers
    d.file = SimpleNamespace(journal=SimpleNamespace(sync_time=sync_time))
    return d


def test_a_turn_gathers_until_every_publisher_under_way_is_queued() -> None:
    d = _durability(publishers=3, sync_time=120.0)  # a 60 s bound: never waited out here
    queue: deque[Any] = deque(["mine"])

    def others() -> None:
        time.sleep(0.05)
        queue.append("second")
        time.sleep(0.05)
        queue.append("third")

    t = threading.Thread(target=others, daemon=True)
    t.start()
    started = time.monotonic()
    d._gather(queue)
    assert list(queue) == ["mine", "second", "third"]
    assert time.monotonic() - started < 30  # ended by the third, not by the bound
    t.join()


def test_a_turn_gathers_half_an_fdatasync_at_most() -> None:
    d = _durability(publishers=5, sync_time=0.2)
    queue: deque[Any] = deque(["mine"])
    started = time.monotonic()
    d._gather(queue)  # the others never come
    assert time.monotonic() - started >= 0.1
    assert list(queue) == ["mine"]


def test_a_turn_alone_or_without_a_journal_does_not_wait() -> None:
    queue: deque[Any] = deque(["mine"])
    started = time.monotonic()
    _durability(publishers=1, sync_time=60.0)._gather(queue)
    d = _durability(publishers=4, sync_time=60.0)
    d.file = SimpleNamespace(journal=None)
    d._gather(queue)
    assert time.monotonic() - started < 20  # neither waited out its 30 s
