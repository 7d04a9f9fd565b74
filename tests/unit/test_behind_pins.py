"""Rules of ``behind.SyncBehind`` and of ``hosting`` (``raise_fd_limit``, ``SyncThread``,
``DaemonPool``, ``StoreSync``, ``report_cancelled``) that a mutation hunt found no test pinned:
pure, real threads and asyncio loops, a stand-in sync, store, driver and ``resource``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import mqttsession.hosting as hosting
from mqttsession.behind import SyncBehind
from mqttsession.errors import PersistenceError, UsageError
from mqttsession.hosting import DaemonPool, StoreSync, SyncThread, raise_fd_limit


class _Disk:
    """A ``sync_pending``: the n-th call sets ``entered[n]`` then waits for ``gates[n]``
    (set already unless held); raises ``fail`` when set."""

    def __init__(self, held: int = 0) -> None:
        self.calls = 0
        self.entered = [threading.Event() for _ in range(4)]
        self.gates = [threading.Event() for _ in range(4)]
        for g in self.gates[held:]:
            g.set()
        self.fail: BaseException | None = None

    def sync(self) -> None:
        n = self.calls
        self.calls += 1
        self.entered[n].set()
        assert self.gates[n].wait(10)
        if self.fail is not None:
            raise self.fail


def test_one_sync_runs_at_a_time() -> None:
    """A batch that ends while a sync runs waits for it: its own sync starts only after."""
    disk = _Disk(held=1)
    behind = SyncBehind(disk.sync)
    first = behind.request(lambda: None)
    assert first is not None and disk.entered[0].wait(10)
    second = behind.request(lambda: None)
    assert second is not None
    assert not disk.entered[1].wait(0.3), "a second sync began while the first ran"
    disk.gates[0].set()
    assert first.result(10) is None and second.result(10) is None
    assert disk.calls == 2
    behind.stop()


def test_a_cancelled_request_runs_no_sync() -> None:
    """The next sync, cancelled before it began (its batches gone), is skipped."""
    disk = _Disk(held=1)
    behind = SyncBehind(disk.sync)
    first = behind.request(lambda: None)
    assert first is not None and disk.entered[0].wait(10)
    second = behind.request(lambda: None)
    assert second is not None and second.cancel()
    disk.gates[0].set()
    assert first.result(10) is None
    third = behind.request(lambda: None)
    assert third is not None and third.result(10) is None
    assert disk.calls == 2, "the cancelled one synced"
    behind.stop()


def test_a_sync_raising_a_base_exception_still_answers_its_batches() -> None:
    """Not only an ``Exception``: whatever the sync raised is each waiting batch's."""
    disk = _Disk()
    disk.fail = KeyboardInterrupt()
    behind = SyncBehind(disk.sync)
    fut = behind.request(lambda: None)
    assert fut is not None
    with pytest.raises(KeyboardInterrupt):
        fut.result(5)
    behind.stop()


class _Rlimit:
    """``resource``'s getrlimit/setrlimit on a stand-in (soft, hard) limit."""

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.sets: list[tuple[int, int]] = []

    def get(self, _which: int) -> tuple[int, int]:
        return self.limits

    def set(self, _which: int, limits: tuple[int, int]) -> None:
        self.sets.append(limits)
        self.limits = limits


@pytest.fixture
def rlimit(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import resource  # noqa: PLC0415

    def make(soft: int, hard: int) -> _Rlimit:
        r = _Rlimit(soft, hard)
        monkeypatch.setattr(resource, "getrlimit", r.get)
        monkeypatch.setattr(resource, "setrlimit", r.set)
        return r
    monkeypatch.setattr(hosting, "_FD_WARNED", [])
    yield make


def test_a_limit_just_enough_is_left_alone(rlimit: Any) -> None:
    r = rlimit(256, 512)
    assert raise_fd_limit(256) == 256
    assert r.sets == []


def test_an_unlimited_soft_limit_is_left_alone(rlimit: Any) -> None:
    """RLIM_INFINITY (no limit): nothing set, ``needed`` returned (not -1)."""
    import resource  # noqa: PLC0415
    inf = resource.RLIM_INFINITY
    r = rlimit(inf, inf)
    assert raise_fd_limit(5000) == 5000
    assert r.sets == []


def test_an_unlimited_hard_limit_is_never_refused(rlimit: Any) -> None:
    import resource  # noqa: PLC0415
    rlimit(1024, resource.RLIM_INFINITY)
    raise_fd_limit(5000, 3000)


def test_an_unlimited_hard_limit_raises_the_soft_one_to_what_is_needed(rlimit: Any) -> None:
    """No hard limit (BSD's, macOS's): the soft one raised to ``needed``, a finite value
    (those refuse an unlimited soft limit on open files), the hard one left unlimited. Before,
    ``soft >= hard`` held for RLIM_INFINITY (-1): the soft limit was said to be the hard one
    and never raised (a mutation hunt)."""
    import resource  # noqa: PLC0415
    inf = resource.RLIM_INFINITY
    r = rlimit(1024, inf)
    assert raise_fd_limit(5000, 3000) == 5000
    assert r.sets == [(5000, inf)]


def test_a_hard_limit_just_enough_is_not_refused(rlimit: Any) -> None:
    r = rlimit(256, 512)
    assert raise_fd_limit(1800, 512) == 512
    assert r.sets == [(512, 512)]


def test_needed_is_what_cannot_do_without_by_default(rlimit: Any) -> None:
    rlimit(256, 512)
    with pytest.raises(UsageError, match="600 file descriptors are needed"):
        raise_fd_limit(600)


def test_at_the_hard_limit_the_warning_is_said_once(rlimit: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    r = rlimit(512, 512)
    with caplog.at_level("WARNING", logger="mqttsession"):
        assert raise_fd_limit(1800, 300) == 512
        assert raise_fd_limit(1900, 300) == 512
    warned = [m for m in caplog.messages if "is the hard limit" in m]
    assert len(warned) == 1, warned
    assert r.sets == []


def test_the_sync_thread_runs_one_sync_at_a_time() -> None:
    """Two sessions' fdatasyncs never run at once (one thread, the disk's order)."""
    entered = [threading.Event(), threading.Event()]
    gate = threading.Event()

    def first() -> None:
        entered[0].set()
        assert gate.wait(10)

    async def main() -> None:
        syncs = SyncThread()
        try:
            a = syncs(first)
            b = syncs(entered[1].set)
            assert await asyncio.to_thread(entered[0].wait, 10)
            assert not await asyncio.to_thread(entered[1].wait, 0.3), "two syncs at once"
            gate.set()
            await asyncio.wait_for(asyncio.gather(a, b), 10)
        finally:
            gate.set()
            syncs.close()
    asyncio.run(main())


def test_the_sync_threads_close_waits_for_the_sync_under_way() -> None:
    gate, ended = threading.Event(), threading.Event()

    def sync() -> None:
        assert gate.wait(10)
        ended.set()

    async def main() -> None:
        syncs = SyncThread()
        fut = syncs(sync)
        closer = threading.Thread(target=syncs.close)
        closer.start()
        closer.join(0.2)
        assert closer.is_alive(), "close() returned while a sync ran"
        gate.set()
        closer.join(10)
        assert ended.is_set() and not closer.is_alive()
        await asyncio.wait_for(fut, 10)
    asyncio.run(main())


def _pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}_")]


def test_the_daemon_pools_threads_are_daemons_and_end_at_shutdown() -> None:
    """Two busy at once: two threads, daemons (a connect never holds the exit); each ends
    once shut down, after the jobs queued before."""
    pool = DaemonPool(4, "pin-daemons")
    gate = threading.Event()
    a, b = pool.submit(gate.wait, 10), pool.submit(gate.wait, 10)
    threads = _pool_threads("pin-daemons")
    assert len(threads) == 2 and all(t.daemon for t in threads)
    pool.shutdown(wait=False)
    gate.set()
    assert a.result(10) is True and b.result(10) is True
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a pool thread left running after shutdown"


def test_the_daemon_pool_refuses_jobs_after_shutdown() -> None:
    pool = DaemonPool(2, "pin-refuse")
    assert pool.submit(lambda: 7).result(10) == 7
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: 8)


def test_the_daemon_pool_reuses_an_idle_thread() -> None:
    """One job after another: one thread, not one a job (up to ``size``)."""
    pool = DaemonPool(4, "pin-idle")
    try:
        for n in range(3):
            assert pool.submit(lambda n=n: n).result(10) == n
            t, = _pool_threads("pin-idle")
            for _ in range(1000):  # (its job's future is set before it counts itself idle)
                with pool._lock:  # noqa: SLF001
                    if pool._idle == 1:  # noqa: SLF001
                        break
                threading.Event().wait(0.005)
        assert len(_pool_threads("pin-idle")) == 1
    finally:
        pool.shutdown(wait=False)


def test_the_daemon_pool_starts_a_thread_once_its_idle_one_is_taken() -> None:
    """An idle thread takes one job; the next, while it runs, gets a thread of its own (the
    two here wait for each other: run one after the other, neither ends)."""
    pool = DaemonPool(4, "pin-taken")
    try:
        assert pool.submit(lambda: 1).result(10) == 1
        for _ in range(1000):
            with pool._lock:  # noqa: SLF001
                if pool._idle == 1:  # noqa: SLF001
                    break
            threading.Event().wait(0.005)
        first, second = threading.Event(), threading.Event()
        a = pool.submit(lambda: (first.set(), second.wait(10))[1])
        b = pool.submit(lambda: (second.set(), first.wait(10))[1])
        assert a.result(15) is True and b.result(15) is True
    finally:
        pool.shutdown(wait=False)


def test_a_cancelled_job_is_skipped_and_its_thread_runs_on() -> None:
    pool = DaemonPool(1, "pin-cancel")
    try:
        gate, ran = threading.Event(), threading.Event()
        busy = pool.submit(gate.wait, 10)
        queued = pool.submit(ran.set)
        assert queued.cancel()
        gate.set()
        assert busy.result(10) is True
        assert pool.submit(lambda: 3).result(10) == 3, "the thread died on the cancelled job"
        assert not ran.is_set()
    finally:
        pool.shutdown(wait=False)


def test_a_jobs_base_exception_goes_to_its_future() -> None:
    pool = DaemonPool(1, "pin-base")
    try:
        def interrupted() -> None:
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            pool.submit(interrupted).result(5)
        assert pool.submit(lambda: 4).result(10) == 4
    finally:
        pool.shutdown(wait=False)


class _Log:
    """A ``SharedLog`` for ``StoreSync``: the n-th ``sync_to`` sets ``entered[n]``, waits for
    ``gates[n]`` (set unless held); fails (EIO) when n is in ``fails``, having made durable
    up to ``partial`` first; with ``cut`` it returns without making anything durable."""

    def __init__(self, held: int = 0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.entered = [threading.Event() for _ in range(4)]
        self.gates = [threading.Event() for _ in range(4)]
        for g in self.gates[held:]:
            g.set()
        self.fails: set[int] = set()
        self.partial = -1
        self.cut = False
        self.synced: dict[int, int] = {}

    def sync_to(self, gen: int, pos: int) -> None:
        n = len(self.calls)
        self.calls.append((gen, pos))
        self.entered[n].set()
        assert self.gates[n].wait(10)
        if n in self.fails:
            self.synced[gen] = max(self.synced.get(gen, -1), self.partial)
            raise OSError(5, "injected EIO")
        if not self.cut:
            self.synced[gen] = max(self.synced.get(gen, -1), pos)

    def is_synced(self, gen: int, pos: int) -> bool:
        return pos <= self.synced.get(gen, -1)


class _Driver:
    """What ``StoreSync`` calls of a session's driver."""

    def __init__(self) -> None:
        self.released = 0
        self.answered: list[tuple[tuple[tuple[int, int, int], ...], Exception | None]] = []

    def release_then(self, then: Any) -> None:
        self.released += 1
        then()

    def answer(self, answers: Any) -> None:
        for tokens, waiter, res in answers:
            self.answered.append((tokens, res))
            if not waiter.done():
                waiter.set_result(res)


def _run_store(test: Any, log: _Log) -> None:
    async def main() -> None:
        executor = ThreadPoolExecutor(1)
        try:
            await asyncio.wait_for(test(StoreSync(log, executor), executor), 20)  # type: ignore[arg-type]
        finally:
            for g in log.gates:
                g.set()
            executor.shutdown(wait=True)
    asyncio.run(main())


async def _entered(log: _Log, n: int) -> None:
    assert await asyncio.to_thread(log.entered[n].wait, 10), f"sync {n} never began"


def test_store_sync_waits_during_a_sync_share_the_next_one() -> None:
    """Group commit: one job at a time; the waits that come while it runs share the next one,
    which syncs to the furthest record of any of them (of the latest incarnation)."""
    log = _Log(held=1)
    d1, d2 = _Driver(), _Driver()

    async def test(s: StoreSync, _executor: Any) -> None:
        a = s.wait_held(d1, ((0, 1, 10),))  # type: ignore[arg-type]
        await _entered(log, 0)
        b = s.wait_held(d2, ((0, 1, 50),))  # type: ignore[arg-type]
        c = s.wait_held(d1, ((0, 1, 20),))  # type: ignore[arg-type]
        assert log.calls == [(1, 10)], "a second job while one ran"
        job = s.pending(d1)
        assert job is not None and s.pending(d2) is job, "d2's wait is the next job's"
        assert s.pending(_Driver()) is None  # type: ignore[arg-type]
        log.gates[0].set()
        assert await asyncio.gather(a, b, c) == [None, None, None]
        assert log.calls == [(1, 10), (1, 50)]
        assert s.pending(d1) is None and s.pending(d2) is None
    _run_store(test, log)


def test_store_sync_syncs_to_the_latest_incarnation() -> None:
    log = _Log(held=1)
    d = _Driver()

    async def test(s: StoreSync, _executor: Any) -> None:
        first = s.wait_held(d, ((0, 1, 10),))  # type: ignore[arg-type]
        await _entered(log, 0)
        rest = [s.wait_held(d, ((0, 2, 5),)), s.wait_held(d, ((0, 1, 900),))]  # type: ignore[arg-type]
        log.gates[0].set()
        await asyncio.gather(first, *rest)
        assert log.calls == [(1, 10), (2, 5)]
    _run_store(test, log)


def test_store_sync_a_wait_for_several_records_waits_for_the_last() -> None:
    log = _Log()
    d = _Driver()

    async def test(s: StoreSync, _executor: Any) -> None:
        assert await s.wait_held(d, ((0, 1, 10), (1, 1, 50))) is None  # type: ignore[arg-type]
        assert log.calls == [(1, 50)]
    _run_store(test, log)


def test_store_sync_a_failed_sync_is_reported_to_each_wait_it_covered_and_no_other() -> None:
    """The error itself (not a generic one) to each wait of the failed job; the waits of the
    job before, durable, get None; a record the failed sync made durable all the same is
    released (its session's durable messages out first)."""
    log = _Log(held=1)
    log.fails, log.partial = {1}, 20
    d1, d2 = _Driver(), _Driver()

    async def test(s: StoreSync, _executor: Any) -> None:
        a = s.wait_held(d1, ((0, 1, 10),))  # type: ignore[arg-type]
        await _entered(log, 0)
        covered = s.wait_held(d2, ((0, 1, 20),))  # type: ignore[arg-type]
        durable = s.wait_held(d1, ((0, 1, 18),))  # type: ignore[arg-type]
        b = s.wait_held(d1, ((0, 1, 15), (1, 1, 40)))  # type: ignore[arg-type]
        c = s.wait_held(d1, ((0, 1, 50),))  # type: ignore[arg-type]
        log.gates[0].set()
        assert await a is None and await covered is None and await durable is None
        errs = await asyncio.gather(b, c)
        assert all(isinstance(e, OSError) and e.errno == 5 for e in errs), errs
        assert errs[0] is errs[1]
        assert d1.released == 2, "d1 had a durable message in the failed job's batch too"
        assert d2.released == 1
    _run_store(test, log)


def test_store_sync_a_job_whose_record_the_sync_left_out_fails_its_wait() -> None:
    """A sync that returned but did not make the record durable (the incarnation cut): the
    wait fails, never released."""
    log = _Log()
    log.cut = True
    d = _Driver()

    async def test(s: StoreSync, _executor: Any) -> None:
        err = await s.wait_held(d, ((0, 1, 10),))  # type: ignore[arg-type]
        assert isinstance(err, PersistenceError) and "cut the record" in str(err)
        assert d.released == 0
    _run_store(test, log)


def test_store_sync_a_job_that_never_ran_fails_its_waits() -> None:
    """The executor shut down with the job queued: each wait gets a ``PersistenceError``
    saying so."""
    log = _Log()
    d = _Driver()

    async def test(s: StoreSync, executor: Any) -> None:
        gate = threading.Event()
        executor.submit(gate.wait, 10)
        fut = s.wait_held(d, ((0, 1, 10),))  # type: ignore[arg-type]
        executor.shutdown(wait=False, cancel_futures=True)
        gate.set()
        err = await fut
        assert isinstance(err, PersistenceError) and "did not run" in str(err)
        assert log.calls == []
    _run_store(test, log)


class _Reported:
    """A driver's ``error`` (its session's on_error), recorded."""

    def __init__(self) -> None:
        self.errors: list[tuple[int, str]] = []

    def error(self, code: int, text: str) -> None:
        self.errors.append((code, text))


def test_report_cancelled_reports_each_failure_to_its_messages_session() -> None:
    """A cancelled ``publish_many``: each error now, and each disk-queue batch's that fails
    later, to its message's session (its errno, else -1); a batch that ends well or is
    cancelled says nothing (and raises nothing in the loop)."""
    d1, d2 = _Reported(), _Reported()
    drivers = {0: d1, 1: d2, 2: d1, 3: d2, 4: d2}

    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        raised: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _l, ctx: raised.append(ctx))
        failing, fine, cancelled = (loop.create_future() for _ in range(3))
        hosting.report_cancelled({0: OSError(28, "no space"), 1: PersistenceError(None, "gone")},
                                 [(2, failing), (3, fine), (4, cancelled)],
                                 lambda i: drivers[i])  # type: ignore[arg-type,return-value]
        assert d1.errors == [(28, "publish_many (cancelled): [Errno 28] no space")]
        assert [code for code, _ in d2.errors] == [-1]
        failing.set_exception(OSError(5, "EIO"))
        fine.set_result([1])
        cancelled.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        return raised

    assert asyncio.run(main()) == []
    assert [code for code, _ in d1.errors] == [28, 5]
    assert len(d2.errors) == 1


class _SettlingDriver(_Driver):
    """A driver for ``StoreSync.settle``: its ``take_back``s recorded, each job the future
    in ``backs`` (done at once unless ``hold``); ``orphan``ed jobs recorded."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.settling = 0
        self.hold = hold
        self.taken: list[tuple[tuple[int, int, int], Exception | None]] = []
        self.orphaned: list[tuple[Any, int]] = []

    def take_back(self, token: tuple[int, int, int], err: Exception | None,
                  *_args: Any, **_kwargs: Any) -> asyncio.Future[None]:
        self.taken.append((token, err))
        job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.hold:
            job.set_result(None)
        return job

    def orphan(self, job: Any, seq: int) -> None:
        self.orphaned.append((job, seq))


class _C:
    def __init__(self, driver: _SettlingDriver) -> None:
        self._driver = driver


def test_settle_takes_back_only_what_its_failed_sync_left_out() -> None:
    """``publish_many``'s held messages after a failed sync of the last one: one it made
    durable all the same is released, one it left out waits for a sync of its own (here
    good: nothing taken back), the last is taken back with the error."""
    log = _Log()
    log.fails, log.partial = {0}, 10
    d1, d2 = _SettlingDriver(), _SettlingDriver()
    c1, c2 = _C(d1), _C(d2)

    async def test(s: StoreSync, _executor: Any) -> None:
        ids: list[int | None] = [1, 2, 3]
        errors: dict[int, Exception] = {}
        await s.settle([(0, c1, (0, 1, 10)), (1, c2, (0, 1, 20)), (2, c1, (0, 1, 30))],  # type: ignore[list-item]
                       ids, errors)
        assert log.calls == [(1, 30), (1, 20)]
        assert d1.taken == [((0, 1, 30), d1.taken[0][1])] and isinstance(d1.taken[0][1], OSError)
        assert d2.taken == []
        assert errors == {} and ids == [1, 2, 3]
        assert d1.settling == 0 and d2.settling == 0
    _run_store(test, log)


def test_settle_cancelled_while_a_take_back_runs_orphans_it() -> None:
    """Cancelled while a failed message's take-back rewrites the file: the job goes to its
    session (``orphan``: its error to on_error), not lost."""
    log = _Log()
    log.fails = {0}
    d = _SettlingDriver(hold=True)
    c = _C(d)

    async def test(s: StoreSync, _executor: Any) -> None:
        task = asyncio.ensure_future(s.settle([(0, c, (7, 1, 30))], [1], {}))  # type: ignore[list-item]
        for _ in range(200):
            if d.taken:
                break
            await asyncio.sleep(0.01)
        assert d.taken, "never taken back"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(d.orphaned) == 1 and d.orphaned[0][1] == 7
        assert d.settling == 0
    _run_store(test, log)


def test_settle_releases_each_session_once() -> None:
    """The last message's sync covered them all: each session's held messages released by
    one ``release_then`` (in order), not one a message."""
    log = _Log()
    d1, d2 = _SettlingDriver(), _SettlingDriver()
    c1, c2 = _C(d1), _C(d2)

    async def test(s: StoreSync, _executor: Any) -> None:
        await s.settle([(0, c2, (0, 1, 10)), (1, c2, (0, 1, 20)), (2, c1, (0, 1, 30))],  # type: ignore[list-item]
                       [1, 2, 3], {})
        assert log.calls == [(1, 30)]
        assert d1.released == 1 and d2.released == 1
        assert d1.taken == [] and d2.taken == []
    _run_store(test, log)


def test_settle_cancelled_while_a_message_waits_leaves_it_to_that_sync() -> None:
    """Cancelled while a message waits for a sync of its own: that sync's answer settles it,
    once (no second wait made for it)."""
    log = _Log()
    log.fails = {0}
    log.gates[1].clear()
    d = _SettlingDriver()
    c = _C(d)

    async def test(s: StoreSync, _executor: Any) -> None:
        task = asyncio.ensure_future(s.settle([(0, c, (0, 1, 10)), (1, c, (0, 1, 30))],  # type: ignore[list-item]
                                              [1, 2], {}))
        await _entered(log, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        log.gates[1].set()
        for _ in range(500):  # every sync asked for done
            if d.answered and s.pending(d) is None:  # type: ignore[arg-type]
                break
            await asyncio.sleep(0.01)
        assert [t for t, _ in d.answered].count(((0, 1, 10),)) == 1, d.answered
        assert log.calls == [(1, 30), (1, 10)]
    _run_store(test, log)
