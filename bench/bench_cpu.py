#!/usr/bin/env python3
"""CPU time per published message, this checkout against another commit, same run.

    python bench/bench_cpu.py [--against REV] [--messages N] [--repeats R] [--configs LIST]
                              [--settings 'Name=Value;...']

Wall-clock rates on a shared 2-core machine swing by up to 40% between rounds; the CPU time
the client process spends per message (both of its threads, user + system, from
``getrusage``) moves much less. Each round runs every configuration (``nofile``, ``none``,
``always``, ``interval``; QoS 1 and 2; 500 warm-up messages, then N timed, then ``flush``)
once with each tree, in a child process whose ``PYTHONPATH`` names that tree, alternating the
order, against ONE mosquitto. The other tree is a temporary git worktree of REV.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(host: str, port: int, sync: str, qos: int, n: int) -> None:
    from mqttsession import Client  # the tree under test is on PYTHONPATH

    c = Client(client_id=f"cpu-{uuid.uuid4().hex[:8]}", clean_session=True)
    c.config("MaxInflight=20")
    d = tempfile.mkdtemp()
    if sync != "nofile":
        c.config(f"SessionStateFile={os.path.join(d, 's.json')}")
        c.config(f"SessionSync={sync}")
    for setting in filter(None, os.environ.get("BENCH_CPU_SETTINGS", "").split(";")):
        try:
            c.config(setting)  # a tree without the setting runs without it
        except Exception:  # noqa: BLE001 - the other tree's own error type
            pass
    c.connect(host, port, timeout=10)
    payload = bytes(range(100))
    for _ in range(500):
        c.publish_data("bench/cpu", qos, payload)
    c.flush(60)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n):
        c.publish_data("bench/cpu", qos, payload)
    c.flush(300)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"{cpu / n * 1e6:.2f} {n / (t1 - t0):.1f}")
    c.close()
    shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD~1")
    p.add_argument("--messages", "-n", type=int, default=5000)
    p.add_argument("--repeats", "-r", type=int, default=3)
    p.add_argument("--configs", default="nofile,none,always")
    p.add_argument("--settings", default="", help="config() settings for both trees, ';'-separated"
                   " (a tree that does not know one runs without it), e.g. QueueInMemory=0:"
                   " every message in memory, as before the disk queue")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        host, port, sync, qos, n = a.child
        child(host, int(port), sync, int(qos), int(n))
        return 0
    sys.path.insert(0, str(ROOT))
    from mqttsession.testing import MosquittoBroker

    other = Path(tempfile.mkdtemp(prefix="mqttsession-cpu-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other),
                    a.against], check=True)
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"))
    broker.start()
    trees = {"old": str(other), "new": str(ROOT)}
    configs = [(s, q) for s in a.configs.split(",") for q in (1, 2)]
    res: dict[tuple[tuple[str, int], str], list[tuple[float, float]]] = {}
    try:
        for r in range(a.repeats):
            for cfg in configs:
                for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", broker.host, str(broker.port),
                         cfg[0], str(cfg[1]), str(a.messages)],
                        env=dict(os.environ, PYTHONPATH=trees[name],
                                 BENCH_CPU_SETTINGS=a.settings), capture_output=True,
                        text=True, check=True)
                    cpu, rate = map(float, out.stdout.split())
                    res.setdefault((cfg, name), []).append((cpu, rate))
    finally:
        broker.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                       check=False)
    print(f"CPU µs per message, {a.messages} messages, median of {a.repeats} rounds;"
          f" old = {a.against}" + (f"; settings {a.settings}" if a.settings else ""))
    for cfg in configs:
        o, n = res[(cfg, "old")], res[(cfg, "new")]
        oc, nc = statistics.median(x[0] for x in o), statistics.median(x[0] for x in n)
        orate, nrate = statistics.median(x[1] for x in o), statistics.median(x[1] for x in n)
        print(f"  {cfg[0]:<8} QoS {cfg[1]}: CPU old {oc:6.1f} new {nc:6.1f} (new/old"
              f" {nc / oc:.2f});  rate old {orate:6.0f} new {nrate:6.0f} (new/old"
              f" {nrate / orate:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
