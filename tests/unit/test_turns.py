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


class _Owner:
    """A session's side of a turn, with nothing to sync."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def sync_time(self) -> float:
        return 120.0  # a turn gathers every publisher under way (60 s at most)

    def wait_durable(self, token: Any, release: bool = False) -> Exception | None:
        return None

    def holds(self) -> bool:
        return False

    def release_durable(self) -> None:
        pass

    def release_quietly(self, token: Any, err: Exception | None) -> None:
        pass


def _two_publishers(t: Turns, owner: Any, first: tuple[str, Any], second: tuple[str, Any]
                    ) -> dict[str, object]:
    """``first`` publishes in a thread and takes the turn; once it gathers, ``second`` joins
    its batch from another thread; what each got (a result or the exception raised)."""
    outcome: dict[str, object] = {}

    def publish(name: str, fn: Any) -> None:
        try:
            outcome[name] = t.run(owner, fn)
        except BaseException as exc:  # noqa: BLE001 - what each publisher got
            outcome[name] = exc

    a = threading.Thread(target=publish, args=first, daemon=True)
    a.start()
    deadline = time.monotonic() + 20
    while not t._turn.locked() and time.monotonic() < deadline:  # its turn: it gathers
        time.sleep(0.001)
    b = threading.Thread(target=publish, args=second, daemon=True)
    b.start()
    a.join(20)
    b.join(20)
    assert not a.is_alive() and not b.is_alive()
    return outcome


def test_a_publish_whose_turn_was_interrupted_before_it_ran_raises_and_was_not_run() -> None:
    """The thread whose turn it is gets KeyboardInterrupt while it runs the batch: the
    publishes of the batch that never ran raise ``PersistenceError`` in their own threads
    (their messages are not in the session); none is left waiting."""
    from mqttsession.errors import PersistenceError

    t, owner = Turns(), _Owner()
    t.publishers = 2
    ran: list[str] = []

    def interrupted() -> Any:
        raise KeyboardInterrupt

    def second() -> Any:
        ran.append("second")
        return (1, []), None

    outcome = _two_publishers(t, owner, ("first", interrupted), ("second", second))
    assert isinstance(outcome["first"], KeyboardInterrupt)
    assert isinstance(outcome["second"], PersistenceError)
    assert ran == []  # its locked part never ran: nothing to take back
    assert not t._queue and not t._turn.locked()


def test_a_long_job_takes_the_session_lock_between_the_loops_reads() -> None:
    """``lock_between_reads`` (a compaction's job): while the loop reads (``loop_waits``) the
    job waits, past ``let_loop_in``'s 20 ms; a read that begins as the job takes the lock has
    it given back first. No network."""
    from mqttsession import Client  # noqa: PLC0415

    d = Client()._driver
    got: list[float] = []

    def job() -> None:
        with d.lock_between_reads(patience=5):
            got.append(time.monotonic())

    d.loop_waits = 1  # a read batch under way
    t = threading.Thread(target=job)
    start = time.monotonic()
    t.start()
    time.sleep(0.2)
    assert not got
    with d.lock:  # the read: its packets take the lock
        d.loop_waits = 0
        time.sleep(0.05)
    t.join(5)
    assert got and got[0] - start >= 0.2

    got.clear()
    d.loop_waits = 0
    d.lock.acquire()  # the job waits in ``acquire``; a read begins meanwhile
    t = threading.Thread(target=job)
    t.start()
    time.sleep(0.05)
    d.loop_waits = 1
    d.lock.release()  # the job takes it, sees the read, gives it back
    time.sleep(0.05)
    with d.lock:  # so the read takes it
        assert not got
        d.loop_waits = 0
    t.join(5)
    assert len(got) == 1


def test_a_long_job_goes_on_once_its_patience_ends() -> None:
    """A loop that never stops reading does not hold the job back past ``patience``."""
    from mqttsession import Client  # noqa: PLC0415

    d = Client()._driver
    d.loop_waits = 1
    start = time.monotonic()
    with d.lock_between_reads(patience=0.1):
        took = time.monotonic() - start
    assert 0.1 <= took < 2


class _Recording(_Owner):
    """``_Owner`` noting the tokens it syncs and the ones it releases."""

    def __init__(self) -> None:
        super().__init__()
        self.synced: list[Any] = []
        self.released: list[Any] = []

    def wait_durable(self, token: Any, release: bool = False) -> Exception | None:
        self.synced.append(token)
        return None

    def release_quietly(self, token: Any, err: Exception | None) -> None:
        self.released.append(token)


def test_a_failing_publish_in_a_batch_raises_its_own_error_and_the_others_are_stored() -> None:
    """The first publish of a turn's batch fails in its locked part (a full queue): its
    thread gets that very error; the next publish of the batch still runs and its record is
    made durable (without skipping the failed one's result, the turn broke and the other
    publish was not stored) (a hunt)."""
    t, owner = Turns(), _Recording()
    t.publishers = 2
    full = ValueError("queue full")

    def failing() -> Any:
        raise full

    def ok() -> Any:
        return (7, []), (1, 1, 1)

    outcome = _two_publishers(t, owner, ("failing", failing), ("other", ok))
    assert outcome["failing"] is full
    assert outcome["other"] == ((7, []), (1, 1, 1))
    assert owner.synced == [(1, 1, 1)]
    assert not t._queue and not t._turn.locked()


def test_a_publisher_interrupted_while_another_turn_runs_its_publish_has_it_released() -> None:
    """A publisher gets KeyboardInterrupt while another thread's turn runs the batch holding
    its publish: the publish still runs there, and its message, durable, is released
    (``release_quietly``), not left held with no thread to release it (a hunt)."""
    import signal

    import pytest

    t, owner = Turns(), _Recording()
    t.publishers = 2
    interrupted = threading.Event()
    waited: list[bool] = []
    took: list[int] = []

    def once(_signum: int, _frame: object) -> None:  # (the resent ones: ignored)
        if not took:
            took.append(1)
            raise KeyboardInterrupt

    def slow() -> Any:  # the turn's own publish: the other one waits in the batch
        # SIGINT sent again until the main thread took it: one that came just before it
        # blocked in its wait stays pending, unseen, until the wait ends (20 s: a loaded
        # CI leg once)
        main, deadline = threading.main_thread().ident or 0, time.monotonic() + 20
        while not took and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGINT)
            if interrupted.wait(0.2):
                break
        waited.append(interrupted.wait(20))
        return (1, []), (1, 1, 1)

    def mine() -> Any:
        return (2, []), (2, 2, 2)

    old = signal.signal(signal.SIGINT, once)
    try:
        turn = threading.Thread(target=lambda: t.run(owner, slow), daemon=True)
        turn.start()
        deadline = time.monotonic() + 20
        while not t._turn.locked() and time.monotonic() < deadline:  # its turn: it gathers
            time.sleep(0.001)
        with pytest.raises(KeyboardInterrupt):
            try:
                t.run(owner, mine)  # interrupted waiting (SIGINT), its publish in the batch
            finally:
                interrupted.set()
        turn.join(20)
        time.sleep(0.05)  # (a resent SIGINT still pending: handled by ``once``)
    finally:
        signal.signal(signal.SIGINT, old)
    assert not turn.is_alive() and waited == [True]  # interrupted while its publish ran
    assert owner.released == [(2, 2, 2)]
    assert not t._queue and not t._turn.locked()
