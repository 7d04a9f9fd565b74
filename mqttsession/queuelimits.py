"""MaxQueuedMessages / MaxQueuedBytes: room for new messages (``QueueFullPolicy``), and the
never-sent messages whose MQTT 5 Message Expiry Interval ran out, which take none;
QoS0BacklogBytes: QoS 0 messages a connection that is behind does not take.

Part of the engine (pure; a base of ``outgoing.Outgoing``, whose state it reads).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, ContextManager, Final, Protocol

from .actions import PACKET_COST, Action, EngineSettings
from .errors import QueueFullError
from .state import OutgoingMessage, Phase, SessionState, message_bytes

if TYPE_CHECKING:
    from .records import Stepped

__all__ = ["DropLog", "QueueLimits", "QueueSource"]

log = logging.getLogger("mqttsession")

#: Drops logged at most once a window (a gateway offline drops at its publish rate).
DROP_LOG_WINDOW: Final = 10.0


class DropLog:
    """Dropped and expired messages in the log without a flood: the first drop of a window
    at WARNING with its detail, the others at DEBUG, counted and summed up at WARNING by the
    first drop after the window, or ``flush`` (the engine's tick; ``close()``). ``shared``: a
    gateway's, for all its sessions (each record names the session). ``on_message_dropped``
    and ``queue_stats()`` carry every drop."""

    def __init__(self, shared: bool = False, lock: ContextManager[object] | None = None) -> None:
        self.shared = shared
        # (a gateway's sessions drop in several threads: its lock; a client's: under its own)
        self._lock: ContextManager[object] = contextlib.nullcontext() if lock is None else lock
        self._since: float | None = None
        self._counts: Counter[str] = Counter()

    def dropped(self, seq: int | None, topic: str, reason: str, client_id: str = "") -> None:
        """One drop (``seq`` None: a QoS 0 message, never stored)."""
        with self._lock:
            now = time.monotonic()
            counted = self._since is not None and now - self._since < DROP_LOG_WINDOW
            if counted:
                self._counts[reason] += 1
            else:
                self._flush(now, False)
                self._since = now
        level = logging.DEBUG if counted else logging.WARNING
        if log.isEnabledFor(level):  # (a flood of drops builds no text the log drops)
            what = "QoS 0 message" if seq is None else f"message seq {seq}"
            log.log(level, "%s%s to %r dropped: %s%s",
                    f"session {client_id!r}: " if self.shared else "", what, topic, reason,
                    "" if counted else f" (further drops within {DROP_LOG_WINDOW:g} s are"
                    " summed up)")

    def flush(self, force: bool = False) -> None:
        """The drops counted since the window's first, summed up once the window is over
        (``force``: now)."""
        with self._lock:
            self._flush(time.monotonic(), force)

    def _flush(self, now: float, force: bool) -> None:
        if self._counts and self._since is not None and (
                force or now - self._since >= DROP_LOG_WINDOW):
            log.warning("%d more messages dropped in %.0f s (%s)", sum(self._counts.values()),
                        now - self._since, ", ".join(f"{r}: {n}" for r, n in
                                                     sorted(self._counts.items())))
            self._counts.clear()


class QueueSource(Protocol):
    """The disk queue the engine reads back from (``store.StateFile``): messages go there
    (``Spooled`` records) beyond ``queue_in_memory``; it is read only after every ``Persist``
    the engine returned before was carried out."""

    @property
    def ready(self) -> bool:
        """Whether messages may go to the disk queue now."""

    def read(self, n: int) -> list[OutgoingMessage]:
        """Up to ``n`` of the oldest messages not read back yet, in publish order."""

    def head_time(self) -> float | None:
        """When the oldest of them was published."""

    def tail_time(self) -> float | None:
        """When the newest of them was published."""

    def queued(self) -> tuple[int, int]:
        """How many are not read back yet, and their bytes."""

    def read_to(self) -> int:
        """Every message below this seq was read back (or lost to damage, reported)."""

    def mark(self) -> object:
        """Where reading back stands, for ``reset``."""

    def reset(self, mark: object) -> None:
        """Reading back where ``mark`` was: what ``read`` gave since then given again."""


class QueueLimits:
    """The queue bounds of an ``Outgoing`` (its attributes and methods, declared here)."""

    settings: EngineSettings
    state: SessionState
    spool: QueueSource | None
    now: float  # the MessageClock's time at the latest input
    _receive_max: int  # the broker's MQTT 5 Receive Maximum (CONNACK; 65535 before one)
    _expiry_scan: float  # when a full queue was last searched for expired messages
    drops: DropLog
    unsent_qos0: Callable[[], int]  # QoS 0 bytes the connection holds unwritten

    @property
    def _window(self) -> int:
        """QoS 1/2 PUBLISHes in flight at most: MaxInflight within the broker's Receive Maximum
        (MaxInflight set while connected counts from the next message on)."""
        return max(1, min(self.settings.max_inflight, self._receive_max))

    @property
    def v5(self) -> bool:
        raise NotImplementedError  # Outgoing's

    def _remaining(self, m: OutgoingMessage) -> int | None:
        raise NotImplementedError  # Outgoing's

    def _loaded(self, messages: list[OutgoingMessage]) -> list[Action]:
        raise NotImplementedError  # Outgoing's

    def _read_back(self, n: int) -> tuple[list[OutgoingMessage], list[Action]]:
        """Up to ``n`` messages read back from the disk queue and joined to the session
        (``_loaded``); an interrupt before they joined (a Ctrl-C on the publishing thread)
        leaves them in the queue, read back again next time, never skipped."""
        sp, st = self.spool, self.state
        assert sp is not None
        mark, before = sp.mark(), st.spool_next
        try:
            head = sp.read(n)
            return head, self._loaded(head)
        except BaseException:
            if st.spool_next == before:  # (joined: they are the session's, kept)
                sp.reset(mark)
            raise

    def _dropped(self, m: OutgoingMessage, rec: Stepped | None, reason: str) -> list[Action]:
        raise NotImplementedError  # Outgoing's

    def _behind(self, topic: str, size: int, ahead: int = 0) -> bool:
        """QoS0BacklogBytes: a QoS 0 PUBLISH of ``size`` bytes dropped (logged) past it, with
        the connection's unwritten bytes and ``ahead`` (not written yet either); one waits,
        however large."""
        bound = self.settings.qos0_backlog_bytes
        if bound and (behind := self.unsent_qos0() + ahead) and behind + size + PACKET_COST > bound:
            self.drops.dropped(None, topic, "the connection is behind (QoS0BacklogBytes)",
                               self.state.client_id)
            return True
        return False

    def _make_room(self, size: int, n: int = 1) -> list[Action]:
        """Room for ``n`` more messages of ``size`` bytes within MaxQueuedMessages and
        MaxQueuedBytes: nothing to do, the oldest never-sent messages dropped
        (``drop-oldest``), or ``QueueFullError`` (``reject``, or nothing that may go)."""
        s, st = self.settings, self.state
        max_n, max_b = s.max_queued_messages, s.max_queued_bytes
        count, used = st.held + n, st.held_bytes + size
        if (not max_n or count <= max_n) and (not max_b or used <= max_b):
            return []
        gone = self._drop_expired()  # expired: never to be sent, so no room of their own
        if gone:
            count, used = st.held + n, st.held_bytes + size
            if (not max_n or count <= max_n) and (not max_b or used <= max_b):
                return gone
        full = (f"the queue is full ({st.held} messages, {st.held_bytes} bytes;"
                f" MaxQueuedMessages={max_n}, MaxQueuedBytes={max_b})")
        if s.queue_full_policy != "drop-oldest":
            raise _refused(f"{full}: nothing was stored (QueueFullPolicy=reject)", gone)
        victims: list[OutgoingMessage] = []
        for m in st.outgoing.values():  # in publish order: the in-flight ones come first
            if (not max_n or count <= max_n) and (not max_b or used <= max_b):
                break
            if m.phase is Phase.QUEUED:
                victims.append(m)
                count -= 1
                used -= message_bytes(m)
        out: list[Action] = []
        sp = self.spool
        queued, queued_bytes = (st.spooled, st.spooled_bytes) if sp else (0, 0)
        if (max_n and count - queued > max_n) or (max_b and used - queued_bytes > max_b):
            # (before anything is read back: a Loaded record left unwritten would name
            # messages the journal never loaded)
            raise _refused(f"{full}, and no message that was never sent can make room:"
                           " nothing was stored", gone)
        while ((max_n and count > max_n) or (max_b and used > max_b)) and st.spooled and sp:
            head, loaded = self._read_back(1)  # the disk queue's oldest, read back to be dropped
            out += loaded
            for m in head:
                victims.append(st.outgoing[m.seq])
                count -= 1
                used -= message_bytes(m)
        if (max_n and count > max_n) or (max_b and used > max_b):
            raise _refused(f"{full}, and no message that was never sent can make room:"
                           " nothing was stored", gone + out)
        for m in victims:  # (one that expired since the last search: reported as such)
            if self.v5 and m.properties and self._remaining(m) == 0:
                out += self._dropped(m, st.expire(m.seq), "expired")
            else:
                out += self._dropped(m, st.drop(m.seq), "queue-full")
        return gone + out

    def _drop_expired(self) -> list[Action]:
        """MQTT 5, a full queue: the never-sent messages whose Message Expiry Interval ran out
        are dropped ("expired"), as sending would (3.3.2.3.3): those in memory, then those in
        the disk queue (read back while memory holds less than twice QueueInMemory); looked
        for once a second at most (a queue that stays full is not searched at every publish; a clock set back
        searches again)."""
        if not self.v5 or 0.0 <= self.now - self._expiry_scan < 1.0:
            return []
        self._expiry_scan = self.now
        st, sp, out = self.state, self.spool, []
        for m in [m for m in st.outgoing.values() if m.phase is Phase.QUEUED and m.properties
                  and self._remaining(m) == 0]:
            out += self._dropped(m, st.expire(m.seq), "expired")
        # past live messages too, read back while memory holds less than twice QueueInMemory
        # (and 8 MiB): expired ones behind a run of live ones at the head took room (a live
        # one refused or dropped instead)
        most = 2 * self.settings.queue_in_memory + 64
        while sp is not None and st.spooled and len(st.outgoing) < most and \
                st.outgoing_bytes < _SCAN_IN_MEMORY:
            head, loaded = self._read_back(64)
            if not head:
                break
            out += loaded
            for m in head:
                if m.properties and self._remaining(m) == 0:
                    out += self._dropped(m, st.expire(m.seq), "expired")
        return out


_SCAN_IN_MEMORY = 8 << 20  # what the search reads back to while memory holds less (bytes)


def _refused(text: str, done: list[Action]) -> QueueFullError:
    """``QueueFullError``, carrying what the search for room did (messages read back from the
    disk queue, expired ones dropped): its records must be written all the same, or the
    journal would name messages it never loaded (``Durability.run_refused``)."""
    exc = QueueFullError(text)
    exc.pending = tuple(done)
    return exc
