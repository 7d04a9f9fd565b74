"""``turns.Turns``: publishers in several threads taking turns (flat combining). A turn gathers
the publishers under way before it runs them. No network."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from mqttsession.turns import Turns


def _turns(publishers: int, queued: list[str]) -> Any:
    t = Turns()
    t.publishers = publishers
    t._queue.extend(queued)  # type: ignore[arg-type]  # stand-ins for requests
    return t


def _owner(sync_time: float) -> Any:
    return SimpleNamespace(sync_time=lambda: sync_time)


def test_a_turn_gathers_until_every_publisher_under_way_is_queued() -> None:
    t = _turns(3, ["mine"])

    def others() -> None:
        time.sleep(0.05)
        t._queue.append("second")
        time.sleep(0.05)
        t._queue.append("third")

    other = threading.Thread(target=others, daemon=True)
    other.start()
    started = time.monotonic()
    t._gather(_owner(120.0))  # a 60 s bound: never waited out here
    assert list(t._queue) == ["mine", "second", "third"]
    assert time.monotonic() - started < 30  # ended by the third, not by the bound
    other.join()


def test_a_turn_gathers_half_an_fdatasync_at_most() -> None:
    t = _turns(5, ["mine"])
    started = time.monotonic()
    t._gather(_owner(0.2))  # the others never come
    assert time.monotonic() - started >= 0.1
    assert list(t._queue) == ["mine"]


def test_a_turn_alone_or_without_a_journal_does_not_wait() -> None:
    started = time.monotonic()
    _turns(1, ["mine"])._gather(_owner(60.0))
    _turns(4, ["mine"])._gather(_owner(0.0))  # no journal: no fdatasync time to wait for
    assert time.monotonic() - started < 20  # neither waited out its 30 s
