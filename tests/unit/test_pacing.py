"""``mqttsession.pacing``: the connection rate limit and jittered backoff (pure)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttsession.pacing import GATEWAY_TICK, Pacer, gateway_tick, jittered


def test_pacer_spreads_attempts_at_its_rate() -> None:
    p = Pacer(100.0)
    delays = [p.delay(10.0) for _ in range(5)]  # five attempts at the same instant
    assert delays == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])


def test_pacer_lets_a_late_attempt_go_now() -> None:
    p = Pacer(10.0)
    assert p.delay(0.0) == 0.0
    assert p.delay(5.0) == 0.0  # long after the last slot: no wait, and the next one is 5.1
    assert p.delay(5.0) == pytest.approx(0.1)


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50),
       st.floats(0.5, 1000))
def test_pacer_slots_never_closer_than_its_interval(times: list[float], rate: float) -> None:
    p = Pacer(rate)
    slots = [t + p.delay(t) for t in sorted(times)]
    assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(slots, slots[1:]))
    assert all(s >= t for s, t in zip(slots, sorted(times)))


@pytest.mark.parametrize("rate", [0, -1.0, float("nan")])
def test_pacer_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="> 0"):
        Pacer(rate)


def test_jitter_stays_within_half_and_whole_and_spreads() -> None:
    rng = random.Random(7)
    delays = [jittered(8.0, rng) for _ in range(1000)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 3.5  # spread over the whole range, not one value


def test_a_gateway_session_ticks_once_a_second_unless_its_keep_alive_is_short() -> None:
    assert gateway_tick(60, 0.5) == GATEWAY_TICK == 1.0
    assert gateway_tick(0, 0.5) == 1.0  # no keep-alive
    assert gateway_tick(4, 0.5) == 1.0
    assert gateway_tick(3, 0.5) == gateway_tick(1, 0.5) == 0.5
    assert gateway_tick(60, 2.0) == 2.0  # never faster than asked


def test_jitter_draws_from_the_generator_it_is_given() -> None:
    """``jittered(delay, rng)`` takes its randomness from ``rng``, so a seeded generator
    gives the same delays again (``(rng or random).random()`` -> ``random.random()``)."""
    draws = random.Random(42)
    expected = [4.0 + 4.0 * draws.random() for _ in range(5)]
    rng = random.Random(42)
    assert [jittered(8.0, rng) for _ in range(5)] == pytest.approx(expected)
