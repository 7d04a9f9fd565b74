"""Packet-id reservations (SessionSync=interval), a part of the engine (``Outgoing`` builds
on ``Reserving``). Pure: no I/O, no threads.

A record that hands out an outgoing packet id reaches the OS at once and the disk within the
interval, while its PUBLISH leaves at once; so the ids come from reservations, each synced
before its first id leaves, and after a power cut the session knows which ids the broker may
still hold flows for [MQTT-4.3.3-10]. A publish that needs a new one syncs it where it runs;
on an asyncio loop the next one is made first, off the loop (``reserve_ahead``, asked for by
``compacting.Turn``), before the ids run out.
"""

from __future__ import annotations

from typing import Final

from .actions import Action, EngineSettings, Persist
from .state import MAX_PACKET_ID, Reserved, SessionState, _after

__all__ = ["AHEAD", "Reserving"]

#: ids still free in the reservation below which a loop's publish has the next one made first
AHEAD: Final = 16


class Reserving:
    """Packet-id reservations of one session's outgoing flows."""

    settings: EngineSettings
    state: SessionState
    # the reservation's first id stays while SessionPresent=1 has PUBRELs of the ids of
    # one read back to send (``Outgoing._release_reserved``); the publish that made the
    # latest reservation, and the one before it (``Outgoing.retract``)
    _unreleased: tuple[int, int] | None
    _unreserve: tuple[int, int, int] | None

    def _reserve(self, before: int, seq: int, handed: bool = True) -> list[Action]:
        """``reserve_packet_ids``: the ids handed out since ``last_packet_id`` was ``before``
        lie in a reservation; if not, a new one, synced before anything that uses them is
        written (``force``: also where a publish's sync waits). ``seq``: the (first) message
        published (``retract``); ``handed``: an id was (a batch may go all the way round)."""
        st = self.state
        n, last = self.settings.reserve_packet_ids, st.last_packet_id
        if not n or not handed or st.covers(before, last):
            return []
        undo = (seq, st.reserved_first, st.reserved_last)
        rec = st.reserve(before, n, keep_first=self._unreleased is not None)
        self._unreserve = undo
        return [Persist((rec,), sync=True, force=True)]

    def reservation_near(self, count: int = 1) -> bool:
        """Whether one of the next ``count`` ids (a batch's), or of the ``AHEAD`` after them,
        lies outside the reservation."""
        last = self.state.last_packet_id
        return bool(self.settings.reserve_packet_ids) and not self.state.covers(
            last, _after(last, AHEAD + count - 1))

    def reserve_ahead(self, count: int = 1) -> tuple[list[Action], tuple[int, int]]:
        """The next reservation before an id needs it: from the id after the last one handed
        out (or from the current one's first, as ``_reserve``) through
        ``reserve_packet_ids`` ids more (a batch of ``count``: ``count + AHEAD`` if more),
        synced at once; with the undo for ``unreserve``."""
        st, n = self.state, self.settings.reserve_packet_ids
        n = max(n, count + AHEAD) if count > 1 else n
        undo = (st.reserved_first, st.reserved_last)
        last = st.last_packet_id
        first = st.reserved_first if self._unreleased is not None and st.reserved_first \
            else _after(last)
        span = (last - first + 1) % MAX_PACKET_ID + n  # (ids from first through last + n)
        rec = Reserved(first, _after(first, span - 1) if span < MAX_PACKET_ID else
                       _after(first, -1))
        st.apply(rec)
        self._unreserve = None  # (no publish's: a retract leaves it)
        return [Persist((rec,), sync=True, force=True)], undo

    def unreserve(self, undo: tuple[int, int]) -> None:
        """``reserve_ahead``'s reservation taken back: its sync failed (never used)."""
        self.state.reserved_first, self.state.reserved_last = undo
