"""The durable session file: a snapshot plus an append-only journal of transitions.

Files, for a state file ``P`` (all created mode 0600):

- ``P``: the snapshot, exactly the text ``save_session()`` returns (``codec.encode``);
- ``P.journal``: a header frame naming the format version, the snapshot's SHA-256 and the
  client id, then one frame per record applied since that snapshot (``codec.encode_record``);
- ``P.lock``: held with ``flock`` by the one process that owns the file (the kernel drops it
  when that process dies, so a killed process never blocks its restart).

None of them is opened through a symlink (``O_NOFOLLOW``): a symlink at ``P``, ``P.journal``
or ``P.lock`` is ``StateError`` and its target is never read or written; a lock file with a
second (hard) name is refused, a journal with one is replaced by the next compaction. Temporary
files get a fresh random name, created with ``O_EXCL`` (a taken name is skipped). A lock or
journal found with a wider mode is narrowed to 0600.

Frames, the journal header and recovery (snapshot + the longest valid journal prefix, a torn
tail cut, damage kept aside) are ``recovery.py``'s; ``Journal.recover`` runs its ``load``.

A state file deleted or replaced while in use (the journal's fd has no name left, or a path
names another file) fails the next durable write (``append`` with sync, ``sync_pending``) with
``PersistenceError``: the caller learns the record is not on disk (a publish is not accepted),
and the write after it rewrites both files from memory, as after any failed write. Writes that
promise nothing on disk (no fsync) do not check.

The journal's file holds zeros up to ``AHEAD_BYTES`` past its records (never past
``max_journal_bytes``; written with a compaction under SessionSync=always / interval), and
records go over them: their fdatasync commits no size change, and a record not synced at once
(``none``, ``interval``, the network thread's) is copied into a mapping of the file
(``mapped.py``), no system call. Recovery reads the zeros as the journal's end.

Compaction (``save_session()``, a clean disconnect, the journal passing its size bound): the
new snapshot (temp file, fsync, rename, fsync the directory), then a fresh journal the same way.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from . import codec
from .errors import PersistenceError, StateError
from .groupcommit import GroupCommit
from .mapped import MappedTail
from .statelock import (_MODE, _own_file, _remove_stale_temps, acquire_lock, forks, release_lock,
                        require_directory, unlinked)
from .recovery import (_HEADER_TAG, _JOURNAL_VERSION, _NOFOLLOW, JOURNAL_SUFFIX, _fsync_dir,
                       frame, load, move_aside, read_frames, read_state)
from .state import Record, SessionState

__all__ = ["Journal", "read_state", "require_directory", "write_atomic", "read_frames", "frame", "JOURNAL_SUFFIX", "LOCK_SUFFIX"]

log = logging.getLogger(__name__)

LOCK_SUFFIX: Final = ".lock"
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
_OPEN: Final = os.O_RDWR | _NOFOLLOW  # written (or mapped) where ``Journal._size`` says
AUTO_JOURNAL_BYTES: Final = 1024 * 1024  # the default bound (``bound``)
#: SessionSync=always / interval: zeros are written this far ahead of the journal's records
#: (recovery reads them as its end). An fdatasync of bytes written over them changes no size
#: and no extent: a third cheaper on ext4 than one after an append (``bench/README.md``).
AHEAD_BYTES: Final = 64 * 1024
_ZEROS: Final = bytes(AHEAD_BYTES)


def _write_all(fd: int, data: bytes | memoryview, at: int | None = None) -> None:
    """``os.write`` (``os.pwrite`` at ``at``) until every byte is written (it may be short)."""
    while at is not None and data:
        n = os.pwrite(fd, data, at)
        data, at = memoryview(data)[n:], at + n
    if at is not None:
        return
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        view = view[os.write(fd, view):]


def zeros_ahead(fd: int, size: int, end: int, bound: int) -> int:
    """Zeros written from ``size`` (the file's) up to ``AHEAD_BYTES`` past ``end``, never past
    ``bound`` unless ``end`` is; the file's new size. Out of room (ENOSPC, EDQUOT) they stop
    where they got: the record written next tells whether it fits."""
    want, at = min(end + AHEAD_BYTES - end % AHEAD_BYTES, max(end, bound)), size
    try:
        while at < want:
            at += os.pwrite(fd, memoryview(_ZEROS)[:want - at], at)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    return at


def _temp_suffix() -> str:
    return secrets.token_hex(8)


def _create_temp(path: str) -> tuple[str, int]:
    """A new file ``path.tmp-<random>`` (mode 0600) and its fd: never an existing file, never
    through a symlink planted at a name (``O_EXCL``: a taken name is skipped for another)."""
    for _ in range(100):
        tmp = f"{path}.tmp-{_temp_suffix()}"
        try:
            return tmp, os.open(tmp, _CREATE, _MODE)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", path)


def write_atomic(path: str, data: str | bytes, sync: bool = True,
                 ahead: int = 0) -> tuple[int, int]:
    """Write ``path`` so a reader sees the old or the new content, never a mix (mode 0600).
    ``ahead``: zeros after ``data`` up to that size, where the disk has room. Returns the new
    file's (device, inode)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        tmp, fd = _create_temp(path)
        try:
            _write_all(fd, raw)
            if ahead > len(raw):
                try:
                    _write_all(fd, memoryview(_ZEROS)[:ahead - len(raw)])
                except OSError:  # no room ahead: the appends grow the file as they go
                    pass
            if sync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync:
            _fsync_dir(path)
        return st.st_dev, st.st_ino
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        hint = ("; it is a mount point (a file mounted on its own, as by docker -v): mount its"
                " directory instead") if exc.errno == errno.EBUSY else ""
        raise PersistenceError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{hint}"
                               ) from exc


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run ``method`` under the journal's own lock."""

    @functools.wraps(method)
    def run(self: Journal, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]


class Journal(GroupCommit):
    """Owns one state file: recovery, appending records, compaction, the lock."""

    #: a record appended ``held`` is written by the ``sync_to`` that covers ``position()``
    #: (``_write_lazy``, no syscall of its own): a group commit's publishes, and a read
    #: batch's records that only its acks wait for (written by the batch's ``sync_pending``)
    writes_lazy_at_sync = gathers_batch_records = True

    def __init__(
        self, path: str, client_id: str = "", sync: bool = True,
        max_journal_bytes: int = 0, mapped: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.journal_path = self.path + JOURNAL_SUFFIX
        self.client_id = client_id
        self.sync = sync
        # records not synced at once are mapped (``_put``); not under ``always``: an
        # fdatasync after mapped stores costs about 4x one after ``write`` (``mapped.py``)
        self.mapped = mapped
        self.max_journal_bytes = max_journal_bytes
        self.cut_notes: list[str] = []  # valid records a recovery cut (``on_error``: the store)
        self._fd: int | None = None  # journal, opened for writing at ``_size``
        self._size = 0  # where its records end
        self._alloc = 0  # the file's size: ``_size`` and the zeros allocated ahead
        self._seek = True  # the fd's offset is to be set to ``_size`` before the next write
        self._map = MappedTail()  # the journal's file: records copied in, no write()
        self._broken = False  # a write failed: the next write is a full compaction
        # SessionSync=interval: a failed sync cuts nothing (its records' publishes returned: a
        # kill -9 must find them); the next write or ``StateFile.resync`` rewrites them
        self.keep_unsynced = False
        self.compactions = 0  # snapshots written (``Store.compactions``)
        #: (incarnation, offset) where the last append's records end (``Durability.hold``)
        self.appended_at: tuple[int, int] = (0, 0)
        self._snapshot_size = 0
        self._snapshot_fd: int | None = None  # the snapshot, held open to see it unlinked
        self._snapshot_id: tuple[int, int] | None = None  # its device and inode
        self._cut_at: int | None = None  # a torn journal tail to cut before appending
        self._lazy: list[bytes] = []  # frames of lazy records not yet written
        self._held = 0  # how many of them, from the first, a group commit's sync writes
        self._held_bytes = 0  # and their bytes
        # group commit (``sync_to``): the journal file's incarnation (a compaction or a recovery
        # starts a new one, synced whole), how far it is on disk, and whether an fdatasync
        # outside the mutex is running (closing the fd waits for it)
        self._gen = 0
        self._synced = 0
        self._syncing = False
        self._waiters = []
        self._sync_cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()  # a write, or the cut after a failed group sync
        self._lock_fd: int | None = None
        self._born = forks()  # (a fork()'s child leaves the parent's files alone)
        self._mutex = threading.RLock()  # the journal's own: callers' locks are theirs
        try:
            self._lock_fd = acquire_lock(self.path + LOCK_SUFFIX, f"state file {self.path}")
        except PersistenceError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                require_directory(self.path)  # a UsageError naming the missing directory
            raise
        _remove_stale_temps(self.path)

    def close(self) -> None:
        """Close the journal and release the lock (the lock file is removed); in a child of
        fork() nothing (the parent's files and lock: its mutex may be held for good)."""
        if self._born == forks():
            self._close()

    @_locked
    def _close(self) -> None:
        self.flush()
        self._quiesce()
        self._close_fd()
        self._hold_snapshot(None)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path + LOCK_SUFFIX)
            fd, self._lock_fd = self._lock_fd, None  # (forgotten first: an interrupt between
            release_lock(fd)  # leaves no number that may be another file's by then)

    def _close_fd(self) -> None:
        self._map.drop()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:  # pragma: no cover - safety net
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ recovery

    def exists(self) -> bool:
        """Whether the state file holds a session (its snapshot exists)."""
        return os.path.lexists(self.path)  # a dangling link too: refused, not replaced

    @_locked
    def keep_aside(self, label: str) -> list[str]:
        """Move the files out of the way as ``*.<label>-<time>``; returns the new names."""
        self._quiesce()
        self._close_fd()
        return move_aside(self.path, (self.path, self.journal_path), label)

    def _keep_aside(self, why: str) -> StateError:
        try:
            kept = self.keep_aside("damaged")
        except PersistenceError as exc:
            log.error("state file %s is damaged (%s); %s", self.path, why, exc)
            return StateError(f"state file {self.path} is damaged: {why}; {exc}")
        log.error("state file %s is damaged (%s); kept aside as %s", self.path, why, kept)
        return StateError(f"state file {self.path} is damaged: {why}; kept aside as {', '.join(kept)}")

    @_locked
    def recover(self) -> SessionState:
        """The session in the files (empty if there are none); ``StateError`` on damage."""
        self._quiesce()
        self._close_fd()
        state, snapshot_size, resume_at, torn = load(self.path, self.client_id,
                                                     self._keep_aside, notes=self.cut_notes)
        self._snapshot_size = snapshot_size
        if resume_at is not None:
            # go on appending where its valid part ends (a torn tail is cut by the first
            # append, zeros allocated ahead are written over): a restore rewrites nothing
            try:
                self._fd = os.open(self.journal_path, _OPEN)
                _own_file(self._fd, self.journal_path)
                self._alloc = os.fstat(self._fd).st_size
            except (OSError, StateError):  # a second name: the compaction gives it its own
                self._close_fd()
                return state  # the next append compacts instead
            try:
                st = os.lstat(self.path)
                self._hold_snapshot((st.st_dev, st.st_ino))
            except OSError:
                self._hold_snapshot(None)
            self._size = resume_at
            self._cut_at = resume_at if torn else None
            self._seek = True
            self._broken = False
            self._new_incarnation(resume_at)  # what recovery read counts as on disk
        return state


    # ------------------------------------------------------------------ writing

    @_locked
    def flush(self) -> None:
        """Write the lazy records now (no fsync: losing them costs only resends; held ones
        that fail to be written leave the journal broken: their acks must not go)."""
        held, self._held, self._held_bytes = self._held, 0, 0
        if not self._lazy or self._fd is None or self._broken:
            self._lazy.clear()
            return
        data = b"".join(self._lazy)
        self._lazy.clear()
        with self._write_lock:
            if self._was_cut():  # a failed group commit cut the journal: rewritten next
                return
            try:
                self._put(self._fd, data, self.mapped)
            except OSError as exc:
                try:
                    self._truncate(self._fd, self._size)
                except OSError:
                    self._broken = True  # (the page cache is suspect: rewritten next)
                self._broken |= bool(held)  # held ones: their acks wait (``sync_pending``)
                log.warning("state journal %s: lazy records not written: %s", self.journal_path,
                            exc)
                return
            self._size += len(data)

    def sync_pending(self) -> None:
        """Make every record appended so far durable (``always``, ``interval``): synced up to
        where the last one that is not lazy ended when appended (``appended_at``; held ones
        too, written first), joining a group commit under way; ``PersistenceError`` when a
        failed write or sync (a flush's, another thread's) took one of them."""
        with self._mutex:
            if not self.sync:
                return
            gen, pos = self.appended_at
            if self._broken and gen == self._gen:  # (a cut may precede ``appended_at``)
                raise PersistenceError(None, f"state journal {self.journal_path} failed a write"
                                             " and is rewritten with the next record")
            if self._fd is None:  # none yet, or closed (a failed compaction's: broken)
                return
        self.sync_to(gen, pos)

    def is_synced(self, gen: int, pos: int) -> bool:
        """Whether ``sync_to(gen, pos)`` has nothing left to do (no lock: a read of two ints)."""
        return self._gen != gen or self._synced >= pos

    def position(self) -> tuple[int, int]:
        """Where the journal's bytes end with the records in memory up to the last held one (all
        of them when none is held): (incarnation, offset), for ``sync_to`` (whose fdatasync
        writes them first; ``needs_compaction`` counted those, not the droppable ones after)."""
        with self._mutex:
            if self._held:
                return self._gen, self._size + self._held_bytes
            return self._gen, self._size + sum(map(len, self._lazy))

    def sync_to(self, gen: int, pos: int, linger: float = 0.0) -> bool:
        """Group commit: the journal's bytes up to ``pos`` of incarnation ``gen`` on disk
        (``GroupCommit``); a compaction since (a new incarnation) synced everything already.
        ``PersistenceError`` when the fdatasync fails (the next write rewrites everything).
        True when this call ran the fdatasync. ``linger``: seconds the one that syncs waits
        first, so that the records of other writers under way join this fdatasync."""
        return self._group_sync(gen, pos, linger)

    def _sync_start(self, gen: int, pos: int) -> int | None:
        if self._gen != gen:
            return None  # compacted meanwhile: synced whole
        if self._broken or self._fd is None:
            raise PersistenceError(None, f"state journal {self.journal_path} failed a write"
                                         " and is rewritten with the next record")
        self._check_in_place()
        if self._cut_at is not None or (self._lazy and (pos > self._size or self._held)):
            self._write_lazy(pos)
        return self._fd

    def _write_lazy(self, pos: int) -> None:
        """Group commit, mutex held: the records in memory up to ``pos`` and the last ``held``
        one go out before the fdatasync (a failed write cuts what is not on disk, as a failed
        sync does). Not the droppable ones after (persistence point 5): this runs outside the
        session lock, where no compaction follows; they wait for the next record, so
        ``max_journal_bytes`` holds (``needs_compaction`` counted the held ones)."""
        assert self._fd is not None
        fd, lazy = self._fd, self._lazy
        try:
            if self._cut_at is not None:
                self._cut_torn(fd, self._cut_at)
                self._cut_at = None
            k, n, need = 0, 0, pos - self._size
            while k < len(lazy) and n < need:
                n += len(lazy[k])
                k += 1
            k = max(k, self._held)
            data = b"".join(lazy[:k])
            del lazy[:k]
            self._held = self._held_bytes = 0
            with self._write_lock:
                if self._was_cut():
                    raise PersistenceError(None, f"state journal {self.journal_path} failed a"
                                                 " sync and is rewritten with the next record")
                self._put(fd, data, mapped=False)  # (synced next)
                self._size += len(data)
        except OSError as exc:
            raise self._sync_failed(fd, exc) from exc

    def _put(self, fd: int, data: bytes, mapped: bool = True) -> None:
        """Write ``data`` where the records end (``_size``; the write lock held), over zeros
        written up to ``AHEAD_BYTES`` past them (an fdatasync of them commits no size or
        extent). ``mapped``: copied into a mapping of the file, no system call (not for bytes
        synced at once: their fdatasync would cost more than the write saves, ``mapped.py``)."""
        end = self._size + len(data)
        if end > self._alloc:
            # (never past a JournalMaxBytes smaller than that: the bound is on the disk too)
            self._alloc = zeros_ahead(fd, self._alloc, end, self.bound)
        if mapped and self._map.put(fd, self._alloc, self._size, data):
            self._seek = True  # (the fd's offset did not move)
            return
        if self._seek:
            os.lseek(fd, self._size, os.SEEK_SET)
            self._seek = False
        try:
            _write_all(fd, data)
        except OSError:
            self._seek = True
            raise
        self._alloc = max(self._alloc, end)

    def _truncate(self, fd: int, size: int, end: int = 0) -> None:
        """The file cut to ``size`` (a failed write or sync): nothing allocated after it. If
        that fails, zeros over what was written up to ``end`` (its blocks are allocated), so
        that a caller told "failed" does not find its record after a restart; then raises."""
        self._seek = True
        self._map.drop()  # (a mapping past the file's end would fault)
        try:
            os.ftruncate(fd, size)
        except OSError:
            _write_all(fd, bytes(max(0, end - size)), size)
            raise
        self._alloc = size

    def _cut_torn(self, fd: int, at: int) -> None:
        """Cut recovery's torn tail, on disk before records are written over it."""
        if os.fstat(fd).st_size > at:
            self._truncate(fd, at)
            os.fsync(fd)

    def _sync_failed(self, fd: int, exc: OSError) -> PersistenceError:
        # the page cache is suspect: the next write rewrites everything from memory. What
        # was not on disk is cut now: a publish told "failed" (and any after it, and the
        # network thread's records) is not found after a restart. Not under interval
        # (``keep_unsynced``): every publish whose record it missed has returned
        with self._write_lock:
            self._broken = True
            keep = self._size if self.keep_unsynced else self._synced
            with contextlib.suppress(OSError):
                self._truncate(fd, keep, self._size)
            self._size = keep
        return PersistenceError(exc.errno, f"cannot sync state journal {self.journal_path}:"
                                           f" {exc.strerror or exc}")

    def _fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)  # this module's ``os`` (the fault tests replace it)

    @property
    def broken(self) -> bool:
        """A write or sync failed: the next write rewrites the state from memory."""
        return self._broken

    def _failed_meanwhile(self) -> bool:
        return self._broken  # (``_sync_start`` raised if it was before)

    def _was_cut(self) -> bool:
        """A group commit's failed sync cut the journal (another thread, no mutex)."""
        return self._broken

    def _quiesce(self) -> None:
        """Wait for a group commit's fdatasync before the fd is closed (mutex held: the
        syncer needs only the condition's lock once its fdatasync has started)."""
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()

    def _new_incarnation(self, synced: int) -> None:
        with self._sync_cond:
            self._gen += 1
            self._synced = synced
            self._sync_cond.notify_all()
            self._wake(everyone=True)  # a new incarnation: each waiter looks again

    @_locked
    def fsync(self, rewrite: bool = False) -> bool:
        """Everything written so far on disk, whatever the policy; False: a failed write or
        sync left it to the next write. ``rewrite`` (a restart): written again first, from the
        page cache (an earlier process's failed write-back left its pages clean, not on disk)."""
        self.flush()
        if self._fd is None or self._broken:
            return False
        end = self._size
        try:
            if rewrite:
                _write_all(self._fd, os.pread(self._fd, end, 0), 0)
            os.fdatasync(self._fd)
        except OSError as exc:
            self._broken = True
            raise PersistenceError(
                exc.errno, f"cannot sync state journal {self.journal_path}: {exc.strerror or exc}"
            ) from exc
        return self._mark_synced(end)

    def _mark_synced(self, end: int) -> bool:
        """After this thread's own fdatasync: on disk up to ``end``, unless another thread's
        failed sync cut the journal meanwhile (False). Under the write lock, which that cut
        holds: it is done, or comes after and keeps these bytes (it cuts to ``_synced``)."""
        with self._write_lock:
            if self._was_cut():
                return False
            with self._sync_cond:
                self._synced = max(self._synced, end)
            return True

    def _hold_snapshot(self, file_id: tuple[int, int] | None) -> None:
        """Keep the snapshot (device, inode ``file_id``) open; None: hold none."""
        self._snapshot_id = file_id  # (an open that failed is tried again: ``_check_in_place``)
        if self._snapshot_fd is not None:
            held, self._snapshot_fd = self._snapshot_fd, None  # (forgotten first)
            os.close(held)
        if file_id is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return  # the next durable write finds no snapshot held: PersistenceError
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != file_id:
            os.close(fd)  # replaced in between: not ours
            return
        self._snapshot_fd = fd

    def _check_in_place(self) -> None:
        """``PersistenceError`` if the snapshot or the journal was deleted or replaced since
        this process wrote them: a durable write must not go into a file no restart reads.
        The next write rewrites both from memory (a compaction)."""
        assert self._fd is not None
        if self._snapshot_fd is None and self._snapshot_id is not None:  # its open failed
            self._hold_snapshot(self._snapshot_id)  # (EIO, EMFILE): the same file, or not ours
        # no path look-ups on ``always``'s publish path (each syscall may hand the GIL over):
        # a file deleted or renamed over has no name; not asked with fstat (``unlinked``)
        try:
            ok = (self._snapshot_fd is not None and not unlinked(self._fd)
                  and os.fstat(self._snapshot_fd).st_nlink > 0)
        except OSError:
            ok = False
        if not ok:
            self._broken = True
            raise PersistenceError(
                errno.ENOENT, f"state file {self.path} or its journal was deleted or replaced"
                " while in use: the record is not durable; the next write rewrites both from"
                " memory")

    @property
    def bound(self) -> int:
        """The journal size past which it is compacted: ``max_journal_bytes`` when set (> 0,
        a hard bound); by default 1 MiB or half the snapshot's size, whichever is larger. A
        restore then reads at most the snapshot and half as much again, so its cost follows
        what the session holds, not the file's history; and each compaction is paid for by a
        journal of half its size."""
        if self.max_journal_bytes > 0:
            return self.max_journal_bytes
        return max(AUTO_JOURNAL_BYTES, self._snapshot_size // 2)

    @property
    def needs_compaction(self) -> bool:
        """The journal passed its ``bound``, counting the held records that wait in memory."""
        most = self.max_journal_bytes  # ``bound``, inlined: asked after every record
        if most <= 0:
            most = max(AUTO_JOURNAL_BYTES, self._snapshot_size // 2)
        return self._size + self._held_bytes > most

    @_locked
    def compact(self, state: SessionState, text: str | None = None) -> None:
        """Fold everything into a new snapshot (``text``, or ``state``'s) and a fresh journal."""
        if text is None:
            text = codec.encode(state)
        folded = self._size
        self._lazy.clear()  # ``state`` holds them
        self._held = self._held_bytes = 0
        self._quiesce()
        self._close_fd()
        self._broken = True  # until the new files are in place: a failure leaves it rewritten
        self._hold_snapshot(write_atomic(self.path, text, sync=True))
        digest = codec.text_digest(text)  # names the snapshot (format 1: sha256 of its text)
        header = frame(
            json.dumps([_HEADER_TAG, _JOURNAL_VERSION, digest, state.client_id]).encode("utf-8"))
        ahead = min(AHEAD_BYTES, self.max_journal_bytes or AHEAD_BYTES) if self.sync else 0
        write_atomic(self.journal_path, header, sync=True, ahead=ahead)
        try:
            self._fd = os.open(self.journal_path, _OPEN)
            self._alloc = os.fstat(self._fd).st_size
            self._seek = True
        except OSError as exc:
            self._broken = True
            raise PersistenceError(exc.errno, f"cannot open {self.journal_path}: {exc}") from exc
        self._size = len(header)
        self._snapshot_size = len(text)
        self._broken = False
        self._new_incarnation(self._size)  # written and fsynced whole
        self.client_id = state.client_id
        self.compactions += 1
        log.info("state file %s compacted: a journal of %d bytes folded into a snapshot of %d"
                 " bytes", self.path, folded, len(text))

    def append(
        self, records: Sequence[Record], state: SessionState, sync: bool = True,
        lazy: bool = False, held: bool = False,
    ) -> None:
        """Make ``records`` (already applied to ``state``) durable: in the OS always, on disk if
        ``sync`` and the policy is ``always``. After a failed write the next call rewrites
        everything (``state`` already holds the record).

        ``lazy``: a record whose loss costs only a harmless resend (a SEND step, a removal on
        PUBACK / PUBCOMP: persistence point 5) waits in memory for the next record that is not
        lazy (same write, same fsync) or ``flush``. ``held``: lazy too, a group commit's
        publish: the ``sync_to`` that covers it, or any after it, writes it.
        """
        with self._mutex:
            self._append(records, state, sync, lazy or held)
            if held and self._lazy:  # (the bytes of the frames since the last held one)
                self._held_bytes += sum(map(len, self._lazy[self._held:]))
                self._held = len(self._lazy)
            if not lazy:  # where these records end, read with the append: a failed sync in
                self.appended_at = self.position()  # another thread may cut them right after

    def _append(self, records: Sequence[Record], state: SessionState, sync: bool,
                lazy: bool) -> None:
        if lazy and not self._broken and self._fd is not None:
            if len(records) == 1:
                self._lazy.append(frame(codec.encode_record(records[0])))
            else:
                self._lazy += [frame(codec.encode_record(rec)) for rec in records]
            return
        if self._broken or self._fd is None:
            self.compact(state)
            return
        if sync and self.sync:
            self._check_in_place()
        if self._cut_at is not None:
            try:
                self._cut_torn(self._fd, self._cut_at)
            except OSError:
                self.compact(state)
                return
            finally:
                self._cut_at = None
        if len(records) == 1 and not self._lazy:
            data = frame(codec.encode_record(records[0]))
        else:
            self._lazy += [frame(codec.encode_record(rec)) for rec in records]
            data = b"".join(self._lazy)
            self._lazy.clear()
            self._held = self._held_bytes = 0
        start = self._size
        try:
            with self._write_lock:  # a failed group commit cuts the journal under it
                cut = self._was_cut()
                if not cut:
                    self._put(self._fd, data, self.mapped and not (sync and self.sync))
                    self._size = start + len(data)
            if cut:
                self.compact(state)  # ``state`` holds this record and what the cut took
                return
            if sync and self.sync:
                os.fdatasync(self._fd)
                if not self._mark_synced(start + len(data)):
                    self.compact(state)  # cut meanwhile: ``state`` holds this record
                    return
        except OSError as exc:
            # take the frame back out: a caller told "failed" must not find it after a restart
            with self._write_lock:
                with contextlib.suppress(OSError):
                    self._truncate(self._fd, start, start + len(data))
                self._size = start
            # the next write rewrites everything from memory: ``state`` holds the record (a
            # caller that keeps it needs it on disk; one that retracts it loses nothing) and
            # the lazy records written with it, and the page cache is suspect
            self._broken = True
            raise PersistenceError(
                exc.errno, f"cannot write state journal {self.journal_path}: {exc.strerror or exc}"
            ) from exc

