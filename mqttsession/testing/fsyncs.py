"""Count the fdatasync calls of the state file (its journal) and its disk queue.

    with counting_fdatasyncs() as counter:
        ...                       # publishes
    syncs = counter.syncs   # fdatasync calls inside the block

Only ``mqttsession.journal`` and ``mqttsession.spool`` see the counting ``os``; the rest of the
process keeps the real one. For benchmarks and tests (SessionSync=always, group commit).

``StuckFdatasync(monkeypatch.setattr)`` makes one ``os.fdatasync`` of the process block until
the test lets it go, as a slow card would (what waits for it, and what must not).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod

__all__ = ["FsyncCounter", "StuckFdatasync", "counting_fdatasyncs"]


class FsyncCounter:
    """``os`` with a thread-safe count of ``fdatasync`` calls (after each one returns).
    ``delay``: seconds each call sleeps first (the GIL released, as a real one does), to stand
    for a slower disk, such as a gateway's SD card (2-20 ms)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.syncs = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        os.fdatasync(fd)
        with self._lock:
            self.syncs += 1


@contextlib.contextmanager
def counting_fdatasyncs(delay: float = 0.0) -> Iterator[FsyncCounter]:
    """Count the fdatasyncs of the journal and the disk queue inside the block (each one
    ``delay`` seconds slower)."""
    counter = FsyncCounter(delay)
    for module in (journal_mod, spool_mod):
        setattr(module, "os", counter)
    try:
        yield counter
    finally:
        for module in (journal_mod, spool_mod):
            setattr(module, "os", os)


class StuckFdatasync:
    """``os.fdatasync`` replaced through ``patch`` (``monkeypatch.setattr``): once ``armed``,
    the next call, in any thread, sets ``entered`` and blocks until ``gate`` is set (30 s at
    most); the calls after it go through."""

    def __init__(self, patch: Callable[[Any, str, Any], None]) -> None:
        self.real = os.fdatasync
        self.entered, self.gate = threading.Event(), threading.Event()
        self.armed = False
        patch(os, "fdatasync", self._fdatasync)

    def _fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(30)
        self.real(fd)
