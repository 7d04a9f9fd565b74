#!/usr/bin/env python3
"""Publish throughput: plain paho-mqtt 2.x vs mqttsession, against ONE mosquitto on 127.0.0.1.

    python bench/bench_throughput.py [--messages N] [--sync-messages M] [--repeats R] [--json]
                                     [--broker-log] [--fsync-delay-ms D]

What is timed, for each configuration and QoS 1 / QoS 2, 100-byte payloads:

* ``paho``: a plain ``paho.mqtt.client.Client`` (CallbackAPIVersion.VERSION2,
  ``max_inflight_messages_set(20)``) publishes N messages, then waits until ``on_publish`` has
  fired N times (PUBACK for QoS 1, PUBCOMP for QoS 2);
* ``mqttsession``, no state file: ``publish_data`` N times, then ``flush()``;
* ``mqttsession``, ``SessionStateFile`` + ``SessionSync=none``;
* ``mqttsession``, ``SessionStateFile`` + ``SessionSync=always`` (M messages: each costs one or two
  fdatasyncs, so this run uses fewer messages; the result is a rate all the same).

The clock runs from the first publish to the last acknowledgement; connecting, opening the state
file and disconnecting are outside it. Every configuration runs ``--repeats`` times, interleaved
(the order rotates every round) so that drift of the machine hits all of them alike; the table
shows the median and the best round, and the ratio of medians against paho for the same QoS.

The disk's raw fsync latency (``os.fdatasync`` after a 100-byte append, median of 200) is
measured in the same directory the state files live in, and printed: it bounds SessionSync=always.
So is the same written over zeros written first, as the state files are written since session 16
(no size change to commit: the faster of the two, so the higher ceiling, and the one issue
13's goal for ``always`` is judged on; both are printed). The table's last column checks issue
13's goals: ``none`` at least 1.2x paho, ``interval`` at least 0.95x ``none``, ``always`` (one
publishing thread) at least 0.8 of that ceiling. The run's start and end times and the load
average are printed, so that a run overlapping another can be told.
``--fsync-delay-ms D`` makes every fdatasync of a state file, and that figure, D ms slower (a
sleep first, the GIL released as in a real one): a stand-in for a slower disk such as a
gateway's SD card (2-20 ms), where the CPU a message matters less than on this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod
from mqttsession import Client
from mqttsession.testing import MosquittoBroker

HERE = Path(__file__).resolve().parent
CONF = HERE / "mosquitto-bench.conf"
TOPIC = "bench/throughput"
PAYLOAD = bytes(range(100))  # 100 bytes
WINDOW = 20  # the in-flight window of both clients (mqttsession's default MaxInflight)
TIMEOUT = 300.0

# issue 13's goals, same QoS, same run: (what the ratio is against, at least)
#   none: 1.2x plain paho; interval: 0.95x none; always, one publishing thread: 0.8 of the
#   fdatasync ceiling over zeros written ahead (the way the state files are written)
TARGETS: dict[str, tuple[str, float]] = {
    "mqttsession-sync-none": ("paho", 1.2),
    "mqttsession-sync-interval": ("mqttsession-sync-none", 0.95),
    "mqttsession-sync-always": ("ceiling", 0.8),
}


# ------------------------------------------------------------------------------- the disk


def fsync_latency(directory: str, samples: int = 200, size: int = 100,
                  delay: float = 0.0, ahead: bool = False) -> dict[str, float]:
    """Median / p90 / min of ``os.fdatasync`` after appending ``size`` bytes (milliseconds), each ``delay`` seconds slower (``--fsync-delay-ms``). ``ahead``: written
    over zeros written first, as the journal and the disk queue write under
    ``SessionSync=always`` since session 16 (no size change for the fdatasync to commit)."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if ahead else os.O_APPEND), 0o600)
    if ahead:
        os.write(fd, bytes(size * (samples + 20)))
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    data = b"x" * size
    times = []
    try:
        for _ in range(10):  # warm up: allocate the first blocks
            os.write(fd, data)
            os.fdatasync(fd)
        for _ in range(samples):
            os.write(fd, data)
            t0 = time.perf_counter()
            if delay:
                time.sleep(delay)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(len(times) * 0.9)],
        "min_ms": times[0],
        "samples": samples,
    }


# ------------------------------------------------------------------------------- the runs


def run_paho(host: str, port: int, n: int, qos: int) -> float:
    """Seconds to publish ``n`` messages and see every one acknowledged, plain paho."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{uuid.uuid4().hex[:8]}",
                    clean_session=True)
    c.max_inflight_messages_set(WINDOW)
    connected = threading.Event()
    done = threading.Event()
    count = 0

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            connected.set()

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect(host, port, 60)
    c.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("paho: no CONNACK")
        t0 = time.perf_counter()
        for _ in range(n):
            c.publish(TOPIC, PAYLOAD, qos)
        if not done.wait(TIMEOUT):
            raise RuntimeError(f"paho: only {count}/{n} acknowledged in {TIMEOUT} s")
        return time.perf_counter() - t0
    finally:
        c.disconnect()
        c.loop_stop()


FSYNC_DELAY = 0.0  # seconds added to each fdatasync of a state file (--fsync-delay-ms)


class _CountingOs:
    """``os`` for mqttsession.journal and .spool (the disk queue), counting fdatasync calls
    (SessionSync=always and interval runs), each ``FSYNC_DELAY`` slower."""

    def __init__(self) -> None:
        self.fdatasyncs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1
        if FSYNC_DELAY:
            time.sleep(FSYNC_DELAY)
        os.fdatasync(fd)


# fdatasync calls a message, by mode (always, interval) and QoS
FSYNCS_PER_MSG: dict[str, dict[int, list[float]]] = {m: {1: [], 2: []} for m in ("always", "interval")}


def run_mqttsession(host: str, port: int, n: int, qos: int, sync: str | None,
                    workdir: str) -> float:
    """Seconds to ``publish_data`` ``n`` messages and ``flush()``; ``sync`` None = no state file."""
    cid = f"bench-ms-{uuid.uuid4().hex[:8]}"
    c = Client(client_id=cid, clean_session=True)
    c.config(f"MaxInflight={WINDOW}")
    statedir = None
    if sync is not None:
        statedir = tempfile.mkdtemp(prefix="state-", dir=workdir)
        c.config(f"SessionStateFile={os.path.join(statedir, 'session.json')}")
        c.config(f"SessionSync={sync}")
    counting = _CountingOs()
    try:
        c.connect(host, port, timeout=10)
        if sync in FSYNCS_PER_MSG:
            journal_mod.os = counting  # type: ignore[assignment]
            spool_mod.os = counting  # type: ignore[assignment]
        t0 = time.perf_counter()
        for _ in range(n):
            c.publish_data(TOPIC, qos, PAYLOAD)
        if not c.flush(TIMEOUT):
            raise RuntimeError(f"mqttsession: {len(c.outgoing_messages)} of {n} unacknowledged"
                               f" after {TIMEOUT} s")
        secs = time.perf_counter() - t0
        if sync in FSYNCS_PER_MSG:
            FSYNCS_PER_MSG[sync][qos].append(counting.fdatasyncs / n)
        return secs
    finally:
        journal_mod.os = os  # type: ignore[assignment]
        spool_mod.os = os  # type: ignore[assignment]
        c.close()
        if statedir is not None:
            shutil.rmtree(statedir, ignore_errors=True)


CONFIGS: list[tuple[str, str]] = [
    ("paho", "plain paho-mqtt 2.2 (VERSION2)"),
    ("mqttsession-no-file", "mqttsession, no state file"),
    ("mqttsession-sync-none", "mqttsession, state file, SessionSync=none"),
    ("mqttsession-sync-always", "mqttsession, state file, SessionSync=always"),
    ("mqttsession-sync-interval", "mqttsession, state file, SessionSync=interval"),
]


def runner(name: str, host: str, port: int, workdir: str) -> Callable[[int, int], float]:
    if name == "paho":
        return lambda n, q: run_paho(host, port, n, q)
    sync = {"mqttsession-no-file": None, "mqttsession-sync-none": "none",
            "mqttsession-sync-always": "always", "mqttsession-sync-interval": "interval"}[name]
    return lambda n, q: run_mqttsession(host, port, n, q, sync, workdir)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", "-n", type=int, default=5000,
                    help="messages per run for paho, no-file and SessionSync=none (default 5000)")
    ap.add_argument("--sync-messages", type=int, default=None,
                    help="messages per run for SessionSync=always (default N; lower it on a slow disk)")
    ap.add_argument("--repeats", "-r", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--workdir", default=None,
                    help="directory for state files (default: a temp dir in $TMPDIR)")
    ap.add_argument("--only", default="", help="comma-separated subset of " +
                    ",".join(n for n, _ in CONFIGS))
    ap.add_argument("--fsync-delay-ms", type=float, default=0.0,
                    help="make every fdatasync of a state file (and the disk's own figure)"
                         " this much slower, as a slower disk would be (an SD card: 2-20)")
    args = ap.parse_args(argv)
    global FSYNC_DELAY
    FSYNC_DELAY = args.fsync_delay_ms / 1000
    n = args.messages
    n_sync = args.sync_messages if args.sync_messages is not None else n
    names = [c for c, _ in CONFIGS]
    if args.only:
        names = [x for x in names if x in args.only.split(",")]

    workdir = tempfile.mkdtemp(prefix="mqttsession-bench-", dir=args.workdir)
    out = sys.stderr if args.json else sys.stdout
    broker = MosquittoBroker(str(CONF))
    broker.start()
    try:
        disk = fsync_latency(workdir, delay=FSYNC_DELAY)
        over = fsync_latency(workdir, delay=FSYNC_DELAY, ahead=True)
        if FSYNC_DELAY:
            print(f"every fdatasync made {args.fsync_delay_ms:g} ms slower (--fsync-delay-ms)",
                  file=out)
        print(f"fdatasync after a 100-byte append ({workdir}): median {disk['median_ms']:.3f} ms,"
              f" p90 {disk['p90_ms']:.3f} ms, min {disk['min_ms']:.3f} ms"
              f" ({disk['samples']} samples); written over zeros: median {over['median_ms']:.3f}"
              " ms", file=out)
        print(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}", file=out)
        load0 = os.getloadavg()
        print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
              f" on {os.cpu_count()} CPUs", file=out)
        print(f"mosquitto pid {broker.pid} on {broker.address}; {n} messages"
              f" ({n_sync} for SessionSync=always), 100-byte payloads, window {WINDOW},"
              f" {args.repeats} interleaved rounds", file=out)
        run = {name: runner(name, broker.host, broker.port, workdir) for name in names}
        # warm-up: imports, JIT-free but caches, the broker's allocator
        for name in names:
            for qos in (1, 2):
                run[name](min(200, n), qos)
        results: dict[str, dict[int, list[float]]] = {x: {1: [], 2: []} for x in names}
        jobs = [(name, qos) for name in names for qos in (1, 2)]
        for rnd in range(args.repeats):
            k = rnd * 3 % len(jobs)
            for name, qos in jobs[k:] + jobs[:k]:
                count = n_sync if name == "mqttsession-sync-always" else n
                secs = run[name](count, qos)
                rate = count / secs
                results[name][qos].append(rate)
                print(f"  round {rnd + 1}: {name:<24} QoS {qos}: {rate:9.0f} msgs/s"
                      f" ({count} in {secs:.3f} s)", file=out)
        print(f"ended {time.strftime('%Y-%m-%d %H:%M:%S')}", file=out)
        load1 = os.getloadavg()
        print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}", file=out)
    finally:
        broker.stop()
        broker.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    table = []
    for name, label in CONFIGS:
        if name not in results:
            continue
        for qos in (1, 2):
            rates = results[name][qos]
            med = statistics.median(rates)
            base = statistics.median(results["paho"][qos]) if "paho" in results else None
            ratio = med / base if base else None
            goal = TARGETS.get(name)
            against = None
            if goal is not None and goal[0] == "ceiling":
                against = 1000 / over["median_ms"]
            elif goal is not None and goal[0] in results:
                against = statistics.median(results[goal[0]][qos])
            table.append({
                "config": name, "label": label, "qos": qos,
                "messages": n_sync if name == "mqttsession-sync-always" else n,
                "median_msgs_per_s": round(med, 1), "best_msgs_per_s": round(max(rates), 1),
                "rounds": [round(r, 1) for r in rates],
                "ratio_vs_paho": None if ratio is None else round(ratio, 3),
                "goal_against": None if goal is None else goal[0],
                "goal_ratio": None if goal is None else goal[1],
                "goal_measured": None if not against else round(med / against, 3),
                "goal_met": None if (goal is None or not against) else med / against >= goal[1],
            })

    print(file=out)
    print(f"{'configuration':<46} {'QoS':>3} {'median msg/s':>12} {'best msg/s':>11}"
          f" {'x paho':>7}  issue 13's goal (measured)", file=out)
    short = {"paho": "paho", "mqttsession-sync-none": "none", "ceiling": "fsync ceiling"}
    for row in table:
        ratio = "" if row["ratio_vs_paho"] is None else f"{row['ratio_vs_paho']:.2f}"
        tgt = "" if row["goal_met"] is None else (
            f">={row['goal_ratio']:.2f}x {short[row['goal_against']]}"
            f" ({row['goal_measured']:.2f}) " + ("ok" if row["goal_met"] else "MISS"))
        print(f"{row['label']:<46} {row['qos']:>3} {row['median_msgs_per_s']:>12.0f}"
              f" {row['best_msgs_per_s']:>11.0f} {ratio:>7}  {tgt}", file=out)
    fsyncs, fsyncs_interval = ({q: round(statistics.median(v), 2) for q, v in by_qos.items() if v}
                               for by_qos in (FSYNCS_PER_MSG["always"], FSYNCS_PER_MSG["interval"]))
    if fsyncs_interval:
        print("\nSessionSync=interval: fdatasync calls per message (median): "
              + ", ".join(f"QoS {q} {v}" for q, v in fsyncs_interval.items())
              + ". QoS 2: a read batch's PUBREC records are synced before their PUBRELs leave"
              " (the acks that depend on a record wait for its sync), so each such batch waits"
              " for one fdatasync on the network thread.", file=out)
    if fsyncs:
        bound = 1000 / disk["median_ms"]
        print("\nSessionSync=always: fdatasync calls per message (median): "
              + ", ".join(f"QoS {q} {v}" for q, v in fsyncs.items())
              + f". One per publish_* is the floor (persistence point 1): <= {bound:.0f} msgs/s"
              " from the disk alone; the PUBREC records of a read batch share one (so QoS 2's count"
              " varies with the disk's latency: how many PUBRECs one sync covers).", file=out)
        floor = 1000 / over["median_ms"]
        for row in table:
            if "SessionSync=always" in row["label"] and row["qos"] == 1:
                print(f"SessionSync=always, one publishing thread, QoS 1:"
                      f" {row['median_msgs_per_s'] / bound:.2f} of that ceiling;"
                      f" {row['median_msgs_per_s'] / floor:.2f} of {floor:.0f} msgs/s, the"
                      " ceiling of fdatasyncs over zeros written ahead (as the state file's)",
                      file=out)

    if args.json:
        json.dump({
            "python": platform.python_version(),
            "paho_mqtt": getattr(mqtt, "__version__", "?"),
            "cpus": os.cpu_count(),
            "messages": n, "sync_messages": n_sync, "repeats": args.repeats,
            "payload_bytes": len(PAYLOAD), "window": WINDOW,
            "fdatasync": disk, "fdatasync_over_zeros": over,
            "loadavg_before": load0, "loadavg_after": load1,
            "always_fdatasyncs_per_message": fsyncs,
            "interval_fdatasyncs_per_message": fsyncs_interval,
            "results": table,
        }, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
