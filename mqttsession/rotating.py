"""A shared log's rotation in a thread of its own, the appends going on meanwhile.

Inside an append the rotation stopped every writer for the whole rewrite (the live frames
written to a new file, its fsync, the rename, the directory's fsync): on an ``AsyncGateway``
that was the event loop. Here the append that passes the bound only notes where the log ends
(``S0``: every frame before it is in the sessions' memory) and copies the lists of the frames
that hold it; a thread writes those frames to a new file (its prefix, ``P`` bytes) and
fdatasyncs it, while the writers append to the old file. Then, under the log's mutex, what they
appended since (``S0`` to the end, written or held) is copied behind the prefix (the page
cache only), the new file renamed over the log, and the sessions' frame offsets moved (those
before ``S0`` to where the prefix put them, the others by ``P - S0``). No fsync is made under
the mutex: while a rotation runs, no group-commit sync starts (the waiters queue); the thread
fsyncs the directory (the rename) after the switch, and only then is the prefix on disk
(``_synced``) and the waiters let go, so nothing is told durable before the new file and its
name are. A token of the old incarnation maps to the new one (``moved_to``): synced in the old
file, on disk; else at or before ``S0``, the prefix's end; after it ``P - S0`` further on. A failed
write, a cut, a rebuild or close meanwhile abandons the rotation (its file deleted); a failed
one is tried again only once the log grew by a quarter more.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Final

from .journal import _create_temp, _write_all
from .recovery import _fsync_dir

if TYPE_CHECKING:
    from .sharedlog import SharedLog, _Session

__all__ = ["MAX_MOVED", "Rotation", "moved_to"]

log = logging.getLogger("mqttsession.sharedlog")

MAX_MOVED: Final = 1024  # incarnations whose tokens still map (older ones: synced whole)

# per session: (attach offset, snapshot offset, record offsets) in the old file and the new
_Place = tuple[int | None, int | None, list[int]]


def moved_to(moved: dict[int, tuple[int, int, int]], gen: int, pos: int) -> tuple[int, int]:
    """Where the byte ``pos`` of incarnation ``gen`` is now, through the rotations that
    carried it over: synced in the old file, position 0 (on disk); else up to ``S0`` the
    prefix's end ``P`` (on disk once the rename is: the directory's fsync), after it
    ``P - S0`` further on."""
    while (m := moved.get(gen)) is not None:  # (.get: another thread may drop the oldest)
        s0, p, synced = m
        gen, pos = gen + 1, 0 if pos <= synced else p if pos <= s0 else pos - s0 + p
    return gen, pos


class Rotation:
    """One background rotation of ``lg`` (made under its mutex, run by ``run``)."""

    def __init__(self, lg: SharedLog, header: bytes, attach: Any, retry: int) -> None:
        self.lg, self.gen, self.s0 = lg, lg._gen, lg._size
        self.cancelled = False
        self.retry = retry  # bytes the log grows by before a failed one is tried again
        self._attach = attach  # ``_tagged(_ATTACH, sid, client id)``
        self._header = header
        # the frames up to S0, as the sessions hold them (list copies: no encoding here)
        self._frames = [(s, s.attach_at, s.snap, s.snap_at, list(s.recs), list(s.offs))
                        for s in lg._sessions.values() if s.attach_at is not None]
        self.thread = threading.Thread(target=self.run, name="mqttsession-rotation",
                                       daemon=True)

    def run(self) -> None:
        lg, tmp, fd = self.lg, None, None
        try:
            with lg._sync_cond:  # (a sync begun before S0 was noted: it covers at most S0)
                while lg._syncing:
                    lg._sync_cond.wait()
            parts, pos = [self._header], len(self._header)
            places: dict[int, tuple[_Place, _Place]] = {}
            for s, attach_at, snap, snap_at, recs, offs in self._frames:
                a = self._attach(s)
                parts.append(a)
                new_attach, pos = pos, pos + len(a)
                new_snap = None
                if snap is not None:
                    parts.append(snap)
                    new_snap, pos = pos, pos + len(snap)
                new_offs = []
                for r in recs if snap is not None else ():
                    new_offs.append(pos)
                    pos += len(r)
                parts += recs if snap is not None else ()
                places[id(s)] = ((attach_at, snap_at if snap is not None else None, offs),
                                 (new_attach, new_snap, new_offs))
            tmp, fd = _create_temp(lg.path)
            _write_all(fd, b"".join(parts))
            os.fdatasync(fd)
            with lg._mutex:
                done = self._switch(tmp, fd, pos, places)
            if done:
                tmp = None
                _fsync_dir(lg.path)  # (the rename: before a sync tells anything durable)
                with lg._sync_cond:
                    if lg._gen == self.gen + 1:  # (not rebuilt meanwhile: a review)
                        lg._synced = max(lg._synced, pos)  # (the prefix: on disk, named)
            else:
                lg._rotate_after = lg._size + self.retry  # (abandoned: later)
        except OSError as exc:
            log.warning("shared log %s: rotation failed, it goes on growing: %s", lg.path, exc)
            lg._rotate_after = lg._size + self.retry
            if tmp is None and fd is not None:  # renamed: the directory's fsync failed
                with lg._mutex:
                    lg._broken |= lg._gen == self.gen + 1  # (the next write rebuilds it)
        finally:
            if fd is not None:
                os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            with lg._sync_cond:
                lg._rotation = None
                lg._sync_cond.notify_all()
                lg._wake(everyone=True)  # (the waiters look again: a new incarnation)

    def _switch(self, tmp: str, fd: int, prefix: int,
                places: dict[int, tuple[_Place, _Place]]) -> bool:
        """Under the mutex: the frames appended since S0 behind the prefix, the file renamed
        over the log, the offsets moved; False: abandoned (a cut, a rebuild, close)."""
        lg, s0 = self.lg, self.s0
        lg._settle()
        if self.cancelled or lg._gen != self.gen or lg._broken or lg._fd is None:
            return False
        with lg._write_lock:
            lg._write_held()  # (OSError: cut, and abandoned)
            tail = os.pread(lg._fd, lg._size - s0, s0) if lg._size > s0 else b""
            if len(tail) != lg._size - s0:
                return False
            moves = []
            for s in lg._sessions.values():
                got = _moved(s, s0, prefix - s0, places.get(id(s)))
                if got is None:
                    log.info("shared log %s: rotation abandoned (session %s moved)", lg.path,
                             s.client_id)
                    return False
                moves.append((s, got))
            _write_all(fd, tail)
            os.replace(tmp, lg.path)
            try:
                new = os.open(lg.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
            except OSError:
                new = None
            old, lg._fd = lg._fd, new
            with contextlib.suppress(OSError):  # (renamed: nothing may stop the switch now)
                os.close(old)
            for s, (attach_at, snap_at, offs, prev) in moves:
                s.attach_at, s.offs, s.prev = attach_at, offs, prev
                if snap_at is not None:
                    s.snap_at = snap_at
            with lg._sync_cond:
                lg._moved[self.gen] = (s0, prefix, min(lg._synced, s0))
                while len(lg._moved) > MAX_MOVED:
                    del lg._moved[min(lg._moved)]
                lg._gen += 1
                lg._synced = 0  # (the prefix once the directory's fsync names it: ``run``)
            old_size, lg._size = lg._size, prefix + len(tail)
            lg._broken = new is None  # (not reopened: the next write rebuilds it)
        log.info("shared log %s rotated: %d bytes -> %d bytes, %d sessions", lg.path,
                 old_size, lg._size, len(places))
        return True


def _moved(s: _Session, s0: int, shift: int, place: tuple[_Place, _Place] | None
           ) -> tuple[int | None, int | None, list[int],
                      tuple[bytes, int, list[bytes], list[int]] | None] | None:
    """``s``'s offsets in the new file: (attach, snapshot, records, the snapshot replaced);
    None when a frame before S0 is not where the rotation put it (abandoned)."""
    old, new = place if place is not None else ((None, None, []), (None, None, []))

    def one(at: int | None, was: int | None, now: int | None) -> int | None | bool:
        if at is None or at >= s0:
            return None if at is None else at + shift
        return now if at == was else False

    def many(offs: list[int]) -> list[int] | None:
        k = bisect.bisect_left(offs, s0)
        if offs[:k] != old[2][:k]:
            return None
        return new[2][:k] + [o + shift for o in offs[k:]]

    attach, snap, offs = one(s.attach_at, old[0], new[0]), one(
        s.snap_at if s.snap is not None else None, old[1], new[1]), many(s.offs)
    if attach is False or snap is False or offs is None:
        return None
    prev = None
    if s.prev is not None:
        p_snap, p_offs = one(s.prev[1], old[1], new[1]), many(s.prev[3])
        if p_snap not in (None, False) and p_offs is not None:
            prev = (s.prev[0], p_snap, s.prev[2], p_offs)
    return attach, snap, offs, prev
