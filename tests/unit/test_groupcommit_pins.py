"""Rules of ``GroupCommit`` that a mutation hunt found no test pinned, on a stand-in file
whose fdatasyncs each wait for a gate: a waiter whose bytes a sync covered is released at once
(not after the next sync, which another waiter runs), the next sync goes to the first waiter
in line, a caller of an incarnation that is gone never waits for the current one's sync, and
the sync-time moving average."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
from mqttsession.errors import PersistenceError
from mqttsession.groupcommit import GroupCommit


class GatedFile(GroupCommit):
    """A file for ``GroupCommit``: the n-th fdatasync sets ``entered[n]``, then waits for
    ``gates[n]``; it fails (EIO) when n is in ``fails``."""

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._sync_cond = threading.Condition()
        self._gen, self._synced, self._syncing, self._size = 0, 0, False, 0
        self._waiters = []
        self.broken = False
        self.entered = [threading.Event() for _ in range(8)]
        self.gates = [threading.Event() for _ in range(8)]
        self.fails: set[int] = set()
        self.syncers: list[str] = []  # the thread that ran each fdatasync
        self.lost: dict[int, int] = {}  # a gone incarnation: where a failed sync cut it
        self.rotation = False
        self.rotate_at_claim = False  # a rotation starts as a thread claims the sync

    @property
    def _rotating(self) -> bool:
        return self.rotation

    def _now_at(self, gen: int, pos: int) -> tuple[int, int]:
        if self.rotate_at_claim and self._mutex._is_owned():  # type: ignore[attr-defined]
            self.rotation, self.rotate_at_claim = True, False
        return gen, pos

    def write(self, n: int) -> tuple[int, int]:
        with self._mutex:
            self._size += n
            return self._gen, self._size

    def new_incarnation(self, size: int | None = None) -> None:
        """A compaction or rotation: the file rewritten whole (``size``) and synced."""
        with self._mutex, self._sync_cond:
            if self.broken:
                self.lost[self._gen] = self._size
                self.broken = False
            if size is not None:
                self._size = size
            self._gen += 1
            self._synced = self._size
            self._wake(everyone=True)

    def _sync_start(self, gen: int, pos: int) -> int | None:
        if gen != self._gen:
            if pos > self.lost.get(gen, pos):
                raise PersistenceError(None, "a failed sync cut the record")
            return None  # synced whole
        if self.broken:
            raise PersistenceError(None, "broken")
        return 3

    def _fdatasync(self, fd: int) -> None:
        k = len(self.syncers)
        self.syncers.append(threading.current_thread().name)
        self.entered[k].set()
        assert self.gates[k].wait(5)
        if k in self.fails:
            raise OSError(errno.EIO, "EIO")

    def _sync_failed(self, fd: int, exc: OSError) -> PersistenceError:
        self.broken = True
        self._size = self._synced
        return PersistenceError(exc.errno, "cannot sync")

    def waiting(self) -> int:
        with self._sync_cond:
            return len(self._waiters)


class Caller(threading.Thread):
    """A thread that waits for ``pos`` of incarnation ``gen``: its result or its error."""

    def __init__(self, f: GatedFile, gen: int, pos: int, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.f, self.gen, self.pos = f, gen, pos
        self.result: bool | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.f._group_sync(self.gen, self.pos, 0.0)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            self.error = exc


def _until(cond: Any) -> None:
    deadline = time.monotonic() + 5
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert cond()


@pytest.fixture
def gated() -> Iterator[GatedFile]:
    f = GatedFile()
    yield f
    for g in f.gates:  # (nothing left waiting)
        g.set()


def _start(f: GatedFile, gen: int, pos: int, name: str, waiters: int | None = None) -> Caller:
    c = Caller(f, gen, pos, name)
    c.start()
    if waiters is not None:
        _until(lambda: f.waiting() == waiters)
    return c


def test_a_waiter_a_sync_covered_is_released_while_the_next_sync_runs(gated: GatedFile) -> None:
    """A sync that covers a waiter (its position the sync's end exactly) releases it at once,
    also when a waiter ahead of it in line (bytes written after the sync began) runs the next
    fdatasync: it does not wait for that one too."""
    f = gated
    gen, p1 = f.write(10)
    first = _start(f, gen, p1, "first")
    assert f.entered[0].wait(5)
    _, p2 = f.write(10)
    later = _start(f, gen, p2, "later", waiters=1)  # not covered by the running sync
    covered = _start(f, gen, p1, "covered", waiters=2)
    f.gates[0].set()
    assert f.entered[1].wait(5)  # "later" runs the next fdatasync (stuck)
    covered.join(5)
    assert not covered.is_alive() and covered.result is False and covered.error is None
    assert f.syncers == ["first", "later"]
    f.gates[1].set()
    first.join(5)
    later.join(5)
    assert first.result is True and later.result is True
    assert f._synced == p2 and not f._waiters


def test_the_next_sync_goes_to_the_first_waiter_in_line(gated: GatedFile) -> None:
    """Of the waiters a sync did not cover, the one that waited longest runs the next
    fdatasync (first in line); the others wait for it and are covered by it."""
    f = gated
    gen, p1 = f.write(10)
    first = _start(f, gen, p1, "first")
    assert f.entered[0].wait(5)
    _, p2 = f.write(10)
    a = _start(f, gen, p2, "a", waiters=1)
    b = _start(f, gen, p2, "b", waiters=2)
    f.gates[0].set()
    assert f.entered[1].wait(5)
    assert f.syncers == ["first", "a"]
    f.gates[1].set()
    for t in (first, a, b):
        t.join(5)
    assert (a.result, b.result) == (True, False)
    assert len(f.syncers) == 2


def test_a_caller_of_a_gone_incarnation_does_not_wait_for_the_current_ones_sync(
    gated: GatedFile,
) -> None:
    """After a compaction (a new incarnation, synced whole) a caller that waits for bytes of
    the old one returns False at once, also while a sync of the new one runs: it has nothing
    to wait for."""
    f = gated
    old, p_old = f.write(10)
    f.new_incarnation()
    gen, p = f.write(10)
    assert gen == old + 1
    running = _start(f, gen, p, "running")
    assert f.entered[0].wait(5)
    stale = _start(f, old, p_old + 5, "stale")
    stale.join(5)
    assert not stale.is_alive() and stale.result is False and stale.error is None
    f.gates[0].set()
    running.join(5)
    assert running.result is True


def test_a_record_of_a_gone_incarnation_is_judged_by_the_owner_not_by_the_new_position(
    gated: GatedFile,
) -> None:
    """A caller whose record a failed sync cut, the file since rewritten longer (a rotation:
    a new incarnation, synced past that offset), gets the owner's error
    (``SharedLog._sync_start``), not False (durable) from comparing its offset with the new
    incarnation's."""
    f = gated
    f.gates[0].set()
    f.fails.add(0)
    gen, pos = f.write(30)
    with pytest.raises(PersistenceError):
        f._group_sync(gen, pos, 0.0)
    f.new_incarnation(size=50)
    assert f._gen == gen + 1 and f._synced == 50
    with pytest.raises(PersistenceError, match="cut the record"):
        f._group_sync(gen, pos, 0.0)


def test_no_fdatasync_starts_while_a_rotation_runs(gated: GatedFile) -> None:
    """A rotation that starts while a thread claims the sync (after its first look, before it
    takes the mutex) makes it wait: no fdatasync runs during the rotation; its end (a new
    incarnation's wake) lets the thread sync."""
    f = gated
    f.gates[0].set()
    f.rotate_at_claim = True
    gen, pos = f.write(10)
    c = _start(f, gen, pos, "claims", waiters=1)
    assert f.rotation and f.syncers == []  # waits for the rotation's end
    with f._sync_cond:
        f.rotation = False
        f._wake(everyone=True)
    c.join(5)
    assert c.result is True and f.syncers == ["claims"]


def test_a_failed_sync_is_raised_to_its_waiters_not_to_those_synced_before(
    gated: GatedFile,
) -> None:
    """A failed fdatasync raises to the thread that ran it and to each waiter whose bytes it
    was to cover; a caller whose bytes an earlier sync made durable gets no error."""
    f = gated
    f.gates[0].set()
    gen, p1 = f.write(10)
    assert f._group_sync(gen, p1, 0.0) is True
    _, p2 = f.write(10)
    f.fails.add(1)
    syncer = _start(f, gen, p2, "syncer")
    assert f.entered[1].wait(5)
    waiter = _start(f, gen, p2, "waiter", waiters=1)
    synced = _start(f, gen, p1, "synced")
    synced.join(5)
    assert synced.result is False and synced.error is None
    f.gates[1].set()
    syncer.join(5)
    waiter.join(5)
    assert isinstance(syncer.error, PersistenceError) and syncer.error.errno == errno.EIO
    assert isinstance(waiter.error, PersistenceError)
    assert f._synced == p1 and not f._waiters and not f._syncing


def test_the_sync_time_is_a_moving_average_of_the_successful_fdatasyncs(
    gated: GatedFile, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sync_time``: 0.0 before the first sync, then each fdatasync's duration moves it an
    eighth of the way; a failed one leaves it."""
    clock = [0.0]

    class _Time:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def monotonic() -> float:
            return clock[0]

    f = gated
    real_sync = f._fdatasync

    def timed(fd: int, took: list[float] = [8.0, 16.0, 40.0]) -> None:  # noqa: B006
        real_sync(fd)
        clock[0] += took.pop(0)

    monkeypatch.setattr(groupcommit_mod, "time", _Time())
    monkeypatch.setattr(f, "_fdatasync", timed)
    for g in f.gates:
        g.set()
    f.fails.add(2)
    assert f.sync_time == 0.0
    gen, pos = f.write(1)
    f._group_sync(gen, pos, 0.0)
    assert f.sync_time == 1.0  # 8 / 8
    gen, pos = f.write(1)
    f._group_sync(gen, pos, 0.0)
    assert f.sync_time == 1.0 + (16.0 - 1.0) / 8
    gen, pos = f.write(1)
    with pytest.raises(PersistenceError):
        f._group_sync(gen, pos, 0.0)
    assert f.sync_time == 1.0 + (16.0 - 1.0) / 8  # the failed one is not counted
