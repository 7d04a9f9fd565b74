"""Connection pacing for many sessions: a rate limit on connection attempts and jittered
backoff, so that sessions cut off together (a broker restart, an outage) do not all reconnect
at the same instant (the thundering herd). Pure: the caller passes the clock."""

from __future__ import annotations

import random

__all__ = ["GATEWAY_TICK", "Pacer", "gateway_tick", "jittered"]

#: Seconds between the timer rounds of a gateway's session (keep-alive, lazy records): 1,000
#: sessions cost 1,000 loop callbacks a second, not the 2,000 of a ``Client``'s 0.5 s.
GATEWAY_TICK = 1.0


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


def gateway_tick(keep_alive: int, tick: float) -> float:
    """The timer period of a gateway's session: ``GATEWAY_TICK``, or ``tick`` when a
    keep-alive under 4 s needs finer checks."""
    return tick if 0 < keep_alive < 4 else max(tick, GATEWAY_TICK)
