#!/usr/bin/env python3
"""Recovery from a garbage journal tail: ``read_state`` of a small session whose journal has
1-64 MiB of random bytes (or zeros) appended, as after a crash that left junk on disk.

    python bench/bench_garbage_tail.py [--sizes 1,4,16,64] [--repeats 3]

Issue 10, point 9: the tail scan was quadratic (16 MiB took over 120 s); it is linear now,
so the time per MiB should stay flat as the tail grows.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

from mqttsession.journal import JOURNAL_SUFFIX, Journal, read_state
from mqttsession.state import SessionState


def build(directory: str, tail: bytes) -> str:
    path = os.path.join(directory, "s")
    st = SessionState(client_id="bench", clean_session=False)
    j = Journal(path, "bench", sync=False)
    j.compact(st)
    for i in range(10):
        j.append([st.accept("t", b"m%d" % i, 1)], st)
    j.close()
    with open(path + JOURNAL_SUFFIX, "ab") as f:
        f.write(tail)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16,64", help="tail sizes in MiB")
    ap.add_argument("-r", "--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("mqttsession.journal").setLevel(logging.ERROR)  # the torn-tail warnings
    print(f"{'tail':>8} {'kind':>7} {'read_state s':>13} {'s per MiB':>10}")
    for mib in (int(x) for x in args.sizes.split(",")):
        for kind in ("random", "zeros"):
            tail = os.urandom(mib << 20) if kind == "random" else bytes(mib << 20)
            with tempfile.TemporaryDirectory() as d:
                path = build(d, tail)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    read_state(path, "bench")
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            print(f"{mib:>5} MiB {kind:>7} {med:>13.3f} {med / mib:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
