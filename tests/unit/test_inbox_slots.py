"""``_inbox.Slots``: the counting gate the inbox's bounded hand-over uses (a mutation hunt
found no unit test of it)."""

from __future__ import annotations

import threading

from mqttsession._inbox import Slots


def test_slots_are_taken_up_to_the_size_and_a_taker_waits_for_one_given_back() -> None:
    s = Slots(2)
    assert s.take() and s.take()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(s.take()))
    t.start()
    t.join(0.1)
    assert t.is_alive() and got == []  # none free: it waits
    s.give()
    t.join(5)
    assert got == [True]


def test_close_lets_every_waiter_go_with_nothing_taken() -> None:
    s = Slots(1)
    assert s.take()
    got: list[bool] = []
    waiters = [threading.Thread(target=lambda: got.append(s.take())) for _ in range(3)]
    for w in waiters:
        w.start()
    s.close()
    for w in waiters:
        w.join(5)
    assert got == [False, False, False]
    s.give()
    assert s.take() is False  # closed: nothing taken, even with a slot free
