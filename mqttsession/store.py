"""Where session records go: the ``Store`` protocol, the state file (and ``memstore.py``'s
in-memory store).

A store receives the engine's ``Persist`` actions. It owns its locking (a Client's lock is not
relied on), and survives what its kind can: ``journal.Journal`` (the state file: snapshot +
journal) a crash and, with ``sync``, a power cut; ``MemoryStore`` nothing, but it models both
for the engine's crash tests (``durable`` / ``written`` are what a power cut / a kill -9 leave).

``StateFile`` is a Client's view of its ``SessionStateFile``: it opens the journal on first use,
keeps a session found in the file that the application has not restored yet (IPWorks
procedure 1 restores it in ``on_connected``), and never overwrites one: it is kept aside.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from typing import Callable, Final, Protocol, Sequence

from .errors import MQTTSessionError, PersistenceError, StateError, UsageError
from .journal import Journal, require_directory
from .memstore import MemoryStore as MemoryStore
from .sessionlog import SessionLog
from .sharedlog import SharedLog
from .records import ClockOffset, Loaded, OutgoingMessage, SpoolMark, Spooled
from .recovery import check_name, same_file, unreadable
from .spool import SEGMENT_BYTES, Spool
from .state import Accepted, Record, SessionState

log = logging.getLogger(__name__)

__all__ = ["MemoryStore", "StateFile", "Store"]


class Store(Protocol):
    """Durable session records: appended, synced, compacted into a snapshot, recovered."""

    #: snapshots of the whole state written so far (``compact``, also the one a write that
    #: found the store broken wrote instead of its records)
    compactions: int

    def append(self, records: Sequence[Record], state: SessionState, *, sync: bool = False,
               lazy: bool = False, held: bool = False) -> None:
        """Make ``records`` (already applied to ``state``) durable; ``sync``: on disk before
        returning (if the store's policy syncs); ``lazy``: may wait for the next append;
        ``held``: a group commit's publish, written by the next sync."""

    def sync_pending(self) -> None:
        """Everything appended so far is on disk."""

    def flush(self) -> None:
        """Lazy records reach the OS (no sync)."""

    @property
    def needs_compaction(self) -> bool: ...

    def compact(self, state: SessionState, text: str | None = None) -> None:
        """Replace everything by a snapshot of ``state``."""

    def recover(self) -> SessionState:
        """The state the store holds (``StateError`` if it is damaged)."""

    def keep_aside(self, label: str) -> list[str]:
        """Move what the store holds out of the way (kept, never deleted); the new names."""

    def close(self) -> None: ...


#: The bytes of a lazy record's frame at most (a step or a removal: ``records._STEPPED``, its
#: frame head, a gateway session's tag).
_LAZY_FRAME: Final = 48


def _put_back(j: Journal | SessionLog, state: SessionState, kept: list[str]) -> None:
    """A session ``keep_aside`` moved to ``kept`` back in place (its disk queue could not
    follow); ``PersistenceError`` naming where it is when it cannot be."""
    try:
        if isinstance(j, SessionLog):  # (written out of the gateway's log: written back)
            j.compact(state)
            for aside in kept:
                os.unlink(aside)
            return
        for aside in reversed(kept):  # the journal before its snapshot (a cut between: the
            os.replace(aside, aside[:aside.rindex(".unrestored-")])  # journal alone, refused)
    except (OSError, PersistenceError) as exc:
        raise PersistenceError(getattr(exc, "errno", None), f"the session's disk queue could"
                               f" not be kept aside and its state file, moved to {kept}, not"
                               f" put back ({exc}): move it back to {j.path} before restoring"
                               ) from exc


class StateFile:
    """A Client's ``SessionStateFile``: the journal, opened on first use, and a session found
    in the file that waits for ``restore_session``."""

    def __init__(self) -> None:
        self._errors: list[tuple[int, str]] = []  # for on_error, once the Client's lock is free
        self.path = ""
        self.sync = True
        self.mapped = False  # records not synced at once mapped: SessionSync none / interval
        self.interval = False  # SessionSync=interval: a failed sync keeps what it missed
        self._accepted_unsynced = False  # interval: a publish's record since the queue's last
        self.max_journal_bytes = 0
        self.segment_bytes = SEGMENT_BYTES  # the disk queue's (QueueSegmentBytes)
        self.journal: Journal | SessionLog | None = None
        self.spool: Spool | None = None  # the disk queue, with the journal
        self.unrestored: SessionState | None = None  # the file's session, awaiting restore
        self._reread = False  # its disk queue to be read again (a failed ``settle``)
        # a Gateway's session: its records go to the gateway's one log (``path`` only names
        # it), its disk queue to ``queue_path``
        self.shared: SharedLog | None = None
        self.queue_path = ""
        self.deferring = False  # on_connected runs: it may still restore the file's session
        # a loop's session: where a job that waits for the disk runs (None: in this thread)
        self.off_loop: Callable[[Callable[[], None]], None] | None = None

    def _start_over(self) -> str:
        """How to drop this session (the disk queue's advice)."""
        if self.shared is not None:
            return f"gw.forget({self.path[len(self.shared.path) + 1:]!r}) to start over"
        return f"move {self.path} aside to start over"

    def set_path(self, path: str, state: SessionState, connected: bool = False) -> None:
        """Another ``SessionStateFile`` (a plain one made absolute: ``check_name``);
        ``UsageError`` where the session would be split."""
        if self.shared is None and path:
            path = check_name(path)
        if same_file(path, self.path, self.shared is not None):  # (re-opened: a session
            return  # this run did not restore)
        if self.shared is not None and (self.path or not path.startswith(self.shared.path + "#")):
            raise UsageError("a gateway's session is kept in the gateway's directory: its"
                             " SessionStateFile cannot change")
        if connected:  # (its flows would have no file until the next write)
            raise UsageError("SessionStateFile cannot change while connected or connecting:"
                             " disconnect() first")
        if state.spooled:  # (they stay in its queue)
            raise UsageError(f"{state.spooled} messages wait in the disk queue of {self.path}:"
                             " SessionStateFile cannot change until they are sent (or restore"
                             " that file in a new Client)")
        if self.journal is not None and not state.empty:
            raise UsageError(f"the session lives in {self.path}: SessionStateFile cannot change"
                             " while it holds messages or subscriptions (it would be in two"
                             " files); restore the other file in a new Client")
        self.close()
        self.path = path

    def set_sync(self, sync: bool, mapped: bool = False, interval: bool = False) -> None:
        """``sync``: records reach the disk (always, interval); ``mapped``: the records not
        synced at once are copied into a mapping of the file (none, interval: ``mapped.py``);
        ``interval``: SessionSync=interval. Under it and none a failed sync cuts nothing
        (``keep_unsynced``): the records it missed belong to publishes that returned."""
        self.sync, self.mapped, self.interval = sync, mapped, interval
        for f in (self.journal, self.spool):
            if f is not None:
                f.sync = sync
                if isinstance(f, (Journal, Spool)):
                    f.mapped = mapped
        if self.journal is not None:
            self.journal.keep_unsynced = interval or not sync

    def _new(self, client_id: str) -> Journal | SessionLog:
        j: Journal | SessionLog
        if self.shared is not None:
            j = self.shared.session(client_id, max_journal_bytes=self.max_journal_bytes)
            j.sync = self.sync
        else:
            j = Journal(self.path, client_id, sync=self.sync,
                        max_journal_bytes=self.max_journal_bytes, mapped=self.mapped)
        j.keep_unsynced = self.interval or not self.sync  # (a gateway's log: for every session)
        return j

    def _spool(self, client_id: str) -> Spool:
        return Spool(self.queue_path or self.path, client_id, sync=self.sync,
                     segment_bytes=self.segment_bytes, mapped=self.mapped)

    def _recover(self, j: Journal | SessionLog) -> SessionState:
        """The journal's session and its disk queue (``StateError`` on damage: kept)."""
        spool = self._spool(j.client_id)
        try:
            state = j.recover()
        except StateError:
            if not j.exists():  # the journal's files were kept aside
                spool.keep_aside("damaged")
            raise
        notes: list[str] = j.cut_notes  # (a gateway's log: each session's view a copy)
        if notes:  # records cut with a bad one: told, not only logged
            self._errors += [(-1, note) for note in notes]
            notes.clear()
        synced = False
        if self.sync:  # the journal's recovered records on disk before the queue's (a killed
            try:  # process's page cache): never a later message durable without earlier ones
                synced = j.fsync(rewrite=self.interval)  # (a failed sync left them clean?)
            except PersistenceError as exc:
                log.warning("%s", exc)
        try:
            spool.recover(state.spool_next, sync_open=synced, rewrite=self.interval)
        except OSError as exc:  # (EIO reading a segment: told as the library's error)
            spool.close()
            raise unreadable(f"cannot read the disk queue {spool.dir}", exc) from exc
        if (self.sync and not self.interval and state.spool_last >= max(state.spool_next, 1)
                and max(spool.last_seq, spool.newest_first) < state.spool_last):  # (always:
                # what a snapshot names was synced; a ``SpoolMark``, a segment's header)
            spool.close()
            why = "a forget() cut short, " if self.shared is not None else ""
            raise StateError(f"the disk queue {spool.dir} lacks the messages up to seq"
                             f" {state.spool_last} that the session holds there ({why}a volume"
                             " not mounted, files deleted?): nothing was changed; put them back,"
                             f" or {self._start_over()}")
        if spool.gap is not None:  # a segment before others gone (synced when made, but none)
            text = (f"the disk queue {spool.dir} lacks a segment: messages up to seq"
                    f" {spool.gap} are missing (files deleted?)")
            if self.sync:
                spool.close()
                raise StateError(f"{text}: nothing was changed; put them back, or"
                                 f" {self._start_over()}")
            self._errors.append((-1, f"{text}; lost (SessionSync=none: a power cut)"))
        attach(state, spool)
        self.spool = spool
        return state

    def _fresh_spool(self, client_id: str) -> None:
        """No session in the file: a queue found without it is kept aside, never adopted."""
        spool = self._spool(client_id)
        aside = spool.keep_aside("orphaned")
        if aside:
            self._errors.append((0, f"{spool.dir} held a disk queue without a"
                                    f" state file; kept as {aside}"))
        self.spool = spool

    def open(self, state: SessionState) -> None:
        """Own the file. A session in it that was not restored is never overwritten: it waits
        for ``restore_session`` and is otherwise kept aside (``settle``)."""
        if not self.path or self.journal is not None:
            return
        j = self._new(state.client_id)
        try:
            old = self._recover(j) if j.exists() else None
            # a reservation (SessionSync=interval) is kept like messages: the broker may hold
            # flows for its ids that only ``restore_session`` can release
            if old is not None and (not old.empty or old.reserved_first):
                self.unrestored = old
            else:
                if old is None:
                    self._fresh_spool(state.client_id)
                j.compact(state)
        except BaseException:
            j.close()
            self._close_spool()
            raise
        self.journal = j

    def load(self, client_id: str) -> SessionState:
        """The file's session, for ``restore_session`` (the journal stays open)."""
        if self.unrestored is not None:
            state, self.unrestored = self.unrestored, None
            if self._reread and self.journal is not None:  # (a failed ``settle``)
                self._reread = False
                self._close_spool()
                return self._recover(self.journal)
            return state
        if self.journal is not None:
            self._close_spool()
            return self._recover(self.journal)
        j = self._new(client_id)
        try:
            if j.exists():
                state = self._recover(j)
            else:
                state = j.recover()
                self._fresh_spool(client_id)
        except BaseException:
            j.close()
            self._close_spool()
            raise
        self.journal = j
        return state

    def settle(self, state: SessionState) -> None:
        """The application went on without restoring the file's session: keep it aside."""
        old, self.unrestored = self.unrestored, None
        j = self.journal
        if old is None or j is None:
            return
        # its journal first: a kill -9 before the queue follows leaves a queue without its
        # file, which the next run keeps aside as orphaned and tells (the other way round, a
        # restore found the journal without its queue: those messages never sent)
        try:
            aside = j.keep_aside("unrestored")
        except BaseException:
            self.unrestored = old  # still there: never written over, its queue with it
            raise
        try:
            aside += self.spool.keep_aside("unrestored") if self.spool is not None else []
        except BaseException:
            self.unrestored = old
            self._reread = True  # (``load`` reads the files again: keep_aside closed them)
            if aside:
                _put_back(j, old, aside)
            raise
        self._errors.append((0, f"{self.path} held a session ({len(old.outgoing) + old.spooled}"
                       f" outgoing, {len(old.incoming)} incoming messages) that was not"
                       f" restored; kept as {aside}"))
        j.compact(state)

    def append(self, records: Sequence[Record], state: SessionState, *, sync: bool = False,
               lazy: bool = False, held: bool = False) -> None:
        """Records already applied to ``state``: durable, if there is a file. No compaction:
        the caller asks for it (``compact_if_due``) once ``state`` holds nothing unwritten."""
        if (j := self.journal) is None:
            return
        if self.unrestored is not None:
            if self.deferring:
                return  # on_connected may still restore it; a compaction will hold them
            self.settle(state)  # the compaction wrote the whole state, records included
            return
        if records and type(records[0]) is Spooled:  # the disk queue's, never the journal's
            assert self.spool is not None
            self.sync_before_queue(state)
            begun = self.spool.newest_first
            self.spool.append([r.message for r in records if type(r) is Spooled], sync)
            state.spool_last = self.spool.last_seq  # (a snapshot names it: ``_recover``)
            if self.spool.newest_first != begun and self.sync and not self.interval:
                # a segment begun (its header on disk): the journal names it, so a restart
                # after a kill -9 finds a queue without it (before the next snapshot does);
                # in the OS at once, no fdatasync of its own (the next one covers it); the
                # message is durable in the queue already: a failed mark is told, not raised
                try:
                    j.append([SpoolMark(self.spool.newest_first)], state, sync=False)
                except PersistenceError as exc:
                    self._errors.append((exc.errno or -1, f"the disk queue's segment mark was"
                                         f" not written ({exc}); a restart after a crash may"
                                         " not find the queue's loss"))
            return
        if records:
            j.append(records, state, sync=sync, lazy=lazy, held=held)
            # (a clock correction too: the queue's messages are counted by it)
            if self.interval and not lazy and type(records[-1]) in (Accepted, ClockOffset):
                self._accepted_unsynced = True
            spool = self.spool
            if spool is not None and type(records[0]) is Loaded:
                # up to this record's read-back (the state may be past it: a later one of
                # the same action list, not written yet), once on disk (not when another
                # thread's failed sync cut it)
                upto = records[0].spool_next
                if spool.retirable(upto) and self.off_loop is not None:
                    self.off_loop(functools.partial(_retire, j, spool, upto, j.appended_at))
                elif spool.retirable(upto) and j.fsync():
                    spool.retire(upto)
        elif sync:
            j.sync_pending()
        else:
            j.flush()

    def sync_before_queue(self, state: SessionState) -> None:
        """interval: the messages published before the next ones into the disk queue on disk
        first (two files, written back in no set order, and a sealed segment synced), once a
        switch; a journal left broken (a failed write or sync) rewritten (it may be behind)."""
        j = self.journal
        if j is not None and (self._accepted_unsynced or self.interval and j.broken):
            if j.broken:
                j.compact(state)  # (a Spooled record in it counts nothing: ``attach``)
            else:
                j.sync_pending()
            self._accepted_unsynced = False

    def queue_sync_due(self) -> bool:
        """interval: whether the next message into the disk queue first syncs (the journal's
        records before it, a segment sealed or begun): a hint, read without a lock."""
        sp = self.spool  # (once: a close in another thread may set it to None)
        return self.interval and sp is not None and (self._accepted_unsynced or sp.roll_due())

    # ------------------------------------------------------------ the engine's QueueSource

    @property
    def ready(self) -> bool:
        """Messages may go to the disk queue now (the file is open and its session settled)."""
        return self.spool is not None and self.journal is not None and self.unrestored is None

    def read(self, n: int) -> list[OutgoingMessage]:
        return self.spool.read(n) if self.spool is not None else []

    def head_time(self) -> float | None:
        return self.spool.head_time() if self.spool is not None else None

    def tail_time(self) -> float | None:
        return self.spool.tail_time() if self.spool is not None else None

    def queued(self) -> tuple[int, int]:
        return (self.spool.count, self.spool.bytes) if self.spool is not None else (0, 0)

    def read_to(self) -> int:
        return self.spool.read_to if self.spool is not None else 0

    def mark(self) -> object:
        return self.spool.mark() if self.spool is not None else None

    def reset(self, mark: object) -> None:
        if self.spool is not None and mark is not None:
            self.spool.reset(mark)

    def queued_messages(self) -> list[OutgoingMessage]:
        """Every message in the disk queue (not read back), for ``save_session``'s text;
        ``PersistenceError`` when it cannot be read now (no file descriptor free)."""
        try:
            return self.spool.read_all() if self.spool is not None else []
        except OSError as exc:
            raise PersistenceError(exc.errno, f"cannot read the disk queue: {exc}") from exc

    def outgoing(self, state: SessionState) -> list[OutgoingMessage]:
        """The outgoing messages held, in publish order: memory's, then the disk queue's."""
        return [*state.outgoing.values(), *(self.queued_messages() if state.spooled else ())]

    def with_queue(self, state: SessionState) -> SessionState:
        """``state`` with the disk queue's messages in ``outgoing`` (a copy; ``state`` itself
        when none wait there): the whole session, as ``save_session``'s text holds it."""
        if not state.spooled:
            return state
        whole = copy.copy(state)
        whole.outgoing = {**state.outgoing, **{m.seq: m for m in self.queued_messages()}}
        whole.spooled = whole.spooled_bytes = whole.spool_last = 0
        return whole

    def compact_if_due(self, state: SessionState) -> None:
        """Compact a journal past its bound. The records are durable: a failure is reported
        (``take_errors``), not raised."""
        j = self.journal
        if j is not None and j.needs_compaction:
            try:
                j.compact(state)
            except MQTTSessionError as exc:
                self._errors.append((getattr(exc, "errno", None) or -1,
                                     f"state file compaction failed: {exc}"))

    @property
    def compactions(self) -> int:
        """Snapshots the journal wrote so far (``Driver.run``: one written while it carries
        out an action list holds all of that list's records)."""
        return self.journal.compactions if self.journal is not None else 0

    @property
    def has_errors(self) -> bool:
        """Whether ``take_errors`` has anything (no lock: a hint, checked once per action list)."""
        return bool(self._errors) or (self.spool is not None and self.spool.has_errors)

    def take_errors(self) -> list[tuple[int, str]]:
        """What went wrong without raising, for on_error (``settle``, a failed compaction)."""
        if self.spool is not None and self.spool.has_errors:
            self._errors += self.spool.take_errors()
        errors, self._errors = self._errors, []
        return errors

    def sync_pending(self) -> None:
        """The records written without a sync, on disk: the journal's, then the disk queue's
        (never a later message before an earlier one)."""
        if self.journal is not None:
            self.journal.sync_pending()
        if self.spool is not None:
            self.spool.sync_pending()

    def resync(self, state: SessionState) -> None:
        """SessionSync=interval after a failed sync: a journal the failure left broken is
        rewritten from memory (a compaction: snapshot and journal synced), then the disk
        queue synced; ``PersistenceError`` if that fails too."""
        j = self.journal
        if j is not None and j.broken and self.unrestored is None:
            j.compact(state)
        self.sync_pending()

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    def save(self, state: SessionState, text: str, closing: bool = False) -> None:
        """``save_session`` (``closing``: ``close()``'s last one): the whole state as the
        snapshot. The file is owned first, as a publish owns it (its lock; a session in it
        not restored is kept aside). ``closing`` leaves alone a file this session never
        owned, or whose session it neither restored nor wrote over: nothing of it to save."""
        if closing and not self.owned:  # (a gateway's session whose restore failed too:
            return  # an empty state compacted over the log's session lost its messages)
        if self.journal is None and self.shared is not None:
            self.journal = self._new(state.client_id)
        elif self.journal is None and self.path:
            require_directory(self.path)  # a UsageError that names it, not ENOENT
            self.open(state)
        if self.unrestored is not None:
            self.settle(state)
        if self.journal is not None:
            self.journal.compact(state, text)

    @property
    def owned(self) -> bool:
        """This session's state is the file's: opened, its session restored or set aside."""
        return self.journal is not None and self.unrestored is None

    def compact(self, state: SessionState) -> None:
        """The whole state written (a clean disconnect), when the file is this session's."""
        if self.owned and self.journal is not None:
            self.journal.compact(state)

    def note_restore(self, records: list[Record], state: SessionState) -> None:
        """``restore_session``'s records, synced. A failure (a full disk) is reported
        (``take_errors``), not raised: the session is restored already (read from the file),
        and the next write rewrites the file whole."""
        try:
            self.append(records, state, sync=True)
        except PersistenceError as exc:
            self._errors.append((exc.errno or -1, f"restore_session: its record was not"
                                 f" written ({exc}); the state file is rewritten next"))

    def rewrite(self, state: SessionState) -> None:
        """A publish taken back after a failed write, sync or compaction: what reached the
        file may still hold its message (a record written but interrupted before its sync, a
        compaction's snapshot put in place before its journal failed). The file is rewritten
        from memory now, so that a restart does not find a message its publisher was told is
        not stored (a duplicate once published again); best effort: tried twice (a fault
        of the disk is often brief), then left for the next write, which rewrites it."""
        j = self.journal
        if j is None or self.unrestored is not None:  # (never over a session not restored)
            return
        if self.spool is not None and self.spool.take_back(state.next_seq):  # (written, then
            state.spool_last = self.spool.last_seq  # an interrupt before the publish returned)
        for attempt in (1, 2):
            try:
                j.compact(state)
                return
            except Exception as exc:  # (the journal is marked broken: the next write retries)
                log.debug("rewriting the state file after a failed publish failed (attempt"
                          " %d): %s", attempt, exc)

    def compaction_near(self, extra: int) -> bool:
        """Whether writing ``extra`` more bytes, with the lazy frames written with them,
        passes the journal's bound, or finds it broken, so compacts it (a hint, read without
        a lock). O(1): asked at every asyncio publish, while thousands of held frames may
        wait (counted in ``_held_bytes``); the lazy ones after them are steps and removals,
        ``_LAZY_FRAME`` bytes at most each."""
        j = self.journal
        if j is None or self.unrestored is not None:
            return False
        if isinstance(j, SessionLog):  # (the session's records since its snapshot)
            s = j._log._sessions.get(j.client_id)  # noqa: SLF001
            size, lazy = (s.rec_bytes if s is not None else 0), len(j._lazy)  # noqa: SLF001
        elif j._broken:  # noqa: SLF001 - a failed write or sync: the next one rebuilds it
            return True
        else:
            size, lazy = j._size + j._held_bytes, len(j._lazy) - j._held  # noqa: SLF001
        return size + lazy * _LAZY_FRAME + extra > j.bound

    def compact_ahead(self, state: SessionState) -> None:
        """The compaction the next write would run, now (a loop's session: in a thread,
        ``compacting.Turn``); raises what fails (the next write rewrites)."""
        j = self.journal
        if j is not None and self.unrestored is None:
            j.compact(state)

    def compact_before_publish(self, state: SessionState) -> None:
        """A due compaction before a publish: a fault here fails a publish not yet made."""
        j = self.journal
        if j is not None and j.needs_compaction:
            j.compact(state)

    def _close_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self._close_spool()


def _retire(j: Journal | SessionLog, spool: Spool, upto: int, at: tuple[int, int]) -> None:
    """Off a loop: the disk queue's segments read back below ``upto`` deleted once the
    ``Loaded`` record saying so (ending at ``at``) is on disk; a failed sync keeps them (a
    restart deletes them, the record on disk then)."""
    try:
        j.sync_to(*at)
    except PersistenceError as exc:
        log.warning("a read-back disk queue segment is kept for now: %s", exc)
        return
    if j.is_synced(*at):
        spool.retire(upto)


def attach(state: SessionState, spool: Spool) -> None:
    """Count the disk queue's messages into a recovered state."""
    state.spooled, state.spooled_bytes = spool.count, spool.bytes
    state.spool_last = spool.last_seq
    if spool.last_seq >= state.next_seq:  # spooled after the journal last counted
        state.next_seq = spool.last_seq + 1
