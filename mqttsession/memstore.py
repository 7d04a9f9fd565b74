"""``MemoryStore``: a ``store.Store`` in memory that models a disk, for the engine's crash
tests (``durable`` / ``written`` are what a power cut / a kill -9 leave), its disk queue too.
Pure: no I/O."""

from __future__ import annotations

import threading
from typing import Sequence, cast

from . import codec
from .records import OutgoingMessage, Spooled
from .state import Record, SessionState, message_bytes

__all__ = ["MemoryStore"]


class MemoryStore:
    """A ``Store`` in memory that models a disk: ``written`` is what the OS holds (survives a
    kill -9), ``durable`` what a sync made durable (survives a power cut)."""

    def __init__(self, snapshot: SessionState | None = None) -> None:
        self._lock = threading.Lock()
        self.snapshot = codec.encode(snapshot if snapshot is not None else SessionState())
        self.compactions = 0
        self.written: list[Record] = []
        self.durable = 0  # how many of ``written`` are synced
        self.lazy: list[Record] = []
        self.syncs = 0
        self.sync_policy = True
        self.aside: tuple[str, list[Record]] | None = None
        # the disk queue's model (``spool.Spool``): messages appended, how many synced, where
        # reading back stands; ``ready`` False: the engine keeps everything in memory
        self.queue: list[OutgoingMessage] = []
        self.queue_durable = 0
        self.queue_read = 0
        self.ready = False

    def read(self, n: int) -> list[OutgoingMessage]:
        with self._lock:
            out = self.queue[self.queue_read:self.queue_read + n]
            self.queue_read += len(out)
            return out

    def read_to(self) -> int:
        with self._lock:
            return self.queue[self.queue_read - 1].seq + 1 if self.queue_read else 0

    def mark(self) -> object:
        return self.queue_read

    def reset(self, mark: object) -> None:
        with self._lock:
            self.queue_read = cast(int, mark)

    def head_time(self) -> float | None:
        with self._lock:
            return self.queue[self.queue_read].accepted_at if self.queue_read < len(self.queue) else None

    def tail_time(self) -> float | None:
        with self._lock:
            return self.queue[-1].accepted_at if self.queue_read < len(self.queue) else None

    def queued(self) -> tuple[int, int]:
        with self._lock:
            rest = self.queue[self.queue_read:]
            return len(rest), sum(map(message_bytes, rest))

    def append(self, records: Sequence[Record], state: SessionState, *, sync: bool = False,
               lazy: bool = False, held: bool = False) -> None:
        lazy = lazy or held
        with self._lock:
            if records and type(records[0]) is Spooled:
                self.queue += [r.message for r in records if type(r) is Spooled]
                if sync and self.sync_policy:
                    self.queue_durable = len(self.queue)
                return
            if lazy:
                self.lazy += records
                return
            self.written += self.lazy
            self.written += records
            self.lazy.clear()
            if sync and self.sync_policy:
                self._sync()

    def _sync(self) -> None:
        self.durable = len(self.written)
        self.syncs += 1

    def sync_pending(self) -> None:
        with self._lock:
            if self.durable < len(self.written) and self.sync_policy:
                self._sync()

    def flush(self) -> None:
        with self._lock:
            self.written += self.lazy
            self.lazy.clear()

    @property
    def needs_compaction(self) -> bool:
        return False

    def compact(self, state: SessionState, text: str | None = None) -> None:
        with self._lock:
            self.snapshot = text if text is not None else codec.encode(state)
            self.written, self.lazy, self.durable = [], [], 0
            self.compactions += 1

    def recover(self, power_cut: bool = False) -> SessionState:
        """The state after a kill -9 (``power_cut``: after losing the unsynced records); the
        disk queue's reading back starts again where the state says."""
        with self._lock:
            state = codec.decode(self.snapshot)
            for rec in self.written[: self.durable] if power_cut else self.written:
                state.apply(rec)
            if power_cut:
                del self.queue[self.queue_durable:]
            self.queue_durable = len(self.queue)
            self.queue_read = next((i for i, m in enumerate(self.queue)
                                    if m.seq >= state.spool_next), len(self.queue))
            rest = self.queue[self.queue_read:]
            state.spooled, state.spooled_bytes = len(rest), sum(map(message_bytes, rest))
            if self.queue and self.queue[-1].seq >= state.next_seq:
                state.next_seq = self.queue[-1].seq + 1
            return state

    def keep_aside(self, label: str) -> list[str]:
        with self._lock:
            self.aside = (self.snapshot, list(self.written))
            self.snapshot, self.written, self.lazy, self.durable = codec.encode(SessionState()), [], [], 0
            return [f"memory:{label}"]

    def close(self) -> None:
        self.flush()
