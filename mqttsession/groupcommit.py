"""Group commit for a file that many threads append to: ``journal.Journal`` (one session's)
and ``sharedlog.SharedLog`` (a gateway's sessions). Threads that wait for their bytes to be
on disk together share one fdatasync: one of them runs it, outside the owner's mutex (appends
go on meanwhile), for everything written so far; the others wait for it.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from .errors import PersistenceError

__all__ = ["GroupCommit"]


class GroupCommit:
    """The algorithm; the owner keeps the state and says what syncing its file means."""

    _mutex: threading.RLock  # the owner's: appends, and the fd and size read for a sync
    _sync_cond: threading.Condition  # guards the four below; never held while waiting
    _gen: int  # the file's incarnation (a compaction or rotation starts a new one)
    _synced: int  # how far the current incarnation is on disk
    _syncing: bool  # an fdatasync is running outside the mutex
    _sync_owner = 0  # the thread that runs it (``threading.get_ident``)
    _lingering = False  # the thread that syncs next waits ``linger`` before it starts
    _sync_time = 0.0  # how long the fdatasyncs take, a moving average (seconds)
    _size: int  # how far the file is written
    # threads waiting for the running sync, each with (incarnation, position, its lock)
    _waiters: list[tuple[int, int, threading.Lock]]

    @property
    def sync_time(self) -> float:
        """How long the fdatasyncs take, a moving average (seconds; 0.0 before the first)."""
        return self._sync_time

    def _sync_start(self, gen: int, pos: int) -> int | None:
        """Mutex held, about to sync: the fd to sync, None when incarnation ``gen`` needs no
        sync (a new one was synced whole); ``PersistenceError`` when it cannot be synced."""
        raise NotImplementedError

    def _sync_failed(self, fd: int, exc: OSError) -> PersistenceError:
        """The fdatasync failed: cut what was not on disk; the error to raise."""
        raise NotImplementedError

    def _fdatasync(self, fd: int) -> None:
        """``os.fdatasync`` as the owner's module sees it (tests replace it there)."""
        os.fdatasync(fd)

    def _failed_meanwhile(self) -> bool:
        """After this thread's fdatasync returned: whether another write or sync of the file
        failed while it ran (the kernel reports a write-back error to one caller only)."""
        return False

    @property
    def _rotating(self) -> bool:
        """A rotation runs in a thread (``rotating``): no sync starts meanwhile."""
        return False

    def _now_at(self, gen: int, pos: int) -> tuple[int, int]:
        """Where the byte ``pos`` of incarnation ``gen`` is now (a rotation moved it), the
        condition's lock held."""
        return gen, pos

    def _synced_to(self, target: int) -> None:
        """The current incarnation is on disk up to ``target`` (the condition's lock held)."""

    def _wake(self, everyone: bool) -> None:
        """The condition's lock held, no sync running: release the threads waiting for a sync
        that now covers their bytes (all of them when ``everyone``: a new incarnation, a
        failed sync), and one of the others, whose turn it is to run the next fdatasync.
        Threads not woken stay asleep: a sync wakes only the ones it concerns."""
        waiters = self._waiters
        if not waiters:
            return
        if everyone:
            self._waiters = []
            for _g, _p, turn in waiters:
                turn.release()
            return
        gen, synced, rest = self._gen, self._synced, []
        for w in waiters:
            if w[0] != gen or w[1] <= synced:
                w[2].release()
            else:
                rest.append(w)
        if rest:
            rest.pop(0)[2].release()  # the next fdatasync is its to run
        self._waiters = rest

    def _group_sync(self, gen: int, pos: int, linger: float) -> bool:
        """The bytes up to ``pos`` of incarnation ``gen`` on disk; True when this call ran the
        fdatasync. ``linger``: seconds the one that syncs waits first, so that the records of
        other writers under way join this fdatasync (PostgreSQL's ``commit_delay``)."""
        try:
            return self._claim_and_sync(gen, pos, linger)
        except BaseException:  # (a KeyboardInterrupt between claiming the sync and the
            me = threading.get_ident()  # ``finally`` that gives it back: every later sync
            if self._syncing and self._sync_owner == me:  # and compaction would wait for ever)
                with self._sync_cond:
                    if self._syncing and self._sync_owner == me:
                        self._syncing = False
                        self._sync_cond.notify_all()
                        self._wake(everyone=True)
            raise

    def _claim_and_sync(self, gen: int, pos: int, linger: float) -> bool:
        started = lingered = mine = False  # lingered once; ``_lingering`` is this one's
        turn: threading.Lock | None = None
        try:
            while True:
                with self._sync_cond:
                    gen, pos = self._now_at(gen, pos)
                    if self._gen == gen and self._synced >= pos:
                        return False
                    turn = None
                    if (self._syncing or self._lingering or self._rotating) and self._gen == gen:
                        turn = threading.Lock()
                        turn.acquire()
                        self._waiters.append((gen, pos, turn))
                    elif linger > 0 and not lingered:
                        self._lingering = lingered = mine = True
                if turn is not None:
                    turn.acquire()  # released by ``_wake``: covered, or this one syncs next
                    continue
                if mine:
                    # the others append meanwhile (they wait for this sync, not their own);
                    # the owner's ``_sync_start`` writes what they buffered
                    time.sleep(linger)
                # become the one that syncs: the fd and what it covers are read under the
                # mutex, which is NOT held during the fdatasync (a compaction waiting for
                # ``_syncing`` to end holds the mutex, so nothing here may wait for it after
                # ``_syncing``)
                with self._mutex:
                    with self._sync_cond:  # (a rotation may have moved it since the look above)
                        gen, pos = self._now_at(gen, pos)
                    fd = self._sync_start(gen, pos)
                    if fd is None:
                        return False
                    with self._sync_cond:
                        if mine:
                            self._lingering = mine = False
                        if self._syncing or self._rotating:
                            continue  # another thread got there first: wait for its sync
                        self._sync_owner = threading.get_ident()
                        self._syncing = True
                    target = self._size
                started = True
                break
        finally:
            if mine:
                with self._sync_cond:
                    self._lingering = False
            if turn is not None and not started:  # interrupted while it waited: out of the
                with self._sync_cond:  # list, or ``_wake`` could hand the next sync to no one
                    self._waiters = [w for w in self._waiters if w[2] is not turn]
            if not started and self._waiters and not self._syncing:
                # leaving without a sync (or raising) when it may have been this one's turn:
                # the next waiter takes it
                with self._sync_cond:
                    if not self._syncing:
                        self._wake(everyone=False)
        ok = False
        try:
            t0 = time.monotonic()
            try:
                self._fdatasync(fd)
            except OSError as exc:
                raise self._sync_failed(fd, exc) from exc
            if self._failed_meanwhile():  # its success proves nothing: a failure (cut)
                raise self._sync_failed(fd, OSError(errno.EIO, "another write or sync of the"
                                                    " file failed during this fdatasync"))
            ok = True
            self._sync_time += (time.monotonic() - t0 - self._sync_time) / 8
        finally:
            with self._sync_cond:
                self._syncing = False
                if ok and self._gen == gen and target > self._synced:
                    self._synced = target
                    self._synced_to(target)
                self._sync_cond.notify_all()  # ``_quiesce``
                self._wake(everyone=not ok)
        return True
