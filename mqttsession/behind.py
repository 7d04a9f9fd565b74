"""A threaded ``Client``'s read batches on a slow disk (``SLOW_SYNC``): the fsync their acks
wait for (persistence points 2-4: PUBREC, PUBREL, PUBCOMP after the record) made by one sync
thread, not by paho's network thread, which reads on meanwhile. One sync runs at a time; the
batches that end while it runs share the next one, which starts after their records were
appended (group commit). Pure: threads only, no paho, no sockets.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

__all__ = ["SLOW_SYNC", "SyncBehind"]

log = logging.getLogger(__name__)

#: seconds a state file's fdatasync takes (its moving average) from which read batches sync on
#: the sync thread: below it (a fast SSD's 0.05-0.2 ms) the hand-over to the thread and back
#: costs more than the network thread's wait (a bench: QoS 2 under interval ~4% slower)
SLOW_SYNC = 0.001


class SyncBehind:
    """The sync thread of one session (made at its first use)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync  # every record appended so far made durable (``sync_pending``)
        self._lock = threading.Lock()
        self._next: Future[None] | None = None  # the sync not begun yet, shared
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False

    def request(self, wake: Callable[[], None]) -> Future[None] | None:
        """A future done once every record appended before this call is durable (its
        exception: the sync's failure); ``wake`` is called then, from the sync thread. None
        once stopped (or no thread to be had): the caller syncs itself."""
        with self._lock:
            fut = self._next
            if fut is None:
                if self._stopped:
                    return None
                fut = Future()
                try:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mqttsession-acksync")
                    self._pool.submit(self._run)
                except RuntimeError as exc:  # (no thread, the interpreter shutting down)
                    log.debug("no sync thread: %s", exc)
                    return None
                self._next = fut
        fut.add_done_callback(lambda _f: wake())  # (each caller's: a later one's connection)
        return fut

    def _run(self) -> None:
        with self._lock:
            fut, self._next = self._next, None
        if fut is None or not fut.set_running_or_notify_cancel():
            return
        try:
            self._sync()
        except BaseException as exc:  # noqa: BLE001 - the batches' to report, not this thread's
            fut.set_exception(exc)
        else:
            fut.set_result(None)

    def stop(self) -> None:
        """The sync under way (and one asked for) ended; later requests get None."""
        with self._lock:
            self._stopped = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
