#!/usr/bin/env python3
"""Publish throughput of this checkout against another commit, in the same run, interleaved.

    python bench/bench_compare.py [--against REV] [--messages N] [--repeats R] [--json]

The other commit (default ``HEAD~1``) is checked out in a temporary git worktree. Every round
runs each configuration of ``bench_throughput.py`` (no state file, ``SessionSync=none``,
``SessionSync=always``; QoS 1 and 2) once with each tree, in a child process whose
``PYTHONPATH`` names that tree, the order of the two trees alternating from round to round, all
against ONE mosquitto. The timing is ``bench_throughput.run_mqttsession``'s (first publish to
last acknowledgement); the table gives both medians and new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ("mqttsession-no-file", "mqttsession-sync-none", "mqttsession-sync-always")


def child(config: str, qos: int, n: int, host: str, port: int, workdir: str) -> None:
    """Run one configuration with whatever ``mqttsession`` is on the path; print seconds."""
    sys.path.insert(0, str(HERE))
    import bench_throughput as bt  # noqa: PLC0415 - the tree under test is on PYTHONPATH

    print(bt.runner(config, host, port, workdir)(n, qos))


def run_one(tree: Path, config: str, qos: int, n: int, host: str, port: int,
            workdir: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", config, str(qos), str(n),
         host, str(port), workdir],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{config} QoS {qos} with {tree}: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="HEAD~1", help="the other commit (default HEAD~1)")
    ap.add_argument("--messages", "-n", type=int, default=5000)
    ap.add_argument("--repeats", "-r", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated configurations of bench_throughput.py (default: %(default)s)")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        config, qos, n, host, port, workdir = args.child
        child(config, int(qos), int(n), host, int(port), workdir)
        return 0

    sys.path.insert(0, str(ROOT))
    from mqttsession.testing import MosquittoBroker  # noqa: PLC0415

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against],
                         capture_output=True, text=True, check=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="mqttsession-compare-")
    old = Path(work) / f"tree-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), rev],
                   check=True)
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"))
    broker.start()
    configs = args.configs.split(",")
    times: dict[tuple[str, str, int], list[float]] = {}
    try:
        trees = [("old", old), ("new", ROOT)]
        for r in range(args.repeats):
            for label, tree in trees if r % 2 == 0 else trees[::-1]:
                for config in configs:
                    for qos in (1, 2):
                        secs = run_one(tree, config, qos, args.messages, broker.host,
                                       broker.port, work)
                        times.setdefault((label, config, qos), []).append(args.messages / secs)
                        print(f"  round {r + 1}: {label} {config:25s} QoS {qos}:"
                              f" {args.messages / secs:8.0f} msgs/s", file=sys.stderr)
    finally:
        broker.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       check=False)
    rows = []
    for config in configs:
        for qos in (1, 2):
            o = statistics.median(times[("old", config, qos)])
            n = statistics.median(times[("new", config, qos)])
            rows.append({"config": config, "qos": qos, "old_msgs_per_s": round(o, 1),
                         "new_msgs_per_s": round(n, 1), "new_over_old": round(n / o, 3)})
    if args.json:
        print(json.dumps({"against": rev, "messages": args.messages, "repeats": args.repeats,
                          "results": rows}, indent=2))
    else:
        print(f"this checkout vs {rev}: {args.messages} messages, median of {args.repeats}"
              " rounds, interleaved")
        print(f"{'configuration':28s} QoS {'old msg/s':>10s} {'new msg/s':>10s} {'new/old':>8s}")
        for row in rows:
            print(f"{row['config']:28s} {row['qos']:3d} {row['old_msgs_per_s']:10.0f}"
                  f" {row['new_msgs_per_s']:10.0f} {row['new_over_old']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
