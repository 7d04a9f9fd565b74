"""The session's SUBSCRIBE / UNSUBSCRIBE flows: packet ids, SUBACK and UNSUBACK, what a lost
connection leaves unanswered, and a broker that answers a SUBSCRIBE / UNSUBSCRIBE by closing
the connection.

A filter stays in ``state.unanswered`` (durable) from its ``subscribe`` / ``unsubscribe`` to
its ack: a restored session sends it again on the next connection, SessionPresent=1 too (the
broker may never have seen it; a SUBSCRIBE replaces an equal one [MQTT-3.8.4-3]).

Part of the engine (pure; ``engine.Engine.subs``): each method returns the engine's actions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Container, Final, Sequence, Sized, TypeVar

from . import _wire
from ._wire import PacketType
from .actions import Action, Notify, Persist, Write
from .errors import ProtocolViolation, UsageError
from .events import SubscribedEvent, UnsubscribedEvent
from .records import MAX_PACKET_ID, Answered

if TYPE_CHECKING:
    from .outgoing import Outgoing

__all__ = ["SUBSCRIBE_TRIES", "Subscriptions"]

log = logging.getLogger("mqttsession")

SUBSCRIBE_TRIES: Final = 3  # connections closed on one SUBSCRIBE before it counts as refused
_OVERHEAD: Final = 8  # a (UN)SUBSCRIBE's bytes besides its filters, at most: fixed header 5,
# packet id 2, MQTT 5 property length 1 (no properties)
_T = TypeVar("_T")


def _filter_size(topic_filter: str, option: int) -> int:
    """A filter's bytes in a packet: length 2, UTF-8, a SUBSCRIBE's options byte."""
    return 2 + len(topic_filter.encode("utf-8")) + option


class Subscriptions:
    """SUBSCRIBE / UNSUBSCRIBE bookkeeping of one engine (its ``state.subscriptions`` is the
    durable part)."""

    def __init__(self, engine: Outgoing) -> None:
        self._e = engine
        self._sub_ids: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBEs awaiting SUBACK
        self._sub_closes: dict[str, int] = {}  # filter -> connections closed on its SUBSCRIBE
        self._unsub_ids: dict[int, list[str]] = {}
        self._unsub_closes: dict[str, int] = {}  # the same for UNSUBSCRIBE
        self._order: dict[int, None] = {}  # the packet ids awaiting an ack, oldest first
        self._sent: dict[str, int] = {}  # filter -> packets awaiting an ack that carry it
        self._unsent_subs: dict[str, int] = {}
        self._unsent_unsubs: set[str] = set()
        self._last_sub_id = 0
        # server -> the subscriptions it held when its connection ended (this process only):
        # a return to it with SessionPresent=1 finds that session, not the one made elsewhere
        self._left: dict[str, dict[str, int]] = {}

    def busy(self) -> Container[int]:
        """Packet ids held by SUBSCRIBE / UNSUBSCRIBE awaiting their ack."""
        if not self._unsub_ids:
            return self._sub_ids
        return {**self._sub_ids, **self._unsub_ids}.keys()

    def ids(self) -> set[int]:
        return set(self._sub_ids) | set(self._unsub_ids)

    def restored(self) -> None:
        """A saved session replaced the state: what it holds unanswered waits to be sent,
        nothing of the session before does."""
        st = self._e.state
        for pending in (self._sub_ids, self._sub_closes, self._unsub_ids, self._unsub_closes,
                        self._order, self._sent):
            pending.clear()
        self._unsent_subs = {f: st.subscriptions[f] for f in st.unanswered
                             if f in st.subscriptions}
        self._unsent_unsubs = {f for f in st.unanswered if f not in st.subscriptions}
        self._left.clear()

    def left(self, server: str) -> None:
        """The connection to ``server`` ended: what it surely holds (not what was never sent
        or is unanswered; an unsubscribed filter it may still hold counts as held)."""
        held = dict(self._e.state.subscriptions)
        for f in [*self._unsent_subs, *(f for subs in self._sub_ids.values() for f, _q in subs)]:
            held.pop(f, None)
        for f in [*self._unsent_unsubs, *(f for fs in self._unsub_ids.values() for f in fs)]:
            held.setdefault(f, -1)
        self._left[server] = held

    def returned(self, server: str) -> None:
        """Back on ``server`` from another (SessionPresent=1): its session is as it was left,
        so the subscriptions made or dropped elsewhere since go to it now (a SUBSCRIBE replaces
        an equal one [MQTT-3.8.4-3]); nothing for a server this process never left though it
        left others (a cluster node: as found); all of them when it left none (a restart)."""
        left, cur = self._left.get(server), self._e.state.subscriptions
        if left is None and self._left:
            return
        left = left or {}
        for f, q in cur.items():
            if left.get(f) != q:
                self._unsent_subs.setdefault(f, q)
        self._unsent_unsubs.update(f for f in left if f not in cur)

    def resume(self, lost: Sequence[tuple[str, int]]) -> list[Action]:
        """After CONNACK: what waited (and ``lost``, the subscriptions a broker forgot, each
        unanswered again until its SUBACK: a kill before it must not lose it)."""
        out: list[Action] = []
        if lost:
            out.append(Persist(tuple(self._e.state.subscribe(f, q) for f, q in lost)))
        self._unsent_subs.update(lost)
        unsubs, self._unsent_unsubs = sorted(self._unsent_unsubs), set()
        if unsubs:  # (those without a free packet id come back, waiting)
            out += self._unsubscribe_packets(unsubs)
        subs, self._unsent_subs = dict(self._unsent_subs), {}
        if subs:
            out += self._subscribe_packets(sorted(subs.items()))
        return out

    def _next_sub_id(self) -> int | None:
        """A packet id no message and no SUBSCRIBE / UNSUBSCRIBE holds; None: none is free."""
        busy, held = self.busy(), self._e.state.outgoing_by_packet_id
        pid = self._last_sub_id
        for _ in range(MAX_PACKET_ID):
            pid = pid % MAX_PACKET_ID + 1
            if pid not in busy and held(pid) is None:
                self._last_sub_id = pid
                return pid
        return None

    def unanswered(self) -> bool:
        """A SUBSCRIBE / UNSUBSCRIBE written on this connection is not answered yet."""
        return bool(self._order)

    def retry(self) -> list[Action]:
        """Connected: the SUBSCRIBE / UNSUBSCRIBE that waited for a free packet id (every id
        held by messages), sent once one is free (each tick)."""
        return self.resume(()) if self._unsent_subs or self._unsent_unsubs else []

    def _no_id(self, what: str, filters: Sequence[str]) -> None:
        log.warning("no free packet id for %s %s (every one is held by a message): it waits"
                    " for one", what, ", ".join(map(repr, filters[:3])))

    def _check_size(self, filters: Sequence[str], option: int) -> None:
        """``UsageError`` for a filter whose packet alone is over the broker's Maximum Packet
        Size (MQTT 5 CONNACK) [MQTT-3.2.2-15]: sent, it would cost the connection."""
        cap = self._e.max_packet
        if cap is None:
            return
        for f in filters:
            if _OVERHEAD + _filter_size(f, option) > cap:
                raise UsageError(f"topic filter {f!r:.60} does not fit in the broker's Maximum"
                                 f" Packet Size {cap} (MQTT 5)")

    def _fitting(self, items: Sequence[_T], size: Callable[[_T], int]) -> list[list[_T]]:
        """``items`` in packets each within the broker's Maximum Packet Size (if one is
        known; a filter too large alone still goes alone)."""
        cap = self._e.max_packet
        if cap is None:
            return [list(items)]
        out: list[list[_T]] = [[]]
        used = _OVERHEAD
        for item in items:
            n = size(item)
            if out[-1] and used + n > cap:
                out.append([])
                used = _OVERHEAD
            out[-1].append(item)
            used += n
        return out

    def subscribe(self, filters: Sequence[str], qos: int, connected: bool) -> list[Action]:
        """The application subscribed (filters validated); works while disconnected."""
        self._check_size(filters, 1)
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
        self._check_size(filters, 0)
        recs = []
        for f in filters:
            recs.append(self._e.state.unsubscribe(f))
            self._unsent_subs.pop(f, None)
        out: list[Action] = [Persist(tuple(recs))]
        if connected:
            out += self._unsubscribe_packets(list(filters))
        else:
            self._unsent_unsubs.update(filters)
        return out

    def _subscribe_packets(self, subs: Sequence[tuple[str, int]]) -> list[Action]:
        """SUBSCRIBE; a filter whose SUBSCRIBE a broker answered by closing the connection goes
        in a packet of its own, so the next close names it alone."""
        fresh = [s for s in subs if s[0] not in self._sub_closes]
        batches = (self._fitting(fresh, lambda s: _filter_size(s[0], 1)) if fresh else []) \
            + [[s] for s in subs if s[0] in self._sub_closes]
        out: list[Action] = []
        proto = 5 if self._e.v5 else 4
        for i, batch in enumerate(batches):
            pid = self._next_sub_id()
            if pid is None:  # they wait (``retry``), the session changed already
                waiting = [s for b in batches[i:] for s in b]
                self._unsent_subs.update(waiting)
                self._no_id("SUBSCRIBE", [f for f, _q in waiting])
                break
            self._sub_ids[pid] = batch
            self._sending(pid, [f for f, _q in batch])
            out.append(Write(_wire.encode_subscribe(pid, batch, protocol=proto),
                             PacketType.SUBSCRIBE, pid))
        return out

    def _unsubscribe_packets(self, filters: list[str]) -> list[Action]:
        """UNSUBSCRIBE; as for SUBSCRIBE, a filter a broker closed the connection on goes alone."""
        fresh = [f for f in filters if f not in self._unsub_closes]
        batches = (self._fitting(fresh, lambda f: _filter_size(f, 0)) if fresh else []) \
            + [[f] for f in filters if f in self._unsub_closes]
        out: list[Action] = []
        for i, batch in enumerate(batches):
            pid = self._next_sub_id()
            if pid is None:
                waiting = [f for b in batches[i:] for f in b]
                self._unsent_unsubs.update(waiting)
                self._no_id("UNSUBSCRIBE", waiting)
                break
            self._unsub_ids[pid] = batch
            self._sending(pid, batch)
            out.append(Write(_wire.encode_unsubscribe(pid, batch, protocol=5 if self._e.v5 else 4),
                             PacketType.UNSUBSCRIBE, pid))
        return out

    def _sending(self, pid: int, filters: Sequence[str]) -> None:
        self._order[pid] = None
        for f in filters:
            self._sent[f] = self._sent.get(f, 0) + 1

    def _acked(self, pid: int, filters: Sequence[str]) -> None:
        self._order.pop(pid, None)
        for f in filters:
            left = self._sent.pop(f, 0) - 1
            if left > 0:
                self._sent[f] = left

    def _answered(self, filters: Sequence[str]) -> list[Action]:
        """The ``Answered`` record of ``filters`` no other SUBSCRIBE / UNSUBSCRIBE waits for
        (lazy: lost, a restored session only sends them once more)."""
        st, sent, subs, unsubs = self._e.state, self._sent, self._unsent_subs, self._unsent_unsubs
        done = tuple(dict.fromkeys(f for f in filters if f in st.unanswered and f not in sent
                                   and f not in subs and f not in unsubs))
        if not done:
            return []
        rec = Answered(done)
        st.apply(rec)
        return [Persist((rec,), lazy=True)]

    def suback(self, pid: int, codes: tuple[int, ...]) -> list[Action]:
        _count(self._sub_ids.get(pid), codes, "SUBACK")
        subs = self._sub_ids.pop(pid, [])
        self._acked(pid, [f for f, _q in subs])
        out: list[Action] = []
        failed = []
        for flt, _qos in subs:
            self._sub_closes.pop(flt, None)  # answered: the broker did not choke on it
        for (flt, _qos), code in zip(subs, codes):
            if code >= 0x80 and self._e.state.subscriptions.get(flt) is not None:
                out.append(Persist((self._e.state.unsubscribe(flt),)))
                failed.append(flt)
        out += self._answered([flt for flt, _qos in subs])
        for (flt, qos), code in zip(subs, codes):
            out.append(Notify("on_subscribed", SubscribedEvent(flt, qos, code)))
        for (flt, _qos), code in zip(subs, codes):
            if flt in failed:
                out.append(self._e.error(code, f"subscription to {flt!r} refused by the broker"
                                               f" (0x{code:02X})"))
        return out

    def unsuback(self, pid: int, codes: tuple[int, ...]) -> list[Action]:
        if codes:  # (MQTT 3.1.1: none)
            _count(self._unsub_ids.get(pid), codes, "UNSUBACK")
        filters = self._unsub_ids.pop(pid, [])
        self._acked(pid, filters)
        for f in filters:
            self._unsub_closes.pop(f, None)
        codes = codes or (0,) * len(filters)
        return [*self._answered(filters),
                *[Notify("on_unsubscribed", UnsubscribedEvent(f, c)) for f, c in zip(filters, codes)]]

    def requeue_unanswered(self) -> list[Action]:
        """SUBSCRIBE / UNSUBSCRIBE left without their ack by a lost connection: the broker may
        never have seen them, so they go out again on the next one (a SUBSCRIBE replaces an
        equal one [MQTT-3.8.4-3]). The oldest unanswered SUBSCRIBE is the one a broker that
        closes instead of refusing choked on (it reads in order); after ``SUBSCRIBE_TRIES``
        such closes in a row its filters count as refused (a SUBSCRIBE's leave the session, an
        UNSUBSCRIBE's are no longer sent)."""
        out: list[Action] = []
        oldest = next(iter(self._order), None)
        given_up: list[str] = []
        for pid, subs in self._sub_ids.items():
            for flt, qos in subs:
                if self._e.state.subscriptions.get(flt) is None:
                    continue  # unsubscribed since
                tries = self._sub_closes.get(flt, 0) + (1 if pid == oldest else 0)
                if tries >= SUBSCRIBE_TRIES:
                    del self._sub_closes[flt]
                    self._unsent_subs.pop(flt, None)
                    given_up.append(flt)
                    out.append(Persist((self._e.state.unsubscribe(flt),)))
                    out.append(Notify("on_subscribed", SubscribedEvent(flt, qos, 0x80)))
                    out.append(self._gave_up("SUBSCRIBE", flt, "subscribe"))
                else:
                    self._sub_closes[flt] = tries
                    self._unsent_subs.setdefault(flt, qos)
        for pid, filters in self._unsub_ids.items():
            for flt in filters:
                if flt in self._e.state.subscriptions:
                    continue  # subscribed since
                tries = self._unsub_closes.get(flt, 0) + (1 if pid == oldest else 0)
                if tries >= SUBSCRIBE_TRIES:
                    del self._unsub_closes[flt]
                    given_up.append(flt)
                    out.append(Notify("on_unsubscribed", UnsubscribedEvent(flt, 0x80)))
                    out.append(self._gave_up("UNSUBSCRIBE", flt, "unsubscribe"))
                else:
                    self._unsub_closes[flt] = tries
                    self._unsent_unsubs.add(flt)
        self._sub_ids.clear()
        self._unsub_ids.clear()
        self._order.clear()
        self._sent.clear()
        return out + self._answered(given_up)  # (after their ``Unsubscribed`` records)

    def _gave_up(self, packet: str, flt: str, call: str) -> Action:
        return self._e.error(0x80, f"the broker closed the connection {SUBSCRIBE_TRIES} times in"
                                   f" answer to {packet} {flt!r}: taken as refused ({call}"
                                   " again to retry)")


def _count(pending: Sized | None, codes: tuple[int, ...], packet: str) -> None:
    """One reason code a filter (3.1.1 [MQTT-3.8.4-5], 5.0 [MQTT-3.8.4-6]; MQTT 5 UNSUBACK
    3.11.3): a list short or long leaves filters unanswered or answered wrongly, so the
    connection is dropped (they go again)."""
    if pending is not None and len(codes) != len(pending):
        raise ProtocolViolation(0x82, f"a {packet} with {len(codes)} reason codes for"
                                      f" {len(pending)} topic filters")
