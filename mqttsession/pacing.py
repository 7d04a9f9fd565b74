"""Connection pacing for many sessions: a rate limit on connection attempts and jittered
backoff, so that sessions cut off together (a broker restart, an outage) do not all reconnect
at the same instant (the thundering herd). Pure: the caller passes the clock."""

from __future__ import annotations

import random

__all__ = ["Pacer", "jittered"]


class Pacer:
    """At most ``rate`` connection attempts a second: each attempt gets the next free slot."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"the connection rate must be > 0 a second, got {rate!r}")
        self.rate = float(rate)
        self._next = 0.0  # the first free slot (a ``now`` time)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until this attempt's slot (0: go now); the slot is taken."""
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        return slot - now


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """A backoff delay with "equal jitter": between half of ``delay`` and ``delay``, so that
    sessions with the same backoff spread out while none retries much sooner than asked."""
    r = (rng or random).random()
    return delay / 2 + delay / 2 * r
