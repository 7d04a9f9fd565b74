"""Appending to a file through a mapping of it: the journal's and the disk queue's writes.

Records are copied into a shared mapping of the zeros written ahead of them
(``journal.zeros_ahead``), with no system call: the page cache holds them as a ``write`` would
(a kill -9 right after loses nothing; an fdatasync of the file makes them durable), and the
writing thread keeps the GIL. A ``write`` hands the GIL to paho's network thread and back once
per publish, the dearest part of a publish under ``SessionSync=none`` (``bench/README.md``).

Under SessionSync=none and interval (``StateFile.set_sync``): ``always`` syncs each publish's
record at once, and on ext4 an fdatasync after stores into a mapping costs about 4x one after
``write`` (550 against 135 µs here: ``bench/README.md``, sessions 18 and 19).
Only on a file system that overwrites written blocks in place (``IN_PLACE``): there a page
copied over zeros already written needs no new block when the kernel writes it back. A
copy-on-write one (btrfs, zfs) allocates one then, and out of room the fault would kill the
process with SIGBUS where ``write`` says ENOSPC: such files are written.

The mapping never reaches past the file's end (the caller's ``alloc``, the zeros written): it
is dropped before the file is cut or closed. Where mapping fails the caller writes instead,
from then on.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Final

__all__ = ["IN_PLACE", "MappedTail", "fs_type"]

log = logging.getLogger(__name__)

#: file systems whose overwrite of written bytes allocates nothing (``/proc/self/mountinfo``)
IN_PLACE: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})

_fs_types: dict[int, str | None] = {}


def fs_type(dev: int) -> str | None:
    """The type of the file system on device ``dev`` (``st_dev``); None: not known."""
    if dev not in _fs_types:
        found = None
        want = f"{os.major(dev)}:{os.minor(dev)}"
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split(" - ", 1)
                    head = fields[0].split()
                    if len(fields) == 2 and len(head) > 2 and head[2] == want:
                        found = fields[1].split()[0]
                        break
        except OSError:
            pass
        _fs_types[dev] = found
    return _fs_types[dev]


class MappedTail:
    """The mapping of one file open for appending (the caller's lock held)."""

    __slots__ = ("_map", "mappable")

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self.mappable: bool | None = None  # None: not asked yet; False: the caller writes

    @property
    def active(self) -> bool:
        return self._map is not None

    def put(self, fd: int, alloc: int, at: int, data: bytes) -> bool:
        """Copy ``data`` to offset ``at`` of ``fd``'s file, whose first ``alloc`` bytes exist
        (records, then zeros); False: not mapped there, write it."""
        end = at + len(data)
        m = self._map
        if m is None or len(m) < end:
            if end > alloc or self.mappable is False:
                return False
            self.drop()
            try:
                if self.mappable is None:  # (one fstat for the file's life)
                    kind = fs_type(os.fstat(fd).st_dev)
                    self.mappable = kind in IN_PLACE
                    if not self.mappable:
                        log.debug("fd %d on a %s file system: written, not mapped", fd, kind)
                        return False
                m = self._map = mmap.mmap(fd, alloc)  # the file's size: never past its end
            except (OSError, ValueError) as exc:
                log.debug("fd %d not mapped (%s): written instead", fd, exc)
                self.mappable = False
                return False
        m[at:end] = data
        return True

    def drop(self) -> None:
        """Unmap (before the file is cut or closed: a mapping past its end would fault)."""
        if self._map is not None:
            m, self._map = self._map, None  # (forgotten first: a Ctrl-C leaves no closed map)
            m.close()
