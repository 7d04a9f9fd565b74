#!/usr/bin/env python3
"""Durable publishing in batches: ``publish_many`` under ``SessionSync=always`` against
single publishes under ``none`` and ``interval``, one mosquitto, same run.

    python bench/bench_batch.py [--messages N] [--batch B] [--repeats R]

Each configuration publishes N 100-byte QoS 1 messages to 127.0.0.1 and waits for every
PUBACK (``flush``); rounds are interleaved; the table gives the median rate, the ratio to
``none`` with single publishes, and fdatasync calls per message (journal and disk queue).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import time

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod
from mqttsession import Client
from mqttsession.testing import MosquittoBroker

HERE = Path(__file__).resolve().parent
PAYLOAD = bytes(range(100))
TOPIC = "bench/batch"


class _Counting:
    def __init__(self) -> None:
        self.syncs = 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        with self.lock:
            self.syncs += 1
        os.fdatasync(fd)


def run(port: int, work: str, sync: str, n: int, batch: int) -> tuple[float, float]:
    """Messages per second and fdatasyncs per message."""
    d = tempfile.mkdtemp(dir=work)
    c = Client(client_id=f"batch-{uuid.uuid4().hex[:8]}", clean_session=True)
    c.config(f"SessionStateFile={os.path.join(d, 's')}")
    c.config(f"SessionSync={sync}")
    c.config("QueueInMemory=100000")  # the comparison is of syncs, not of the disk queue
    counting = _Counting()
    c.connect("127.0.0.1", port)
    journal_mod.os = counting  # type: ignore[assignment]
    spool_mod.os = counting  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        if batch > 1:
            for i in range(0, n, batch):
                c.publish_many([(TOPIC, 1, PAYLOAD)] * min(batch, n - i))
        else:
            for _ in range(n):
                c.publish_data(TOPIC, 1, PAYLOAD)
        if not c.flush(300):
            raise RuntimeError("not acknowledged")
        took = time.perf_counter() - t
    finally:
        journal_mod.os = os  # type: ignore[assignment]
        spool_mod.os = os  # type: ignore[assignment]
        c.close()
        shutil.rmtree(d, ignore_errors=True)
    return n / took, counting.syncs / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", "-r", type=int, default=5)
    a = p.parse_args()
    configs: list[tuple[str, Callable[[int, str], tuple[float, float]]]] = [
        ("none, publish_data", lambda port, w: run(port, w, "none", a.messages, 1)),
        ("interval, publish_data", lambda port, w: run(port, w, "interval", a.messages, 1)),
        ("always, publish_data", lambda port, w: run(port, w, "always", a.messages, 1)),
        (f"always, publish_many({a.batch})",
         lambda port, w: run(port, w, "always", a.messages, a.batch)),
        (f"none, publish_many({a.batch})",
         lambda port, w: run(port, w, "none", a.messages, a.batch)),
    ]
    work = tempfile.mkdtemp(prefix="mqttsession-batch-")
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"))
    broker.start()
    res: dict[str, list[tuple[float, float]]] = {}
    try:
        for r in range(a.repeats):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for name, fn in order:
                res.setdefault(name, []).append(fn(broker.port, work))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(x[0] for x in res["none, publish_data"])
    print(f"{a.messages} QoS 1 messages, 100 bytes, median of {a.repeats} interleaved rounds")
    for name, _ in configs:
        rate = statistics.median(x[0] for x in res[name])
        syncs = statistics.median(x[1] for x in res[name])
        print(f"  {name:<28} {rate:8.0f} msgs/s  {rate / base:5.2f}x none  {syncs:.3f} fdatasync/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
