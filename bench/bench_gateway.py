#!/usr/bin/env python3
"""Many device sessions in one process (issue 16): ``Gateway`` and ``AsyncGateway`` against ONE
mosquitto on 127.0.0.1.

    python bench/bench_gateway.py [--sessions N] [--messages M] [--repeats R] [--quick]
                                  [--connect-rate RATE] [--json PATH]

Each gateway form runs in a child process of its own (a clean RSS baseline), against the same
broker:

* ``sync``: ``Gateway(dir)``, N ``gw.client(id, clean_session=False)`` sessions,
  ``gw.connect_all()``; then publishing from 16 threads, each owning N/16 sessions
  (``publish_data`` QoS 1, then ``flush`` of every session);
* ``batch``: the same ``Gateway``, but ONE thread publishes, a message of every session at a
  time with ``gw.publish_many`` (one fdatasync a batch under ``always``);
* ``async``: ``AsyncGateway(dir)``, N ``await gw.session(id, options)`` created together
  (``asyncio.gather``); then every session awaits its own M publishes, all sessions at once
  (``asyncio.gather`` over sessions), then ``flush``;
* ``abatch``: the same ``AsyncGateway``, but one task awaits ``gw.publish_many`` of a message
  of every session at a time.

Idle scale, once every session is connected: threads of the process (``threading`` and
``/proc/self/status``), RSS per session (VmRSS after connecting minus VmRSS before the gateway
was created, after ``gc.collect()``, over N), open file descriptors, and the time from the first
connection attempt until all are connected. Goals: at most 4 threads, under 50 KB a session,
all connected within 10 s.

Aggregate durable publishing: the same N sessions publish M 100-byte QoS 1 messages each, with
``SessionSync=always`` and ``none`` in turn (``config`` on every session between rounds; rounds
interleaved, the first mode alternating), timed until every message is acknowledged. fdatasync
calls are counted by wrapping ``os.fdatasync`` for the whole process (any store). Reported:
median aggregate rate of each mode and always / none (goal >= 0.8).

Only public API (``Gateway``, ``AsyncGateway``, ``Client``, ``AsyncSession``, ``config``): the
bench runs unchanged whatever store the gateway uses.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONF = HERE / "mosquitto-bench.conf"
PAYLOAD = bytes(range(100))
PUBLISH_THREADS = 16
TIMEOUT = 300.0
GOALS = {"threads": 4, "rss_kb_per_session": 50.0, "connect_s": 10.0, "always_over_none": 0.8}


# ------------------------------------------------------------------------------- measuring


def proc_status(field: str, pid: str = "self") -> int:
    """An integer field of ``/proc/<pid>/status`` (``VmRSS`` in kB, ``Threads``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def max_open_files(pid: int | str = "self") -> str:
    """The soft limit on open files of a process (``/proc/<pid>/limits``)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


class SyncCounter:
    """Counts ``os.fdatasync`` / ``os.fsync`` calls of the whole process (every module that
    calls ``os.fdatasync`` sees the wrapper)."""

    def __init__(self) -> None:
        self.fdatasyncs = 0
        self.fsyncs = 0
        self._lock = threading.Lock()
        self._real = (os.fdatasync, os.fsync)

    def install(self) -> None:
        real_fdatasync, real_fsync = self._real

        def fdatasync(fd: Any) -> None:
            real_fdatasync(fd)
            with self._lock:
                self.fdatasyncs += 1

        def fsync(fd: Any) -> None:
            real_fsync(fd)
            with self._lock:
                self.fsyncs += 1

        os.fdatasync = fdatasync
        os.fsync = fsync

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.fdatasyncs, self.fsyncs


def thread_cpu(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from ``/proc``."""
    with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clocks:
    """Wall, process user / system and the loop thread's CPU over a round."""

    def __init__(self, loop_tid: int) -> None:
        self.loop_tid = loop_tid
        self.t, self.times, self.loop = time.perf_counter(), os.times(), thread_cpu(loop_tid)

    def stop(self) -> dict[str, float]:
        took, times = time.perf_counter() - self.t, os.times()
        return {"seconds": took, "user": times.user - self.times.user,
                "system": times.system - self.times.system,
                "loop_cpu": thread_cpu(self.loop_tid) - self.loop}


def scale_snapshot() -> dict[str, int]:
    """Threads, RSS and file descriptors now (after a full collection)."""
    gc.collect()
    return {"threads_active": threading.active_count(), "threads_proc": proc_status("Threads"),
            "rss_kb": proc_status("VmRSS"), "fds": open_fds()}


def idle_figures(before: dict[str, int], after: dict[str, int], n: int, connected: int,
                 connect_s: float) -> dict[str, Any]:
    return {
        "sessions": n, "connected": connected, "connect_s": connect_s,
        "threads_before": before["threads_proc"], "threads_active": after["threads_active"],
        "threads_proc": after["threads_proc"],
        "rss_before_kb": before["rss_kb"], "rss_after_kb": after["rss_kb"],
        "rss_kb_per_session": (after["rss_kb"] - before["rss_kb"]) / n,
        "fds_before": before["fds"], "fds_after": after["fds"],
    }


def modes_order(repeats: int) -> list[str]:
    """always, none, none, always, always, none, ...: each mode first in half the rounds."""
    out: list[str] = []
    for r in range(repeats):
        out += ["always", "none"] if r % 2 == 0 else ["none", "always"]
    return out


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (and best) rate and fdatasyncs a message of each mode; always / none."""
    out: dict[str, Any] = {"rounds": rounds}
    for mode in ("always", "none"):
        mine = [r for r in rounds if r["mode"] == mode]
        out[mode] = {
            "rate_median": statistics.median(r["rate"] for r in mine),
            "rate_best": max(r["rate"] for r in mine),
            "fdatasync_per_msg": statistics.median(r["fdatasync_per_msg"] for r in mine),
            "fsync_per_msg": statistics.median(r["fsync_per_msg"] for r in mine),
            "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in mine),
            "system_us_per_msg": statistics.median(r["system_us_per_msg"] for r in mine),
            "loop_thread_busy": statistics.median(r["loop_thread_busy"] for r in mine),
        }
    out["always_over_none"] = out["always"]["rate_median"] / out["none"]["rate_median"]
    out["always_over_none_best"] = out["always"]["rate_best"] / out["none"]["rate_best"]
    return out


# ------------------------------------------------------------------------------- the forms


def child_sync(port: int, n: int, m: int, repeats: int, rate: float | None,
               work: str, batch: bool = False) -> dict[str, Any]:
    """``Gateway``: idle scale, then 16 publishing threads (``batch``: one thread, a message of
    every session at a time with ``gw.publish_many``), always / none interleaved."""
    from mqttsession.gateway import Gateway

    counter = SyncCounter()
    counter.install()
    run_id = uuid.uuid4().hex[:6]
    before = scale_snapshot()
    kwargs = {} if rate is None else {"connect_rate": rate}
    gw = Gateway(os.path.join(work, "sync"), **kwargs)
    try:
        t0 = time.perf_counter()
        clients = [gw.client(f"gws-{run_id}-{i}", clean_session=False) for i in range(n)]
        create_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        failed = gw.connect_all("127.0.0.1", port)
        connect_s = time.perf_counter() - t0
        after = scale_snapshot()
        connected = sum(c.connected for c in clients)
        idle = idle_figures(before, after, n, connected, connect_s)
        idle["create_s"] = create_s
        idle["failed"] = {k: repr(v) for k, v in list(failed.items())[:5]}
        idle["failed_count"] = len(failed)
        if failed:
            return {"idle": idle}
        groups = [clients[i::PUBLISH_THREADS] for i in range(PUBLISH_THREADS)]
        topics = {c.client_id: f"bench/gw/{c.client_id}" for c in clients}
        rounds = []
        for mode in modes_order(repeats):
            for c in clients:
                c.config(f"SessionSync={mode}")
            errors: list[BaseException] = []

            def worker(own: list[Any], errors: list[BaseException] = errors) -> None:
                try:
                    for _ in range(m):
                        for c in own:
                            c.publish_data(topics[c.client_id], 1, PAYLOAD)
                except BaseException as exc:  # noqa: BLE001 - reported by the round
                    errors.append(exc)

            def batches(errors: list[BaseException] = errors) -> None:
                try:
                    for _ in range(m):
                        gw.publish_many([(c, topics[c.client_id], 1, PAYLOAD) for c in clients])
                except BaseException as exc:  # noqa: BLE001 - reported by the round
                    errors.append(exc)

            threads = ([threading.Thread(target=batches)] if batch else
                       [threading.Thread(target=worker, args=(g,)) for g in groups])
            s0, clocks = counter.snapshot(), Clocks(gw.thread.native_id or 0)
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for c in clients:
                if not c.flush(TIMEOUT):
                    raise RuntimeError(f"{c.client_id}: not acknowledged in {TIMEOUT} s")
            spent, s1 = clocks.stop(), counter.snapshot()
            if errors:
                raise errors[0]
            rounds.append(round_figures(mode, n * m, spent, s0, s1))
        t = time.perf_counter()
    finally:
        gw.close()
    close_s = time.perf_counter() - t
    return {"idle": idle, "publish": summarise(rounds), "close_s": close_s}


def child_async(port: int, n: int, m: int, repeats: int, rate: float | None,
                work: str, batch: bool = False) -> dict[str, Any]:
    """``AsyncGateway``: idle scale, then every session awaiting its own publishes, all
    sessions concurrently (``batch``: one task awaits ``gw.publish_many`` of a message of every
    session at a time); always / none interleaved."""
    from mqttsession import Options
    from mqttsession.gateway import AsyncGateway

    counter = SyncCounter()
    counter.install()
    run_id = uuid.uuid4().hex[:6]

    async def main() -> dict[str, Any]:
        before = scale_snapshot()
        kwargs = {} if rate is None else {"connect_rate": rate}
        options = Options(address=f"127.0.0.1:{port}")
        gw = AsyncGateway(os.path.join(work, "async"), **kwargs)
        async with gw:
            t0 = time.perf_counter()
            sessions = [await gw.session(f"gwa-{run_id}-{i}", options, session_sync="none",
                                         connect=False) for i in range(n)]
            create_s = time.perf_counter() - t0
            t0 = time.perf_counter()  # as connect_all: every session's connect, together
            results = await asyncio.gather(*(s.connect() for s in sessions),
                                           return_exceptions=True)
            connect_s = time.perf_counter() - t0
            failed = [r for r in results if isinstance(r, BaseException)]
            after = scale_snapshot()
            idle = idle_figures(before, after, n, sum(s.connected for s in sessions), connect_s)
            idle["create_s"] = create_s
            idle["failed_count"] = len(failed)
            idle["failed"] = [repr(f) for f in failed[:5]]
            if failed:
                return {"idle": idle}

            async def device(s: Any) -> None:
                topic = f"bench/gw/{s.client_id}"
                for _ in range(m):
                    await s.publish(topic, PAYLOAD, 1)

            rounds = []
            for mode in modes_order(repeats):
                await asyncio.gather(*(s.config(f"SessionSync={mode}") for s in sessions))
                s0, clocks = counter.snapshot(), Clocks(threading.get_native_id())
                if batch:
                    for _ in range(m):
                        await gw.publish_many([(s, f"bench/gw/{s.client_id}", 1, PAYLOAD)
                                               for s in sessions])
                else:
                    await asyncio.gather(*(device(s) for s in sessions))
                done = await asyncio.gather(*(s.flush(TIMEOUT) for s in sessions))
                spent, s1 = clocks.stop(), counter.snapshot()
                if not all(done):
                    raise RuntimeError(f"not acknowledged in {TIMEOUT} s")
                rounds.append(round_figures(mode, n * m, spent, s0, s1))
                rounds[-1]["threads_after"] = threading.active_count()
            t_close = time.perf_counter()
        return {"idle": idle, "publish": summarise(rounds),
                "close_s": time.perf_counter() - t_close}

    return asyncio.run(main())


def child_breakdown(port: int, n: int, m: int, repeats: int, rate: float | None,
                    work: str) -> dict[str, Any]:
    """Where an idle connected ``Gateway`` session's memory goes: ``tracemalloc`` bytes per
    session by file (and the top lines), N sessions created and connected (no publishing)."""
    import tracemalloc

    from mqttsession.gateway import Gateway

    run_id = uuid.uuid4().hex[:6]
    gc.collect()
    tracemalloc.start(1)
    first = tracemalloc.take_snapshot()
    kwargs = {} if rate is None else {"connect_rate": rate}
    with Gateway(os.path.join(work, "breakdown"), **kwargs) as gw:
        for i in range(n):
            gw.client(f"gwb-{run_id}-{i}", clean_session=False)
        failed = gw.connect_all("127.0.0.1", port)
        gc.collect()
        second = tracemalloc.take_snapshot()
        traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def short(name: str) -> str:
        for prefix in (here + os.sep, os.path.dirname(os.__file__) + os.sep):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name

    by_file = second.compare_to(first, "filename")
    by_line = second.compare_to(first, "lineno")
    return {
        "sessions": n, "failed": len(failed), "traced_bytes_per_session": traced / n,
        "by_file": [(short(st.traceback[0].filename), st.size_diff / n, st.count_diff / n)
                    for st in by_file[:15]],
        "by_line": [(f"{short(st.traceback[0].filename)}:{st.traceback[0].lineno}",
                     st.size_diff / n, st.count_diff / n) for st in by_line[:20]],
    }


def round_figures(mode: str, msgs: int, spent: dict[str, float], s0: tuple[int, int],
                  s1: tuple[int, int]) -> dict[str, Any]:
    took = spent["seconds"]
    return {"mode": mode, "messages": msgs, "seconds": took, "rate": msgs / took,
            "cpu_us_per_msg": (spent["user"] + spent["system"]) / msgs * 1e6,
            "system_us_per_msg": spent["system"] / msgs * 1e6,
            "loop_thread_busy": spent["loop_cpu"] / took,
            "fdatasync_per_msg": (s1[0] - s0[0]) / msgs, "fsync_per_msg": (s1[1] - s0[1]) / msgs}


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "sync": child_sync, "async": child_async, "breakdown": child_breakdown,
    "batch": lambda *a: child_sync(*a, batch=True),
    "abatch": lambda *a: child_async(*a, batch=True)}


# ------------------------------------------------------------------------------- the parent


def run_child(form: str, port: int, a: argparse.Namespace, work: str) -> dict[str, Any]:
    """One form in a child process; its JSON result (or its traceback)."""
    cmd = [sys.executable, __file__, "--child", form, "--port", str(port),
           "--sessions", str(a.sessions), "--messages", str(a.messages),
           "--repeats", str(a.repeats), "--work", work]
    if a.connect_rate is not None:
        cmd += ["--connect-rate", str(a.connect_rate)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": out.stderr[-4000:] or out.stdout[-4000:], "returncode": out.returncode}
    result: dict[str, Any] = json.loads(lines[-1])
    if out.stderr.strip():
        result["stderr_tail"] = out.stderr[-2000:]
    return result


def fsync_median_ms(directory: str, samples: int = 200) -> float:
    """Median ``os.fdatasync`` after a 100-byte append, in this directory (milliseconds)."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for i in range(samples + 10):
            os.write(fd, b"x" * 100)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            if i >= 10:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def fmt_table(results: dict[str, Any], n: int, m: int) -> str:
    rows = [f"{n} sessions, {m} QoS 1 messages of 100 bytes each per round"]
    rows.append(f"{'':34}{'Gateway':>15}{'publish_many':>15}{'AsyncGateway':>15}"
                f"{'publish_many':>15}   goal")

    def cell(form: str, fn: Callable[[dict[str, Any]], str]) -> str:
        r = results.get(form, {})
        try:
            return fn(r)
        except (KeyError, TypeError):
            return "error" if "error" in r else "-"

    lines: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        ("connected / sessions", lambda r: f"{r['idle']['connected']}/{r['idle']['sessions']}", ""),
        ("creating the sessions (s)", lambda r: f"{r['idle']['create_s']:.2f}", ""),
        ("time to all connected (s)", lambda r: f"{r['idle']['connect_s']:.2f}", "<= 10"),
        ("threads (active / /proc)",
         lambda r: f"{r['idle']['threads_active']} / {r['idle']['threads_proc']}", "<= 4"),
        ("RSS per idle session (KB)", lambda r: f"{r['idle']['rss_kb_per_session']:.1f}", "< 50"),
        ("RSS before / after (MB)",
         lambda r: f"{r['idle']['rss_before_kb'] / 1024:.0f} / {r['idle']['rss_after_kb'] / 1024:.0f}", ""),
        ("open fds before / after", lambda r: f"{r['idle']['fds_before']} / {r['idle']['fds_after']}", ""),
        ("always msgs/s (median)", lambda r: f"{r['publish']['always']['rate_median']:.0f}", ""),
        ("none msgs/s (median)", lambda r: f"{r['publish']['none']['rate_median']:.0f}", ""),
        ("always / none (median)", lambda r: f"{r['publish']['always_over_none']:.2f}", ">= 0.8"),
        ("always / none (best rounds)", lambda r: f"{r['publish']['always_over_none_best']:.2f}", ""),
        ("fdatasync + fsync / msg, always",
         lambda r: f"{r['publish']['always']['fdatasync_per_msg']:.3f} + {r['publish']['always']['fsync_per_msg']:.3f}", ""),
        ("CPU us / msg, always / none",
         lambda r: f"{r['publish']['always']['cpu_us_per_msg']:.0f} / {r['publish']['none']['cpu_us_per_msg']:.0f}", ""),
        ("  of which system (kernel)",
         lambda r: f"{r['publish']['always']['system_us_per_msg']:.0f} / {r['publish']['none']['system_us_per_msg']:.0f}", ""),
        ("loop thread busy, always / none",
         lambda r: f"{r['publish']['always']['loop_thread_busy']:.2f} / {r['publish']['none']['loop_thread_busy']:.2f}", ""),
        ("close() of the gateway (s)", lambda r: f"{r['close_s']:.2f}", ""),
    ]
    for label, fn, goal in lines:
        rows.append(f"{label:34}{cell('sync', fn):>15}{cell('batch', fn):>15}"
                    f"{cell('async', fn):>15}{cell('abatch', fn):>15}   {goal}")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", "-s", type=int, default=None, help="default 1000 (--quick 200)")
    p.add_argument("--messages", "-n", type=int, default=None,
                   help="QoS 1 messages per session per round; default 20 (--quick 10)")
    p.add_argument("--repeats", "-r", type=int, default=None,
                   help="rounds of each mode (always, none interleaved); default 3 (--quick 2)")
    p.add_argument("--quick", action="store_true", help="200 sessions, 10 messages, 2 rounds")
    p.add_argument("--connect-rate", type=float, default=None,
                   help="the gateways' connect_rate (default: the library's)")
    p.add_argument("--forms", default="sync,batch,async,abatch",
                   help="comma-separated: sync, batch (Gateway.publish_many), async, abatch"
                   " (AsyncGateway.publish_many), breakdown (tracemalloc of idle Gateway"
                   " sessions, by file); default sync,batch,async,abatch")
    p.add_argument("--breakdown", action="store_true", help="add the breakdown form")
    p.add_argument("--json", default=None, help="default bench/results/gateway-<date>.json")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.sessions = a.sessions or (200 if a.quick else 1000)
    a.messages = a.messages or (10 if a.quick else 20)
    a.repeats = a.repeats or (2 if a.quick else 3)
    if a.child:
        print(json.dumps(CHILDREN[a.child](a.port, a.sessions, a.messages, a.repeats,
                                           a.connect_rate, a.work)))
        return 0

    import resource

    from mqttsession.testing import MosquittoBroker

    # mosquitto inherits this process's open files limit: one descriptor a connection (the
    # conf sets no max_connections, so the limit is the only bound)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="mqttsession-gateway-")
    broker = MosquittoBroker(str(CONF))
    broker.start()
    limit = max_open_files(broker.pid)
    if limit.isdigit() and int(limit) < a.sessions + 64:
        print(f"warning: mosquitto may open only {limit} files, for {a.sessions} sessions:"
              " raise the hard limit (ulimit -Hn)", file=sys.stderr)
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "sessions": a.sessions, "messages_per_session": a.messages, "repeats": a.repeats,
        "connect_rate": a.connect_rate, "publish_threads": PUBLISH_THREADS,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(), "goals": GOALS,
        "mosquitto_max_open_files": max_open_files(broker.pid),
        "bench_max_open_files": max_open_files(),
        "fdatasync_median_ms": fsync_median_ms(work),
    }
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                check=False, capture_output=True, text=True).stdout.strip()
        results["commit"] = commit
        forms = [f.strip() for f in a.forms.split(",") if f.strip()]
        if a.breakdown and "breakdown" not in forms:
            forms.append("breakdown")
        for form in forms:
            d = os.path.join(work, form)
            os.makedirs(d)
            results[form] = run_child(form, broker.port, a, d)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = os.getloadavg()
    print(fmt_table(results, a.sessions, a.messages))
    print(f"fdatasync alone: {results['fdatasync_median_ms']:.3f} ms (median); load average"
          f" before {results['loadavg_before'][0]:.2f}, after {results['loadavg_after'][0]:.2f};"
          f" mosquitto's open files limit {results['mosquitto_max_open_files']}")
    bd = results.get("breakdown", {})
    if "by_file" in bd:
        print(f"\nidle Gateway session, tracemalloc: {bd['traced_bytes_per_session'] / 1024:.1f}"
              " KB traced a session; by file (KB a session, blocks a session):")
        for name, size, count in bd["by_file"][:10]:
            print(f"  {size / 1024:7.2f} KB {count:7.1f}  {name}")
        print("  top lines:")
        for name, size, count in bd["by_line"][:10]:
            print(f"  {size / 1024:7.2f} KB {count:7.1f}  {name}")
    for form in ("sync", "batch", "async", "abatch", "breakdown"):
        if "error" in results.get(form, {}):
            print(f"\n{form} FAILED:\n{results[form]['error']}", file=sys.stderr)
        elif results.get(form, {}).get("idle", {}).get("failed_count"):
            print(f"\n{form}: {results[form]['idle']['failed_count']} sessions did not connect:"
                  f" {results[form]['idle']['failed']}", file=sys.stderr)
    path = Path(a.json) if a.json else HERE / "results" / f"gateway-{dt.date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
