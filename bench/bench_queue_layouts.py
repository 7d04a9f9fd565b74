#!/usr/bin/env python3
"""Why the disk queue is append-only segments: its cost per message against SQLite's.

    python bench/bench_queue_layouts.py [--messages N]

Each layout stores N 100-byte messages (what a publish while offline does) and then removes
them in order (what the drain does once the broker has them), without fsync (the
``SessionSync=none`` case, where the layout's own work shows; with fsync both pay one
fdatasync per durable publish):

* ``segments``: ``mqttsession.spool.Spool``: one appended frame per message, read back in
  batches, whole segments deleted;
* ``sqlite-per-message``: one row per message, one transaction each (WAL, synchronous=OFF),
  removal by ``DELETE ... WHERE seq <= ?`` per batch of 1000;
* ``sqlite-batched``: the same with 100 messages per transaction (what a batch publish could
  do; a single ``publish_*`` call cannot wait for 99 others).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time

from mqttsession.records import OutgoingMessage
from mqttsession.spool import Spool

PAYLOAD = bytes(range(100))


def segments(work: str, n: int) -> tuple[float, float]:
    sp = Spool(os.path.join(work, "s"), "bench", sync=False)
    sp.recover(0)
    t = time.perf_counter()
    for seq in range(1, n + 1):
        sp.append([OutgoingMessage(seq, 0, "bench/queue", PAYLOAD, 1, accepted_at=1.0)], sync=False)
    store = time.perf_counter() - t
    t = time.perf_counter()
    while True:
        got = sp.read(1000)
        if not got:
            break
        sp.retire(got[-1].seq + 1)
    sp.close()
    return store, time.perf_counter() - t


def sqlite(work: str, n: int, per_txn: int) -> tuple[float, float]:
    db = sqlite3.connect(os.path.join(work, f"q{per_txn}.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, topic TEXT, qos INT, payload BLOB,"
               " at REAL)")
    t = time.perf_counter()
    for seq in range(1, n + 1):
        if seq % per_txn == 1 or per_txn == 1:
            db.execute("BEGIN")
        db.execute("INSERT INTO q VALUES (?, ?, ?, ?, ?)", (seq, "bench/queue", 1, PAYLOAD, 1.0))
        if seq % per_txn == 0 or seq == n:
            db.execute("COMMIT")
    store = time.perf_counter() - t
    t = time.perf_counter()
    last = 0
    while True:
        rows = db.execute("SELECT seq, topic, qos, payload, at FROM q WHERE seq > ? ORDER BY seq"
                          " LIMIT 1000", (last,)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        db.execute("DELETE FROM q WHERE seq <= ?", (last,))
    db.close()
    return store, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=200_000)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="mqttsession-layouts-")
    try:
        n = a.messages
        for name, run in (("segments", lambda: segments(work, n)),
                          ("sqlite-per-message", lambda: sqlite(work, n, 1)),
                          ("sqlite-batched", lambda: sqlite(work, n, 100))):
            store, drain = run()
            print(f"{name:<20} store {store / n * 1e6:6.1f} us/msg   read back + remove"
                  f" {drain / n * 1e6:6.1f} us/msg")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
