"""Count the fdatasync calls of the state file (its journal) and its disk queue.

    with counting_fdatasyncs() as counter:
        ...                       # publishes
    syncs = counter.syncs   # fdatasync calls inside the block

Only ``mqttsession.journal`` and ``mqttsession.spool`` see the counting ``os``; the rest of the
process keeps the real one. For benchmarks and tests (SessionSync=always, group commit).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod

__all__ = ["FsyncCounter", "counting_fdatasyncs"]


class FsyncCounter:
    """``os`` with a thread-safe count of ``fdatasync`` calls (after each one returns)."""

    def __init__(self) -> None:
        self.syncs = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        with self._lock:
            self.syncs += 1


@contextlib.contextmanager
def counting_fdatasyncs() -> Iterator[FsyncCounter]:
    """Count the fdatasyncs of the journal and the disk queue inside the block."""
    counter = FsyncCounter()
    for module in (journal_mod, spool_mod):
        setattr(module, "os", counter)
    try:
        yield counter
    finally:
        for module in (journal_mod, spool_mod):
            setattr(module, "os", os)
