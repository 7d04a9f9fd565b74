"""The shared log's rotation and group commit: behaviour a mutation hunt found no test held
(each test here fails with the mutation it names: a line of sharedlog.py / rotating.py made
to do nothing or the opposite)."""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttsession import codec, rotating
from mqttsession.errors import PersistenceError
from mqttsession.sharedlog import LOG_NAME, SharedLog
from mqttsession.state import SessionState

try:  # tests/unit may or may not be a package
    from .test_sharedlog import SHM, CIDS, Gateway, _rotated, step
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_sharedlog import SHM, CIDS, Gateway, _rotated, step  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-rotation-", dir=SHM) as d:
        yield Path(d)


def test_a_cut_record_is_not_durable_after_the_rebuild_that_follows(shm: Path) -> None:
    """Records a failed fdatasync cut, the log rebuilt (a new incarnation) by another
    session's write before their ``sync_to`` looks: that ``sync_to`` raises; it must not
    find the new incarnation and report them durable (``if not self.is_synced`` -> ``if
    False``: it did)."""
    log = SharedLog(str(shm), max_log_bytes=1_000_000)
    st = SessionState(client_id="c", clean_session=False)
    v = log.session("c")
    v.compact(st)
    log.sync_to(*log.position())
    rng = random.Random(1)
    for _ in range(20):
        if (rec := step(rng, st)) is not None:
            v.append([rec], st, sync=False)
    at = log.position()
    assert not log.is_synced(*at)
    with log._mutex:
        log._cut(log._fd)  # (what a failed fdatasync does)
    other = SessionState(client_id="d", clean_session=False)
    w = log.session("d")
    w.compact(other)  # the next write rebuilds the log: a new incarnation
    assert log._gen == at[0] + 1 and not log.is_synced(*at)
    with pytest.raises(PersistenceError):
        log.sync_to(*at)
    v.close()
    w.close()
    log.close()


def test_the_rotation_syncs_its_new_file_before_the_rename_and_the_directory_after(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefix counts as on disk once the directory's fsync named the new file: its data
    must have been fdatasynced before the rename (dropping that fdatasync lost, at a power
    cut, records told durable), and the directory's fsync comes after the rename."""
    calls: list[tuple[str, int]] = []
    real_sync, real_replace, real_dir = os.fdatasync, os.replace, rotating._fsync_dir

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", os.fstat(fd).st_ino))
        real_sync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    def fsync_dir(path: str) -> None:
        calls.append(("dir", 0))
        real_dir(path)

    gw = Gateway(shm, seed=3, max_log_bytes=20_000, max_journal_bytes=2_000)
    monkeypatch.setattr(rotating.os, "fdatasync", fdatasync)
    monkeypatch.setattr(rotating.os, "replace", replace)
    monkeypatch.setattr(rotating, "_fsync_dir", fsync_dir)
    gen = gw.log._gen
    for _ in range(10):
        gw.run(100)
        _rotated(gw.log)
    monkeypatch.undo()
    assert gw.log._gen > gen
    renames = [i for i, (what, _) in enumerate(calls) if what == "replace"]
    assert renames
    for i in renames:
        assert ("fdatasync", calls[i][1]) in calls[:i], calls  # its data first
        assert ("dir", 0) in calls[i + 1:], calls  # then its name
    gw.check()


def _held_prefix(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The rotation's first write (its prefix) held until the second event; the first set
    once it is reached."""
    started, go = threading.Event(), threading.Event()
    real = rotating._write_all

    def held(fd: int, data: bytes) -> None:
        real(fd, data)
        if not started.is_set():
            started.set()
            go.wait(10)

    monkeypatch.setattr(rotating, "_write_all", held)
    return started, go


def test_close_waits_for_the_rotation_thread_and_leaves_no_file_of_it(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``close()`` during a rotation abandons it and waits for its thread: once close
    returns (the directory's lock let go) no rotation thread runs and its new file is gone
    (not joining it: close returned while the thread still wrote in the directory)."""
    gw = Gateway(shm, seed=4, max_log_bytes=30_000, max_journal_bytes=2_000)
    gw.run(300)
    _rotated(gw.log)
    started, go = _held_prefix(monkeypatch)
    gen = gw.log._gen
    with gw.log._mutex:  # (as an append past the bound does)
        gw.log._rotate_soon(gw.log._size)
    assert started.wait(10)
    for v in gw.views.values():
        v.close()
    closer = threading.Thread(target=gw.log.close)
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive()  # waiting for the rotation's thread
    go.set()
    closer.join(10)
    assert not closer.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "mqttsession-rotation"]
    assert not list(shm.glob(f"{LOG_NAME}.tmp-*"))
    assert gw.log._gen == gen  # abandoned
    log = SharedLog(str(shm))  # (every session as it was)
    try:
        assert sorted(log.sessions()) == sorted(CIDS)
    finally:
        log.close()


def test_a_failed_rotation_is_tried_again_only_once_the_log_grew_by_a_quarter(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation that failed (a full disk) is not started again by every append past the
    bound (each a thread writing the whole log again): the next waits until the log grew by
    a quarter of the bound."""
    gw = Gateway(shm, seed=6, max_log_bytes=20_000, max_journal_bytes=2_000)
    gw.run(300)
    _rotated(gw.log)
    tries: list[int] = []

    def full(fd: int, data: bytes) -> None:
        tries.append(len(data))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rotating, "_write_all", full)
    size0 = gw.log._size
    for _ in range(100):
        gw.run(10)
        _rotated(gw.log)
    grown = gw.log._size - size0
    assert tries
    assert len(tries) <= grown // (20_000 // 4) + 2, (len(tries), grown)
    monkeypatch.undo()
    gw.run(300)
    _rotated(gw.log)
    gw.check()


def test_a_rotation_goes_on_when_the_first_frame_after_s0_is_an_attach(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is appended after S0 (here first a new session's attach and snapshot, then
    records of the others) moves behind the prefix: the rotation switches (a frame exactly
    at S0 taken for one the prefix placed abandoned it, and the log outgrew its bound)."""
    gw = Gateway(shm, seed=8, max_log_bytes=30_000, max_journal_bytes=2_000)
    gw.run(300)
    _rotated(gw.log)
    started, go = _held_prefix(monkeypatch)
    gen = gw.log._gen
    with gw.log._mutex:
        s0 = gw.log._size
        gw.log._rotate_soon(s0)
    assert started.wait(10)
    fresh = SessionState(client_id="new", clean_session=False)
    view = gw.log.session("new")
    snap = threading.Thread(target=view.compact, args=(fresh,))  # (it syncs: waits for
    snap.start()  # the rotation) a new session: its attach the first frame at S0
    for _ in range(500):
        if (s := gw.log._sessions.get("new")) is not None and s.attach_at is not None:
            break
        time.sleep(0.01)
    assert gw.log._sessions["new"].attach_at == s0
    rng = random.Random(9)
    for _ in range(20):  # and records of the others behind it
        c = rng.choice(CIDS)
        if (rec := step(rng, gw.states[c])) is not None:
            gw.views[c].append([rec], gw.states[c], sync=False)
    go.set()
    _rotated(gw.log)
    snap.join(10)
    assert gw.log._gen == gen + 1  # switched, not abandoned
    view.close()
    gw.run(100)
    gw.log.close()
    log = SharedLog(str(shm))  # (a restart finds every session as it is)
    try:
        assert sorted(log.sessions()) == sorted([*CIDS, "new"])
        for cid, want in [*gw.states.items(), ("new", fresh)]:
            assert codec.encode(log.session(cid).recover()) == codec.encode(want), cid
    finally:
        log.close()


def test_a_rotation_waits_for_the_group_commit_sync_under_way(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation begun while a group commit's fdatasync runs on the log's descriptor writes
    nothing until that sync ended (else its switch could close the descriptor under the
    sync: EBADF, a cut of the new file, or a sync of a reused descriptor number)."""
    from mqttsession import groupcommit  # noqa: PLC0415
    from mqttsession.testing.faults import FakeOs  # noqa: PLC0415

    gw = Gateway(shm, seed=10, max_log_bytes=30_000, max_journal_bytes=2_000)
    gw.run(300)
    _rotated(gw.log)
    in_sync, go_sync, wrote = threading.Event(), threading.Event(), threading.Event()
    real_write = rotating._write_all

    def held_sync(fd: int) -> None:
        in_sync.set()
        go_sync.wait(10)
        os.fdatasync(fd)

    def write(fd: int, data: bytes) -> None:
        wrote.set()
        real_write(fd, data)

    monkeypatch.setattr(groupcommit, "os", FakeOs(fdatasync=held_sync))
    monkeypatch.setattr(rotating, "_write_all", write)
    c = CIDS[2]
    if (rec := step(random.Random(11), gw.states[c])) is not None:
        gw.views[c].append([rec], gw.states[c], sync=False)
    at = gw.log.position()
    syncer = threading.Thread(target=gw.log.sync_to, args=at)
    syncer.start()
    assert in_sync.wait(10)
    gen = gw.log._gen
    with gw.log._mutex:  # (as an append past the bound does)
        gw.log._rotate_soon(gw.log._size)
    time.sleep(0.1)
    assert not wrote.is_set()  # waiting for the sync
    go_sync.set()
    syncer.join(10)
    _rotated(gw.log)
    assert wrote.is_set() and gw.log._gen == gen + 1 and gw.log.is_synced(*at)
    monkeypatch.undo()
    gw.run(100)
    gw.check()


def test_a_rotation_switches_with_held_publishes_pending(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishes a group commit holds in memory (``hold_publishes``), appended while the
    rotation writes its prefix, are written at its switch and carried behind the prefix: it
    switches (without that write the tail it copies was short: abandoned, every time there
    were held frames, the log outgrowing its bound) and a restart finds them."""
    log = SharedLog(str(shm), hold_publishes=True)
    views = {}
    states = {}
    for cid in CIDS:
        views[cid], states[cid] = log.session(cid), SessionState(client_id=cid,
                                                                 clean_session=False)
        views[cid].compact(states[cid])
        views[cid].append([states[cid].accept("t", b"before", 1)], states[cid], sync=False)
    started, go = _held_prefix(monkeypatch)
    gen = log._gen
    with log._mutex:
        log._rotate_soon(log._size)
    assert started.wait(10)
    for cid in CIDS:  # held: in memory until a sync (or another write) writes them
        views[cid].append([states[cid].accept("t", b"held", 1)], states[cid], sync=False,
                          held=True)
    assert (shm / LOG_NAME).stat().st_size < log._size
    go.set()
    _rotated(log)
    assert log._gen == gen + 1  # switched
    assert log.sync_to(*log.position())
    for v in views.values():
        v.close()
    log.close()
    again = SharedLog(str(shm))
    try:
        for cid in CIDS:
            assert codec.encode(again.session(cid).recover()) == codec.encode(states[cid]), cid
    finally:
        again.close()
