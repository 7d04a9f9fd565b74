#!/usr/bin/env python3
"""How long an ``AsyncGateway``'s event loop stops while its sessions spill into their disk
queues on a slow card, this checkout against another commit, same run.

    python bench/bench_loop_stall.py [--against REV] [--fsync-ms MS] [--repeats R]
                          [--scenarios offline,connected,takeback,compaction,subscriber,
                                       interval,spool,rotation,open]

Every ``os.fdatasync`` / ``os.fsync`` of the child process first sleeps ``--fsync-ms`` (the
GIL released, as a real one: an SD card's 20-50 ms). A task on the loop sleeps 10 ms at a
time and records how late it wakes (the loop's lag) while:

* ``offline``: 50 sessions (no broker), ``QueueInMemory=20``, 4 tasks a session each await 15
  QoS 1 publishes, and one task awaits 10 ``gw.publish_many`` of a message of every session;
* ``connected``: 30 sessions connected to ONE mosquitto (``max_inflight_messages 5``),
  ``QueueInMemory=5``, 8 tasks a session each await 15 QoS 1 publishes; then ``flush``;
* ``takeback``: one ``AsyncSession`` (its own state file, offline) holding 500 messages;
  one publish's fdatasync fails (EIO): the publish is taken back (the file rewritten without
  it and synced) and raises.
* ``compaction``: one ``AsyncSession`` (its own state file) connected to the mosquitto,
  ``MaxInflight=5``, 50 tasks each awaiting 200 QoS 1 publishes of 200 bytes: its journal
  passes 1 MiB, and is compacted (a snapshot written and synced), every ~4,000 of them.
* ``subscriber``: one ``AsyncSession`` (its own state file, ``JournalMaxBytes=8192``)
  receiving 5,000 QoS 2 messages of 200 bytes that another session on the same loop
  publishes meanwhile, each taken with ``receive()`` (which acks the one before): its read
  batches' and acks' records pass the bound, and are compacted, every ~30 messages.
* ``interval``: 100 gateway sessions (no broker) under ``SessionSync=interval``
  (``SessionSyncInterval=50``), a task each awaiting 600 QoS 1 publishes: each session's
  packet ids come from reservations of 256 (synced at once), two or three of them each.
* ``spool``: one ``AsyncSession`` (its own state file, offline) under ``SessionSync=interval``,
  ``QueueInMemory=5``, ``QueueSegmentBytes=65536``, 4 tasks each awaiting 500 QoS 2 publishes
  of 1,000 bytes: ~31 disk-queue segments sealed and begun (synced at once).
* ``rotation``: 20 ``AsyncGateway`` sessions connected to the mosquitto, the shared log's
  bound set to 256 KiB (``store.max_log_bytes``), 4 tasks a session each awaiting 150 QoS 1
  publishes of 200 bytes: the log is rewritten (rotated) every ~1,000 records.
* ``open``: five gateway directories of 20 stored sessions each (a held message each) made
  ready first; watched: five gateways made on them, by ``await AsyncGateway.open``
  where the tree has it, else by the constructor (on the loop); closed after the watch.

``SessionSync=always`` (the gateway's default) but in ``interval``. Reported per tree,
median over the rounds: the longest stop, the 99th percentile, stops over 100 ms, and the
run's seconds. Each round runs each tree in a child process whose ``PYTHONPATH`` names it,
alternating the order; the other tree is a temporary git worktree of REV.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Awaitable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _slow_disk(seconds: float) -> None:
    for name in ("fdatasync", "fsync"):
        real = getattr(os, name)

        def slow(fd: int, _real: Any = real) -> None:
            time.sleep(seconds)
            _real(fd)
        setattr(os, name, slow)


class _Lags:
    """A loop task that sleeps 10 ms at a time and records how late it wakes."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = False
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            t = loop.time()
            await asyncio.sleep(0.01)
            self.lags.append(loop.time() - t - 0.01)

    async def stop(self) -> list[float]:
        self._stop = True
        await self._task
        return self.lags


async def _take_back() -> tuple[list[float], float]:
    import errno  # noqa: PLC0415

    from mqttsession import AsyncSession, Options, PersistenceError  # noqa: PLC0415

    real, armed = os.fdatasync, [False]

    def eio_once(fd: int) -> None:
        if armed[0]:
            armed[0] = False
            raise OSError(errno.EIO, "Input/output error (bench)")
        real(fd)
    os.fdatasync = eio_once
    lags: list[float] = []
    s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="takeback",
                                  state_file=os.path.join(tempfile.mkdtemp(), "s"),
                                  session_sync="always", connect=False)
    try:
        await s.publish_many([("t", 1, b"x" * 100)] * 500)


        watcher = _Lags()
        await asyncio.sleep(0.05)
        armed[0] = True
        t0 = time.perf_counter()
        try:
            await s.publish("t", b"failed", 1)
        except PersistenceError:
            pass
        else:
            raise AssertionError("the publish whose sync failed returned")
        took = time.perf_counter() - t0
        lags = await watcher.stop()
    finally:
        await s.close()
    return lags, took


async def _compaction(address: str) -> tuple[list[float], float]:
    from mqttsession import AsyncSession, Options  # noqa: PLC0415

    lags: list[float] = []
    async with AsyncSession(Options(address=address), client_id="compaction",
                            state_file=os.path.join(tempfile.mkdtemp(), "s"),
                            session_sync="always") as s:
        await s.config("MaxInflight=5")


        async def publish(k: int) -> None:
            for j in range(200):
                await s.publish("bench/compaction", b"%d-%d " % (k, j) + b"x" * 190, 1)

        watcher = _Lags()
        t0 = time.perf_counter()
        await asyncio.gather(*(publish(k) for k in range(50)))
        assert await s.flush(120)
        took = time.perf_counter() - t0
        lags = await watcher.stop()
    return lags, took


async def _subscriber(address: str) -> tuple[list[float], float]:
    from mqttsession import AsyncSession, Options  # noqa: PLC0415

    opts = Options(address=address, request_timeout_seconds=60)
    async with AsyncSession(opts, client_id="subscriber", session_sync="always",
                            state_file=os.path.join(tempfile.mkdtemp(), "s")) as sub, \
            AsyncSession(opts, client_id="publisher") as pub:
        await sub.config("JournalMaxBytes=8192")
        await pub.config("MaxInflight=5")  # (the broker's max_inflight_messages)
        await sub.subscribe("bench/subscriber", 2)

        async def publish() -> None:
            for j in range(5000):
                await pub.publish("bench/subscriber", b"%d " % j + b"x" * 195, 2)

        watcher = _Lags()
        t0 = time.perf_counter()
        sending = asyncio.ensure_future(publish())
        for _ in range(5000):
            assert await sub.receive(60) is not None
        await sub.ack()
        await sending
        took = time.perf_counter() - t0
        lags = await watcher.stop()
    return lags, took


async def _interval() -> tuple[list[float], float]:
    from mqttsession import AsyncGateway, Options  # noqa: PLC0415

    gw = AsyncGateway(tempfile.mkdtemp(prefix="loop-stall-"))
    try:
        ss = [await gw.session(f"iv{i:03d}", Options(address="127.0.0.1:1"), connect=False,
                               session_sync="interval") for i in range(100)]
        for s in ss:
            await s.config("SessionSyncInterval=50")

        async def publish(s: Any) -> None:
            for j in range(600):
                await s.publish(f"dev/{s.client_id}", f"{j}", 1)

        watcher = _Lags()
        t0 = time.perf_counter()
        await asyncio.gather(*(publish(s) for s in ss))
        took = time.perf_counter() - t0
        lags = await watcher.stop()
    finally:
        await gw.close()
    return lags, took


async def _spool() -> tuple[list[float], float]:
    from mqttsession import AsyncSession, Options  # noqa: PLC0415

    state = os.path.join(tempfile.mkdtemp(prefix="loop-stall-"), "s")
    s = AsyncSession(Options(address="127.0.0.1:1"), client_id="spool", state_file=state,
                     session_sync="interval")
    await s.start(connect=False)
    try:
        await s.config("QueueInMemory=5")
        await s.config("QueueSegmentBytes=65536")

        async def publish() -> None:
            for _ in range(500):
                await s.publish("dev/spool", b"x" * 1000, 2)

        return await _watched(asyncio.gather(*(publish() for _ in range(4))))
    finally:
        await s.close()


async def _watched(work: Awaitable[Any]) -> tuple[list[float], float]:
    """``work`` awaited while ``_Lags`` watches: the loop's lags and the seconds it took."""
    watcher = _Lags()
    t0 = time.perf_counter()
    await work
    took = time.perf_counter() - t0
    return await watcher.stop(), took


async def _rotation(address: str) -> tuple[list[float], float]:
    from mqttsession import AsyncGateway, Options  # noqa: PLC0415

    gw = AsyncGateway(tempfile.mkdtemp(prefix="loop-stall-"))
    gw.store.max_log_bytes = 256 * 1024
    try:
        ss = [await gw.session(f"rot{i:02d}", Options(address=address)) for i in range(20)]

        async def publish(s: Any) -> None:
            for j in range(150):
                await s.publish(f"dev/{s.client_id}", b"x" * 200, 1)

        async def work() -> None:
            await asyncio.gather(*(publish(s) for s in ss for _ in range(4)))
            for s in ss:
                assert await s.flush(120)
        return await _watched(work())
    finally:
        await gw.close()


async def _open() -> tuple[list[float], float]:
    from mqttsession import AsyncGateway, Options  # noqa: PLC0415

    dirs = [tempfile.mkdtemp(prefix="loop-stall-") for _ in range(5)]
    for d in dirs:
        async with AsyncGateway(d) as gw:
            for i in range(20):
                s = await gw.session(f"o{i:02d}", Options(address="127.0.0.1:1"),
                                     connect=False)
                await s.publish("dev/open", b"x", 1)
    made = getattr(AsyncGateway, "open", None)  # (an older tree: the constructor)
    watcher = _Lags()
    await asyncio.sleep(0.05)  # (the watcher waiting in its sleep)
    t0 = time.perf_counter()
    gws = []
    for d in dirs:
        gws.append(await made(d) if made is not None else AsyncGateway(d))
        await asyncio.sleep(0)
    took = time.perf_counter() - t0
    await asyncio.sleep(0.05)  # (its last wake-up seen)
    lags = await watcher.stop()
    for gw in gws:
        await gw.close()
    return lags, took


async def _scenario(name: str, address: str) -> tuple[list[float], float]:
    from mqttsession import AsyncGateway, Options  # the tree under test is on PYTHONPATH

    if name == "open":
        return await _open()
    if name == "interval":
        return await _interval()
    if name == "spool":
        return await _spool()
    if name == "rotation":
        return await _rotation(address)
    if name == "takeback":
        return await _take_back()
    if name == "compaction":
        return await _compaction(address)
    if name == "subscriber":
        return await _subscriber(address)
    offline = name == "offline"
    n, in_memory, tasks = (50, 20, 4) if offline else (30, 5, 8)
    gw = AsyncGateway(tempfile.mkdtemp(prefix="loop-stall-"))
    lags: list[float] = []
    try:
        ss = []
        for i in range(n):
            s = await gw.session(f"dev{i:03d}", Options(address=address), connect=False)
            await s.config(f"QueueInMemory={in_memory}")
            await s.config("QueueSegmentBytes=4096")
            ss.append(s)
        if not offline:
            for s in ss:
                await s.connect()


        async def publish(s: Any, k: int) -> None:
            for j in range(15):
                await s.publish(f"dev/{s.client_id}", f"{k}-{j}", 1)

        async def batches() -> None:
            for r in range(10):
                await gw.publish_many([(s, f"dev/{s.client_id}", 1, f"b{r}") for s in ss])

        watcher = _Lags()
        t0 = time.perf_counter()
        await asyncio.gather(*(publish(s, k) for s in ss for k in range(tasks)),
                             *([batches()] if offline else []))
        for s in [] if offline else ss:
            assert await s.flush(120)
        took = time.perf_counter() - t0
        lags = await watcher.stop()
    finally:
        await gw.close()
    return lags, took


def child(name: str, address: str, fsync_ms: float) -> None:
    _slow_disk(fsync_ms / 1000)
    lags, took = asyncio.run(_scenario(name, address))
    lags.sort()
    print(f"{lags[-1] * 1000:.1f} {lags[int(len(lags) * 0.99)] * 1000:.1f}"
          f" {sum(x > 0.1 for x in lags)} {took:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD~1")
    p.add_argument("--fsync-ms", type=float, default=50.0)
    p.add_argument("--repeats", "-r", type=int, default=3)
    p.add_argument("--scenarios", default="offline,connected")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], float(a.child[2]))
        return 0
    sys.path.insert(0, str(ROOT))
    from mqttsession.testing import MosquittoBroker

    other = Path(tempfile.mkdtemp(prefix="mqttsession-stall-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other),
                    a.against], check=True)
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"),
                             extra_config="max_inflight_messages 5\nmax_queued_messages 0")
    broker.start()
    trees = {"old": str(other), "new": str(ROOT)}
    scenarios = a.scenarios.split(",")
    res: dict[tuple[str, str], list[list[float]]] = {}
    try:
        for r in range(a.repeats):
            for sc in scenarios:
                for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    address = "127.0.0.1:1" if sc in ("offline", "spool", "open") else \
                        f"{broker.host}:{broker.port}"
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", sc, address, str(a.fsync_ms)],
                        env=dict(os.environ, PYTHONPATH=trees[name]), capture_output=True,
                        text=True, check=True, timeout=600)
                    res.setdefault((sc, name), []).append(
                        [float(x) for x in out.stdout.split()])
    finally:
        broker.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                       check=False)
    print(f"event loop stops, fdatasync {a.fsync_ms:g} ms, median of {a.repeats} rounds;"
          f" old = {a.against}")
    print(f"{'scenario':<10} {'tree':<4} {'longest ms':>10} {'p99 ms':>7} {'>100 ms':>8}"
          f" {'run s':>6}")
    for sc in scenarios:
        for name in ("old", "new"):
            rows = res[(sc, name)]
            med = [statistics.median(x[i] for x in rows) for i in range(4)]
            print(f"{sc:<10} {name:<4} {med[0]:>10.0f} {med[1]:>7.0f} {med[2]:>8.0f}"
                  f" {med[3]:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
