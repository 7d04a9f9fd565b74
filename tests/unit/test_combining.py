"""``combining.Combiner``: publishes of several threads (or an event loop's) stored as batches;
each publish gets its own id or error, none is stored twice or lost; a failed batch is stored
again one by one; a publish cancelled before its batch began is never stored."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from mqttsession.combining import Combiner, Item
from mqttsession.errors import PersistenceError


def item(n: int, topic: str = "t") -> Item:
    return (topic, str(n).encode(), 1, False, b"")


class Store:
    """Stores items: one id each, counting from 1; ``batches`` the sizes of ``many``'s."""

    def __init__(self, fail_many: bool = False) -> None:
        self.stored: list[Item] = []
        self.batches: list[int] = []
        self.fail_many = fail_many
        self.lock = threading.Lock()

    def many(self, items: list[Item]) -> list[int]:
        time.sleep(0.001)  # (an fdatasync: the others queue meanwhile)
        if self.fail_many:
            raise PersistenceError(5, "batch failed")
        with self.lock:
            self.batches.append(len(items))
            first = len(self.stored) + 1
            self.stored += items
        return list(range(first, first + len(items)))

    def one(self, it: Item) -> int:
        time.sleep(0.001)
        if it[0] == "bad":
            raise PersistenceError(28, "no room")
        with self.lock:
            self.stored.append(it)
            return len(self.stored)


def test_threads_are_stored_in_batches_each_once_with_its_own_id() -> None:
    comb, store = Combiner(), Store()
    got: dict[int, int] = {}
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(50):
            n = k * 50 + i
            pid = comb.publish(item(n), store.many, store.one)
            with lock:
                got[n] = pid

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(x[1]) for x in store.stored) == list(range(400))  # each once
    for n, pid in got.items():  # its id is where it was stored
        assert store.stored[pid - 1] == item(n)
    assert max(store.batches) > 1 and not comb.busy


def test_a_failed_batch_is_stored_one_by_one_each_with_its_own_fate() -> None:
    comb, store = Combiner(), Store(fail_many=True)
    results: dict[int, int | BaseException] = {}
    go = threading.Barrier(6)

    def worker(k: int) -> None:
        go.wait()
        try:
            results[k] = comb.publish(item(k, "bad" if k == 3 else "t"), store.many, store.one)
        except PersistenceError as exc:
            results[k] = exc

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[3], PersistenceError) and "no room" in str(results[3])
    assert sorted(int(x[1]) for x in store.stored) == [0, 1, 2, 4, 5]


def test_an_event_loops_publishes_are_drained_and_a_cancelled_one_never_stored() -> None:
    comb, store = Combiner(), Store()
    first, start = comb.add(item(1))
    assert start and comb.busy
    second, again = comb.add(item(2))
    assert not again  # one drain for both
    cancelled, _ = comb.add(item(3))
    assert cancelled.cancel()  # (its publish cancelled before the batch began)
    comb.drain(store.many, store.one)
    assert (first.result(), second.result()) == (1, 2)
    with pytest.raises(CancelledError):
        cancelled.result()
    assert [int(x[1]) for x in store.stored] == [1, 2] and not comb.busy


def test_an_interrupted_batch_fails_its_publishes_and_frees_the_next() -> None:
    """KeyboardInterrupt while a batch is stored: its publishes get ``PersistenceError``
    (never a wait for ever), the combiner takes the next batch."""
    comb = Combiner()

    def interrupted(_items: list[Item]) -> list[int]:
        raise KeyboardInterrupt

    a, _ = comb.add(item(1))
    b, _ = comb.add(item(2))
    with pytest.raises(KeyboardInterrupt):
        comb.drain(interrupted, Store().one)
    for fut in (a, b):
        with pytest.raises(PersistenceError, match="interrupted"):
            fut.result(0)
    store = Store()
    assert comb.publish(item(3), store.many, store.one) == 1


def test_a_publish_from_a_callback_of_the_batch_is_stored_alone_not_deadlocked() -> None:
    """A callback the batch runs in the storing thread (on_message_dropped) publishes: it is
    stored alone at once (queued, it would wait for the very batch that runs it)."""
    comb, store = Combiner(), Store()
    inner: list[int] = []

    def many(items: list[Item]) -> list[int]:
        inner.append(comb.publish(item(99), store.many, store.one))
        return store.many(items)

    a, _ = comb.add(item(1))
    b, _ = comb.add(item(2))
    comb.drain(many, store.one)
    assert inner == [1] and (a.result(), b.result()) == (2, 3)
