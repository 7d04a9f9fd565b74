"""``combining.Combiner``: publishes of several threads (or an event loop's) stored as batches;
each call gets its own ids or error, none is stored twice or lost; a batch refused or failed is
stored one call at a time; a publish cancelled before its batch began is never stored; the
callbacks of a store run once every call of its batch has its result."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import Callable

import pytest

from mqttsession.combining import Alone, Combiner, Item
from mqttsession.errors import PersistenceError


def item(n: int, topic: str = "t") -> Item:
    return (topic, str(n).encode(), 1, False, b"")


def _nothing() -> None:
    pass


class Store:
    """Stores items: one id each, counting from 1; ``batches`` the sizes of the batches of
    several calls; ``refuse``: such batches raise ``Alone``; ``fail``: they raise."""

    def __init__(self, fail: bool = False, refuse: bool = False) -> None:
        self.stored: list[Item] = []
        self.batches: list[int] = []  # the sizes of the batches stored
        self.attempts: list[int] = []  # of those tried
        self.fail, self.refuse = fail, refuse
        self.lock = threading.Lock()

    def __call__(self, items: list[Item], batch: bool, got: list[int]) -> Callable[[], None]:
        time.sleep(0.001)  # (an fdatasync: the others queue meanwhile)
        if batch:
            self.attempts.append(len(items))
        if batch and self.refuse:
            raise Alone
        if batch and self.fail:
            raise PersistenceError(5, "batch failed")
        if any(it[0] == "bad" for it in items):
            raise PersistenceError(28, "no room")
        with self.lock:
            if batch:
                self.batches.append(len(items))
            first = len(self.stored) + 1
            self.stored += items
        got.extend(range(first, first + len(items)))
        return _nothing


def _in_threads(worker: Callable[[int], None], n: int) -> None:
    """``worker(k)`` for k in range(n), each in a thread of its own, all joined."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_are_stored_in_batches_each_once_with_its_own_id() -> None:
    comb, store = Combiner(), Store()
    got: dict[int, int] = {}
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(50):
            n = k * 50 + i
            pid = comb.publish(item(n), store)
            with lock:
                got[n] = pid

    _in_threads(worker, 8)
    assert sorted(int(x[1]) for x in store.stored) == list(range(400))  # each once
    for n, pid in got.items():  # its id is where it was stored
        assert store.stored[pid - 1] == item(n)
    assert max(store.batches) > 1 and not comb.busy


@pytest.mark.parametrize("how", ["failed", "refused"])
def test_a_batch_failed_or_refused_is_stored_one_by_one_each_with_its_own_fate(
        how: str) -> None:
    comb, store = Combiner(), Store(fail=how == "failed", refuse=how == "refused")
    results: dict[int, int | BaseException] = {}

    def worker(k: int) -> None:
        try:  # (the first to store waits for all six: one batch of six is tried)
            results[k] = comb.publish(item(k, "bad" if k == 3 else "t"), store,
                                      lambda: (6, 60.0))
        except PersistenceError as exc:
            results[k] = exc

    _in_threads(worker, 6)
    assert isinstance(results[3], PersistenceError) and "no room" in str(results[3])
    assert sorted(int(x[1]) for x in store.stored) == [0, 1, 2, 4, 5]
    assert store.attempts == [6] and not store.batches


def test_an_event_loops_calls_are_drained_in_order_and_a_cancelled_one_never_stored() -> None:
    comb, store = Combiner(), Store()
    first, start = comb.add([item(1)])
    assert start and comb.busy
    many, again = comb.add([item(2), item(3)])  # a publish_many: one entry, its ids in order
    assert not again  # one drain for all
    cancelled, _ = comb.add([item(4)])
    assert cancelled.cancel()  # (its publish cancelled before the batch began)
    comb.drain(store)
    assert (first.result(), many.result()) == ([1], [2, 3])
    with pytest.raises(CancelledError):
        cancelled.result()
    assert [int(x[1]) for x in store.stored] == [1, 2, 3] and store.batches == [3]
    assert not comb.busy


def test_an_interrupted_batch_fails_its_publishes_and_frees_the_next() -> None:
    """KeyboardInterrupt while a batch is stored: its publishes get ``PersistenceError``
    (never a wait for ever), the combiner takes the next batch."""
    comb = Combiner()

    def interrupted(_items: list[Item], _batch: bool, _got: list[int]) -> Callable[[], None]:
        raise KeyboardInterrupt

    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2)])
    with pytest.raises(KeyboardInterrupt):
        comb.drain(interrupted)
    for fut in (a, b):
        with pytest.raises(PersistenceError, match="interrupted"):
            fut.result(0)
    assert comb.publish(item(3), Store()) == 1


def test_an_interrupt_in_a_stores_callbacks_leaves_every_publish_its_result() -> None:
    """KeyboardInterrupt in a callback the store made (on_message_dropped, in the storing
    thread): every call of the batch has its ids already, none is told "not published" for
    a message on disk (a review: an application retrying on that error published twice)."""
    comb = Combiner()
    stored: list[Item] = []

    def store(items: list[Item], _batch: bool, got: list[int]) -> Callable[[], None]:
        stored.extend(items)
        got.extend(range(1, len(items) + 1))

        def callbacks() -> None:
            raise KeyboardInterrupt
        return callbacks

    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2)])
    with pytest.raises(KeyboardInterrupt):
        comb.drain(store)
    assert (a.result(0), b.result(0)) == ([1], [2]) and len(stored) == 2


def test_a_publish_from_a_callback_of_the_batch_is_stored_alone_not_deadlocked() -> None:
    """A callback the batch runs in the storing thread (on_message_dropped) publishes: it is
    stored alone at once (queued, it would wait for the very batch that runs it)."""
    comb, inner = Combiner(), Store()
    got: list[int] = []

    def store(items: list[Item], batch: bool, ids: list[int]) -> Callable[[], None]:
        inner(items, batch, ids)
        return lambda: got.append(comb.publish(item(99), inner))

    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2)])
    comb.drain(store)
    assert (a.result(), b.result()) == ([1], [2]) and got == [3]


def test_the_first_thread_gathers_the_publishers_under_way_into_its_batch() -> None:
    """``gather`` (3 publishers, a 10 s fdatasync): the thread that stores first waits for the
    other two to queue (not the half fdatasync: they come at once), and stores all three as
    one batch."""
    comb, store = Combiner(), Store()
    results: list[int] = []

    def publish(n: int) -> None:
        results.append(comb.publish(item(n), store, lambda: (3, 10.0)))

    first = threading.Thread(target=publish, args=(1,))
    first.start()
    while not comb.busy:  # (the first is the one storing: it waits for the others)
        time.sleep(0.001)
    others = [threading.Thread(target=publish, args=(n,)) for n in (2, 3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(5)
    assert sorted(results) == [1, 2, 3] and store.batches == [3]


def test_an_interrupt_after_the_records_are_stored_leaves_every_publish_its_result() -> None:
    """KeyboardInterrupt inside the store call once the records are durable (before it
    returned): each call still gets its ids (the store put them in ``got`` first), none is
    told "not published" for a message on disk (a review: a retry published it twice)."""
    comb = Combiner()

    def store(items: list[Item], _batch: bool, got: list[int]) -> Callable[[], None]:
        got.extend(range(1, len(items) + 1))
        raise KeyboardInterrupt  # (after the records' fdatasync)

    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2), item(3)])
    with pytest.raises(KeyboardInterrupt):
        comb.drain(store)
    assert (a.result(0), b.result(0)) == ([1], [2, 3])


def test_an_interrupt_as_the_batch_is_taken_leaves_no_publisher_waiting() -> None:
    """KeyboardInterrupt in the thread that took the batch, before it stored it: the other
    publishers of that batch get ``PersistenceError`` (before, they spun for ever: their
    futures neither queued nor stored)."""
    comb = Combiner()
    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2)])

    def take(into: list[object]) -> None:
        real_take(into)  # type: ignore[arg-type]
        raise KeyboardInterrupt
    real_take = comb._take
    comb._take = take  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        comb.drain(Store())
    for fut in (a, b):
        with pytest.raises(PersistenceError, match="interrupted"):
            fut.result(0)
    assert not comb.busy


def test_every_callback_of_a_batch_runs_even_if_one_raises() -> None:
    """The callbacks of a batch stored one call at a time (each its own): an interrupt in
    the first does not skip the others' (their drop reports)."""
    comb, ran = Combiner(), []

    def store(items: list[Item], batch: bool, got: list[int]) -> Callable[[], None]:
        if batch:
            raise Alone
        got.append(int(items[0][1]))

        def callbacks() -> None:
            ran.append(items[0][1])
            if items[0][1] == b"1":
                raise KeyboardInterrupt
        return callbacks

    a, _ = comb.add([item(1)])
    b, _ = comb.add([item(2)])
    with pytest.raises(KeyboardInterrupt):
        comb.drain(store)
    assert ran == [b"1", b"2"] and (a.result(0), b.result(0)) == ([1], [2])


def test_a_publisher_interrupted_while_waiting_to_be_stored_leaves_nothing_queued() -> None:
    """A publisher waiting for the batch under way gets KeyboardInterrupt: its message leaves
    the queue, never stored by the next batch (its caller was told it was not published)
    (a hunt)."""
    import signal

    comb, store = Combiner(), Store()
    before, start = comb.add([item(1)])  # a batch under way: the publisher below waits
    assert start

    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while not comb._cond._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    killer = threading.Thread(target=interrupt, daemon=True)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        comb.publish(item(2), store)
    killer.join(20)
    assert [items for items, _ in comb._queue] == [[item(1)]]
    comb.drain(store)
    assert before.result(0) == [1] and store.stored == [item(1)]


def test_with_every_publisher_queued_the_first_does_not_wait_to_gather() -> None:
    """``gather``: when the publishers under way are all queued already, the thread that
    stores first stores at once, not after the half fdatasync (60 s here) (a hunt)."""
    comb = Combiner()
    comb.add([item(1)])
    comb.add([item(2)])
    started = time.monotonic()
    comb._gather(2, 120.0)
    assert time.monotonic() - started < 20  # never waited out its 60 s
