"""Appending to a file through a mapping of it: the journal's and the disk queue's writes.

Records are copied into a shared mapping of the zeros written ahead of them
(``journal.zeros_ahead``), with no system call: the page cache holds them as a ``write`` would
(a kill -9 right after loses nothing; an fdatasync of the file makes them durable), and the
writing thread keeps the GIL. A ``write`` hands the GIL to paho's network thread and back once
per publish, the dearest part of a publish under ``SessionSync=none`` (``bench/README.md``).

The mapping never reaches past the file's end (the caller's ``alloc``, the zeros written): it
is dropped before the file is cut or closed. Where mapping fails (a file system without it)
the caller writes instead, from then on.
"""

from __future__ import annotations

import logging
import mmap

__all__ = ["MappedTail"]

log = logging.getLogger(__name__)


class MappedTail:
    """The mapping of one file open for appending (the caller's lock held)."""

    __slots__ = ("_map", "mappable")

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self.mappable = True  # False once mmap failed: the caller writes

    @property
    def active(self) -> bool:
        return self._map is not None

    def put(self, fd: int, alloc: int, at: int, data: bytes) -> bool:
        """Copy ``data`` to offset ``at`` of ``fd``'s file, whose first ``alloc`` bytes exist
        (records, then zeros); False: not mapped there, write it."""
        end = at + len(data)
        m = self._map
        if m is None or len(m) < end:
            if end > alloc or not self.mappable:
                return False
            self.drop()
            try:
                m = self._map = mmap.mmap(fd, alloc)  # the file's size: never past its end
            except (OSError, ValueError) as exc:
                log.debug("file descriptor %d not mapped (%s): written instead", fd, exc)
                self.mappable = False
                return False
        m[at:end] = data
        return True

    def drop(self) -> None:
        """Unmap (before the file is cut or closed: a mapping past its end would fault)."""
        if self._map is not None:
            self._map.close()
            self._map = None
