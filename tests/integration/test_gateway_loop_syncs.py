"""An ``AsyncGateway``'s loop never waits for the disk: not for an fdatasync when its
sessions reconnect (a hunt: each CONNACK synced the resume plan's records on the loop, one
fdatasync per session after a broker restart: 1,000 sessions on a 10 ms card, 10 s of a
stopped loop; the plan's acks wait for that sync in the sync thread, as a read batch's do),
nor for the one its timers' records need when they take messages from a disk queue, nor for a
session's lock that another thread holds over a disk-queue batch's fdatasync, nor for the
syncs of a session's restore when it opens one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
from mqttsession import AsyncGateway, MQTTSessionError, Options, StateLockedError
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.brokers import free_port
from mqttsession.compacting import size_of
from mqttsession.testing.faults import FakeOs

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _on_loop(monkeypatch: pytest.MonkeyPatch, on_loop: list[str]) -> None:
    """Every ``os.fdatasync`` / ``os.fsync`` the loop's thread (the main one) runs from now
    on: its stack into ``on_loop``."""
    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is threading.main_thread():
                on_loop.append("".join(traceback.format_stack(limit=8)))
            real(fd)
        return sync
    monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
    monkeypatch.setattr(os, "fsync", hooked(os.fsync))


@contextlib.asynccontextmanager
async def _sent_ok(mosquitto: Any, tmp_path: Path, topic: str, monkeypatch: pytest.MonkeyPatch,
                   hooked: Callable[[Any], Any]) -> AsyncIterator[Any]:
    """An ``always`` session with a state file that sent ``ok`` (acknowledged), then with
    ``hooked(real)`` in place of ``os.fdatasync`` and ``os.fsync``."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    async with AsyncSession(Options(address=mosquitto.address, request_timeout_seconds=20),
                            client_id=_procs.unique("ok"), session_sync="always",
                            state_file=str(tmp_path / "s")) as s:
        await s.publish(topic, b"ok", 1)
        assert await s.flush(_procs.TIMEOUT)
        monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
        monkeypatch.setattr(os, "fsync", hooked(os.fsync))
        yield s


async def _longest_gap(gaps: list[float]) -> None:
    """Until cancelled: the loop's longest stop between 5 ms sleeps into ``gaps[0]``."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.005)
        now = time.monotonic()
        gaps[0], last = max(gaps[0], now - last), now


def _ok_then_after(main: Callable[[], Coroutine[Any, Any, None]], counter: Any) -> None:
    """Run ``main``; the subscriber ``counter`` gets ``ok`` then ``after``, nothing else."""
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload("after")
        assert [p for p, _q, _d in counter.received] == [b"ok", b"after"]
    finally:
        counter.close()


def test_reconnects_sync_off_the_loop(mosquitto_factory: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    broker = mosquitto_factory()
    on_loop: list[str] = []

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():  # (the loop's)
            on_loop.append(threading.current_thread().name)
        os.fdatasync(fd)

    monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=fdatasync))
    topic = f"mqs/{_procs.unique('loop')}"
    counter = _procs.Counter(broker.host, broker.port, topic)

    async def main() -> None:
        opts = Options(address=broker.address, request_timeout_seconds=20)
        async with AsyncGateway(tmp_path / "gw") as gw:
            ss = [await gw.session(_procs.unique(f"s{i}"), opts, session_sync="always")
                  for i in range(4)]
            on_loop.clear()
            broker.restart()
            await asyncio.sleep(0.3)
            for i, s in enumerate(ss):  # flushed: reconnected (and their acks' syncs done)
                await s.publish(topic, f"{i}", 2)
            for s in ss:
                assert await s.flush(_procs.TIMEOUT)
            assert on_loop == [], on_loop

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        counter.close()


def test_the_timers_take_messages_from_the_disk_queue_syncing_off_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session drains its disk queue at ``DrainRateLimit``: each timer round (0.5 s) takes
    messages from it, whose records must be durable before their PUBLISHes leave. They were
    synced on the loop, one fdatasync a session a round (30 sessions spilling on an emulated
    50 ms card: the loop stopped up to 3.5 s, the run took 30 s instead of 9): now the round
    runs as a read batch does, its sync in the sync thread, its PUBLISHes waiting for it."""
    on_loop: list[str] = []
    syncs: list[str] = []

    def fdatasync(fd: int) -> None:
        syncs.append(threading.current_thread().name)
        if threading.current_thread() is threading.main_thread():  # (the loop's)
            on_loop.append("".join(traceback.format_stack(limit=14)))  # (where, if it fails)
        os.fdatasync(fd)

    monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=fdatasync))
    tag = _procs.unique("tick")
    counter = _procs.Counter(mosquitto.host, mosquitto.port, f"mqs/{tag}")

    async def main() -> None:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}",
                       request_timeout_seconds=20)
        async with AsyncGateway(tmp_path / "gw") as gw:
            s = await gw.session(tag, opts, session_sync="always", connect=False)
            await s.config("QueueInMemory=2")
            await s.config("DrainRateLimit=4")
            for n in range(8):  # 6 in the disk queue
                await s.publish(f"mqs/{tag}", _procs.payload(tag, n), 1)
            await s.connect()
            on_loop.clear()
            syncs.clear()
            assert await s.flush(_procs.TIMEOUT)
            assert syncs  # (the timers' records were synced: somewhere else)
            assert on_loop == [], on_loop

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
        counter.wait_numbers(tag, range(8))
    finally:
        counter.close()


def test_the_loop_reads_a_socket_once_a_disk_queue_batch_frees_its_session(
        mosquitto: Any, tmp_path: Path) -> None:
    """Another thread holds a session's lock (as a disk-queue batch does over its write and
    fdatasync, batch after batch) when a packet arrives for it: the loop reads that socket once
    the lock is free and runs the other sessions meanwhile. Before, it waited for the lock
    inside the read (30 connected sessions spilling on an emulated 50 ms card: the loop
    stopped up to 3.5 s). The message is delivered once the lock is free."""
    tag = _procs.unique("rd")
    ran_while_held: list[bool] = []

    async def main() -> bytes:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}",
                       request_timeout_seconds=20)
        async with AsyncGateway(tmp_path / "gw") as gw:
            s = await gw.session(tag, opts, session_sync="always")
            await s.subscribe(f"mqs/{tag}", 1)
            d = s.client._driver
            locker = _procs.LockHolder(d.lock)
            locker.start()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, _procs.publish_direct, mosquitto.host, mosquitto.port,
                    f"mqs/{tag}", [(1, "m")])
                deadline = time.monotonic() + 10
                while not getattr(d, "loop_waits", False) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # (the loop runs: the read waits, not it)
                ran_while_held.append(getattr(d, "loop_waits", False) and locker.holding)
            finally:
                locker.let_go()
            got = await s.receive(_procs.TIMEOUT)
            assert got is not None
            return got.message

    assert asyncio.run(asyncio.wait_for(main(), 90)) == b"m"
    assert ran_while_held == [True]


def test_opening_and_closing_sessions_syncs_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gw.session()`` restores the session (its reads and its restore record's fdatasync),
    and its ``close()`` disconnects it and writes its last snapshot, in the gateway's jobs
    thread, not on the loop that runs the others (20 sessions opened on an emulated 20 ms
    card stopped the loop 0.4 s, closing them as long); each is found again by the next
    gateway."""
    on_loop: list[str] = []

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():  # (the loop's)
            on_loop.append("".join(traceback.format_stack(limit=14)))  # (where, if it fails)
        os.fdatasync(fd)

    async def main() -> list[list[bytes]]:
        opts = Options(address="127.0.0.1:1")
        async with AsyncGateway(tmp_path / "gw") as gw:
            for i in range(3):
                s = await gw.session(f"dev{i}", opts, connect=False)
                await s.publish("t", f"m{i}", 1)
        monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=fdatasync))
        async with AsyncGateway(tmp_path / "gw") as gw:
            ss = await asyncio.gather(*(gw.session(f"dev{i}", opts, connect=False)
                                        for i in range(3)))
            held = [[m.message for m in s.client.outgoing_messages] for s in ss]
            await ss[0].publish("t", b"more", 1)
            await asyncio.gather(*(s.close() for s in ss))
            assert on_loop == [], on_loop
        async with AsyncGateway(tmp_path / "gw") as gw:
            s = await gw.session("dev0", opts, connect=False)
            assert [m.message for m in s.client.outgoing_messages] == [b"m0", b"more"]
        return held

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [[b"m0"], [b"m1"], [b"m2"]]


def test_a_failed_syncs_take_back_runs_off_the_loop(mosquitto: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncSession`` publish whose fdatasync fails (EIO) is taken back: the state file
    rewritten without it and synced, in a thread (before: on the loop, which a failing card
    can stop for seconds). The publish raises, its message never goes out; the next one does.
    (An ``AsyncGateway`` session's take-back, off the loop too, writes its state into the
    shared log and leaves the fdatasync to the sync thread, as before.)"""
    from mqttsession import AsyncSession, PersistenceError  # noqa: PLC0415

    fault = {"armed": False, "failed": False}
    on_loop: list[str] = []

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if fault["armed"]:
                fault["armed"], fault["failed"] = False, True
                raise OSError(errno.EIO, "Input/output error (injected)")
            if fault["failed"] and threading.current_thread() is threading.main_thread():
                on_loop.append("".join(traceback.format_stack(limit=6)))
            real(fd)
        return sync

    monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
    monkeypatch.setattr(os, "fsync", hooked(os.fsync))
    topic = f"mqs/{_procs.unique('tb')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)

    async def run(s: AsyncSession) -> None:
        await s.publish(topic, b"ok", 1)
        assert await s.flush(_procs.TIMEOUT)  # (its ack's sync done: the next sync is ours)
        fault["armed"] = True
        with pytest.raises(PersistenceError):
            await s.publish(topic, b"failed", 1)
        assert fault["failed"]
        await s.publish(topic, b"after", 1)
        assert await s.flush(_procs.TIMEOUT)
        fault["failed"] = False  # (closing syncs where it syncs)

    async def main() -> None:
        async with AsyncSession(opts, client_id=_procs.unique("tb"), session_sync="always",
                                state_file=str(tmp_path / "s")) as s:
            await run(s)

    _ok_then_after(main, counter)
    assert on_loop == [], on_loop[0]


def test_the_loop_runs_while_a_take_back_rewrites_the_file(mosquitto: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """While a failed sync's take-back rewrites the state file in a thread (holding the
    session's lock over its syncs: seconds on a failing card), the session's next publish
    on the loop waits its turn, not that lock: the loop runs on (before: it stopped for the
    whole rewrite). The failed publish raises, the next one is sent, in that order."""
    from mqttsession import PersistenceError  # noqa: PLC0415

    fault = {"armed": False, "slow": False}
    rewriting = threading.Event()

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if fault["armed"]:
                fault["armed"], fault["slow"] = False, True
                raise OSError(errno.EIO, "Input/output error (injected)")
            if fault["slow"] and threading.current_thread() is not threading.main_thread():
                rewriting.set()
                time.sleep(0.3)
            real(fd)
        return sync

    topic = f"mqs/{_procs.unique('tbt')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    ticks = [0]

    async def main() -> None:
        async with _sent_ok(mosquitto, tmp_path, topic, monkeypatch, hooked) as s:
            fault["armed"] = True
            failing = asyncio.create_task(s.publish(topic, b"failed", 1))
            assert await asyncio.to_thread(rewriting.wait, 10), "no rewrite"

            async def tick() -> None:
                while True:
                    await asyncio.sleep(0.005)
                    ticks[0] += 1
            ticker = asyncio.create_task(tick())
            after = asyncio.create_task(s.publish(topic, b"after", 1))
            await asyncio.sleep(0.2)
            ticker.cancel()
            fault["slow"] = False
            with pytest.raises(PersistenceError):
                await failing
            await after
            assert await s.flush(_procs.TIMEOUT)
            monkeypatch.undo()

    _ok_then_after(main, counter)
    assert ticks[0] >= 10, f"the loop ticked {ticks[0]} times in 0.2 s"


def test_a_journal_a_failed_take_back_left_broken_is_rebuilt_off_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed sync whose take-back could not rewrite the file either (the disk still
    failing) leaves the journal broken: the next write rebuilds it whole (a snapshot, its
    syncs). The next publish has that run in the executor, as a compaction, not inside it
    on the loop. The failed publish raises, the next one is sent."""
    from mqttsession import PersistenceError  # noqa: PLC0415

    fault = {"fail": 0}
    on_loop: list[str] = []

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if fault["fail"]:
                fault["fail"] -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")
            if threading.current_thread() is threading.main_thread():
                on_loop.append("".join(traceback.format_stack(limit=8)))
            real(fd)
        return sync

    topic = f"mqs/{_procs.unique('brk')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> None:
        async with _sent_ok(mosquitto, tmp_path, topic, monkeypatch, hooked) as s:
            fault["fail"] = 3  # the publish's fdatasync, then both tries of its take-back
            with pytest.raises(PersistenceError):
                await s.publish(topic, b"failed", 1)
            assert fault["fail"] == 0 and s.client._file.journal.broken
            await s.publish(topic, b"after", 1)
            assert not s.client._file.journal.broken
            assert await s.flush(_procs.TIMEOUT)
            monkeypatch.undo()

    _ok_then_after(main, counter)
    assert on_loop == [], on_loop[0]


@pytest.mark.parametrize("kind", ["always", "none", "gateway"])
def test_compactions_sync_off_the_loop(kind: str, mosquitto: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose journal (an ``AsyncGateway`` session's records in the shared log) is
    about to pass its bound is compacted before the publish that would pass it, in the
    executor (an ``AsyncSession``'s snapshot written and synced, several fsyncs; a gateway
    session's snapshot record and the log's fdatasync); the session's publishes wait their
    turn meanwhile, in order. Before: inside that publish, on the loop (~0.1 s every few
    thousand publishes on a 20 ms card). Every message arrives once, each task's in order."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []  # (stacks of the loop thread's fsyncs, ``_on_loop``)
    topic = f"mqs/{_procs.unique('cmp')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)

    async def publish(gw: Any, s: AsyncSession) -> int:
        await s.config("JournalMaxBytes=8192")
        await s.publish(topic, b"first", 1)
        _on_loop(monkeypatch, on_loop)

        async def task(k: int) -> None:
            for j in range(25):
                body = f"{k}-{j}".encode() + b"x" * 200
                if gw is not None and j % 2:
                    await gw.publish_many([(s, topic, 1, body)])
                else:
                    await s.publish(topic, body, 1)
        await asyncio.gather(*(task(k) for k in range(8)))
        assert await s.flush(_procs.TIMEOUT)
        monkeypatch.undo()
        return int(s.client._file.journal.compactions)

    async def main() -> int:
        if kind == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                return await publish(gw, await gw.session(_procs.unique("cmp"), opts))
        async with AsyncSession(opts, client_id=_procs.unique("cmp"), session_sync=kind,
                                state_file=str(tmp_path / "s")) as s:
            return await publish(None, s)

    try:
        compactions = asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload("7-24" + "x" * 200)
        got = [p for p, _q, _d in counter.received]
        assert len(got) == 201 and len(set(got)) == 201
        for k in range(8):  # (one publisher's order, kept)
            mine = [p for p in got if p.startswith(f"{k}-".encode())]
            assert mine == sorted(mine, key=lambda p: int(p.split(b"-")[1].rstrip(b"x")))
    finally:
        counter.close()
    assert compactions >= 3
    assert on_loop == [], on_loop[0]


def test_the_loop_runs_while_a_compaction_holds_the_session(mosquitto: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """While a compaction runs in the executor (it holds the session's lock over its syncs),
    a QoS 0 publish, a ``subscribe()`` and an ``ack()`` of that session wait their turn
    instead of the lock: the loop runs on (a review: they stopped it for the whole
    compaction). A compaction that fails is reported to on_error, on the loop, and the
    publish that waited for it is stored all the same; a payload of the wrong type is still
    ``UsageError``."""
    from mqttsession import AsyncSession, UsageError  # noqa: PLC0415
    from mqttsession.compacting import size_of  # noqa: PLC0415

    state = {"slow": False, "fail": False}
    in_job = threading.Event()

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if state["slow"] and threading.current_thread() is not threading.main_thread():
                in_job.set()
                time.sleep(0.4)
                if state["fail"]:
                    state["fail"] = False
                    raise OSError(errno.EIO, "Input/output error (injected)")
            real(fd)
        return sync

    topic = f"mqs/{_procs.unique('turn')}"
    errors: list[tuple[bool, str]] = []

    async def main() -> None:
        async with AsyncSession(Options(address=mosquitto.address, request_timeout_seconds=20),
                                client_id=_procs.unique("turn"), session_sync="always",
                                state_file=str(tmp_path / "s")) as s:
            s.client.on_error = lambda e: errors.append(
                (threading.current_thread() is threading.main_thread(), e.description))
            await s.config("JournalMaxBytes=8192")
            with pytest.raises(UsageError):
                await s.publish(topic, None, 1)  # type: ignore[arg-type]
            while not s._turn.due(s.client._driver, size_of(topic, b"z" * 250)):
                await s.publish(topic, b"y" * 200, 1)
            monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
            monkeypatch.setattr(os, "fsync", hooked(os.fsync))
            for fail in (False, True):
                in_job.clear()
                state["slow"], state["fail"] = True, fail
                first = asyncio.create_task(s.publish(topic, b"z" * 250, 1))
                assert await asyncio.to_thread(in_job.wait, 10), "no compaction job"
                ticks = [0]

                async def tick() -> None:
                    while True:
                        await asyncio.sleep(0.005)
                        ticks[0] += 1
                ticker = asyncio.create_task(tick())
                others = [asyncio.create_task(s.publish(topic, b"q0", 0)),
                          asyncio.create_task(s.subscribe(f"{topic}/sub", 1)),
                          asyncio.create_task(s.ack())]
                await asyncio.sleep(0.2)
                assert ticks[0] >= 10 and not first.done(), (ticks, first.done())
                ticker.cancel()
                state["slow"] = False
                assert await first >= 1
                await asyncio.gather(*others)
                while s.client._file.journal.needs_compaction or not s._turn.due(
                        s.client._driver, size_of(topic, b"z" * 250)):
                    await s.publish(topic, b"y" * 200, 1)
            monkeypatch.undo()

    asyncio.run(asyncio.wait_for(main(), 60))
    failed = [e for e in errors if "compaction failed" in e[1]]
    assert failed and all(on_loop for on_loop, _t in failed), errors


def test_a_subscribers_compactions_sync_off_the_loop(mosquitto: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncSession`` receiving QoS 2 messages writes records as it reads (and acks);
    once its journal passes the bound, the compaction runs in the executor, not inside the
    read batch on the loop (before: ~0.1 s stops on a 20 ms card). Every message arrives
    once."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []  # (stacks of the loop thread's fsyncs, ``_on_loop``)
    topic = f"mqs/{_procs.unique('subc')}"

    async def main() -> tuple[int, int]:
        opts = Options(address=mosquitto.address, request_timeout_seconds=20)
        async with AsyncSession(opts, client_id=_procs.unique("subc"), session_sync="always",
                                state_file=str(tmp_path / "s")) as sub, \
                AsyncSession(opts, client_id=_procs.unique("pub")) as pub:
            await sub.config("JournalMaxBytes=8192")
            await sub.subscribe(topic, 2)
            _on_loop(monkeypatch, on_loop)
            for i in range(150):
                await pub.publish(topic, f"{i}-".encode() + b"x" * 200, 2)
            got = []
            while len(got) < 150:
                m = await sub.receive(_procs.TIMEOUT)
                assert m is not None, f"{len(got)} received"
                got.append(m.message)
            await sub.ack()
            monkeypatch.undo()
            return len(set(got)), int(sub.client._file.journal.compactions)

    distinct, compactions = asyncio.run(asyncio.wait_for(main(), 60))
    assert distinct == 150 and compactions >= 2
    assert on_loop == [], on_loop[0]


def test_the_loop_runs_while_a_read_sides_compaction_holds_the_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A QoS 2 subscriber's acks (and reads) write records; the compaction they make due
    runs in the executor holding the session's lock over its syncs. ``receive()``'s
    ``ack()`` on the loop waits its turn for it instead of that lock (a review: 100-150 ms
    stops on a 20 ms card, the whole compaction), and the job takes the lock between the
    loop's reads, never inside a read batch. Every message arrives once."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    in_job = threading.Event()

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is not threading.main_thread() and any(
                    f.name == "compact" for f in traceback.extract_stack()):
                in_job.set()
                time.sleep(0.3)  # (a slow card's compaction: three of these)
            real(fd)
        return sync

    topic = f"mqs/{_procs.unique('rside')}"
    n = 400
    gaps = [0.0]

    async def main() -> tuple[int, int]:
        opts = Options(address=mosquitto.address, request_timeout_seconds=20,
                       inbound_queue_size=2 * n)
        async with AsyncSession(opts, client_id=_procs.unique("rside"), session_sync="always",
                                state_file=str(tmp_path / "s")) as sub, \
                AsyncSession(opts, client_id=_procs.unique("pub")) as pub:
            await sub.config("JournalMaxBytes=2048")  # (the acks' removals pass it)
            await sub.subscribe(topic, 2)
            for i in range(n):
                await pub.publish(topic, f"{i}-".encode() + b"x" * 200, 2)
            assert await pub.flush(_procs.TIMEOUT)
            while sub._queue.qsize() < n:  # every one read, before the acks' compactions
                await asyncio.sleep(0.01)
            monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
            monkeypatch.setattr(os, "fsync", hooked(os.fsync))
            before = int(sub.client._file.journal.compactions)
            ticker = asyncio.create_task(_longest_gap(gaps))
            got = []
            while len(got) < n:
                m = await sub.receive(_procs.TIMEOUT)
                assert m is not None, f"{len(got)} received"
                got.append(m.message)
                await asyncio.sleep(0)  # (an application's work on it: others run)
            await sub.ack()
            ticker.cancel()
            monkeypatch.undo()
            assert in_job.is_set(), "no compaction while acking"
            return len(set(got)), int(sub.client._file.journal.compactions) - before

    # (all of them in flight at once: every one is read before the first is acknowledged)
    with MosquittoBroker(extra_config="max_inflight_messages 0\nmax_queued_messages 0\n") as b:
        mosquitto = b
        distinct, compactions = asyncio.run(asyncio.wait_for(main(), 90))
    assert distinct == n and compactions >= 1
    assert gaps[0] < 0.2, f"the loop stopped for {gaps[0]:.3f} s"


def test_a_qos0_publish_waits_its_turn_while_a_disk_queue_batch_holds_the_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk-queue batch of an ``AsyncSession``'s QoS 1 publishes is written and synced in
    the executor, holding the session's lock; a QoS 0 publish (a ``subscribe()``, an
    ``ack()``) meanwhile waits for that lock off the loop, which runs on (a hunt: a QoS 0
    task stopped the loop at each batch, up to 175 ms on a 20 ms card). Every QoS 1
    publish is stored."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    in_batch = threading.Event()

    def slow(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is not threading.main_thread():
                in_batch.set()
                time.sleep(0.1)
            real(fd)
        return sync

    gaps = [0.0]

    async def main() -> int:
        s = await AsyncSession.create(Options(address=f"127.0.0.1:{free_port()}"),
                                      client_id=_procs.unique("q0"), session_sync="always",
                                      state_file=str(tmp_path / "s"), connect=False)
        try:
            await s.config("QueueInMemory=20")
            for i in range(30):  # (the next ones into the disk queue)
                await s.publish("q/1", f"pre{i}", 1)
            monkeypatch.setattr(os, "fdatasync", slow(os.fdatasync))
            monkeypatch.setattr(os, "fsync", slow(os.fsync))

            async def publish(k: int) -> None:
                for j in range(15):
                    await s.publish("q/1", f"{k}-{j}", 1)
            spilling = [asyncio.create_task(publish(k)) for k in range(4)]
            assert await asyncio.to_thread(in_batch.wait, 10), "no batch"


            async def qos0() -> None:
                while True:
                    await s.publish("q/0", b"z", 0)
                    await asyncio.sleep(0)
            others = [asyncio.create_task(_longest_gap(gaps)), asyncio.create_task(qos0())]
            await asyncio.sleep(0.3)
            for t in others:
                t.cancel()
            await asyncio.gather(*spilling)
            monkeypatch.undo()
            return int(s.client.queue_stats().messages)
        finally:
            await s.close()

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 90
    assert gaps[0] < 0.08, f"the loop stopped for {gaps[0]:.3f} s"


def test_a_publish_whose_compaction_the_reads_outgrew_compacts_again_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish waits in the executor for the compaction its record would need; as that
    job ends (its thread slow to hand back), the loop reads incoming QoS 2 messages of that
    session, whose records fill the fresh journal past its bound again: the publish
    compacts once more in the executor before it stores, not inside its own store on the
    loop (a review: a 103 ms stop)."""
    from mqttsession import AsyncSession  # noqa: PLC0415
    from mqttsession.durability import Durability  # noqa: PLC0415

    on_loop: list[str] = []
    ended = threading.Event()
    real_ahead = Durability.compact_ahead

    def compact_ahead(self: Any) -> None:
        real_ahead(self)
        if not ended.is_set():
            ended.set()
            time.sleep(0.5)  # (the lock free: the incoming messages are read meanwhile)

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is threading.main_thread():
                on_loop.append("".join(traceback.format_stack(limit=10)))
            real(fd)
        return sync

    topic = f"mqs/{_procs.unique('again')}"

    async def main() -> None:
        with MosquittoBroker(extra_config="max_queued_messages 0\n") as b:
            opts = Options(address=b.address, request_timeout_seconds=20)
            async with AsyncSession(opts, client_id=_procs.unique("again"),
                                    session_sync="always", state_file=str(tmp_path / "s")) as s, \
                    AsyncSession(opts, client_id=_procs.unique("in")) as other:
                await s.config("JournalMaxBytes=4096")
                await s.subscribe(f"{topic}/in", 2)
                while not s._turn.due(s.client._driver, size_of(topic, b"p" * 200)):
                    await s.publish(f"{topic}/out", b"f" * 200, 1)
                monkeypatch.setattr(Durability, "compact_ahead", compact_ahead)
                monkeypatch.setattr(os, "fdatasync", hooked(os.fdatasync))
                monkeypatch.setattr(os, "fsync", hooked(os.fsync))
                first = asyncio.create_task(s.publish(f"{topic}/out", b"p" * 200, 1))
                assert await asyncio.to_thread(ended.wait, 10), "no compaction job"
                for i in range(12):  # (their records: ~6 KB, past the bound again)
                    await other.publish(f"{topic}/in", f"{i}-".encode() + b"i" * 500, 2)
                for _ in range(12):  # (read as the job ends; handed out, not acknowledged)
                    assert await asyncio.wait_for(s._queue.get(), _procs.TIMEOUT) is not None
                assert not first.done()
                await first
                monkeypatch.undo()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert on_loop == [], on_loop[0]


def test_a_gateway_publish_many_waits_for_every_sessions_disk_queue_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncGateway.publish_many`` of a message for each of three sessions whose QoS 1
    publishes go to their disk queues in the executor (each batch holding its session's
    lock over its write and fdatasync): the call takes every session's turn and waits for
    their locks off the loop, which runs on (a review: a session not due when asked had a
    batch take its lock while the call waited for another's: 124-185 ms stops)."""
    from mqttsession import AsyncGateway  # noqa: PLC0415

    def slow(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.1)
            real(fd)
        return sync

    gaps = [0.0]

    async def main() -> int:
        opts = Options(address=f"127.0.0.1:{free_port()}")
        async with AsyncGateway(tmp_path / "gw") as gw:
            ss = [await gw.session(_procs.unique(f"m{i}"), opts, connect=False)
                  for i in range(3)]
            for s in ss:
                await s.config("QueueInMemory=20")
                for i in range(25):  # (the next ones into the disk queue)
                    await s.publish("q/1", f"pre{i}", 1)
            monkeypatch.setattr(os, "fdatasync", slow(os.fdatasync))
            monkeypatch.setattr(os, "fsync", slow(os.fsync))
            stop = [False]

            async def publish(s: Any, k: int) -> None:
                j = 0
                while not stop[0]:
                    await s.publish("q/1", f"{k}-{j}", 1)
                    j += 1

            async def many() -> int:
                n = 0
                while not stop[0]:
                    await gw.publish_many([(s, "q/0", 0, b"m") for s in ss])
                    n += 1
                    await asyncio.sleep(0)
                return n
            spilling = [asyncio.create_task(publish(s, k)) for k, s in enumerate(ss)
                        for _ in range(3)]
            await asyncio.sleep(0.2)
            watch = asyncio.create_task(_longest_gap(gaps))
            calls = asyncio.create_task(many())
            await asyncio.sleep(1)
            stop[0] = True
            watch.cancel()
            await asyncio.gather(*spilling)
            monkeypatch.undo()
            return await calls

    assert asyncio.run(asyncio.wait_for(main(), 60)) > 0
    assert gaps[0] < 0.08, f"the loop stopped for {gaps[0]:.3f} s"


async def _four_tasks(gw: Any, s: Any, topic: str, n: int, qos: int, pad: str = "") -> None:
    """Four tasks, each awaiting ``n`` publishes ``k-j<pad>`` of QoS ``qos`` (with a gateway:
    every second one through its ``publish_many``)."""
    async def task(k: int) -> None:
        for j in range(n):
            if gw is not None and j % 2:
                await gw.publish_many([(s, topic, qos, f"{k}-{j}{pad}".encode())])
            else:
                await s.publish(topic, f"{k}-{j}{pad}", qos)
    await asyncio.gather(*(task(k) for k in range(4)))


@pytest.mark.parametrize("kind", ["session", "gateway"])
def test_interval_packet_id_reservations_sync_off_the_loop(kind: str, mosquitto: Any,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``SessionSync=interval`` the packet ids come from reservations of 256, each
    synced before its first id leaves. Before: the publish that needed the next one synced
    it on the loop (a hunt: one 46-48 ms stop every 256 publishes on a 50 ms card, 189-234 ms
    for a gateway of 200-500 sessions). Now the next one is made in the executor while 16
    ids of the current one are still free, the publishes waiting their turn; every message
    arrives once, each task's in order."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []
    topic = f"mqs/{_procs.unique('rsv')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)

    async def publish(gw: Any, s: AsyncSession) -> tuple[int, int]:
        await s.publish(topic, b"first", 1)  # (the first reservation: before the hook)
        assert await s.flush(_procs.TIMEOUT)
        _on_loop(monkeypatch, on_loop)

        await _four_tasks(gw, s, topic, 150, 1)
        assert await s.flush(_procs.TIMEOUT)
        monkeypatch.undo()
        st = s.client._engine.state
        return st.reserved_first, st.reserved_last

    async def main() -> tuple[int, int]:
        if kind == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                return await publish(gw, await gw.session(_procs.unique("rsv"), opts,
                                                          session_sync="interval"))
        async with AsyncSession(opts, client_id=_procs.unique("rsv"), session_sync="interval",
                                state_file=str(tmp_path / "s")) as s:
            return await publish(None, s)

    try:
        first, last = asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload("3-149")
        got = [p for p, _q, _d in counter.received]
        assert len(got) == 601 and len(set(got)) == 601
        for k in range(4):  # (one publisher's order, kept)
            mine = [p for p in got if p.startswith(f"{k}-".encode())]
            assert mine == sorted(mine, key=lambda p: int(p.split(b"-")[1]))
    finally:
        counter.close()
    assert first > 256, f"no reservation past the first two: {first}..{last}"
    assert on_loop == [], on_loop[0]


@pytest.mark.parametrize("kind", ["session", "gateway"])
def test_interval_disk_queue_segments_sync_off_the_loop(kind: str, mosquitto: Any,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``SessionSync=interval`` a publish into the disk queue syncs where it seals a full
    segment and begins the next (and, once a switch, the journal's records before the
    queue's). Before: on the loop (a hunt: 4 syncs, 80-110 ms stops on a 20 ms card, each
    segment). Now they are made ahead in the executor (``Spool.roll_ahead``), the publishes
    waiting their turn; once connected, every message arrives once, each task's in order."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []
    topic = f"mqs/{_procs.unique('roll')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    pad = "-" + "x" * 200

    async def publish(gw: Any, s: AsyncSession) -> int:
        await s.config("QueueInMemory=5")
        await s.config("QueueSegmentBytes=4096")
        _on_loop(monkeypatch, on_loop)

        await _four_tasks(gw, s, topic, 100, 2, pad)
        monkeypatch.undo()
        sealed = len(list(tmp_path.rglob("*.seg")))
        await s.connect()
        assert await s.flush(_procs.TIMEOUT)
        return sealed

    async def main() -> int:
        if kind == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                return await publish(gw, await gw.session(_procs.unique("roll"), opts,
                                                          connect=False,
                                                          session_sync="interval"))
        async with AsyncSession(opts, client_id=_procs.unique("roll"), session_sync="interval",
                                state_file=str(tmp_path / "s")) as s:
            await s.disconnect()
            return await publish(None, s)

    try:
        sealed = asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload(f"3-99{pad}")
        got = [p.split(b"-x")[0] for p, _q, _d in counter.received]
        assert len(got) == 400 and len(set(got)) == 400
        for k in range(4):  # (one publisher's order, kept)
            mine = [p for p in got if p.startswith(f"{k}-".encode())]
            assert mine == sorted(mine, key=lambda p: int(p.split(b"-")[1]))
    finally:
        counter.close()
    assert sealed > 10, sealed
    assert on_loop == [], on_loop[0]


def test_a_failed_disk_queue_sync_made_ahead_is_reported_and_the_publish_goes_on(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fdatasync of a segment sealed ahead (in the executor) fails: it is reported
    (``on_error``), and the publish that asked for it seals the segment itself; once
    connected, every message arrives once, in order."""
    import mqttsession.spool as spool_mod  # noqa: PLC0415
    from mqttsession import AsyncSession  # noqa: PLC0415

    class _Fails(FakeOs):
        armed = 0

        def fdatasync(self, fd: int) -> None:
            f = sys._getframe()
            while self.armed and f is not None and f.f_code.co_name != "queue_sync_ahead":
                f = f.f_back  # type: ignore[assignment]
            if self.armed and f is not None:
                self.armed -= 1
                raise OSError(errno.EIO, "injected EIO")
            os.fdatasync(fd)

    disk = _Fails()
    monkeypatch.setattr(spool_mod, "os", disk)
    topic = f"mqs/{_procs.unique('rlf')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    errors: list[str] = []

    async def main() -> None:
        async with AsyncSession(opts, client_id=_procs.unique("rlf"), session_sync="interval",
                                state_file=str(tmp_path / "s")) as s:
            s.client.on_error = lambda e: errors.append(e.description)
            await s.disconnect()
            await s.config("QueueInMemory=5")
            await s.config("QueueSegmentBytes=4096")
            for j in range(60):  # (the first segment begun, and filled)
                await s.publish(topic, f"m-{j}-" + "x" * 100, 2)
            disk.armed = 1
            for j in range(60, 120):
                await s.publish(topic, f"m-{j}-" + "x" * 100, 2)
            await s.connect()
            assert await s.flush(_procs.TIMEOUT)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload("m-119-" + "x" * 100)
        got = [p.split(b"-x")[0] for p, _q, _d in counter.received]
        assert got == [f"m-{j}".encode() for j in range(120)]
    finally:
        counter.close()
    assert any("disk queue sync failed" in e and "injected EIO" in e for e in errors), errors
    assert not disk.armed


def test_save_session_and_a_state_file_set_while_running_sync_off_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncSession.save_session()`` and ``config("SessionStateFile=...")`` on a started
    session write the whole state file (a snapshot, its fsyncs and the directory's). Before:
    on the loop (a hunt: 85-88 ms and 85-143 ms stops on a 20 ms card). Now in the executor,
    in the calls' turn; the state they wrote holds every message (the next session sends
    each once)."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []
    topic = f"mqs/{_procs.unique('save')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    a_id, b_id = _procs.unique("sva"), _procs.unique("svb")

    async def first() -> str:
        async with AsyncSession(opts, client_id=a_id, state_file=str(tmp_path / "a")) as a:
            await a.disconnect()
            for j in range(50):
                await a.publish(topic, f"a-{j}", 1)
            b = AsyncSession(opts, client_id=b_id, clean_session=False)
            await b.start(connect=False)
            for j in range(50):
                await b.publish(topic, f"b-{j}", 2)
            _on_loop(monkeypatch, on_loop)
            text = await a.save_session()
            await b.config(f"SessionStateFile={tmp_path / 'b'}")
            monkeypatch.undo()
            await b.close()
            await a.close()
            return text

    async def second() -> None:
        for cid, name in ((a_id, "a"), (b_id, "b")):
            async with AsyncSession(opts, client_id=cid, state_file=str(tmp_path / name)) as s:
                assert await s.flush(_procs.TIMEOUT)

    try:
        text = asyncio.run(asyncio.wait_for(first(), 60))
        assert on_loop == [], on_loop[0]
        assert text.count(topic) == 50
        asyncio.run(asyncio.wait_for(second(), 60))
        counter.wait_payload("b-49")
        got = sorted(p for p, _q, _d in counter.received)
        assert got == sorted([f"a-{j}".encode() for j in range(50)]
                             + [f"b-{j}".encode() for j in range(50)])
    finally:
        counter.close()


@pytest.mark.parametrize("kind", ["session", "gateway"])
def test_interval_batches_past_a_reservation_reserve_off_the_loop(
        kind: str, mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``publish_many`` of more messages than a reservation holds (256 ids) under
    ``SessionSync=interval``. Before: the reservation made ahead covered the next 16 ids
    only, so the batch reserved (and synced) on the loop (a hunt: 24-37 ms stops on a 20 ms
    card, every batch of 300 or 500). Now the one made ahead covers the whole batch; every
    message arrives once, in order."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []
    topic = f"mqs/{_procs.unique('rsb')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    sizes = (300, 500, 20, 700)

    async def publish(gw: Any, s: AsyncSession) -> None:
        await s.publish(topic, b"first", 1)  # (the first reservation: before the hook)
        assert await s.flush(_procs.TIMEOUT)
        _on_loop(monkeypatch, on_loop)
        n = 0
        for size in sizes:
            batch = [(topic, 1, f"m-{n + j}".encode()) for j in range(size)]
            n += size
            if gw is None:
                await s.publish_many(batch)
            else:
                await gw.publish_many([(s, *m) for m in batch])
            assert await s.flush(_procs.TIMEOUT)
            await asyncio.get_running_loop().run_in_executor(  # (the broker keeps at most
                None, counter.wait_payload, f"m-{n - 1}")  # 1,000 queued for the subscriber)
        monkeypatch.undo()

    async def main() -> None:
        if kind == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                await publish(gw, await gw.session(_procs.unique("rsb"), opts,
                                                   session_sync="interval"))
                return
        async with AsyncSession(opts, client_id=_procs.unique("rsb"), session_sync="interval",
                                state_file=str(tmp_path / "s")) as s:
            await publish(None, s)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload(f"m-{sum(sizes) - 1}")
        got = [p for p, _q, _d in counter.received]
        assert got == [b"first"] + [f"m-{j}".encode() for j in range(sum(sizes))]
    finally:
        counter.close()
    assert on_loop == [], on_loop[0]


@pytest.mark.parametrize("mode", ["always", "interval"])
@pytest.mark.parametrize("kind", ["session", "gateway"])
def test_a_batch_past_the_journal_bound_is_stored_off_the_loop(
        kind: str, mode: str, mosquitto: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``publish_many`` whose records alone pass the state file's bound (600 messages of
    150 bytes; ``JournalMaxBytes=65536``, a gateway session's default bound is 64 KiB). Before:
    the compaction made ahead could not cover it, so it compacted inside the call, on the
    loop (a hunt: 40-205 ms stops on a 20 ms card, every such batch). Now the batch is stored
    by the executor (as the disk queue's batches are), also once a call held the session's turn
    before it (a review); every message arrives once, in order."""
    from mqttsession import AsyncSession  # noqa: PLC0415

    on_loop: list[str] = []
    topic = f"mqs/{_procs.unique('big')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    pad = "-" + "x" * 150

    async def publish(gw: Any, s: AsyncSession) -> None:
        await s.config("JournalMaxBytes=65536")
        await s.publish(topic, b"first", 1)
        assert await s.flush(_procs.TIMEOUT)
        _on_loop(monkeypatch, on_loop)
        for r in range(3):  # (each batch taken by the subscriber before the next: the
            # broker keeps at most 1,000 queued for it)
            batch = [(topic, 1, f"{r}-{j}{pad}".encode()) for j in range(600)]
            release = asyncio.Event()

            async def turn_held() -> None:  # (round 1: a call holds the session's turn, so
                async with s._turn.held(s.client._driver, 0):  # the batch waits for its
                    await release.wait()  # own: a review, it was stored on the loop then)
            holder = asyncio.create_task(turn_held()) if r == 1 else None
            await asyncio.sleep(0.01)
            job = asyncio.ensure_future(s.publish_many(batch) if gw is None else
                                        gw.publish_many([(s, *m) for m in batch]))
            await asyncio.sleep(0.01)
            release.set()
            if holder is not None:
                await holder
            assert len(await job) == 600
            assert await s.flush(_procs.TIMEOUT)
            await asyncio.get_running_loop().run_in_executor(
                None, counter.wait_payload, f"{r}-599{pad}")
        monkeypatch.undo()

    async def main() -> None:
        if kind == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                await publish(gw, await gw.session(_procs.unique("big"), opts,
                                                   session_sync=mode))
                return
        async with AsyncSession(opts, client_id=_procs.unique("big"), session_sync=mode,
                                state_file=str(tmp_path / "s")) as s:
            await publish(None, s)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
        got = [p.split(b"-x")[0] for p, _q, _d in counter.received]
        assert got == [b"first"] + [f"{r}-{j}".encode() for r in range(3) for j in range(600)]
    finally:
        counter.close()
    assert on_loop == [], on_loop[0]


def test_a_failed_reservation_made_ahead_is_taken_back_and_the_publish_goes_on(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fdatasyncs of a packet-id reservation made ahead (in the executor) fail, its own
    and its rewrite's: it is reported (``on_error``), taken back (the state file rewritten
    without it), and the publish that asked for it goes on and makes its own; every message
    arrives once."""
    import mqttsession.journal as journal_mod  # noqa: PLC0415
    from mqttsession import AsyncSession  # noqa: PLC0415

    class _Fails(FakeOs):
        armed = 0

        def fdatasync(self, fd: int) -> None:  # (the reservation's sync, and the rewrite's)
            self._fails()
            os.fdatasync(fd)

        def fsync(self, fd: int) -> None:
            self._fails()
            os.fsync(fd)

        def _fails(self) -> None:
            f = sys._getframe()
            while self.armed and f is not None and f.f_code.co_name != "reserve_ahead":
                f = f.f_back  # type: ignore[assignment]
            if self.armed and f is not None:
                self.armed -= 1
                raise OSError(errno.EIO, "injected EIO")

    disk = _Fails()
    monkeypatch.setattr(journal_mod, "os", disk)
    topic = f"mqs/{_procs.unique('rsf')}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    opts = Options(address=mosquitto.address, request_timeout_seconds=20)
    errors: list[str] = []
    state = tmp_path / "s"

    async def main() -> None:
        async with AsyncSession(opts, client_id=_procs.unique("rsf"), session_sync="interval",
                                state_file=str(state)) as s:
            s.client.on_error = lambda e: errors.append(e.description)
            for j in range(200):  # ids 1..200: the first reservation's end not near yet
                await s.publish(topic, f"m-{j}", 1)
            disk.armed = 2  # (one failed sync: the state rewritten and synced, no error)
            for j in range(200, 300):
                await s.publish(topic, f"m-{j}", 1)
            assert await s.flush(_procs.TIMEOUT)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload("m-299")
        got = [p for p, _q, _d in counter.received]
        assert sorted(got) == sorted(f"m-{j}".encode() for j in range(300))
    finally:
        counter.close()
    assert any("packet-id reservation failed" in e for e in errors), errors
    assert not disk.armed


def test_an_async_gateway_made_by_open_syncs_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``await AsyncGateway.open(dir)`` makes the gateway in a thread: the directory's syncs
    and the store's reading and syncs (30-107 ms, once, on the loop with the constructor, a
    stall hunt) never stop the loop; the gateway is the constructor's (its sessions found);
    a directory it cannot use raises from the await."""
    opts = Options(address="127.0.0.1:1")

    async def main() -> None:
        async with AsyncGateway(tmp_path / "gw") as gw:
            await (await gw.session("dev", opts, connect=False)).publish("t", b"m", 1)
        on_loop: list[str] = []
        _on_loop(monkeypatch, on_loop)
        async with AsyncGateway(tmp_path / "gw"):  # (the constructor, as before: on the loop)
            assert on_loop, "the hook sees the constructor's syncs on the loop"
        on_loop.clear()
        gw = await AsyncGateway.open(tmp_path / "gw")
        assert on_loop == [], on_loop
        async with gw:
            s = await gw.session("dev", opts, connect=False)
            assert [m.message for m in s.client.outgoing_messages] == [b"m"]
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(MQTTSessionError):
            await AsyncGateway.open(tmp_path / "file")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_cancelled_open_releases_the_gateway_it_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncGateway.open`` cancelled while its thread makes the gateway: the thread ends
    and closes what it made, so the directory is not left locked (the next ``open`` gets it,
    no ``StateLockedError``) and the store holds what it held."""
    opts = Options(address="127.0.0.1:1")
    entered, go = threading.Event(), threading.Event()

    def held(real: Any) -> Any:
        def sync(fd: int) -> None:
            if threading.current_thread() is not threading.main_thread() and not go.is_set():
                entered.set()
                go.wait(30)
            real(fd)
        return sync

    async def main() -> None:
        async with AsyncGateway(tmp_path / "gw") as gw:
            await (await gw.session("dev", opts, connect=False)).publish("t", b"m", 1)
        monkeypatch.setattr(os, "fsync", held(os.fsync))
        monkeypatch.setattr(os, "fdatasync", held(os.fdatasync))
        task = asyncio.ensure_future(AsyncGateway.open(tmp_path / "gw"))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go.set()
        for _ in range(200):  # (the thread ends the gateway it made, then lets the lock go)
            try:
                gw = await AsyncGateway.open(tmp_path / "gw")
                break
            except StateLockedError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the cancelled open's gateway still holds the directory")
        async with gw:
            s = await gw.session("dev", opts, connect=False)
            assert [m.message for m in s.client.outgoing_messages] == [b"m"]

    asyncio.run(asyncio.wait_for(main(), 60))
