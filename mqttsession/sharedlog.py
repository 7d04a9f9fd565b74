"""One append-only log holding the durable sessions of many clients (a gateway's).

Files, in the gateway's state directory ``D`` (created mode 0600, never through a symlink):

- ``D/sessions.log``: the log; its file descriptor is the only one, whatever the number of
  sessions, and one fdatasync covers every session's records (group commit across sessions);
- ``D/gateway.lock``: held with ``flock`` by the one process that owns ``D`` (its pid in it);
- ``D/aside/``: sessions taken out of the log (``SessionLog.keep_aside``) as ordinary state
  file pairs (snapshot + ``.journal``) that ``recovery.read_state`` reads.

The log is ``recovery.frame`` frames. The first is the header ``["mqttsession-sharedlog",1]``;
each other payload is a tag byte, a session id (4 bytes, big-endian) and a body:

- ``a`` attach: the body is the client id (UTF-8) the session id stands for from here on;
- ``s`` snapshot: ``codec.encode`` text (UTF-8); it supersedes the session's earlier frames;
- ``r`` record: ``codec.encode_record`` bytes, applied to the snapshot before it;
- ``e`` end: the session left the log (kept aside); its id is not used again in this file.

The tags are among the bytes ``recovery.read_frames`` knows a record frame starts with, so it
tells mid-file damage from a torn tail here as in a journal. Opening reads the whole log once:
a torn tail is cut (WARNING); damage (a bad frame followed by good ones, an unknown tag, a frame
for an unknown session) renames the log to ``sessions.log.damaged-<time>`` and raises
``StateError``. The frames of the live sessions are kept in memory as written and decoded only
when a session is recovered.

Writes, group commit and faults follow ``journal.Journal``: a failed write is taken back
(ftruncate); a failed fdatasync cuts everything not yet synced. A log that
``hold_publishes`` (``AsyncGateway``'s) keeps the records of a group commit's publishes in
memory until the sync that covers them writes them (every session's with one ``write``), or
any write before it; a failed write of them cuts them as a failed fdatasync does. Either makes
the log "broken": the next write first rewrites it whole from memory (the frames written and
not cut), and each session that lost frames writes a fresh snapshot of its state with its next
append. The same rewrite ("rotation": temp file, fsync, rename, fsync the directory) runs
when the log grows past ``max(max_log_bytes or 4 MiB, twice its live bytes)``, in a thread of
its own while the appends go on (``rotating``).
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .errors import PersistenceError, StateError, StateLockedError
from .groupcommit import GroupCommit
from .rotating import Rotation, moved_to
from .journal import _write_all, write_atomic
from .statelock import (_own_file, _remove_stale_temps, acquire_lock, forks, release_lock,
                        require_directory, unlinked)
from .recovery import (
    _NOFOLLOW,
    keep_cut_copy,
    zeros_from,
    _read_file,
    _refuse_link,
    frame,
    free_name,
    read_frames,
)

if TYPE_CHECKING:
    from .sessionlog import SessionLog

__all__ = ["LOCK_NAME", "LOG_NAME", "SessionStats", "SharedLog", "StaleSession"]


class StaleSession(PersistenceError):
    """A session's record cannot be appended: records before it were cut (its view writes a
    snapshot of the session's state instead)."""


log = logging.getLogger(__name__)

LOG_NAME: Final = "sessions.log"
LOCK_NAME: Final = "gateway.lock"
ASIDE_DIR: Final = "aside"
_MODE: Final = 0o600
_OPEN: Final = os.O_RDWR | os.O_APPEND | _NOFOLLOW
_HEADER: Final = frame(b'["mqttsession-sharedlog",1]')
_ATTACH, _SNAPSHOT, _RECORD, _END = b"a", b"s", b"r", b"e"
_FRAME_HEAD: Final = 8  # recovery.frame's length + CRC
AUTO_LOG_BYTES: Final = 4 * 1024 * 1024
AUTO_SESSION_BYTES: Final = 64 * 1024
LINGER: Final = 0.0002  # seconds the syncing thread waits while others sync too ...
LINGER_SIBLINGS: Final = 4  # ... this many sync_to calls under way, itself included


def _tagged(tag: bytes, sid: int, body: bytes) -> bytes:
    return frame(tag + sid.to_bytes(4, "big") + body)


@dataclass(frozen=True)
class SessionStats:
    """One session in the log, for ``mqttsession inspect``."""

    client_id: str
    snapshot_bytes: int
    records: int  # since the snapshot
    record_bytes: int


@dataclass(eq=False)
class _Session:
    """What the log holds for one session: its frames as written, and where they are."""

    client_id: str
    sid: int
    attach_at: int | None = None  # offset of its ``a`` frame in this file (None: none)
    snap: bytes | None = None  # the ``s`` frame
    snap_at: int = 0
    recs: list[bytes] = field(default_factory=list)  # ``r`` frames since the snapshot
    offs: list[int] = field(default_factory=list)
    rec_bytes: int = 0
    # the snapshot and records a new snapshot replaced, until that one is synced: a failed
    # fdatasync that cuts the new one brings them back
    prev: tuple[bytes, int, list[bytes], list[int]] | None = None
    stale: bool = False  # lost frames to a failed write: the next append writes a snapshot

    def live(self) -> int:
        if self.snap is None:
            return 0
        return _FRAME_HEAD + 5 + len(self.client_id.encode("utf-8")) + len(self.snap) + self.rec_bytes

    def trim(self, keep: int) -> None:
        """Forget the frames from offset ``keep`` on (a failed sync cut them)."""
        lost = False
        if self.snap is not None and self.snap_at >= keep:
            lost = True
            self.snap, self.recs, self.offs = None, [], []
            if self.prev is not None and self.prev[1] < keep:
                self.snap, self.snap_at, self.recs, self.offs = self.prev
        self.prev = None
        n = bisect.bisect_left(self.offs, keep)
        if n < len(self.offs):
            lost = True
            del self.recs[n:], self.offs[n:]
        if self.attach_at is not None and self.attach_at >= keep:
            self.attach_at = None
        self.rec_bytes = sum(map(len, self.recs))
        self.stale = self.stale or lost


def parse(data: bytes, damaged: Callable[[str], StateError]
          ) -> tuple[dict[str, _Session], int, int]:
    """A log's live sessions by client id, the next free session id, and where the valid part
    of ``data`` ends (a torn tail after it); ``damaged(why)`` makes the error raised."""
    sessions: dict[str, _Session] = {}
    payloads, valid, mid = read_frames(data)
    if mid:
        raise damaged(f"frame at byte {valid} is bad but later ones are good")
    if not payloads or frame(payloads[0]) != _HEADER:
        if len(data) < len(_HEADER) and _HEADER.startswith(data):
            return sessions, 1, 0  # a torn header: nothing was ever written after it
        raise damaged("no shared log header")
    by_sid: dict[int, _Session] = {}
    pos, top, seen = len(_HEADER), 0, set()
    for p in payloads[1:]:
        end = pos + _FRAME_HEAD + len(p)
        tag, sid = p[:1], int.from_bytes(p[1:5], "big")
        s = by_sid.get(sid)
        if len(p) < 5 or (s is None) != (tag == _ATTACH) or sid <= 0:
            raise damaged(f"frame at byte {pos} does not fit (tag {tag!r}, session {sid})")
        if tag == _ATTACH:
            try:
                cid = p[5:].decode("utf-8")
            except UnicodeDecodeError:
                raise damaged(f"client id at byte {pos} is not UTF-8") from None
            # ids are never used twice in a file, but not attached in their order: a session
            # whose first snapshot failed (a full disk) keeps its id, attached later; one
            # whose first snapshot a start cut (a torn tail) is attached anew, a new id
            old = sessions.get(cid)
            if old is not None and old.snap is None and sid not in seen:
                del by_sid[old.sid], sessions[cid]
            if cid in sessions or sid in seen:
                raise damaged(f"session {sid} ({cid!r}) at byte {pos} attached twice")
            top = max(top, sid)
            seen.add(sid)
            s = by_sid[sid] = sessions[cid] = _Session(cid, sid, attach_at=pos)
        elif tag == _SNAPSHOT and s is not None:
            s.snap, s.snap_at, s.recs, s.offs, s.rec_bytes = data[pos:end], pos, [], [], 0
        elif tag == _RECORD and s is not None and s.snap is not None:
            s.recs.append(data[pos:end])
            s.offs.append(pos)
            s.rec_bytes += end - pos
        elif tag == _END and s is not None:
            del by_sid[sid], sessions[s.client_id]
        else:
            raise damaged(f"frame at byte {pos} does not fit (tag {tag!r}, session {sid})")
        pos = end
    for cid in [c for c, s in sessions.items() if s.snap is None]:
        del sessions[cid]  # attached, its snapshot torn off
    return sessions, top + 1, valid


class SharedLog(GroupCommit):
    """Owns a gateway's state directory: the shared log, its lock, the group commit."""

    def __init__(self, directory: str, *, sync: bool = True, max_log_bytes: int = 0,
                 hold_publishes: bool = False) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, LOG_NAME)
        self.sync = sync  # the default policy of the sessions' views
        self.max_log_bytes = max_log_bytes
        # a group commit's publishes held for its sync (``_write(hold=)``): where one thread
        # (an asyncio loop) would otherwise make every write; publisher threads write their own
        self.hold_publishes = hold_publishes
        self._mutex = threading.RLock()  # the log's own: callers' locks are theirs
        self._write_lock = threading.Lock()  # a write, or the cut after a failed sync
        self._sync_cond = threading.Condition(threading.Lock())
        self._fd: int | None = None
        self._size = 0
        self._gen = 0  # the file's incarnation (a rotation starts a new one, synced whole)
        self._synced = 0
        self._syncing = False
        self._waiters = []
        self._callers = 0  # sync_to calls under way
        self._broken = False
        self._held: list[bytes] = []  # frames of group commits' publishes, not yet written
        self.keep_unsynced = False  # once a session is under SessionSync=interval (``_cut``)
        self._held_bytes = 0
        self._pending_cut: int | None = None  # a failed sync's cut, not yet out of memory
        self._lost: dict[int, int] = {}  # incarnation -> where a failed sync cut it
        self._moved: dict[int, tuple[int, int, int]] = {}  # gen -> (S0, P, synced): ``rotating``
        self._rotation: Rotation | None = None  # the one running in its thread
        self._rotate_after = 0  # a failed or abandoned one: not again before this size
        self._closing = False
        self.cut_notes: list[str] = []  # valid records the opening cut (each session's view)
        self._sessions: dict[str, _Session] = {}
        self._views: dict[str, SessionLog] = {}
        self._next_sid = 1
        self._live = len(_HEADER)
        require_directory(self.path)
        self._born = forks()  # (a fork()'s child leaves the parent's log alone)
        self._lock_fd: int | None = acquire_lock(os.path.join(self.directory, LOCK_NAME),
                                                   f"gateway directory {self.directory}")
        try:
            _remove_stale_temps(self.path)
            self._open()
        except BaseException:
            self._unlock()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        data = _read_file(self.path)  # StateError for a symlink, a special file, past 1 GiB
        if data is None:
            write_atomic(self.path, _HEADER, sync=True)
            data = _HEADER
        try:
            fd = os.open(self.path, _OPEN)
        except OSError as exc:
            _refuse_link(self.path, exc)
            raise PersistenceError(exc.errno, f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            _own_file(fd, self.path)
            valid = self._load(data)
            if valid < len(data):
                kept = keep_cut_copy(self.path, data, valid) if zeros_from(data, valid) > valid \
                    else ""  # (zeros alone: written ahead)
                log.warning("shared log %s: torn tail of %d bytes cut (a crash mid-write)%s",
                            self.path, len(data) - valid, kept)
                if kept:  # valid records went with it: every session is told (``on_error``)
                    self.cut_notes.append(f"shared log {self.path}: a bad record at byte"
                                          f" {valid} was cut with what followed it{kept}")
                os.ftruncate(fd, valid)
            if valid == 0:
                _write_all(fd, _HEADER)
                valid = len(_HEADER)
            if self.sync:  # a killed process's records, or pages an earlier failed write-back
                wfd = os.open(self.path, os.O_WRONLY | _NOFOLLOW)  # left clean: on disk now
                try:  # (not ``fd``: a pwrite with O_APPEND appends)
                    _write_all(wfd, data[:valid], 0)
                finally:
                    os.close(wfd)
            if valid != len(data) or self.sync:
                os.fdatasync(fd)
        except OSError as exc:  # (a full disk, a failing one)
            os.close(fd)
            raise PersistenceError(exc.errno, f"cannot open {self.path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size, self._synced = fd, valid, valid

    def _load(self, data: bytes) -> int:
        """Read the log's frames into memory; where its valid part ends."""
        self._sessions, self._next_sid, valid = parse(data, self._damaged)
        self._live = len(_HEADER) + sum(s.live() for s in self._sessions.values())
        return valid

    def _damaged(self, why: str) -> StateError:
        aside = free_name(f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(self.path, aside)
        log.error("shared log %s is damaged (%s); kept aside as %s", self.path, why, aside)
        return StateError(f"shared log {self.path} is damaged: {why}; kept aside as {aside}")

    # ------------------------------------------------------------------ sessions

    def sessions(self) -> list[str]:
        """The client ids that have a session in the log."""
        with self._mutex:
            self._settle()
            return [c for c, s in self._sessions.items() if s.snap is not None]

    def has(self, client_id: str) -> bool:
        """Whether ``client_id`` has a session in the log."""
        with self._mutex:
            self._settle()
            s = self._sessions.get(client_id)
            return s is not None and s.snap is not None

    def session(self, client_id: str, *, max_journal_bytes: int = 0) -> SessionLog:
        """The view of ``client_id``'s session (``StateLockedError`` while one is open)."""
        from .sessionlog import SessionLog  # noqa: PLC0415 - it imports this module

        with self._mutex:
            if self._lock_fd is None:
                raise PersistenceError(None, f"shared log {self.path} is closed")
            if client_id in self._views:
                raise StateLockedError(f"session {client_id!r} of {self.path} is in use")
            view = SessionLog(self, client_id, self.sync, max_journal_bytes)
            self._views[client_id] = view
            return view

    def stats(self) -> list[SessionStats]:
        """Per session: its snapshot's size and the records since it."""
        with self._mutex:
            self._settle()
            return [SessionStats(c, len(s.snap) - _FRAME_HEAD - 5, len(s.recs), s.rec_bytes)
                    for c, s in self._sessions.items() if s.snap is not None]

    def _session(self, client_id: str) -> _Session:
        """``client_id``'s entry (a new one if it has none), mutex held."""
        self._settle()
        s = self._sessions.get(client_id)
        if s is None:
            s = self._sessions[client_id] = _Session(client_id, self._next_sid)
            self._next_sid += 1
        return s

    def _release(self, view: SessionLog) -> None:
        with self._mutex:
            if self._views.get(view.client_id) is view:
                del self._views[view.client_id]

    # ------------------------------------------------------------------ writing

    def _write(self, s: _Session, frames: list[bytes], tag: bytes, *, hold: bool = False
               ) -> tuple[int, int]:
        """Append ``frames`` of session ``s`` (mutex held); their end (incarnation, offset).
        ``tag`` ``s``: the last frame is a snapshot; ``e``: the session leaves the log.
        ``hold``: a group commit's publish, kept in memory and written by the ``sync_to``
        that covers it (or any write before it), one ``write`` for every session's."""
        while True:
            self._settle()
            if tag == _RECORD and (s.stale or s.snap is None):
                # a failed sync in another thread cut what this record follows (after the
                # caller looked): written after the rebuild, it would follow nothing
                raise StaleSession(None, f"session {s.client_id} lost records to a failed"
                                         " sync: it is rewritten whole")
            if self._needs_rebuild():
                if self._lock_fd is None:
                    raise PersistenceError(None, f"shared log {self.path} is closed")
                try:
                    self._rotate(rebuild=True)
                except PersistenceError:
                    s.stale = True  # its record is not written: its state holds it
                    raise
                # a failed sync may have cut the log after the look above: the rebuild
                # settled that cut, which may have taken what this record follows
                continue
            out = frames
            if tag == _SNAPSHOT and s.attach_at is None:
                out = [_tagged(_ATTACH, s.sid, s.client_id.encode("utf-8")), *frames]
            data = b"".join(out)
            with self._write_lock:
                if self._needs_rebuild():
                    continue  # a failed sync cut the log meanwhile: rebuild first
                start = self._size
                if hold:
                    self._held.append(data)
                    self._held_bytes += len(data)
                else:
                    try:
                        self._write_held(data)
                    except OSError as exc:
                        s.stale = True
                        raise PersistenceError(exc.errno, f"cannot write shared log {self.path}:"
                                                          f" {exc.strerror or exc}") from exc
                end = self._size = start + len(data)
                gen = self._gen
            break
        self._live -= s.live()
        pos = start
        for i, f in enumerate(out):
            if f[_FRAME_HEAD:_FRAME_HEAD + 1] == _ATTACH:
                s.attach_at = pos
            elif tag == _SNAPSHOT and i == len(out) - 1:
                if s.snap is not None:
                    s.prev = (s.snap, s.snap_at, s.recs, s.offs)
                s.snap, s.snap_at, s.recs, s.offs, s.rec_bytes = f, pos, [], [], 0
                s.stale = False
            elif tag == _RECORD:
                s.recs.append(f)
                s.offs.append(pos)
                s.rec_bytes += len(f)
            pos += len(f)
        if tag == _END:
            del self._sessions[s.client_id]
        else:
            self._live += s.live()
        if end > max(self.max_log_bytes or AUTO_LOG_BYTES, 2 * self._live):
            self._rotate_soon(end)
        return gen, end  # (a rotation moves it: ``moved_to``; a failed sync's cut: ``_lost``)

    def _needs_rebuild(self) -> bool:
        """Whether the next write first rewrites the log (a failed write or sync)."""
        return self._broken or self._fd is None

    def _write_held(self, data: bytes = b"") -> None:
        """Write the held frames, then ``data`` (the write lock held): one ``write``. A failure
        takes it back: the file and the sessions' memory are cut where the write began (the
        held frames' publishes get the error; ``data``'s writer marks its session stale),
        and the next write rewrites the log."""
        base = self._size - self._held_bytes  # where the bytes in the file end
        held = bool(self._held)
        if held:
            data = b"".join(self._held) + data
            self._held, self._held_bytes = [], 0
        if not data:
            return
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
        except OSError:
            if held:
                self._cut_locked(self._fd, base)
            else:  # nothing of it is in memory yet
                try:
                    os.ftruncate(self._fd, base)
                except OSError:
                    pass
                self._broken = True
            raise

    def _settle(self) -> None:
        """A failed sync cut the log (outside the mutex): forget what it cut (mutex held)."""
        if self._pending_cut is None:
            return
        with self._write_lock:
            keep, self._pending_cut = self._pending_cut, None
        if keep is not None:
            for s in self._sessions.values():
                s.trim(keep)
            self._live = len(_HEADER) + sum(s.live() for s in self._sessions.values())

    def _rotate(self, rebuild: bool) -> None:
        """Rewrite the log from memory: each session's attach, snapshot and records (mutex
        held). ``rebuild``: the log is broken, a failure raises; else it is only logged."""
        self._quiesce()
        self._settle()
        parts, places, pos = [_HEADER], [], len(_HEADER)
        for s in self._sessions.values():
            if s.snap is None:
                continue
            attach = _tagged(_ATTACH, s.sid, s.client_id.encode("utf-8"))
            offs = []
            at, pos = pos, pos + len(attach)
            snap_at, pos = pos, pos + len(s.snap)
            for r in s.recs:
                offs.append(pos)
                pos += len(r)
            parts += [attach, s.snap, *s.recs]
            places.append((s, at, snap_at, offs))
        try:
            write_atomic(self.path, b"".join(parts), sync=True)
        except PersistenceError as exc:
            if rebuild:
                raise
            log.warning("shared log %s: rotation failed, it goes on growing: %s", self.path, exc)
            return
        old, self._fd = self._fd, None  # the new file holds everything, synced
        self._held.clear()  # (the held frames too: they are the sessions')
        self._held_bytes = 0
        if old is not None:
            os.close(old)
        for s, at, snap_at, offs in places:
            s.attach_at, s.snap_at, s.offs, s.prev = at, snap_at, offs, None
        for s in self._sessions.values():
            if s.snap is None:
                s.attach_at = s.prev = None
        old_size, self._size = self._size, pos
        with self._sync_cond:
            self._gen += 1
            self._synced = pos
            self._sync_cond.notify_all()
            self._wake(everyone=True)  # a new incarnation: each waiter looks again
        try:
            self._fd = os.open(self.path, _OPEN)
        except OSError as exc:
            self._broken = True  # the next write tries again
            if rebuild:
                raise PersistenceError(exc.errno, f"cannot open {self.path}: {exc.strerror}"
                                       ) from exc
            log.warning("shared log %s: cannot reopen it after rotation: %s", self.path, exc)
            return
        self._broken = False
        log.info("shared log %s %s: %d bytes -> %d bytes, %d sessions", self.path,
                 "rebuilt" if rebuild else "rotated", old_size, pos, len(places))

    def _rotate_soon(self, end: int) -> None:
        """Past the bound: a rotation in a thread (``rotating``) unless one runs, the log
        closes, or one failed and the log has not grown by a quarter since (mutex held)."""
        if self._rotation is not None or self._closing or end < self._rotate_after:
            return
        r = Rotation(self, _HEADER, lambda s: _tagged(_ATTACH, s.sid, s.client_id.encode(
            "utf-8")), (self.max_log_bytes or AUTO_LOG_BYTES) // 4)
        with self._sync_cond:
            self._rotation = r
        try:
            r.thread.start()
        except RuntimeError:  # (no thread to be had: here, as before)
            with self._sync_cond:
                self._rotation = None
                self._wake(everyone=True)
            self._rotate(rebuild=False)

    def _end_rotation(self) -> None:
        """The rotation under way abandoned and waited for (close; mutex NOT held)."""
        r = self._rotation
        if r is not None:
            r.cancelled = True
            r.thread.join()

    def _quiesce(self) -> None:
        """Wait for a group commit's fdatasync before the fd is closed (mutex held)."""
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()

    # ------------------------------------------------------------------ group commit

    def position(self) -> tuple[int, int]:
        """Where the log's written bytes end now: (incarnation, offset), for ``sync_to``."""
        with self._mutex:
            return self._gen, self._size

    @property
    def _rotating(self) -> bool:
        return self._rotation is not None

    def _now_at(self, gen: int, pos: int) -> tuple[int, int]:
        return moved_to(self._moved, gen, pos)

    def is_synced(self, gen: int, pos: int) -> bool:
        """Whether the bytes up to ``pos`` of incarnation ``gen`` are on disk (False: not yet,
        or a failed sync cut them)."""
        with self._sync_cond:  # (a rotation's switch changes the four together: a review)
            gen, pos = self._now_at(gen, pos)
            if gen == self._gen:
                return self._synced >= pos
            cut = self._lost.get(gen)
            return cut is None or pos <= cut

    def sync_to(self, gen: int, pos: int, linger: float = 0.0) -> bool:
        """Group commit: the log's bytes up to ``pos`` of incarnation ``gen`` on disk, whatever
        session wrote them; threads that call it together share one fdatasync (run outside the
        mutex by one of them for everything written so far). ``PersistenceError`` when it
        fails (everything not yet synced is cut). True when this call ran the fdatasync;
        ``linger``: seconds it waits first for the records of other writers under way (by
        default ``LINGER`` while ``LINGER_SIBLINGS`` or more calls are under way: many
        sessions' publishers then share each fdatasync)."""
        with self._sync_cond:
            self._callers += 1
            if linger <= 0 and self._callers >= LINGER_SIBLINGS:
                linger = LINGER
        try:
            return self._group_sync(gen, pos, linger)
        finally:
            with self._sync_cond:
                self._callers -= 1

    def _sync_start(self, gen: int, pos: int) -> int | None:
        if self._gen != gen:
            if not self.is_synced(gen, pos):
                raise PersistenceError(None, f"a failed sync of shared log {self.path} cut the"
                                             " record")
            return None  # rotated meanwhile: synced whole
        if self._broken or self._fd is None:
            raise PersistenceError(None, f"shared log {self.path} failed a write and is"
                                         " rewritten with the next record")
        fd = self._fd
        try:
            gone = unlinked(fd)  # (not fstat: it would slow the fdatasync after it)
        except OSError:
            gone = True
        if gone:  # deleted or replaced: a sync would go into a file no restart reads
            self._cut(None)
            raise PersistenceError(errno.ENOENT, f"shared log {self.path} was deleted or"
                                   " replaced while in use; rewritten from memory")
        with self._write_lock:  # the group commit's publishes, every session's, one write
            try:
                self._write_held()
            except OSError as exc:
                raise PersistenceError(exc.errno, f"cannot write shared log {self.path}:"
                                                  f" {exc.strerror or exc}") from exc
        return fd

    def _sync_failed(self, fd: int, exc: OSError) -> PersistenceError:
        self._cut(fd)
        return PersistenceError(exc.errno, f"cannot sync shared log {self.path}:"
                                           f" {exc.strerror or exc}")

    def _cut(self, fd: int | None) -> None:
        """A failed sync: everything not yet on disk is cut (from the file when ``fd``, from
        memory by the next ``_settle``), and the next write rewrites the log. With a session
        under SessionSync=interval or none (``keep_unsynced``) only the held frames: the
        others' publishes returned, and a kill -9 must find them."""
        with self._write_lock:
            self._cut_locked(fd, self._size - self._held_bytes if self.keep_unsynced
                             else self._synced)

    def _cut_locked(self, fd: int | None, keep: int) -> None:
        self._broken = True
        if fd is not None:
            try:
                os.ftruncate(fd, keep)
            except OSError:
                pass
        self._held.clear()  # (after ``keep``: cut from memory too)
        self._held_bytes = 0
        self._size = keep
        self._pending_cut = keep if self._pending_cut is None else min(keep, self._pending_cut)
        self._lost[self._gen] = min(keep, self._lost.get(self._gen, keep))

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Write the views' lazy records, close the log, release the lock (file removed); in a
        child of fork() nothing (the parent's)."""
        if self._born != forks():
            return
        with self._mutex:
            views = list(self._views.values())
        for view in views:  # (a view's lock comes before the log's)
            view.close()
        with self._mutex:
            self._closing = True
        self._end_rotation()
        with self._mutex:
            self._quiesce()
            if self._broken and self._fd is not None:  # (a failed sync's cut: the file
                try:  # as memory has it, a session ended there gone from both)
                    self._rotate(rebuild=True)
                except PersistenceError as exc:
                    log.warning("shared log %s: not rebuilt at close: %s", self.path, exc)
            if self._fd is not None:
                with self._write_lock:
                    try:
                        self._write_held()
                    except OSError as exc:
                        log.warning("shared log %s: held records not written: %s", self.path,
                                    exc)
                fd, self._fd = self._fd, None  # (forgotten first: an interrupt leaves no number)
                os.close(fd)
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(os.path.join(self.directory, LOCK_NAME))
            except OSError:
                pass
            fd, self._lock_fd = self._lock_fd, None
            release_lock(fd)
