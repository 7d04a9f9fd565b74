"""One session's part of a gateway's ``SharedLog``: ``SessionLog``, with ``journal.Journal``'s
interface (a ``store.StateFile`` uses either); its positions and group commit are the shared
log's. The frame format is ``sharedlog``'s."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from . import codec
from .errors import MQTTSessionError, NewerFormatError, PersistenceError, StateError
from .journal import write_atomic
from .recovery import (_HEADER_TAG, _JOURNAL_VERSION, JOURNAL_SUFFIX, _fsync_dir, _read_file,
                       frame, makedirs_durable)
from .sharedlog import (
    LOG_NAME,
    _END,
    _FRAME_HEAD,
    _RECORD,
    _SNAPSHOT,
    ASIDE_DIR,
    AUTO_SESSION_BYTES,
    StaleSession,
    _tagged,
    log,
    parse,
)
from .state import Record, SessionState

if TYPE_CHECKING:
    from .sharedlog import SharedLog

__all__ = ["SessionLog", "decode_session", "read_sessions"]

_SKIP: Final = _FRAME_HEAD + 5  # frame head, tag, session id: where a frame's body starts


def _aside_name(client_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)[:80].lstrip(".") or "_"


def decode_session(client_id: str, snap: bytes, recs: Sequence[bytes]) -> SessionState:
    """A session from its snapshot frame and record frames (as the log holds them);
    ``StateError`` when one does not decode or apply."""
    with codec.gc_paused():
        state = codec.decode(snap[_SKIP:])
        if state.client_id and state.client_id != client_id:
            raise StateError(f"its snapshot is client id {state.client_id!r}'s")
        for i, r in enumerate(recs, 1):
            try:
                state.apply(codec.decode_record(r[_SKIP:]))
            except NewerFormatError as exc:
                raise NewerFormatError(f"record {i}: {exc}") from None
            except MQTTSessionError as exc:
                raise StateError(f"record {i}: {exc}") from None
    return state


def read_sessions(directory: str) -> dict[str, SessionState]:
    """The sessions of a gateway directory by client id, read-only: no lock taken, a torn
    tail ignored, nothing written or moved (``StateError`` on damage, or without a log)."""
    path = os.path.join(os.fspath(directory), LOG_NAME)
    data = _read_file(path)
    if data is None:
        raise StateError(f"{directory}: no {LOG_NAME} (not a gateway directory)")

    def damaged(why: str) -> StateError:
        return StateError(f"shared log {path} is damaged: {why}")

    sessions, _, _ = parse(data, damaged)
    out: dict[str, SessionState] = {}
    for cid, s in sessions.items():
        assert s.snap is not None  # ``parse`` keeps only sessions with a snapshot
        try:
            out[cid] = decode_session(cid, s.snap, s.recs)
        except StateError as exc:
            raise StateError(f"session {cid!r} in {path}: {exc}") from None
    return out


class SessionLog:
    """One session's part of a ``SharedLog``, with ``journal.Journal``'s interface (its
    positions and group commit are the shared log's)."""

    @property
    def writes_lazy_at_sync(self) -> bool:
        """Whether a group commit's publish waits for its sync to be written (``append``)."""
        return self._log.hold_publishes

    def __init__(self, shared: SharedLog, client_id: str, sync: bool,
                 max_journal_bytes: int) -> None:
        self._log = shared
        self.client_id = client_id
        self.path = f"{shared.path}#{client_id}"  # a display name
        self.sync = sync
        self.max_journal_bytes = max_journal_bytes
        self._mutex = threading.RLock()  # the view's own (before the log's)
        self._lazy: list[bytes] = []  # frames of lazy records not yet written
        self._unsynced: tuple[int, int] | None = None  # written, not synced (policy always)
        self._snapshot_at: tuple[int, int] | None = None  # the last snapshot synced, its end
        self.compactions = 0  # snapshots written and synced (``Store.compactions``)
        self.appended_at: tuple[int, int] = (0, 0)  # where the last append's records end
        self._closed = False

    @property
    def cut_notes(self) -> list[str]:
        """Valid records the log's opening cut, maybe this session's: for its ``on_error``."""
        return list(self._log.cut_notes)

    def exists(self) -> bool:
        """Whether the log holds a session of this client id."""
        return self._log.has(self.client_id)

    def recover(self) -> SessionState:
        """The session in the log (empty if there is none); ``StateError`` on damage (its
        frames are kept aside, the session leaves the log)."""
        with self._mutex:
            self._lazy.clear()
            with self._log._mutex:
                s = self._log._session(self.client_id)
                snap, recs = s.snap, list(s.recs)
            if snap is None:
                return SessionState(client_id=self.client_id, clean_session=False)
            try:
                state = decode_session(self.client_id, snap, recs)
            except NewerFormatError as exc:  # not damage: the session stays in the log
                raise NewerFormatError(f"session {self.path}: {exc} (nothing was changed)"
                                       ) from None
            except StateError as exc:
                kept = self.keep_aside("damaged")
                log.error("session %s is damaged (%s); kept aside as %s", self.path, exc, kept)
                raise StateError(f"session {self.path} is damaged: {exc}; kept aside as"
                                 f" {', '.join(kept)}") from None
            return state

    def compact(self, state: SessionState, text: str | None = None) -> None:
        """A new snapshot (``text``, or ``state``'s) that supersedes the session's records;
        synced before returning."""
        with self._mutex:
            if text is None:
                text = codec.encode(state)
            self._lazy.clear()  # ``state`` holds them
            body = text.encode("utf-8")
            lg = self._log
            with lg._mutex:
                s = lg._session(self.client_id)
                folded = s.rec_bytes
                gen, pos = lg._write(s, [_tagged(_SNAPSHOT, s.sid, body)], _SNAPSHOT)
                self.appended_at = (gen, pos)
            lg.sync_to(gen, pos)  # a failure cuts it: the previous snapshot counts again
            with lg._mutex:
                if lg.is_synced(gen, pos):
                    s.prev = None
                    self._snapshot_at = (gen, pos)
                    self.compactions += 1
            self._unsynced = None
            log.debug("session %s compacted: %d bytes of records folded into a snapshot of %d"
                      " bytes", self.path, folded, len(body))

    def append(self, records: Sequence[Record], state: SessionState, sync: bool = True,
               lazy: bool = False, held: bool = False) -> None:
        """Make ``records`` (already applied to ``state``) durable: in the OS always, on disk if
        ``sync`` and the policy is ``always`` (the shared group commit). After a failed write
        the next call writes a snapshot of ``state`` instead. ``lazy``: held in memory until
        the next record that is not lazy, or ``flush``. ``held``: a group commit's publish,
        held by a log that ``hold_publishes`` until the ``sync_to`` that covers it (or another
        write) writes it with every session's (one ``write``, in the syncing thread)."""
        with self._mutex:
            lg = self._log
            with lg._mutex:
                s = lg._session(self.client_id)
                fresh = s.stale or s.snap is None
            if fresh:
                self.compact(state)
                return
            frames = [_tagged(_RECORD, s.sid, codec.encode_record(r)) for r in records]
            if lazy:
                self._lazy += frames
                return
            if self._lazy:
                frames, self._lazy = self._lazy + frames, []
            if not frames:
                return
            with lg._mutex:
                fresh = lg._session(self.client_id) is not s or s.stale or s.snap is None
                if not fresh:
                    try:
                        gen, pos = lg._write(s, frames, _RECORD,
                                             hold=held and self.writes_lazy_at_sync)
                    except StaleSession:  # cut since the look above
                        fresh = True
                    else:
                        self.appended_at = (gen, pos)  # (with the write: a cut may follow)
            if fresh:  # a failed sync cut it meanwhile
                self.compact(state)
            elif sync and self.sync:
                lg.sync_to(gen, pos)
                self._unsynced = None
            elif self.sync:
                self._unsynced = (gen, pos)

    def flush(self) -> None:
        """Write the lazy records now (no fsync: losing them costs only resends); with the
        held frames of a group commit when some wait (its sync writes them all at once)."""
        with self._mutex:
            if not self._lazy:
                return
            frames, self._lazy = self._lazy, []
            with self._log._mutex:
                s = self._log._session(self.client_id)
                if s.stale or s.snap is None or self._log._lock_fd is None:
                    return  # written with the next snapshot
                try:
                    self._log._write(s, frames, _RECORD, hold=bool(self._log._held))
                except PersistenceError as exc:
                    log.warning("session %s: lazy records not written: %s", self.path, exc)

    def sync_pending(self) -> None:
        """Make every record written so far durable (policy ``always``), joining a group
        commit under way in another thread."""
        with self._mutex:
            at = self._unsynced
            if at is None:
                return
            with self._log._mutex:
                stale = self._log._session(self.client_id).stale
            if stale:
                raise PersistenceError(None, f"session {self.path} failed a write and is"
                                             " rewritten with the next record")
        if not self._log.is_synced(*at):  # (a group commit in another thread covered it)
            self._log.sync_to(*at)
        with self._mutex:
            if self._unsynced == at:
                self._unsynced = None

    @property
    def broken(self) -> bool:
        """A write or sync failed: the session's next write rewrites it (``StateFile.resync``
        does so at once)."""
        with self._log._mutex:
            s = self._log._session(self.client_id)
            return s.stale or s.snap is None or self._log._needs_rebuild()

    @property
    def keep_unsynced(self) -> bool:
        """SessionSync=interval: a failed sync of the shared log cuts none of the records
        written (``SharedLog.keep_unsynced``: once set, for every session of the log)."""
        return self._log.keep_unsynced

    @keep_unsynced.setter
    def keep_unsynced(self, keep: bool) -> None:
        self._log.keep_unsynced = self._log.keep_unsynced or keep

    def fsync(self, rewrite: bool = False) -> bool:
        """Everything written so far on disk, whatever the policy; False: not so (a failed
        write or sync cut the session's records: its next write rewrites it). ``rewrite``: the
        shared log wrote its records again when it was opened (``SharedLog._open``)."""
        with self._mutex:
            self.flush()
            with self._log._mutex:
                s = self._log._session(self.client_id)
                if s.stale or s.snap is None or self._log._fd is None:
                    return False
                gen, pos = self._log._gen, self._log._size
            self._log.sync_to(gen, pos)
            self._unsynced = None
            return True

    def is_synced(self, gen: int, pos: int) -> bool:
        """(Positions are the shared log's.) Also True for a record a failed sync cut when a
        snapshot of the session's state, synced since, holds what it wrote."""
        at = self._snapshot_at
        return self._log.is_synced(gen, pos) or (at is not None and (gen, pos) < at)

    def position(self) -> tuple[int, int]:
        return self._log.position()

    def sync_to(self, gen: int, pos: int, linger: float = 0.0) -> bool:
        return self._log.sync_to(gen, pos, linger)  # the group commit across sessions

    @property
    def sync_time(self) -> float:
        return self._log.sync_time  # the shared log's fdatasyncs

    @property
    def bound(self) -> int:
        """The bytes of records since the snapshot past which it is compacted:
        ``max_journal_bytes`` when set, by default 64 KiB or half the snapshot's size."""
        if self.max_journal_bytes > 0:
            return self.max_journal_bytes
        s = self._log._sessions.get(self.client_id)
        snap = s.snap if s is not None else None
        return max(AUTO_SESSION_BYTES, len(snap) // 2 if snap is not None else 0)

    @property
    def needs_compaction(self) -> bool:
        """The records since the snapshot passed ``bound``."""
        s = self._log._sessions.get(self.client_id)
        return s is not None and s.rec_bytes > self.bound

    def keep_aside(self, label: str) -> list[str]:
        """Write the session out as a state file pair in ``D/aside`` (``P.<label>-<time>`` and
        its ``.journal``, which ``recovery.read_state`` reads), then take it out of the log.
        Returns the new names ([] when the log holds no session of this client id)."""
        with self._mutex:
            self._lazy.clear()
            lg = self._log
            with lg._mutex:
                s = lg._session(self.client_id)
                snap, recs = s.snap, list(s.recs)
            if snap is None:
                return []
            folder = os.path.join(lg.directory, ASIDE_DIR)
            try:
                makedirs_durable(folder)  # (its name too: the session leaves the log)
            except OSError as exc:
                raise PersistenceError(exc.errno, f"cannot create {folder}: {exc}") from exc
            stamp = time.strftime("%Y%m%dT%H%M%S")
            base = path = os.path.join(folder, f"{_aside_name(self.client_id)}.{label}-{stamp}")
            n = 1
            while os.path.lexists(path) or os.path.lexists(path + JOURNAL_SUFFIX):
                n += 1
                path = f"{base}-{n}"
            text = snap[_SKIP:]
            write_atomic(path, text, sync=True)
            kept = [path]
            if recs:
                digest = codec.text_digest(text.decode("utf-8", "replace").strip())
                header = frame(json.dumps([_HEADER_TAG, _JOURNAL_VERSION, digest, self.client_id]
                                          ).encode("utf-8"))
                write_atomic(path + JOURNAL_SUFFIX,
                             header + b"".join(frame(r[_SKIP:]) for r in recs), sync=True)
                kept.append(path + JOURNAL_SUFFIX)
            _fsync_dir(path)
            self.discard()
            return kept

    def discard(self) -> bool:
        """Take the session out of the log for good (synced); False when it held none."""
        with self._mutex:
            self._lazy.clear()
            lg = self._log
            with lg._mutex:
                s = lg._session(self.client_id)
                if s.snap is None:
                    return False
                gen, pos = lg._write(s, [_tagged(_END, s.sid, b"")], _END)
            try:
                lg.sync_to(gen, pos)
            except PersistenceError:  # the end frame cut (the session gone from memory,
                with lg._mutex:  # not from the file): the log rewritten without it now
                    lg._rotate(rebuild=True)
            self._unsynced = None
            return True

    def close(self) -> None:
        """Write the lazy records and release the view (the shared log stays open)."""
        with self._mutex:
            if self._closed:
                return
            self.flush()
            self._closed = True
        self._log._release(self)
