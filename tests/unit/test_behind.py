"""``behind.SyncBehind``: a threaded Client's read-batch syncs on one sync thread, shared by
the batches that end while one runs (no network, real threads)."""

from __future__ import annotations

import threading

import pytest

from mqttsession.behind import SyncBehind


class _Disk:
    """A ``sync_pending`` that counts its calls and waits for ``gate`` while ``stuck``."""

    def __init__(self) -> None:
        self.calls = 0
        self.stuck = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail: BaseException | None = None

    def sync(self) -> None:
        self.calls += 1
        self.entered.set()
        if self.stuck:
            assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail


def test_batches_ending_while_a_sync_runs_share_the_next_one() -> None:
    disk, woken = _Disk(), threading.Semaphore(0)
    behind = SyncBehind(disk.sync)
    disk.stuck = True
    first = behind.request(woken.release)
    assert first is not None and disk.entered.wait(10)
    second, third = behind.request(woken.release), behind.request(woken.release)
    assert second is not None and second is third and second is not first
    assert not first.done() and not second.done()
    disk.gate.set()
    assert second.result(10) is None and first.result(10) is None
    assert disk.calls == 2, "one sync for the two batches that waited"
    for _ in range(3):  # each caller woken (a later one may read another connection)
        assert woken.acquire(timeout=10)
    behind.stop()


def test_a_failed_sync_fails_the_batches_that_share_it() -> None:
    disk = _Disk()
    disk.fail = OSError(5, "EIO")
    behind = SyncBehind(disk.sync)
    fut = behind.request(lambda: None)
    assert fut is not None
    with pytest.raises(OSError):
        fut.result(10)
    disk.fail = None
    again = behind.request(lambda: None)
    assert again is not None and again.result(10) is None
    behind.stop()


def test_stop_waits_for_the_sync_under_way_then_refuses() -> None:
    disk = _Disk()
    disk.stuck = True
    behind = SyncBehind(disk.sync)
    fut = behind.request(lambda: None)
    assert fut is not None and disk.entered.wait(10)
    stopper = threading.Thread(target=behind.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while the sync ran"
    disk.gate.set()
    stopper.join(10)
    assert not stopper.is_alive() and fut.done()
    assert behind.request(lambda: None) is None, "a stopped one syncs nothing more"


def test_the_sync_thread_is_made_at_the_first_request_only() -> None:
    before = {t.name for t in threading.enumerate()}
    behind = SyncBehind(lambda: None)
    assert {t.name for t in threading.enumerate()} == before
    fut = behind.request(lambda: None)
    assert fut is not None and fut.result(10) is None
    behind.stop()
    behind.stop()  # (twice: nothing more)
