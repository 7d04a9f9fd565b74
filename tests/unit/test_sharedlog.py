"""The shared log: many sessions in one append-only file (mqttsession.sharedlog)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttsession import codec
from mqttsession.errors import PersistenceError, StateError, StateLockedError
from mqttsession.recovery import read_frames, read_state
from mqttsession.sessionlog import SessionLog, read_sessions
from mqttsession.sharedlog import LOCK_NAME, LOG_NAME, SharedLog
from mqttsession.state import Phase, Record, SessionState

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
CIDS = ["dev-0", "dev/1", "ü-2", "dev-3"]


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-shared-", dir=SHM) as d:
        yield Path(d)


def step(rng: random.Random, state: SessionState) -> Record | None:
    """One legal transition of ``state``; its record (None: no change)."""
    queued = [m.seq for m in state.outgoing.values() if m.phase is Phase.QUEUED]
    acked = [m.packet_id for m in state.outgoing.values() if m.phase is Phase.AWAIT_PUBACK]
    ops = ["accept", "accept", "subscribe", "receive"] + ["send"] * bool(queued) \
        + ["puback"] * bool(acked) + ["release"] * bool(state.incoming)
    op = rng.choice(ops)
    if op == "accept":
        return state.accept(rng.choice(["a", "a/b", "€/x"]), rng.randbytes(rng.randint(0, 30)),
                            1)
    if op == "send":
        return state.send(rng.choice(queued))
    if op == "puback":
        return state.puback(rng.choice(acked))
    if op == "receive":
        return state.receive(rng.randint(1, 9), "in/x", rng.randbytes(5))
    if op == "release":
        return state.release(rng.choice(sorted(state.incoming)))[1]
    return state.subscribe(rng.choice(["a/#", "+/b", "t"]), rng.randint(0, 2))


class Gateway:
    """Sessions driven by a seeded random history, each appending to its view."""

    def __init__(self, directory: Path, seed: int = 1, max_log_bytes: int = 0,
                 max_journal_bytes: int = 0) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.log = SharedLog(str(directory), max_log_bytes=max_log_bytes)
        self.states = {c: SessionState(client_id=c, clean_session=False) for c in CIDS}
        self.views: dict[str, SessionLog] = {}
        # per session: (where the log ended after its write, its state then)
        self.history: dict[str, list[tuple[int, str]]] = {}
        for c in CIDS:
            self.views[c] = v = self.log.session(c, max_journal_bytes=max_journal_bytes)
            assert v.recover().empty and not v.exists()
            v.compact(self.states[c])
            self.history[c] = [(self.log.position()[1], codec.encode(self.states[c]))]

    def run(self, n: int, compact_every: int = 0, lazy: bool = False) -> None:
        for i in range(n):
            c = self.rng.choice(CIDS)
            state, view = self.states[c], self.views[c]
            rec = step(self.rng, state)
            if rec is not None:
                view.append([rec], state, sync=self.rng.random() < 0.3,
                            lazy=lazy and self.rng.random() < 0.3)
                self.history[c].append((self.log.position()[1], codec.encode(state)))
            if (compact_every and i % compact_every == 0) or view.needs_compaction:
                view.compact(state)
                self.history[c].append((self.log.position()[1], codec.encode(state)))

    def check(self) -> None:
        """A restart finds every session as it is."""
        self.log.close()
        log = SharedLog(str(self.directory))
        try:
            assert sorted(log.sessions()) == sorted(CIDS)
            for c in CIDS:
                v = log.session(c)
                assert codec.encode(v.recover()) == codec.encode(self.states[c]), c
        finally:
            log.close()


def test_round_trip(shm: Path) -> None:
    gw = Gateway(shm)
    gw.run(400, compact_every=37, lazy=True)
    stats = {s.client_id: s for s in gw.log.stats()}
    assert set(stats) == set(CIDS) and all(s.snapshot_bytes > 0 for s in stats.values())
    gw.check()
    assert not (shm / LOCK_NAME).exists()


def test_reopen_twice_and_go_on(shm: Path) -> None:
    gw = Gateway(shm, seed=2)
    gw.run(100)
    gw.check()
    gw.log = SharedLog(str(shm))
    gw.views = {c: gw.log.session(c) for c in CIDS}
    for c in CIDS:
        assert codec.encode(gw.views[c].recover()) == codec.encode(gw.states[c])
    gw.run(100, lazy=True)
    gw.check()


def test_rotation_keeps_every_session_and_bounds_the_log(shm: Path) -> None:
    gw = Gateway(shm, seed=3, max_log_bytes=30_000, max_journal_bytes=2_000)
    most = 0
    for _ in range(30):
        gw.run(100)
        most = max(most, (shm / LOG_NAME).stat().st_size)
    assert gw.log._gen > 3  # rotated
    assert most < 64_000
    gw.check()


@pytest.mark.heavy
def test_every_truncation_recovers_a_prefix(shm: Path) -> None:
    gw = Gateway(shm, seed=4)
    gw.run(60, compact_every=23)
    gw.log.close()
    data = (shm / LOG_NAME).read_bytes()
    work = shm / "cut"
    for n in range(len(data) + 1):
        work.mkdir()
        (work / LOG_NAME).write_bytes(data[:n])
        log = SharedLog(str(work), sync=False)
        for c in CIDS:
            done = [text for end, text in gw.history[c] if end <= n]
            got = log.session(c).recover()
            if done:
                assert log.has(c) and codec.encode(got) == done[-1], (n, c)
            else:
                assert not log.has(c) and got.empty, (n, c)
        log.close()
        shutil.rmtree(work)


def _frame_starts(data: bytes) -> list[int]:
    payloads, _, _ = read_frames(data)
    starts, pos = [], 0
    for p in payloads:
        starts.append(pos)
        pos += 8 + len(p)
    return starts


def test_a_flipped_byte_before_the_last_frame_is_kept_aside(shm: Path) -> None:
    gw = Gateway(shm, seed=5)
    gw.run(20)
    gw.log.close()
    data = (shm / LOG_NAME).read_bytes()
    last = _frame_starts(data)[-1]
    work = shm / "flip"
    for i in range(0, last, 7):
        work.mkdir()
        bad = bytearray(data)
        bad[i] ^= 0x20
        (work / LOG_NAME).write_bytes(bad)
        with pytest.raises(StateError, match="damaged"):
            SharedLog(str(work))
        kept = [p for p in work.iterdir() if p.name.startswith(LOG_NAME + ".damaged-")]
        assert len(kept) == 1 and kept[0].read_bytes() == bytes(bad)
        assert not (work / LOG_NAME).exists() and not (work / LOCK_NAME).exists()
        shutil.rmtree(work)


@settings(deadline=None, database=None, max_examples=50,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=40, max_size=400))
def test_random_bytes_are_never_an_empty_log(shm: Path, junk: bytes) -> None:
    with tempfile.TemporaryDirectory(dir=shm) as d:
        (Path(d) / LOG_NAME).write_bytes(junk)
        with pytest.raises(StateError):
            SharedLog(d)
        kept = [p for p in Path(d).iterdir() if ".damaged-" in p.name]
        assert len(kept) == 1 and kept[0].read_bytes() == junk


def test_group_commit_across_sessions(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SharedLog(str(shm))
    calls = [0]
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls[0] += 1
        time.sleep(0.001)
        real(fd)

    states = {f"t{i}": SessionState(client_id=f"t{i}", clean_session=False) for i in range(8)}
    views = {c: log.session(c) for c in states}
    for c, v in views.items():
        v.compact(states[c])
    monkeypatch.setattr(os, "fdatasync", counting)
    per = 40
    barrier = threading.Barrier(len(states))

    def publisher(c: str) -> None:
        barrier.wait()
        for i in range(per):
            rec = states[c].accept("t", f"{c}-{i}".encode(), 1)
            views[c].append([rec], states[c], sync=True)
            assert log.is_synced(*log.position()) or True

    threads = [threading.Thread(target=publisher, args=(c,)) for c in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls[0] < len(states) * per
    log.close()
    log = SharedLog(str(shm))
    for c in states:
        got = log.session(c).recover()
        assert len(got.outgoing) == per and codec.encode(got) == codec.encode(states[c])
    log.close()


def test_writers_behind_a_running_sync_share_the_next_one(shm: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync wakes the writers it covers; the ones that wrote after it started wait for ONE
    more fdatasync, run by one of them, and none returns before its bytes are on disk."""
    log = SharedLog(str(shm))
    views = {}
    for cid in "abcd":
        st_ = SessionState(client_id=cid, clean_session=False)
        views[cid] = (log.session(cid), st_)
        views[cid][0].compact(st_)
    real = os.fdatasync
    calls: list[int] = []
    gates = [threading.Event(), threading.Event()]
    entered = [threading.Event(), threading.Event()]

    def stuck(fd: int) -> None:
        n = len(calls)
        calls.append(fd)
        if n < 2:
            entered[n].set()
            gates[n].wait(30)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", stuck)
    done: dict[str, bool] = {}  # the writers whose append returned

    def write(cid: str) -> None:
        view, state = views[cid]
        rec = state.accept("t", cid.encode(), 1)
        view.append([rec], state, sync=True)
        done[cid] = True

    first = threading.Thread(target=write, args=("a",))
    first.start()
    assert entered[0].wait(10)
    rest = [threading.Thread(target=write, args=(c,)) for c in "bcd"]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 10
    while log._callers < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    gates[0].set()
    first.join(10)
    assert not first.is_alive()
    assert entered[1].wait(10)  # one of b, c, d syncs for the three
    time.sleep(0.05)
    assert all(t.is_alive() for t in rest)  # their bytes are not on disk yet
    gates[1].set()
    for t in rest:
        t.join(10)
    assert not any(t.is_alive() for t in rest)
    assert len(calls) == 2 and sorted(done) == list("abcd")
    log.close()


def _two_sessions(shm: Path) -> tuple[SharedLog, tuple[SessionLog, SessionState],
                                      tuple[SessionLog, SessionState]]:
    """A log with sessions "a" and "b", each with an empty snapshot."""
    log = SharedLog(str(shm))
    out = []
    for cid in ("a", "b"):
        view, state = log.session(cid), SessionState(client_id=cid, clean_session=False)
        view.compact(state)
        out.append((view, state))
    return log, out[0], out[1]


def _fail_next_fdatasync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next ``os.fdatasync`` fails with EIO; the ones after it work."""
    real = os.fdatasync
    failed = [False]

    def once(fd: int) -> None:
        if not failed[0]:
            failed[0] = True
            raise OSError(errno.EIO, "I/O error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", once)


def test_a_failed_fdatasync_loses_only_the_unsynced(shm: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log, (a, sa), (b, sb) = _two_sessions(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    durable_a, durable_b = codec.encode(sa), codec.encode(sb)
    _fail_next_fdatasync(monkeypatch)
    gen, _ = log.position()
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    assert not log.is_synced(gen, log._lost[gen] + 1)
    with pytest.raises(PersistenceError):
        a.sync_to(gen, log._lost[gen] + 1)
    log.close()
    log = SharedLog(str(shm))
    assert codec.encode(log.session("a").recover()) == durable_a
    assert codec.encode(log.session("b").recover()) == durable_b
    log.close()


def test_after_a_failed_sync_the_log_is_rebuilt(shm: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log, (a, sa), (b, sb) = _two_sessions(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    durable_a = codec.encode(sa)
    b.append([sb.accept("t", b"unsynced", 1)], sb, sync=False)  # cut with the failed sync
    _fail_next_fdatasync(monkeypatch)
    gen = log._gen
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    sa2 = codec.decode(durable_a)  # the failed publish withdrawn: its state without it
    a.append([sa2.accept("t", b"three", 1)], sa2, sync=True)  # a snapshot, the log rebuilt
    assert log._gen > gen
    b.append([sb.accept("t", b"after", 1)], sb, sync=True)  # b lost a frame: a snapshot
    log.close()
    log = SharedLog(str(shm))
    assert codec.encode(log.session("a").recover()) == codec.encode(sa2)
    assert codec.encode(log.session("b").recover()) == codec.encode(sb)
    log.close()


def test_a_failed_write_is_taken_back(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SharedLog(str(shm))
    a = log.session("a")
    sa = SessionState(client_id="a", clean_session=False)
    a.compact(sa)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    durable = codec.encode(sa)
    size = (shm / LOG_NAME).stat().st_size
    real = os.write

    def short(fd: int, data: bytes) -> int:
        real(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    monkeypatch.setattr(os, "write", real)
    assert (shm / LOG_NAME).stat().st_size == size
    log.close()
    log = SharedLog(str(shm))
    assert codec.encode(log.session("a").recover()) == durable
    log.close()


def test_a_cut_the_rebuild_settles_is_not_followed_by_the_record(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed sync in another thread cuts the log after a writer looked at its session and
    before the rebuild that writer runs settles the cut: its record is not written after the
    rebuild (it would follow a snapshot without the record before it: the session damaged at
    the next start); the session is written whole instead."""
    log, (a, sa), (b, sb) = _two_sessions(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=False)  # written, not yet synced
    real_write = os.write

    def enospc(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(PersistenceError):  # the log is broken: the next write rebuilds it
        b.append([sb.accept("t", b"bee", 1)], sb, sync=False)
    monkeypatch.setattr(os, "write", real_write)
    real_rotate = SharedLog._rotate

    def rotate(self: SharedLog, rebuild: bool) -> None:
        monkeypatch.setattr(SharedLog, "_rotate", real_rotate)
        self._cut(None)  # another thread's fdatasync failed just now: "one" is cut
        real_rotate(self, rebuild)

    monkeypatch.setattr(SharedLog, "_rotate", rotate)
    a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    assert codec.encode(read_sessions(str(shm))["a"]) == codec.encode(sa)
    log.close()


def test_one_owner(shm: Path) -> None:
    log = SharedLog(str(shm))
    with pytest.raises(StateLockedError):
        SharedLog(str(shm))
    code = ("import sys\nfrom mqttsession.sharedlog import SharedLog\n"
            "from mqttsession.errors import StateLockedError\n"
            "try:\n    SharedLog(sys.argv[1])\nexcept StateLockedError:\n    sys.exit(7)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert subprocess.run([sys.executable, "-c", code, str(shm)], env=env).returncode == 7
    v = log.session("x")
    with pytest.raises(StateLockedError):
        log.session("x")
    v.close()
    log.session("x").close()
    log.close()
    SharedLog(str(shm)).close()  # free again


def test_a_symlinked_log_is_refused(shm: Path) -> None:
    target = shm / "target"
    target.write_bytes(b"precious")
    d = shm / "gw"
    d.mkdir()
    (d / LOG_NAME).symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        SharedLog(str(d))
    assert target.read_bytes() == b"precious" and (d / LOG_NAME).is_symlink()
    assert not (d / LOCK_NAME).exists()


def test_keep_aside_writes_a_readable_state_file(shm: Path) -> None:
    gw = Gateway(shm, seed=6)
    gw.run(40)
    c = CIDS[1]
    expected = codec.encode(gw.states[c])
    kept = gw.views[c].keep_aside("unrestored")
    assert kept and all(os.path.dirname(k) == str(shm / "aside") for k in kept)
    assert codec.encode(read_state(kept[0])) == expected
    assert not gw.log.has(c) and not gw.views[c].exists()
    gw.log.close()
    log = SharedLog(str(gw.directory))
    assert c not in log.sessions() and len(log.sessions()) == len(CIDS) - 1
    assert log.session(c).recover().empty
    log.close()


def test_a_record_that_does_not_apply_keeps_the_session_aside(shm: Path) -> None:
    log = SharedLog(str(shm))
    a = log.session("a")
    sa = SessionState(client_id="a", clean_session=False)
    a.compact(sa)
    rec = sa.accept("t", b"one", 1)
    a.append([rec], sa, sync=True)
    a.append([rec], sa, sync=True)  # the same message twice: does not apply
    with pytest.raises(StateError, match="kept aside"):
        a.recover()
    assert not a.exists() and len(list((shm / "aside").iterdir())) == 2
    log.close()


def test_threads_with_rotations_and_lazy_records(shm: Path) -> None:
    log = SharedLog(str(shm), max_log_bytes=20_000)
    states = {f"c{i}": SessionState(client_id=f"c{i}", clean_session=False) for i in range(8)}
    views = {c: log.session(c, max_journal_bytes=1_500) for c in states}
    for c, v in views.items():
        v.compact(states[c])

    def run(c: str) -> None:
        rng, s, v = random.Random(c), states[c], views[c]
        for _ in range(150):
            a = s.accept("t", rng.randbytes(20), 1)
            v.append([a], s, sync=rng.random() < 0.5)
            if rng.random() < 0.5:
                v.append([s.send(a.message.seq)], s, sync=False, lazy=True)
            if v.needs_compaction:
                v.compact(s)
            if rng.random() < 0.1:
                v.sync_pending()

    threads = [threading.Thread(target=run, args=(c,)) for c in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and log._gen > 1
    log.close()
    log = SharedLog(str(shm))
    for c, s in states.items():
        assert codec.encode(log.session(c).recover()) == codec.encode(s), c
    log.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_log_deleted_or_replaced_while_open_is_rewritten_from_memory(shm: Path,
                                                                        how: str) -> None:
    """Issue 16: ``sessions.log`` deleted (or another file renamed over it) under a running
    gateway. The next durable append would sync into a file no restart reads: it fails with
    ``PersistenceError`` (its record is not kept) and the one after it rewrites the log from
    memory, every session in it; a restart finds them all."""
    log, (a, sa), (b, sb) = _two_sessions(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    durable_a = codec.encode(sa)
    if how == "deleted":
        (shm / LOG_NAME).unlink()
    else:
        (shm / "other").write_bytes(b"not ours")
        os.replace(shm / "other", shm / LOG_NAME)
    with pytest.raises(PersistenceError, match="deleted or replaced"):
        a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    sa = codec.decode(durable_a)  # the failed publish taken back, as the engine does
    a.append([sa.accept("t", b"three", 1)], sa, sync=True)
    assert (shm / LOG_NAME).read_bytes() != b"not ours"
    log.close()
    log = SharedLog(str(shm))
    assert sorted(log.sessions()) == ["a", "b"]
    assert codec.encode(log.session("a").recover()) == codec.encode(sa)
    assert codec.encode(log.session("b").recover()) == codec.encode(sb)
    log.close()


def _fail_write_atomic(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every rewrite of the log (``write_atomic``) fails with ENOSPC until undone; the list
    counts the attempts."""
    from mqttsession import sharedlog

    tries: list[int] = []

    def full(path: str, data: bytes, sync: bool = True) -> None:
        tries.append(len(data))
        raise PersistenceError(errno.ENOSPC, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(sharedlog, "write_atomic", full)
    return tries


def test_a_failed_rotation_leaves_the_log_growing_and_whole(
        shm: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A rotation that cannot write its new file (a full disk) is only logged: the old log
    stays in use, nothing is lost, and the next rotation, once the disk has room, works."""
    from mqttsession import rotating  # noqa: PLC0415

    gw = Gateway(shm, seed=5, max_log_bytes=20_000, max_journal_bytes=2_000)
    tries: list[int] = []

    def full(fd: int, data: bytes) -> None:
        tries.append(len(data))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rotating, "_write_all", full)  # (the rotation's thread writes)
    gen = gw.log._gen
    for _ in range(10):
        gw.run(100)
        _rotated(gw.log)
    assert tries and gw.log._gen == gen  # tried, and failed each time
    assert not list(shm.glob(f"{LOG_NAME}.tmp-*"))  # (its file deleted)
    assert (shm / LOG_NAME).stat().st_size > 20_000
    assert "rotation failed, it goes on growing" in caplog.text
    monkeypatch.undo()
    for _ in range(10):
        gw.run(100)
        _rotated(gw.log)
    assert gw.log._gen > gen
    gw.check()


def _rotated(log: SharedLog) -> None:
    """Wait for the rotation running in its thread, if one is."""
    r = log._rotation
    if r is not None:
        r.thread.join()


def test_a_failed_rebuild_raises_and_the_next_write_rebuilds(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fdatasync the log must be rewritten; when even that fails, the append
    raises and keeps nothing, and the first append once the disk has room rebuilds the log."""
    log, (a, sa), (b, sb) = _two_sessions(shm)
    a.append([sa.accept("t", b"one", 1)], sa, sync=True)
    durable_a = codec.encode(sa)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        a.append([sa.accept("t", b"two", 1)], sa, sync=True)
    sa = codec.decode(durable_a)
    tries = _fail_write_atomic(monkeypatch)
    before_b = codec.encode(sb)
    with pytest.raises(PersistenceError, match="No space left"):
        b.append([sb.accept("t", b"bee", 1)], sb, sync=True)
    assert tries
    sb = codec.decode(before_b)
    monkeypatch.undo()
    b.append([sb.accept("t", b"bee again", 1)], sb, sync=True)
    a.append([sa.accept("t", b"three", 1)], sa, sync=True)
    _reopened_holds(log, shm, sa, sb)


def _reopened_holds(log: SharedLog, shm: Path, sa: SessionState, sb: SessionState) -> None:
    """``log`` closed and opened again: sessions "a" and "b" are ``sa`` and ``sb``."""
    log.close()
    log = SharedLog(str(shm))
    assert codec.encode(log.session("a").recover()) == codec.encode(sa)
    assert codec.encode(log.session("b").recover()) == codec.encode(sb)
    log.close()


def _as_newer(text: bytes) -> bytes:
    """A snapshot text as a newer version may write it (a field this one does not know)."""
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    doc = json.loads(text)
    doc["state"]["a_newer_field"] = 1
    body = json.dumps(doc["state"], separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (f'{{"format":"mqttsession","version":4,"sha256":"{digest}","state":{body}}}'
            ).encode()


def test_a_gateway_session_of_a_newer_version_is_refused_and_stays(tmp_path: Path) -> None:
    """A session whose snapshot a newer mqttsession wrote: ``NewerFormatError`` at each start,
    the log unchanged, the session never kept aside; the other sessions are untouched. Before
    (a hunt): kept aside as damaged, and the next start restored it empty."""
    from mqttsession import NewerFormatError  # noqa: PLC0415
    from mqttsession.gateway import Gateway  # noqa: PLC0415
    from mqttsession.recovery import frame  # noqa: PLC0415

    with Gateway(tmp_path) as gw:
        for cid in ("a", "b"):
            c = gw.client(cid, clean_session=False)
            for n in range(3):
                c.publish_message("t", 1, f"{cid}{n}")
    log = tmp_path / LOG_NAME
    payloads, _valid, _ = read_frames(log.read_bytes())
    snaps = [i for i, p in enumerate(payloads) if b'"version":3' in p and b'"client_id":"a"' in p]
    payloads[snaps[-1]] = payloads[snaps[-1]][:5] + _as_newer(payloads[snaps[-1]][5:])
    log.write_bytes(b"".join(frame(p) for p in payloads))
    for _ in range(2):
        with Gateway(tmp_path) as gw:
            with pytest.raises(NewerFormatError, match="newer"):
                gw.client("a", clean_session=False)
            assert len(gw.client("b", clean_session=False).outgoing_messages) == 3
        assert not (tmp_path / "aside").exists() or not list((tmp_path / "aside").iterdir())
    assert read_frames(log.read_bytes())[0][:len(payloads)] == payloads


def test_a_session_whose_first_snapshot_failed_attaches_later_with_its_id(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Session "a" takes id 1 but its first snapshot fails (a full disk); "b" attaches with
    id 2, then "a" with id 1. A counter hunt: the next open refused the whole log as damaged
    ("attached twice": ids had to rise), every session of the gateway set aside."""
    log = SharedLog(str(shm))
    a, b = log.session("a"), log.session("b")
    sa = SessionState(client_id="a", clean_session=False)
    sb = SessionState(client_id="b", clean_session=False)
    real = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PersistenceError):
        a.compact(sa)
    monkeypatch.setattr(os, "write", real)
    b.compact(sb)
    b.append([sb.accept("t", b"b1", 1)], sb, sync=True)
    a.compact(sa)
    a.append([sa.accept("t", b"a1", 1)], sa, sync=True)
    _reopened_holds(log, shm, sa, sb)


def test_an_id_attached_twice_in_a_file_is_damage(shm: Path) -> None:
    from mqttsession.sharedlog import _ATTACH, _END, _HEADER, _SNAPSHOT, _tagged, parse

    snap = codec.encode(SessionState(client_id="a", clean_session=False)).encode()
    one = _HEADER + _tagged(_ATTACH, 2, b"a") + _tagged(_SNAPSHOT, 2, snap)
    sessions, next_sid, _ = parse(one + _tagged(_ATTACH, 1, b"b") + _tagged(_SNAPSHOT, 1, snap),
                                  StateError)
    assert sorted(sessions) == ["a", "b"] and next_sid == 3
    with pytest.raises(StateError, match="attached twice"):  # (an id ended is not used again)
        parse(one + _tagged(_END, 2, b"") + _tagged(_ATTACH, 2, b"b"), StateError)


def test_a_snapshot_of_another_client_id_under_a_sessions_name_is_state_error() -> None:
    """A gateway log's snapshot frame for session "a" that holds client id "b"'s state (damage
    that kept a valid CRC, a writer's id mixed up): ``StateError`` naming "b", never b's
    messages published under a's id (a mutation hunt: the cross-check was not pinned)."""
    from mqttsession.sessionlog import _SKIP, decode_session  # noqa: PLC0415

    b = SessionState()
    b.configure(client_id="b", clean_session=False, protocol_version=4)
    b.accept("t", b"b's", 1)
    snap = bytes(_SKIP) + codec.encode(b).encode("utf-8")
    assert decode_session("b", snap, []).client_id == "b"
    with pytest.raises(StateError, match="client id 'b'"):
        decode_session("a", snap, [])


def test_a_first_snapshot_torn_off_leaves_an_attach_a_later_one_replaces(shm: Path) -> None:
    """A session's first write (its attach and snapshot, one ``write``) torn inside the
    snapshot: the next start cuts the torn tail and keeps the attach, a whole frame. Before:
    once the session was written again (a new attach, a new id), the start after that found
    the client id "attached twice" and set the whole log aside as damaged, every other
    session with it (a hunt). Now the later attach replaces the one left without a
    snapshot; every session is there."""
    log = SharedLog(str(shm))
    states = {c: SessionState(client_id=c, clean_session=False) for c in ("a", "b", "new")}
    for c in ("a", "b"):
        states[c].accept("t", b"x" * 50, 1)
        log.session(c).compact(states[c])
    at = log.position()[1]
    log.session("new").compact(states["new"])
    log.close()
    data = (shm / LOG_NAME).read_bytes()
    attach = _frame_starts(data[at:])[1]  # (the snapshot's frame follows the attach)
    (shm / LOG_NAME).write_bytes(data[:at + attach + 10])  # torn 10 bytes into it
    log = SharedLog(str(shm))
    assert sorted(log.sessions()) == ["a", "b"]
    states["new"].accept("t", b"y", 1)
    log.session("new").compact(states["new"])
    log.close()
    log = SharedLog(str(shm))  # (this start raised StateError: "attached twice")
    try:
        assert sorted(log.sessions()) == ["a", "b", "new"]
        for c, state in states.items():
            assert codec.encode(log.session(c).recover()) == codec.encode(state), c
    finally:
        log.close()
    assert not list(shm.glob("*.damaged-*"))


def test_a_rotation_in_its_thread_carries_over_what_was_written_meanwhile(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotation writes the live frames to a new file in a thread of its own (before: inside
    the append that passed the bound, every writer stopped, an ``AsyncGateway``'s loop with
    them, for a write and two fsyncs). Held after writing its prefix, the writers go on:
    records, a fresh snapshot, a session that ends, one that is new; a sync of a record
    written meanwhile waits for the rotation and then covers it in the new file. Then every
    frame is where memory says, and a restart finds every session as it is."""
    from mqttsession import rotating  # noqa: PLC0415

    gw = Gateway(shm, seed=7, max_log_bytes=30_000)
    gw.run(300)
    _rotated(gw.log)
    started, go = threading.Event(), threading.Event()
    real = rotating._write_all

    def held(fd: int, data: bytes) -> None:
        real(fd, data)
        if not started.is_set():  # (the prefix: then wait)
            started.set()
            go.wait(10)

    monkeypatch.setattr(rotating, "_write_all", held)
    gen = gw.log._gen
    with gw.log._mutex:  # (as an append past the bound does)
        gw.log._rotate_soon(gw.log._size)
    assert started.wait(10)
    rng = random.Random(8)
    for _ in range(60):  # meanwhile: records of every session, written, not synced
        c = rng.choice(CIDS[1:])
        rec = step(rng, gw.states[c])
        if rec is not None:
            gw.views[c].append([rec], gw.states[c], sync=False, lazy=rng.random() < 0.3)
            gw.history[c].append((gw.log.position()[1], codec.encode(gw.states[c])))
    at = gw.log.position()
    synced: list[bool] = []
    c = CIDS[0]  # a fresh snapshot (it syncs), and a sync of what was written meanwhile
    snap = threading.Thread(target=gw.views[c].compact, args=(gw.states[c],))
    waiter = threading.Thread(target=lambda: synced.append(gw.log.sync_to(*at)))
    snap.start()
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive() and snap.is_alive()  # no sync while it runs
    assert not gw.log.is_synced(*at)
    go.set()
    _rotated(gw.log)
    waiter.join(10)
    snap.join(10)
    gw.history[c].append((gw.log.position()[1], codec.encode(gw.states[c])))
    assert synced and gw.log.is_synced(*at) and gw.log._gen == gen + 1
    data = (shm / LOG_NAME).read_bytes()
    for s in gw.log._sessions.values():  # (every frame where memory says)
        assert s.snap is not None and data[s.snap_at:s.snap_at + len(s.snap)] == s.snap
        for r, o in zip(s.recs, s.offs):
            assert data[o:o + len(r)] == r
    gw.run(100)
    gw.check()


def _rotation_named_not_synced(monkeypatch: pytest.MonkeyPatch
                               ) -> tuple[threading.Event, threading.Event]:
    """The rotation's directory fsync held until the second event; the first once reached."""
    from mqttsession import rotating  # noqa: PLC0415

    named, go = threading.Event(), threading.Event()
    real = rotating._fsync_dir

    def held(path: str) -> None:
        named.set()
        go.wait(10)
        real(path)

    monkeypatch.setattr(rotating, "_fsync_dir", held)
    return named, go


def test_nothing_the_rotation_carried_is_durable_before_its_name_is(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the rename and the directory's fsync a power cut may still find the old file,
    where the bytes up to S0 beyond its last fdatasync are not. A review: they counted as on
    disk from the rename (a ``sync_to`` of the append that passed the bound returned at once,
    also after the directory's fsync failed). Now a token not synced in the old file waits
    for that fsync; one synced there stays synced."""
    gw = Gateway(shm, seed=9, max_log_bytes=30_000)
    gw.run(300)
    _rotated(gw.log)
    synced_before = (gw.log._gen, gw.log._synced)
    c = CIDS[1]
    rec = step(random.Random(1), gw.states[c])
    assert rec is not None
    gw.views[c].append([rec], gw.states[c], sync=False)
    at = gw.log.position()  # (written, not synced)
    named, go = _rotation_named_not_synced(monkeypatch)
    with gw.log._mutex:
        gw.log._rotate_soon(gw.log._size)
    assert named.wait(10)  # renamed, its directory not synced yet
    assert gw.log._gen == at[0] + 1
    assert gw.log.is_synced(*synced_before) and not gw.log.is_synced(*at)
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(gw.log.sync_to(*at)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()
    go.set()
    waiter.join(10)
    _rotated(gw.log)
    assert gw.log.is_synced(*at)
    gw.check()


def test_a_failed_directory_fsync_of_a_rotation_fails_the_syncs_waiting(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotation's directory fsync fails (EIO): a sync waiting for it raises (a review: it
    was told durable), and the next write rebuilds the log, synced whole."""
    from mqttsession import rotating  # noqa: PLC0415

    gw = Gateway(shm, seed=10, max_log_bytes=30_000)
    gw.run(300)
    _rotated(gw.log)
    c = CIDS[2]
    rec = step(random.Random(2), gw.states[c])
    assert rec is not None
    gw.views[c].append([rec], gw.states[c], sync=False)
    at = gw.log.position()
    named, go = threading.Event(), threading.Event()

    def fails(path: str) -> None:
        named.set()
        go.wait(10)
        raise OSError(errno.EIO, "injected EIO")

    monkeypatch.setattr(rotating, "_fsync_dir", fails)
    with gw.log._mutex:
        gw.log._rotate_soon(gw.log._size)
    assert named.wait(10)
    got: list[BaseException] = []

    def wait() -> None:
        try:
            gw.log.sync_to(*at)
        except PersistenceError as exc:
            got.append(exc)
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    go.set()
    waiter.join(10)
    _rotated(gw.log)
    assert got and not gw.log.is_synced(*at)
    monkeypatch.undo()
    gw.views[c].compact(gw.states[c])  # (rebuilds the log first)
    gw.history[c].append((gw.log.position()[1], codec.encode(gw.states[c])))
    gw.check()


def test_a_rebuild_while_the_rotation_names_its_file_is_not_counted_synced(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write breaks the log while the rotation's directory fsync is pending; the next
    write rebuilds it (a newer incarnation, synced whole). A review: the rotation then marked
    its prefix's length synced in the REBUILT incarnation, so later records counted as on disk
    and ``sync_to`` made no fdatasync. Now only its own incarnation is marked."""
    from mqttsession import sharedlog  # noqa: PLC0415

    log = SharedLog(str(shm), max_log_bytes=1_000_000)
    a, b = (SessionState(client_id=c, clean_session=False) for c in "ab")
    va, vb = log.session("a"), log.session("b")
    va.compact(a)
    vb.compact(b)
    rng = random.Random(1)
    for _ in range(300):  # (a's records: most of what the rotation carries)
        if (rec := step(rng, a)) is not None:
            va.append([rec], a, sync=False)
    log.sync_to(*log.position())
    named, go = _rotation_named_not_synced(monkeypatch)
    with log._mutex:
        log._rotate_soon(log._size)
    rotation = log._rotation
    assert rotation is not None and named.wait(10)
    ended = threading.Thread(target=va.discard)  # (the live part shrinks below the prefix)
    ended.start()
    time.sleep(0.1)
    real = sharedlog._write_all
    calls: list[int] = []

    def once_full(fd: int, data: bytes, *args: int) -> None:
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real(fd, data, *args)

    monkeypatch.setattr(sharedlog, "_write_all", once_full)
    with pytest.raises(PersistenceError):
        vb.append([step(rng, b)], b, sync=False)  # type: ignore[list-item]
    monkeypatch.setattr(sharedlog, "_write_all", real)
    rebuilt = threading.Thread(target=vb.compact, args=(b,))  # (rebuilds the log first)
    rebuilt.start()
    time.sleep(0.1)
    go.set()
    for t in (rotation.thread, ended, rebuilt):
        t.join(10)
    for _ in range(20):
        if (rec := step(rng, b)) is not None:
            vb.append([rec], b, sync=False)
    at = log.position()
    assert not log.is_synced(*at)
    assert log.sync_to(*at)  # (it ran the fdatasync)
    va.close()
    vb.close()
    log.close()


def test_a_sync_that_lingered_across_a_rotation_syncs_the_new_file(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``sync_to`` lingering (its commit delay, outside every lock) while a rotation
    switches files. A review: it raised "a failed sync ... cut the record" although nothing
    failed (its token, of the old incarnation, was looked at unmapped). Now it waits for the
    rotation, whose prefix (synced, and named) holds it."""
    log = SharedLog(str(shm), max_log_bytes=1_000_000)
    st = SessionState(client_id="c", clean_session=False)
    v = log.session("c")
    v.compact(st)
    rng = random.Random(1)
    for _ in range(50):
        if (rec := step(rng, st)) is not None:
            v.append([rec], st, sync=False)
    log.sync_to(*log.position())
    v.append([step(rng, st)], st, sync=False)  # type: ignore[list-item]
    at = log.position()
    named, go = _rotation_named_not_synced(monkeypatch)
    got: list[object] = []

    def syncer() -> None:
        try:
            got.append(log.sync_to(*at, linger=0.3))
        except PersistenceError as exc:
            got.append(exc)
    t = threading.Thread(target=syncer)
    t.start()
    time.sleep(0.05)  # (it lingers)
    with log._mutex:
        log._rotate_soon(log._size)
    rotation = log._rotation
    assert rotation is not None and named.wait(10)
    time.sleep(0.35)  # (its linger over: it looks again, the directory not yet synced)
    go.set()
    t.join(10)
    rotation.thread.join(10)
    assert got in ([True], [False]) and log.is_synced(*at)  # (False: the prefix's sync did)
    v.close()
    log.close()
