"""The read batch of a connection: the packets written while the network thread handles the
packets of one read wait for the batch's end, after its records were made durable (one sync;
persistence points 2-4), or for that sync's future (``_after_sync``); PUBLISHes go first,
unless a record they may need was written (``hold_publishes``). No paho here: ``_paho``'s
``PahoConnection`` queues the packets (``_queue``) and handles a sync's end (``_synced``)."""

from __future__ import annotations

import asyncio
import threading

from ._wire import PacketType
from .actions import PACKET_COST
from .hooks import Hooks, Sync

__all__ = ["Held", "ReadBatches"]

Held = tuple[int, bytes, int, int]  # a packet held back: kind, bytes, packet id, QoS


class ReadBatches:
    """The batching half of ``_paho.PahoConnection`` (a mixin: ``_start_batches`` in its
    ``__init__``)."""

    hooks: Hooks

    def _start_batches(self) -> None:
        self._batch: list[Held] | None = None  # writes held to batch end
        self._batch_thread: threading.Thread | None = None  # the thread reading that batch
        self._batch_lock = threading.Lock()  # guards _batch and the three below (not a write)
        self._after_sync: list[tuple[Sync, list[Held]]] = []  # each batch's sync, its packets
        self._publish_held = False  # a PUBLISH is among the packets held: the next ones wait
        self._batch_publishes: list[Held] | None = None  # a read batch's PUBLISHes not held
        # the memory QoS 0 PUBLISHes held here or in paho's queue, not written, take: their
        # bytes and PACKET_COST each (QoS0BacklogBytes)
        self.unsent_qos0, self.unsent_lock = 0, threading.Lock()

    def count_unsent(self, n: int) -> None:
        """``n`` more (or fewer) bytes of QoS 0 PUBLISHes not written yet."""
        with self.unsent_lock:
            self.unsent_qos0 += n

    def _uncount(self, dropped: list[Held]) -> None:
        """Held packets dropped unwritten (the connection is gone): no longer counted."""
        if n := sum(len(p) + PACKET_COST for k, p, _i, q in dropped
                    if k == PacketType.PUBLISH and not q):
            self.count_unsent(-n)

    def _queue(self, kind: int, packet: bytes, packet_id: int, qos: int,
               counted: bool = False) -> None:
        raise NotImplementedError  # (paho's queue: ``PahoConnection``; ``counted``: held here)

    def _synced(self, done: Sync) -> None:
        raise NotImplementedError

    def _queue_publishes(self, keep: bool) -> None:
        raise NotImplementedError

    def write(self, packet: bytes, kind: int, packet_id: int = 0, qos: int = 0) -> None:
        """Queue one encoded packet (any thread). In a read batch it waits for the batch's end
        (its records synced), in order. A PUBLISH goes before that sync (no PUBLISH needs the
        records of points 2-4; MQTT orders each kind alone [MQTT-4.6.0-1..4]), unless one
        waits (``hold_publishes``)."""
        with self._batch_lock:
            if self._batch is not None or self._after_sync:  # (no tuple for the common path)
                item, held = (kind, packet, packet_id, qos), True
                if kind != PacketType.PUBLISH or self._publish_held:
                    self._publish_held |= kind == PacketType.PUBLISH  # the next ones: behind
                    (self._batch if self._batch is not None else self._after_sync[-1][1]).append(item)
                elif (pubs := self._batch_publishes) is not None and (
                        pubs or threading.current_thread() is self._batch_thread
                        or not self.hooks._hook_publisher_waits()):
                    pubs.append(item)  # joined at the batch's end, first
                else:
                    held = False
                if held:
                    if kind == PacketType.PUBLISH and not qos:
                        self.count_unsent(len(packet) + PACKET_COST)
                    return
        self._queue(kind, packet, packet_id, qos)

    def hold_publishes(self) -> None:
        """The batch wrote a record a PUBLISH may need: its PUBLISHes from now wait too."""
        with self._batch_lock:
            self._publish_held |= self._batch is not None

    def in_batch(self) -> bool:
        """The calling thread is the network thread, handling a read batch."""
        return self._batch is not None and threading.current_thread() is self._batch_thread

    def _release(self, keep: bool = False) -> None:
        """Write what the batch held, in order, after its sync (``keep``: the batch goes on)."""
        while True:
            with self._batch_lock:
                held = self._batch
                if not held:
                    self._batch = [] if keep else None
                    self._publish_held = self._publish_held and bool(self._after_sync)
                    return
                self._batch = []
                if self._after_sync:
                    self._after_sync[-1][1].extend(held)
                    continue
            for kind, packet, packet_id, qos in held:
                self._queue(kind, packet, packet_id, qos, counted=True)

    def _wait_sync(self, fut: Sync) -> None:
        """The batch's packets and later ones wait for ``fut``, a sync off the loop [2-4]."""
        with self._batch_lock:
            held, self._batch = self._batch or [], None
            self._after_sync.append((fut, held))
        if isinstance(fut, asyncio.Future):  # (a sync thread's wakes paho's: ``loop_misc``)
            fut.add_done_callback(self._synced)

    def release_held(self) -> None:
        """Write what the batch holds so far (after its sync); the batch goes on."""
        self._queue_publishes(keep=True)  # (ahead of the PUBLISHes held after them)
        self._release(keep=True)
