"""The session's SUBSCRIBE / UNSUBSCRIBE flows: packet ids, SUBACK and UNSUBACK, what a lost
connection leaves unanswered, and a broker that answers a SUBSCRIBE by closing the connection.

Part of the engine (pure; ``engine.Engine.subs``): each method returns the engine's actions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Container, Final, Sequence

from . import _wire
from ._wire import PacketType
from .actions import Action, Notify, Persist, Write
from .errors import UsageError
from .events import SubscribedEvent, UnsubscribedEvent
from .records import MAX_PACKET_ID

if TYPE_CHECKING:
    from .outgoing import Outgoing

__all__ = ["SUBSCRIBE_TRIES", "Subscriptions"]

SUBSCRIBE_TRIES: Final = 3  # connections closed on one SUBSCRIBE before it counts as refused


class Subscriptions:
    """SUBSCRIBE / UNSUBSCRIBE bookkeeping of one engine (its ``state.subscriptions`` is the
    durable part)."""

    def __init__(self, engine: Outgoing) -> None:
        self._e = engine
        self._sub_ids: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBEs awaiting SUBACK
        self._sub_closes: dict[str, int] = {}  # filter -> connections closed on its SUBSCRIBE
        self._unsub_ids: dict[int, list[str]] = {}
        self._unsent_subs: dict[str, int] = {}
        self._unsent_unsubs: set[str] = set()
        self._last_sub_id = 0

    def busy(self) -> Container[int]:
        """Packet ids held by SUBSCRIBE / UNSUBSCRIBE awaiting their ack."""
        if not self._unsub_ids:
            return self._sub_ids
        return {**self._sub_ids, **self._unsub_ids}.keys()

    def ids(self) -> set[int]:
        return set(self._sub_ids) | set(self._unsub_ids)

    def restored(self) -> None:
        """A saved session replaced the state: nothing is waiting to be sent."""
        self._unsent_subs.clear()

    def resume(self, lost: Sequence[tuple[str, int]]) -> list[Action]:
        """After CONNACK: what waited (and ``lost``, the subscriptions a broker forgot)."""
        out: list[Action] = []
        self._unsent_subs.update(lost)
        if self._unsent_unsubs:
            out += self._unsubscribe_packet(sorted(self._unsent_unsubs))
            self._unsent_unsubs.clear()
        subs, self._unsent_subs = dict(self._unsent_subs), {}
        if subs:
            out += self._subscribe_packets(sorted(subs.items()))
        return out

    def _next_sub_id(self) -> int:
        busy, held = self.busy(), self._e.state.outgoing_by_packet_id
        pid = self._last_sub_id
        for _ in range(MAX_PACKET_ID):
            pid = pid % MAX_PACKET_ID + 1
            if pid not in busy and held(pid) is None:
                self._last_sub_id = pid
                return pid
        raise UsageError("no free packet id for SUBSCRIBE / UNSUBSCRIBE")

    def subscribe(self, filters: Sequence[str], qos: int, connected: bool) -> list[Action]:
        """The application subscribed (filters validated); works while disconnected."""
        recs = []
        for f in filters:
            recs.append(self._e.state.subscribe(f, qos))
            self._unsent_unsubs.discard(f)
        out: list[Action] = [Persist(tuple(recs))]
        if connected:
            out += self._subscribe_packets([(f, qos) for f in filters])
        else:
            self._unsent_subs.update((f, qos) for f in filters)
        return out

    def unsubscribe(self, filters: Sequence[str], connected: bool) -> list[Action]:
        recs = []
        for f in filters:
            recs.append(self._e.state.unsubscribe(f))
            self._unsent_subs.pop(f, None)
        out: list[Action] = [Persist(tuple(recs))]
        if connected:
            out += self._unsubscribe_packet(list(filters))
        else:
            self._unsent_unsubs.update(filters)
        return out

    def _subscribe_packets(self, subs: Sequence[tuple[str, int]]) -> list[Action]:
        """SUBSCRIBE; a filter whose SUBSCRIBE a broker answered by closing the connection goes
        in a packet of its own, so the next close names it alone."""
        fresh = [s for s in subs if s[0] not in self._sub_closes]
        batches = ([fresh] if fresh else []) + [[s] for s in subs if s[0] in self._sub_closes]
        out: list[Action] = []
        proto = 5 if self._e.v5 else 4
        for batch in batches:
            pid = self._next_sub_id()
            self._sub_ids[pid] = batch
            out.append(Write(_wire.encode_subscribe(pid, batch, protocol=proto),
                             PacketType.SUBSCRIBE, pid))
        return out

    def _unsubscribe_packet(self, filters: list[str]) -> list[Action]:
        pid = self._next_sub_id()
        self._unsub_ids[pid] = filters
        return [Write(_wire.encode_unsubscribe(pid, filters, protocol=5 if self._e.v5 else 4),
                      PacketType.UNSUBSCRIBE, pid)]

    def suback(self, pid: int, codes: tuple[int, ...]) -> list[Action]:
        subs = self._sub_ids.pop(pid, [])
        out: list[Action] = []
        failed = []
        for flt, _qos in subs:
            self._sub_closes.pop(flt, None)  # answered: the broker did not choke on it
        for (flt, _qos), code in zip(subs, codes):
            if code >= 0x80 and self._e.state.subscriptions.get(flt) is not None:
                out.append(Persist((self._e.state.unsubscribe(flt),)))
                failed.append(flt)
        for (flt, qos), code in zip(subs, codes):
            out.append(Notify("on_subscribed", SubscribedEvent(flt, qos, code)))
        for flt in failed:
            out.append(self._e.error(0x80, f"subscription to {flt!r} refused by the broker"))
        return out

    def unsuback(self, pid: int, codes: tuple[int, ...]) -> list[Action]:
        filters = self._unsub_ids.pop(pid, [])
        codes = codes or (0,) * len(filters)
        return [Notify("on_unsubscribed", UnsubscribedEvent(f, c)) for f, c in zip(filters, codes)]

    def requeue_unanswered(self) -> list[Action]:
        """SUBSCRIBE / UNSUBSCRIBE left without their ack by a lost connection: the broker may
        never have seen them, so they go out again on the next one (a SUBSCRIBE replaces an
        equal one [MQTT-3.8.4-3]). The oldest unanswered SUBSCRIBE is the one a broker that
        closes instead of refusing choked on (it reads in order); after ``SUBSCRIBE_TRIES``
        such closes in a row its filters count as refused and leave the session."""
        out: list[Action] = []
        for i, subs in enumerate(self._sub_ids.values()):
            for flt, qos in subs:
                if self._e.state.subscriptions.get(flt) is None:
                    continue  # unsubscribed since
                tries = self._sub_closes.get(flt, 0) + (1 if i == 0 else 0)
                if tries >= SUBSCRIBE_TRIES:
                    del self._sub_closes[flt]
                    self._unsent_subs.pop(flt, None)
                    out.append(Persist((self._e.state.unsubscribe(flt),)))
                    out.append(Notify("on_subscribed", SubscribedEvent(flt, qos, 0x80)))
                    out.append(self._e.error(
                        0x80, f"the broker closed the connection {SUBSCRIBE_TRIES} times in"
                              f" answer to SUBSCRIBE {flt!r}: taken as refused (subscribe"
                              " again to retry)"))
                else:
                    self._sub_closes[flt] = tries
                    self._unsent_subs.setdefault(flt, qos)
        for filters in self._unsub_ids.values():
            self._unsent_unsubs.update(f for f in filters if f not in self._e.state.subscriptions)
        self._sub_ids.clear()
        self._unsub_ids.clear()
        return out
