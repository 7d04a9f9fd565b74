#!/usr/bin/env python3
"""Start-up cost: ``Client.restore_session("")`` from a state file, by held messages and history.

    python bench/bench_restore.py [--sizes 1000,10000,100000] [--history 100000] [--repeats 3]
                                  [--build client|direct] [--json]

Part 1, held messages: a real ``Client`` with ``SessionStateFile`` and ``SessionSync=none``
publishes 1,000 / 10,000 / 100,000 QoS 1 messages (100-byte payloads) while disconnected (so
they are all held, QUEUED), then

* ``snapshot``: ``close()``: the whole session is in the snapshot, the journal is empty;
* ``crash``: the process "dies" instead (the journal and its lock are closed without a
  compaction): snapshot + the journal tail written since the last compaction.

Part 2, history: 1,000 held messages behind a history of ``--history`` messages that were each
accepted, sent and acknowledged, built directly with ``Journal`` and ``SessionState`` exactly as
the client does (``append``, then ``compact`` when the journal passes its bound):

* the default bound (1 MiB, or half the snapshot when that is larger); "to bound" = as much
  history as fits before the next compaction, the most a restore can have to replay;
* JournalMaxBytes = 1 GiB: nothing is ever compacted, the journal holds the whole history.

Timed: a new ``Client(client_id=...)`` with ``SessionStateFile`` set, ``restore_session("")``
(which reads and checks the snapshot, replays the journal and appends one fsynced record).
Each measurement starts from a fresh copy of the built files (the page cache is warm: the copy
was just written). Also shown, on the same files: ``Journal.recover()`` alone (read + decode +
replay), and the part of it that is ``codec.decode`` of the snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from mqttsession import Client, codec
from mqttsession.journal import JOURNAL_SUFFIX, Journal
from mqttsession.spool import QUEUE_SUFFIX
from mqttsession.state import SessionState

TOPIC = "bench/restore"
PAYLOAD = bytes(range(100))
TARGET_100K_S = 1.0


# ------------------------------------------------------------------------------- building


def _drop_lock(c: Client) -> None:
    """Release the state file like a killed process would: no compaction, no save."""
    c._file.close()  # the state file's journal and lock (not close(): that compacts)


def build_state_file(path: str, held: int, client_id: str = "bench", how: str = "client",
                     crash: bool = False, qos: int = 1) -> None:
    """A state file holding ``held`` QUEUED messages."""
    if how == "direct":
        st = SessionState(client_id=client_id, clean_session=False)
        for _ in range(held):
            st.accept(TOPIC, PAYLOAD, qos)
        j = Journal(path, client_id, sync=False)
        j.compact(st)
        j.close()
        return
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=none")
    for _ in range(held):
        c.publish_data(TOPIC, qos, PAYLOAD)
    if crash:
        _drop_lock(c)
    else:
        c.close()


def build_history_file(path: str, held: int, history: int, max_journal_bytes: int,
                       client_id: str = "bench") -> dict[str, int]:
    """``history`` messages accepted+sent+acked, then ``held`` accepted: as the client writes it.

    ``history`` -1: as many as fit before the journal's next compaction (the worst case: the
    longest journal a file with this bound can make a restore replay).
    """
    st = SessionState(client_id=client_id, clean_session=False)
    j = Journal(path, client_id, sync=False, max_journal_bytes=max_journal_bytes)
    compactions = 0
    j.compact(st)
    worst = history < 0
    if worst:
        history = 10**9

    def rec(r: Any) -> None:
        nonlocal compactions
        j.append([r], st, sync=False)
        if j.needs_compaction:
            j.compact(st)
            compactions += 1

    for _ in range(history):
        if worst and j._size + 600 + held * 160 > j.bound:  # room for the held ones
            break
        a = st.accept(TOPIC, PAYLOAD, 1)
        rec(a)
        rec(st.send(a.message.seq))
        rec(st.puback(st.outgoing[a.message.seq].packet_id))
    for _ in range(held):
        rec(st.accept(TOPIC, PAYLOAD, 1))
    j.close()
    return {"compactions": compactions}


def file_sizes(path: str) -> tuple[int, int]:
    snap = os.path.getsize(path) if os.path.exists(path) else 0
    jp = path + JOURNAL_SUFFIX
    return snap, (os.path.getsize(jp) if os.path.exists(jp) else 0)


def journal_records(path: str) -> int:
    from mqttsession.journal import read_frames
    jp = path + JOURNAL_SUFFIX
    if not os.path.exists(jp):
        return 0
    with open(jp, "rb") as f:
        payloads, _, _ = read_frames(f.read())
    return max(0, len(payloads) - 1)  # minus the header


# ------------------------------------------------------------------------------- timing


def _fresh_copy(master: str, workdir: str) -> str:
    d = tempfile.mkdtemp(dir=workdir)
    dst = os.path.join(d, "s.json")
    shutil.copyfile(master, dst)
    if os.path.exists(master + JOURNAL_SUFFIX):
        shutil.copyfile(master + JOURNAL_SUFFIX, dst + JOURNAL_SUFFIX)
    if os.path.isdir(master + QUEUE_SUFFIX):  # the disk queue: past QueueInMemory
        shutil.copytree(master + QUEUE_SUFFIX, dst + QUEUE_SUFFIX)
    return dst


def time_restore(master: str, workdir: str, client_id: str, expect: int) -> float:
    path = _fresh_copy(master, workdir)
    try:
        c = Client(client_id=client_id)
        c.config(f"SessionStateFile={path}")
        t0 = time.perf_counter()
        c.restore_session("")
        secs = time.perf_counter() - t0
        got = c.queue_stats().messages
        _drop_lock(c)
        if got != expect:
            raise RuntimeError(f"restored {got} messages, expected {expect}")
        return secs
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def time_recover(master: str, workdir: str, client_id: str) -> tuple[float, float]:
    """(Journal.recover seconds, codec.decode-of-the-snapshot seconds)."""
    path = _fresh_copy(master, workdir)
    try:
        j = Journal(path, client_id, sync=False)
        t0 = time.perf_counter()
        j.recover()
        rec = time.perf_counter() - t0
        j.close()
        with open(path, "rb") as f:
            snap = f.read()
        t0 = time.perf_counter()
        codec.decode(snap)
        dec = time.perf_counter() - t0
        return rec, dec
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def measure(master: str, workdir: str, client_id: str, held: int, repeats: int) -> dict[str, Any]:
    restore = [time_restore(master, workdir, client_id, held) for _ in range(repeats)]
    rd = [time_recover(master, workdir, client_id) for _ in range(repeats)]
    snap, jbytes = file_sizes(master)
    return {
        "held": held,
        "snapshot_bytes": snap,
        "journal_bytes": jbytes,
        "journal_records": journal_records(master),
        "restore_s": statistics.median(restore),
        "restore_best_s": min(restore),
        "recover_s": statistics.median(r for r, _ in rd),
        "decode_snapshot_s": statistics.median(d for _, d in rd),
        "us_per_held": statistics.median(restore) / held * 1e6 if held else None,
    }


# ------------------------------------------------------------------------------- main


def _hist(n: int) -> str:
    return "to bound" if n < 0 else str(n)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--history", type=int, default=100_000,
                    help="acknowledged messages in the history series (default 100000)")
    ap.add_argument("--history-held", type=int, default=1000)
    ap.add_argument("--repeats", "-r", type=int, default=3)
    ap.add_argument("--build", choices=("client", "direct"), default="client",
                    help="build the held-message files with a real Client (default) or directly")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    out = sys.stderr if args.json else sys.stdout
    workdir = tempfile.mkdtemp(prefix="mqttsession-restore-", dir=args.workdir)
    rows: list[dict[str, Any]] = []
    try:
        # ---- part 1: held messages
        for held in sizes:
            for crash in (False, True):
                master = os.path.join(tempfile.mkdtemp(dir=workdir), "s.json")
                t0 = time.perf_counter()
                build_state_file(master, held, client_id="bench", how=args.build, crash=crash)
                built = time.perf_counter() - t0
                row = measure(master, workdir, "bench", held, args.repeats)
                row.update(series="held", layout="crash: snapshot + journal tail" if crash
                           else "snapshot (clean close)", history=0, build_s=built)
                rows.append(row)
                print(f"  held {held:>7} {row['layout']:<32} restore {row['restore_s']:.3f} s"
                      f" (built in {built:.1f} s)", file=out)
                shutil.rmtree(os.path.dirname(master), ignore_errors=True)
        # ---- part 2: history; -1 = as much as fits under the bound (the worst case)
        hist_points = [0, args.history // 10, args.history, -1]
        for mjb, label in ((0, "default bound (1 MiB or snapshot/2)"),
                           (1024 ** 3, "JournalMaxBytes 1 GiB (never compacted)")):
            for history in hist_points if mjb == 0 else hist_points[:3]:
                master = os.path.join(tempfile.mkdtemp(dir=workdir), "s.json")
                t0 = time.perf_counter()
                info = build_history_file(master, args.history_held, history, mjb)
                built = time.perf_counter() - t0
                row = measure(master, workdir, "bench", args.history_held, args.repeats)
                row.update(series="history", layout=label, history=history, build_s=built,
                           compactions=info["compactions"])
                rows.append(row)
                print(f"  held {args.history_held:>7} history {_hist(history):>7} {label:<40}"
                      f" restore {row['restore_s']:.3f} s", file=out)
                shutil.rmtree(os.path.dirname(master), ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(file=out)
    print(f"{'held':>7} {'history':>8}  {'file layout':<40} {'snapshot':>9} {'journal':>9}"
          f" {'records':>8} {'restore s':>9} {'µs/held':>8} {'recover s':>9} {'decode s':>8}",
          file=out)
    for r in rows:
        per = "" if r["us_per_held"] is None or r["series"] != "held" else f"{r['us_per_held']:.1f}"
        print(f"{r['held']:>7} {_hist(r['history']):>8}  {r['layout']:<40} {_mb(r['snapshot_bytes']):>9}"
              f" {_mb(r['journal_bytes']):>9} {r['journal_records']:>8} {r['restore_s']:>9.3f}"
              f" {per:>8} {r['recover_s']:>9.3f} {r['decode_snapshot_s']:>8.3f}", file=out)
    big = [r for r in rows if r["series"] == "held" and r["held"] == 100_000]
    if big:
        worst = max(r["restore_s"] for r in big)
        print(f"\ntarget: 100,000 held messages restored in < {TARGET_100K_S:.0f} s:"
              f" worst layout {worst:.3f} s -> {'met' if worst < TARGET_100K_S else 'MISSED'}",
              file=out)
    print("restore = read + check snapshot + replay journal + one appended, fsynced record;"
          " recover = Journal.recover() alone; decode = codec.decode(snapshot) alone", file=out)
    if args.json:
        json.dump({"repeats": args.repeats, "build": args.build, "rows": rows}, sys.stdout,
                  indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
