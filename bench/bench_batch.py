#!/usr/bin/env python3
"""Durable publishing in batches and concurrently: ``publish_many``, 16 publishing threads and
100 concurrent asyncio publishes under ``SessionSync=always`` (group commit) against the same
under ``none``, and single publishes under ``none`` / ``interval``; the threads and asyncio
workloads again with 100 messages in memory (``disk queue``: the rest pass through it); one
mosquitto, same run.

    python bench/bench_batch.py [--messages N] [--batch B] [--repeats R] [--fsync-delay-ms D]
                                [--only WORDS] [--offline]

Each configuration publishes N 100-byte QoS 1 messages to 127.0.0.1 and waits for every
PUBACK (``flush``); rounds are interleaved; the table gives the median rate, the ratio to
``none`` with single publishes, fdatasync calls per message (journal and disk queue), the
process's CPU per message (every thread, user + system) and its voluntary context switches per
message; an ``always`` workload is also set against the same workload under ``none``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable

import time

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod
from mqttsession import Client
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.fsyncs import FsyncCounter, counting_fdatasyncs

HERE = Path(__file__).resolve().parent
PAYLOAD = bytes(range(100))
TOPIC = "bench/batch"


FSYNC_DELAY = 0.0  # seconds added to each fdatasync of a state file (--fsync-delay-ms)
OFFLINE = False  # --offline: never connected, no flush (a gateway storing to forward later)
# msgs/s; fdatasyncs, CPU µs and voluntary context switches a message
Figures = tuple[float, float, float, float]


def usage() -> tuple[float, int]:
    """CPU seconds (user + system, every thread of this process) and voluntary context
    switches so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw


def figures(n: int, took: float, syncs: int, before: tuple[float, int]) -> Figures:
    cpu, switches = usage()
    return n / took, syncs / n, (cpu - before[0]) / n * 1e6, (switches - before[1]) / n


def run(port: int, work: str, sync: str, n: int, batch: int, threads: int = 1,
        aio: int = 0, in_memory: int = 100000) -> Figures:
    """Messages per second, and fdatasyncs, CPU and voluntary context switches per message
    (``figures``): ``publish_many`` batches of ``batch``
    (> 1), or ``publish_data`` from ``threads`` threads, or ``aio`` concurrent
    ``AsyncSession.publish`` calls at a time. ``in_memory``: ``QueueInMemory`` (by default
    all in memory: the comparison is of syncs; 100, "disk queue": most go through it)."""
    if aio:
        return run_aio(port, work, sync, n, aio, in_memory)
    d = tempfile.mkdtemp(dir=work)
    c = Client(client_id=f"batch-{uuid.uuid4().hex[:8]}", clean_session=True)
    c.config(f"SessionStateFile={os.path.join(d, 's')}")
    c.config(f"SessionSync={sync}")
    c.config(f"QueueInMemory={in_memory}")
    if not OFFLINE:
        c.connect("127.0.0.1", port)
    try:
        with counting_fdatasyncs(FSYNC_DELAY) as counting:
            before = usage()
            t = time.perf_counter()
            if batch > 1:
                for i in range(0, n, batch):
                    c.publish_many([(TOPIC, 1, PAYLOAD)] * min(batch, n - i))
            elif threads > 1:
                def worker(count: int) -> None:
                    for _ in range(count):
                        c.publish_data(TOPIC, 1, PAYLOAD)
                # n in all, whatever n is (each thread n // threads, the first ones one more)
                ts = [threading.Thread(target=worker, args=(n // threads + (k < n % threads),))
                      for k in range(threads)]
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
            else:
                for _ in range(n):
                    c.publish_data(TOPIC, 1, PAYLOAD)
            if not OFFLINE and not c.flush(300):
                raise RuntimeError("not acknowledged")
            took = time.perf_counter() - t
            done = figures(n, took, counting.syncs, before)
    finally:
        c.close()
        shutil.rmtree(d, ignore_errors=True)
    return done


def run_aio(port: int, work: str, sync: str, n: int, concurrent: int,
            in_memory: int = 100000) -> Figures:
    import asyncio

    from mqttsession import AsyncSession, Options

    d = tempfile.mkdtemp(dir=work)
    counting = FsyncCounter(FSYNC_DELAY)

    async def main() -> Figures:
        opts = Options(address=f"127.0.0.1:{port}")
        session = AsyncSession(opts, client_id=f"batch-{uuid.uuid4().hex[:8]}",
                               state_file=os.path.join(d, "a"), session_sync=sync)
        s = session
        await s.start(connect=not OFFLINE)
        try:
            await s.config(f"QueueInMemory={in_memory}")
            journal_mod.os = counting  # type: ignore[assignment]  # (see counting_fdatasyncs)
            spool_mod.os = counting  # type: ignore[assignment]
            before = usage()
            t = time.perf_counter()
            for i in range(0, n, concurrent):  # n in all (the last round: what is left)
                await asyncio.gather(*(s.publish(TOPIC, PAYLOAD, 1)
                                       for _ in range(min(concurrent, n - i))))
            if not OFFLINE:
                await s.flush()
            return figures(n, time.perf_counter() - t, counting.syncs, before)
        finally:
            await s.close()

    try:
        return asyncio.run(main())
    finally:
        journal_mod.os = os  # type: ignore[assignment]
        spool_mod.os = os  # type: ignore[assignment]
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", "-r", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated words: run the configurations"
                   " whose name holds one of them (plus 'none, publish_data', the base)")
    p.add_argument("--fsync-delay-ms", type=float, default=0.0,
                   help="make every fdatasync of a state file this much slower, as a slower"
                        " disk would be (an SD card: 2-20)")
    p.add_argument("--offline", action="store_true",
                   help="publish without connecting (the clock stops at the last publish):"
                        " storing to forward later, the disk queue's case")
    a = p.parse_args()
    global FSYNC_DELAY, OFFLINE
    FSYNC_DELAY, OFFLINE = a.fsync_delay_ms / 1000, a.offline
    configs: list[tuple[str, Callable[[int, str], tuple[float, float]]]] = [
        ("none, publish_data", lambda port, w: run(port, w, "none", a.messages, 1)),
        ("interval, publish_data", lambda port, w: run(port, w, "interval", a.messages, 1)),
        ("always, publish_data", lambda port, w: run(port, w, "always", a.messages, 1)),
        (f"always, publish_many({a.batch})",
         lambda port, w: run(port, w, "always", a.messages, a.batch)),
        (f"none, publish_many({a.batch})",
         lambda port, w: run(port, w, "none", a.messages, a.batch)),
        ("always, 16 threads", lambda port, w: run(port, w, "always", a.messages, 1, 16)),
        ("none, 16 threads", lambda port, w: run(port, w, "none", a.messages, 1, 16)),
        ("always, asyncio x100", lambda port, w: run(port, w, "always", a.messages, 1, 1, 100)),
        ("none, asyncio x100", lambda port, w: run(port, w, "none", a.messages, 1, 1, 100)),
        # the same with 100 messages in memory: the rest pass through the disk queue
        ("always, 16 threads, disk queue",
         lambda port, w: run(port, w, "always", a.messages, 1, 16, in_memory=100)),
        ("none, 16 threads, disk queue",
         lambda port, w: run(port, w, "none", a.messages, 1, 16, in_memory=100)),
        ("always, asyncio x100, disk queue",
         lambda port, w: run(port, w, "always", a.messages, 1, 1, 100, in_memory=100)),
        ("none, asyncio x100, disk queue",
         lambda port, w: run(port, w, "none", a.messages, 1, 1, 100, in_memory=100)),
    ]
    if a.only:
        words = [w.strip() for w in a.only.split(",") if w.strip()]
        configs = [c for c in configs
                   if c[0] == "none, publish_data" or any(w in c[0] for w in words)]
    work = tempfile.mkdtemp(prefix="mqttsession-batch-")
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"))
    broker.start()
    res: dict[str, list[Figures]] = {}
    try:
        for r in range(a.repeats):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for name, fn in order:
                res.setdefault(name, []).append(fn(broker.port, work))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(x[0] for x in res["none, publish_data"])
    print(f"{a.messages} QoS 1 messages, 100 bytes, median of {a.repeats} interleaved rounds"
          + (f"; every fdatasync {a.fsync_delay_ms:g} ms slower" if FSYNC_DELAY else "")
          + ("; offline (no broker connection, no flush)" if OFFLINE else ""))
    for name, _ in configs:
        rate = statistics.median(x[0] for x in res[name])
        syncs = statistics.median(x[1] for x in res[name])
        # an ``always`` workload against the same workload under ``none`` too
        same = "none," + name.split(",", 1)[1] if name.startswith("always,") else ""
        versus = (f"  {rate / statistics.median(x[0] for x in res[same]):5.2f}x {same}"
                  if same in res and same != "none, publish_data" else "")
        cpu = statistics.median(x[2] for x in res[name])
        switches = statistics.median(x[3] for x in res[name])
        print(f"  {name:<33} {rate:8.0f} msgs/s  {rate / base:5.2f}x none  {syncs:.3f}"
              f" fdatasync/msg  {cpu:5.0f} µs CPU/msg  {switches:4.1f} cs/msg{versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
