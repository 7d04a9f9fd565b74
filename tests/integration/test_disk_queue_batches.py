"""Publishes bound for the disk queue under ``SessionSync=always`` share fdatasyncs
(``combining.Combiner``): from several threads, and concurrent ``AsyncSession.publish`` calls,
stored as one batch each (one record, one write, one fdatasync), the asyncio ones off the
event loop; a batch that fails is stored again one message at a time, so each publish meets
its own fate. Before, each such publish paid one fdatasync whatever the concurrency (16
threads: 1.0 a message), and an ``AsyncSession``'s paid it on its loop."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, Options
from mqttsession import spool as spool_mod
from mqttsession.errors import PersistenceError, UsageError
from mqttsession.testing.fsyncs import FsyncCounter

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

THREADS, EACH, IN_MEMORY = 8, 100, 10


class _Counting(FsyncCounter):
    """The disk queue's fdatasyncs, with the threads that ran them; ``fail`` of them raise
    EIO (the first ones after it is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.fail = 0

    def fdatasync(self, fd: int) -> None:
        self.threads.add(threading.get_ident())
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)


def _batches_tried(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes (in calls) of the batches of several calls the combiner tries to store; the
    thread that stores first waits (up to half a second) for every publisher under way, so
    that a batch of several forms whatever the machine's load."""
    from mqttsession import combining  # noqa: PLC0415
    from mqttsession.driver import Driver  # noqa: PLC0415

    monkeypatch.setattr(Driver, "sync_time", lambda _self: 1.0)

    tried: list[int] = []
    real = combining._attempt

    def attempt(store: Any, entries: list[Any], batch: bool) -> Any:
        if batch:
            tried.append(len(entries))
        return real(store, entries, batch)
    monkeypatch.setattr(combining, "_attempt", attempt)
    return tried


async def _full_sessions(gw: Any, n: int, in_memory: int = IN_MEMORY) -> list[AsyncSession]:
    """``n`` sessions of the ``AsyncGateway`` ``gw``, offline, ``always``, each holding
    ``in_memory`` messages ("first"): their next publishes go to their disk queues."""
    sessions = [await gw.session(f"dev{i}", Options(address="127.0.0.1:1"),
                                 session_sync="always", connect=False) for i in range(n)]
    for s in sessions:
        await s.config(f"QueueInMemory={in_memory}")
        for _ in range(in_memory):
            await s.publish("t", b"first", 1)
    return sessions


def _client(path: Path, cid: str) -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"QueueInMemory={IN_MEMORY}")
    c.config("QueueSegmentBytes=8192")
    return c


def _held(path: Path, cid: str) -> list[bytes]:
    c = _client(path, cid)
    try:
        c.restore_session("")
        return [m.message for m in c.outgoing_messages]
    finally:
        c.close()


def test_threads_publishing_into_the_disk_queue_share_fdatasyncs(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads publishing offline past ``QueueInMemory``: well under one fdatasync a
    message (was 1.0), every message in the session once, each thread's in its order; then
    each goes out once (QoS 2 exactly once)."""
    tag = _procs.unique("dqb")
    cid = _procs.unique("dqb")
    c = _client(tmp_path / "s", cid)
    c.restore_session("")
    for n in range(IN_MEMORY):  # memory full: the threads' messages go to the disk queue
        c.publish_data(f"mqs/{tag}", 1, _procs.payload(tag, 100000 + n).encode())
    counting = _Counting()
    monkeypatch.setattr(spool_mod, "os", counting)

    def worker(k: int) -> None:
        for i in range(EACH):
            n = k * EACH + i
            c.publish_data(f"mqs/{tag}", 1 + n % 2, _procs.payload(tag, n).encode())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = THREADS * EACH
    per_message = counting.syncs / total
    print(f"disk queue: {THREADS} threads, {per_message:.3f} fdatasync per message")
    assert per_message < 0.5, per_message
    monkeypatch.setattr(spool_mod, "os", os)
    held = [_procs.number_of(tag, m.message) for m in c.outgoing_messages]
    c.close()
    mine = [n for n in held if n is not None and n < 100000]
    assert sorted(mine) == list(range(total))  # each once
    for k in range(THREADS):  # a thread's publishes in the order it made them
        assert [n for n in mine if n // EACH == k] == list(range(k * EACH, (k + 1) * EACH))
    counter = _procs.Counter(mosquitto.host, mosquitto.port, f"mqs/{tag}")
    c = _client(tmp_path / "s", cid)
    try:
        c.restore_session("")
        c.connect(mosquitto.host, mosquitto.port)
        assert c.flush(60) is True
        counter.wait_numbers(tag, range(total))
        assert all(counter.counts(tag)[n] == 1 for n in range(total) if n % 2)
    finally:
        counter.close()
        c.close()


def test_a_failed_batch_is_stored_one_by_one_and_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fdatasync of a batch fails (EIO): the batch is taken back and each of its messages
    stored alone; every publish that returned is in the session once, and a restart finds
    exactly those (no copy of the failed batch's)."""
    c = _client(tmp_path / "s", "dqb-fail")
    c.restore_session("")
    for n in range(IN_MEMORY):
        c.publish_data("t", 1, f"m{n}".encode())
    counting = _Counting()
    monkeypatch.setattr(spool_mod, "os", counting)
    returned: list[bytes] = []
    failed: list[BaseException] = []
    lock, go = threading.Lock(), threading.Barrier(THREADS)

    def worker(k: int) -> None:
        go.wait()
        for i in range(20):
            data = f"t{k}-{i}".encode()
            try:
                c.publish_data("t", 1, data)
            except PersistenceError as exc:
                with lock:
                    failed.append(exc)
                continue
            with lock:
                returned.append(data)

    counting.fail = 3
    tried = _batches_tried(monkeypatch)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.fail == 0  # the faults were met
    assert tried and max(tried) > 1  # (batches of several calls were tried)
    monkeypatch.setattr(spool_mod, "os", os)
    held = [m.message for m in c.outgoing_messages][IN_MEMORY:]
    c.close()
    assert sorted(held) == sorted(returned)  # told stored: there, once; told failed: not
    assert len(returned) + len(failed) == THREADS * 20
    assert sorted(_held(tmp_path / "s", "dqb-fail")[IN_MEMORY:]) == sorted(returned)


def test_concurrent_asyncio_publishes_into_the_disk_queue_share_fdatasyncs_off_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds of 100 concurrent ``AsyncSession.publish`` calls past ``QueueInMemory``,
    offline: a handful of fdatasyncs a round (was 100), none on the event loop's thread;
    every message stored once, in the order the calls were made; then each goes out."""
    tag = _procs.unique("dqa")
    counting = _Counting()
    loop_thread: list[int] = []

    async def main() -> list[int]:
        loop_thread.append(threading.get_ident())
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        s = AsyncSession(opts, client_id=tag, state_file=str(tmp_path / "a"),
                         session_sync="always")
        await s.start(connect=False)
        await s.config(f"QueueInMemory={IN_MEMORY}")
        try:
            for n in range(IN_MEMORY):
                await s.publish(f"mqs/{tag}", _procs.payload(tag, 100000 + n), 1)
            monkeypatch.setattr(spool_mod, "os", counting)
            for r in range(3):
                await asyncio.gather(*(s.publish(f"mqs/{tag}", _procs.payload(tag, r * 100 + n),
                                                 1 + n % 2) for n in range(100)))
            monkeypatch.setattr(spool_mod, "os", os)
            held = [_procs.number_of(tag, m.message) for m in s.client.outgoing_messages]
            await s.connect()
            assert await s.flush(60)
            return held
        finally:
            await s.close()

    counter = _procs.Counter(mosquitto.host, mosquitto.port, f"mqs/{tag}")
    try:
        held = asyncio.run(main())
        print(f"disk queue: 3 x 100 concurrent asyncio publishes, {counting.syncs} fdatasyncs")
        assert counting.syncs <= 30, counting.syncs
        assert loop_thread[0] not in counting.threads  # never on the loop
        assert [n for n in held if n is not None and n < 100000] == list(range(300))
        counter.wait_numbers(tag, range(300))
        assert all(counter.counts(tag)[n] == 1 for n in range(300) if n % 2)
    finally:
        counter.close()


def test_an_async_gateways_sessions_store_their_disk_queue_batches_off_its_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five sessions of an ``AsyncGateway`` (one loop for all), offline past ``QueueInMemory``,
    100 concurrent publishes each at a time: a few fdatasyncs a round, none on the loop that
    runs every session (before: one each, on it); each session's messages in the order its
    calls were made, all of them found by the next gateway."""
    from mqttsession import AsyncGateway  # noqa: PLC0415

    counting = _Counting()
    loop_thread: list[int] = []
    expected = [f"{r}-{n}".encode() for r in range(3) for n in range(100)]

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        gw = AsyncGateway(tmp_path / "gw")
        try:
            sessions = await _full_sessions(gw, 5)
            monkeypatch.setattr(spool_mod, "os", counting)
            for r in range(3):
                await asyncio.gather(*(s.publish("t", f"{r}-{n}".encode(), 1)
                                       for s in sessions for n in range(100)))
            monkeypatch.setattr(spool_mod, "os", os)
            for s in sessions:
                assert [m.message for m in s.client.outgoing_messages][IN_MEMORY:] == expected
        finally:
            await gw.close()
        again = AsyncGateway(tmp_path / "gw")
        try:
            for i in range(5):
                s = await again.session(f"dev{i}", Options(address="127.0.0.1:1"),
                                        connect=False)
                assert [m.message for m in s.client.outgoing_messages][IN_MEMORY:] == expected
        finally:
            await again.close()

    asyncio.run(main())
    print(f"disk queue: 5 gateway sessions x 3 x 100 concurrent publishes,"
          f" {counting.syncs} fdatasyncs")
    assert counting.syncs <= 150, counting.syncs
    assert loop_thread[0] not in counting.threads


def test_publishes_a_close_refuses_in_a_batch_say_publish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads publish into the disk queue (slow fdatasyncs, batches queued behind them) while
    another thread closes the client: each refused ``publish_data`` says "publish after
    close()" (before: the batch's store named ``publish_many``, a call nobody made)."""
    c = _client(tmp_path / "s", "dqb-close")
    c.restore_session("")
    for n in range(IN_MEMORY):
        c.publish_data("t", 1, f"m{n}".encode())
    slow = _Counting()
    monkeypatch.setattr(slow, "fdatasync", lambda fd: (time.sleep(0.02), os.fdatasync(fd)))
    monkeypatch.setattr(spool_mod, "os", slow)
    refused: list[str] = []
    go = threading.Barrier(THREADS + 1)

    def worker(k: int) -> None:
        go.wait()
        for i in range(50):
            try:
                c.publish_data("t", 1, f"t{k}-{i}".encode())
            except UsageError as exc:
                refused.append(str(exc))
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(0.1)
    c.close()
    for t in threads:
        t.join()
    assert len(refused) == THREADS
    assert [r for r in refused if not r.startswith("publish after close()")] == []


def test_a_batch_that_would_make_room_is_stored_one_by_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``QueueFullPolicy=drop-oldest`` with the queue full and the disk queue failing (ENOSPC):
    8 threads' publishes each fail as they would alone, and only what publishing alone drops
    is dropped (one message). A batch would first have made room for all eight, then failed:
    eight old messages dropped for publishes that stored nothing (a review's finding)."""
    c = _client(tmp_path / "s", "dqb-room")
    c.config("MaxQueuedMessages=30")
    c.config("QueueFullPolicy=drop-oldest")
    c.restore_session("")
    for n in range(30):
        c.publish_data("t", 1, f"old{n}".encode())
    dropped: list[object] = []
    c.on_message_dropped = dropped.append
    counting = _Counting()
    counting.fail = 10**6  # every fdatasync of the disk queue
    monkeypatch.setattr(spool_mod, "os", counting)
    failed: list[BaseException] = []
    go = threading.Barrier(THREADS)
    tried = _batches_tried(monkeypatch)

    def worker(k: int) -> None:
        go.wait()
        try:
            c.publish_data("t", 1, f"new{k}".encode())
        except PersistenceError as exc:
            failed.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(spool_mod, "os", os)
    assert len(failed) == THREADS
    assert len(dropped) == 1, dropped
    assert tried and max(tried) > 1  # (a batch of several was tried, and refused: needs_room)
    assert len(c.outgoing_messages) == 29
    c.close()


def test_asyncio_publish_many_into_the_disk_queue_keeps_call_order_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncSession.publish_many`` bound for the disk queue goes the way ``publish`` does:
    after a ``publish`` called before it (before, it overtook it), its fdatasync off the loop
    (before, on it)."""
    counting = _Counting()
    loop_thread: list[int] = []

    async def main() -> list[bytes]:
        loop_thread.append(threading.get_ident())
        s = AsyncSession(Options(address="127.0.0.1:1"), client_id="dqb-many",
                         state_file=str(tmp_path / "a"), session_sync="always")
        await s.start(connect=False)
        await s.config(f"QueueInMemory={IN_MEMORY}")
        try:
            for n in range(IN_MEMORY):
                await s.publish("t", b"first", 1)
            monkeypatch.setattr(spool_mod, "os", counting)
            for r in range(3):
                await asyncio.gather(s.publish("t", f"{r}-A".encode(), 1),
                                     s.publish_many([("t", 1, f"{r}-B".encode()),
                                                     ("t", 2, f"{r}-C".encode())]),
                                     s.publish("t", f"{r}-D".encode(), 1))
            monkeypatch.setattr(spool_mod, "os", os)
            return [m.message for m in s.client.outgoing_messages][IN_MEMORY:]
        finally:
            await s.close()

    held = asyncio.run(main())
    assert held == [f"{r}-{x}".encode() for r in range(3) for x in "ABCD"]
    assert counting.syncs and loop_thread[0] not in counting.threads


def test_an_async_gateways_publish_many_into_disk_queues_shares_fdatasyncs_off_its_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncGateway.publish_many`` of sessions past ``QueueInMemory``: their messages join
    each session's disk-queue batches (a few fdatasyncs, off the loop; before, one each on the
    loop every session runs on), each session's in the order given, every id returned."""
    from mqttsession import AsyncGateway  # noqa: PLC0415

    counting = _Counting()
    loop_thread: list[int] = []

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        gw = AsyncGateway(tmp_path / "gw")
        try:
            sessions = await _full_sessions(gw, 5)
            monkeypatch.setattr(spool_mod, "os", counting)
            for r in range(3):
                ids = await gw.publish_many([(s, "t", 1 + n % 2, f"{r}-{n}".encode())
                                             for s in sessions for n in range(20)])
                assert len(ids) == 100
            monkeypatch.setattr(spool_mod, "os", os)
            for s in sessions:
                assert [m.message for m in s.client.outgoing_messages][IN_MEMORY:] == [
                    f"{r}-{n}".encode() for r in range(3) for n in range(20)]
        finally:
            await gw.close()

    asyncio.run(main())
    assert counting.syncs <= 60, counting.syncs
    assert loop_thread[0] not in counting.threads


def test_a_gateways_publish_many_into_disk_queues_syncs_once_a_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Gateway.publish_many`` of sessions past ``QueueInMemory``: each session's messages
    go into its disk queue as one batch (one fdatasync a session; before, one a message, its
    docstring's "ONE fdatasync" unkept), in the order given, every id returned; a message a
    session refuses fails alone (``PublishManyError``), the others stored."""
    from mqttsession import Gateway  # noqa: PLC0415
    from mqttsession.errors import PublishManyError  # noqa: PLC0415

    with Gateway(tmp_path / "gw") as gw:
        clients = [gw.client(f"dev{i}") for i in range(5)]
        for c in clients:
            c.config(f"QueueInMemory={IN_MEMORY}")
            c.config("MaxMessageSize=1000")
            for n in range(IN_MEMORY):
                c.publish_data("t", 1, b"first")
        counting = _Counting()
        monkeypatch.setattr(spool_mod, "os", counting)
        for r in range(3):
            ids = gw.publish_many([(c, "t", 1 + n % 2, f"{r}-{n}".encode())
                                   for c in clients for n in range(20)])
            assert len(ids) == 100
        with pytest.raises(PublishManyError) as ei:  # one too large: it alone fails
            gw.publish_many([(clients[0], "t", 1, b"a"), (clients[0], "t", 1, bytes(2000)),
                             (clients[0], "t", 1, b"b")])
        monkeypatch.setattr(spool_mod, "os", os)
        assert set(ei.value.errors) == {1} and ei.value.ids[1] is None
        print(f"disk queue: Gateway.publish_many 3 x 100 of 5 sessions, {counting.syncs}"
              " fdatasyncs")
        assert counting.syncs <= 25, counting.syncs
        for k, c in enumerate(clients):
            held = [m.message for m in c.outgoing_messages][IN_MEMORY:]
            assert held == [f"{r}-{n}".encode() for r in range(3) for n in range(20)] + (
                [b"a", b"b"] if k == 0 else [])


def test_an_executor_job_that_cannot_start_fails_its_publish_and_frees_the_next(
        tmp_path: Path) -> None:
    """The executor job that stores the disk queue's batches cannot start (no thread, an
    executor shut down): that publish raises, its message is never stored, and the next
    publishes go on (before, the combiner stayed busy: every later publish waited for ever;
    a review's finding)."""

    async def main() -> list[bytes]:
        s = AsyncSession(Options(address="127.0.0.1:1", request_timeout_seconds=1),
                         client_id="dqb-start", state_file=str(tmp_path / "a"),
                         session_sync="always")
        await s.start(connect=False)
        await s.config("QueueInMemory=2")
        try:
            for _ in range(2):
                await s.publish("t", b"first", 1)
            loop = asyncio.get_running_loop()
            real, calls = loop.run_in_executor, [0]

            def flaky(executor: Any, fn: Any, *args: Any) -> Any:
                calls[0] += 1
                if calls[0] == 1:
                    raise RuntimeError("can't start new thread")
                return real(executor, fn, *args)
            loop.run_in_executor = flaky  # type: ignore[method-assign]
            with pytest.raises(RuntimeError, match="new thread"):
                await s.publish("t", b"A", 1)
            await asyncio.wait_for(s.publish("t", b"B", 1), 10)
            return [m.message for m in s.client.outgoing_messages]
        finally:
            await s.close()

    assert asyncio.run(main()) == [b"first", b"first", b"B"]


def test_an_async_gateways_sessions_store_their_disk_queue_batches_side_by_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight ``AsyncGateway`` sessions past ``QueueInMemory``, each publishing one message at
    a time (a device's stream), every fdatasync 20 ms (a card): their batches (each session
    its own file to sync) are stored by several threads at once, not one after another by
    the gateway's one jobs thread (a scale hunt: 56 messages a second for 100 sessions)."""
    from mqttsession import AsyncGateway  # noqa: PLC0415

    class Slow(_Counting):
        def fdatasync(self, fd: int) -> None:
            time.sleep(0.02)
            super().fdatasync(fd)

    slow = Slow()
    names: set[str] = set()
    real_sync = slow.fdatasync

    def named(fd: int) -> None:
        names.add(threading.current_thread().name.rsplit("_", 1)[0])
        real_sync(fd)
    slow.fdatasync = named  # type: ignore[method-assign]

    async def main() -> None:
        gw = AsyncGateway(tmp_path / "gw")
        try:
            sessions = await _full_sessions(gw, 8, in_memory=1)
            monkeypatch.setattr(spool_mod, "os", slow)

            async def device(s: AsyncSession) -> None:
                for n in range(5):
                    await s.publish("t", f"m{n}".encode(), 1)
            await asyncio.gather(*(device(s) for s in sessions))
            monkeypatch.setattr(spool_mod, "os", os)
            for s in sessions:
                assert [m.message for m in s.client.outgoing_messages] == [
                    b"first", *(f"m{n}".encode() for n in range(5))]
        finally:
            await gw.close()

    asyncio.run(main())
    assert len(slow.threads) > 1, names  # (several spool threads synced at once)
    assert names == {"mqttsession-gateway-spool"}


@pytest.mark.parametrize("host", ["session", "gateway"])
def test_the_loop_never_waits_for_a_session_lock_a_disk_queue_batch_holds(
        tmp_path: Path, host: str) -> None:
    """Another thread holds the session's lock (as a disk-queue batch does over its write and
    fdatasync: tens of ms on an SD card, batch after batch) when the sync of a publish's
    record ends: the release of the message waits for the lock in a thread, and the loop,
    which runs every session's sockets and timers, goes on meanwhile. Before, it waited on
    the loop (1.4 s stalls at 50 spilled gateway sessions on an emulated 50 ms card). The
    publish returns once the lock is free, its message released; ``close()`` waits for a
    release deferred so; the message is kept in the session."""
    from mqttsession import AsyncGateway  # noqa: PLC0415

    ran_while_held: list[bool] = []

    async def main() -> list[bytes]:
        gw = AsyncGateway(tmp_path / "gw") if host == "gateway" else None
        if gw is not None:
            s = await gw.session("dev", Options(address="127.0.0.1:1"), session_sync="always",
                                 connect=False)
        else:
            s = AsyncSession(Options(address="127.0.0.1:1"), client_id="dev",
                             state_file=str(tmp_path / "a"), session_sync="always")
            await s.start(connect=False)
        d = s.client._driver
        locker = _procs.LockHolder(d.lock)
        try:
            task = asyncio.ensure_future(s.publish("t", b"m", 1))
            while not d.holds():  # its record appended: its sync under way
                await asyncio.sleep(0)
            locker.start()  # (the sync's callback runs on the loop only after this)
            for _ in range(5):
                await asyncio.sleep(0.01)
            ran_while_held.append(locker.holding)
            assert not task.done()  # released (and answered) once the lock is free
            closing = asyncio.ensure_future(s.close())  # waits for the deferred release
            await asyncio.sleep(0.01)
            locker.let_go()
            assert await task >= 1
            await closing
        finally:
            locker.let_go()
            await s.close()
            if gw is not None:
                await gw.close()
        again = AsyncGateway(tmp_path / "gw") if host == "gateway" else None
        if again is not None:
            s = await again.session("dev", Options(address="127.0.0.1:1"), connect=False)
        else:
            s = AsyncSession(Options(address="127.0.0.1:1"), client_id="dev",
                             state_file=str(tmp_path / "a"))
            await s.start(connect=False)
        try:
            return [m.message for m in s.client.outgoing_messages]
        finally:
            await s.close()
            if again is not None:
                await again.close()

    assert asyncio.run(main()) == [b"m"]
    assert ran_while_held == [True]
