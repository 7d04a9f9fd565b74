"""MQTT 5 client-side session expiry: is a saved session still worth restoring?

Pure: the caller passes the clock reading. The rules (MQTT 5.0, 3.1.2.11.2):

- an absent Session Expiry Interval means 0: the session ends when the connection closes;
- 0xFFFFFFFF: the session never expires;
- otherwise the broker discards it once the interval has passed after the connection closed
  [MQTT-4.1.0-2] [MQTT-3.1.2-23].

MQTT 3.1.1 has no expiry: the answer cannot be known (None). Neither can it when the clock reads
earlier than the recorded disconnect (the clock went backwards). After a crash while connected
there is no disconnect time; the last recorded activity bounds it from below, and is used.
"""

from __future__ import annotations

import math
from typing import Final

from . import _wire
from .state import MAX_EXPIRY

__all__ = ["DEFAULT_INTERVAL", "MESSAGE_EXPIRY_INTERVAL", "MessageClock", "disconnect_time",
           "effective_interval", "expired", "message_remaining", "with_remaining"]

NEVER: Final = MAX_EXPIRY
DEFAULT_INTERVAL: Final = 3600  # an MQTT 5 persistent session with no interval set keeps 1 h


def effective_interval(
    protocol_version: int, clean_session: bool, session_expiry_interval: int | None
) -> int | None:
    """The Session Expiry Interval a client sends: the one set, or for an MQTT 5 persistent
    session left unset ``DEFAULT_INTERVAL`` (absent would mean 0: the broker would end the
    session at every disconnect, 3.1.2.11.2). None: none is sent."""
    if session_expiry_interval is None and protocol_version == 5 and not clean_session:
        return DEFAULT_INTERVAL
    return session_expiry_interval


def disconnect_time(
    connected_at: float | None,
    disconnected_at: float | None,
    last_activity: float | None,
) -> float | None:
    """When the last connection closed, as far as the records tell; None if never connected.

    A clean disconnect recorded after the last connect is exact. Otherwise the process ended
    while connected (a crash): the connection closed no earlier than the last recorded activity.
    """
    if disconnected_at is not None and (connected_at is None or disconnected_at >= connected_at):
        return disconnected_at
    if last_activity is not None:
        return last_activity
    return connected_at


def expired(
    protocol_version: int,
    session_expiry_interval: int | None,
    connected_at: float | None,
    disconnected_at: float | None,
    last_activity: float | None,
    now: float,
) -> bool | None:
    """True if the broker has discarded the session by ``now``; None when it cannot be known."""
    if protocol_version != 5 or not math.isfinite(now):
        return None  # MQTT 3.1.1: no expiry interval to reason with; or no usable clock
    closed = disconnect_time(connected_at, disconnected_at, last_activity)
    if closed is None:
        return True  # never connected: the broker holds no session for it
    if now < closed:
        return None  # the clock went backwards: elapsed time is unknown
    interval = session_expiry_interval or 0  # absent means 0 (3.1.2.11.2)
    if interval == NEVER:
        return False  # 0xFFFFFFFF: never expires
    if interval == 0:
        return True  # ended when the network connection closed
    return now - closed > interval  # [MQTT-4.1.0-2]


MESSAGE_EXPIRY_INTERVAL: Final = 0x02  # MQTT 5 PUBLISH property (3.3.2.3.3)


def message_remaining(properties: bytes, accepted_at: float, now: float) -> int | None:
    """Seconds left of a held message's Message Expiry Interval (None: it has none). Counted
    since ``accepted_at`` on the ``MessageClock``; a clock that went back counts no time
    (nothing expires early), and an unknown publish time (0: an older file) counts none."""
    if not properties:
        return None
    try:
        interval = next((v for k, v in _wire.parse_properties(properties)
                         if k == MESSAGE_EXPIRY_INTERVAL), None)
    except _wire.MalformedPacket:
        return None
    if not isinstance(interval, int):
        return None
    if not accepted_at:
        return interval
    return max(0, interval - int(max(0.0, now - accepted_at)))


def with_remaining(properties: bytes, left: int) -> bytes:
    """``properties`` with the Message Expiry Interval set to ``left`` (at least 1 s: a
    message already on its way is resent, not dropped)."""
    return _wire.pack_properties([(k, max(left, 1) if k == MESSAGE_EXPIRY_INTERVAL else v)
                                  for k, v in _wire.parse_properties(properties)])


class MessageClock:
    """The clock a held message's age is counted on (``accepted_at``, the Message Expiry
    Interval [MQTT-3.3.2-6], the queue's age): the wall clock plus the session's
    ``clock_offset``, held to the monotonic clock within a process. A wall-clock step larger
    than ``STEP`` plus 0.1% of the time since the last reading (a slew is followed) moves the
    offset the other way: held messages neither age nor grow young by the jump. A jump while
    no process ran is seen only when the clock reads earlier than a held message's time
    (``Outgoing.clock_time``: then no time passed)."""

    STEP: Final = 1.0

    def __init__(self) -> None:
        self.mono: float | None = None  # the last reading kept: the monotonic clock's
        self._time = 0.0  # and the time it gave

    @property
    def fresh(self) -> bool:
        """No reading kept since made or ``reset``."""
        return self.mono is None

    def reset(self) -> None:
        """A new session or offset: the next reading starts afresh from the wall clock."""
        self.mono = None

    def peek(self, wall: float, mono: float | None, offset: float) -> tuple[float, float]:
        """``read`` without keeping the reading."""
        other = MessageClock()
        other.mono, other._time = self.mono, self._time
        return other.read(wall, mono, offset)

    def read(self, wall: float, mono: float | None, offset: float) -> tuple[float, float]:
        """(the time now, the offset it implies; the offset changed: the wall clock jumped),
        and the reading kept (the next one is counted from it)."""
        t = wall + offset
        if mono is None:
            return t, offset
        if self.mono is not None:
            since = mono - self.mono if mono > self.mono else 0.0
            jump = t - self._time - since
            if jump > self.STEP + since / 1000 or -jump > self.STEP + since / 1000:
                t, offset = t - jump, offset - jump
        self.mono, self._time = mono, t
        return t, offset
