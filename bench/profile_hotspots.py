#!/usr/bin/env python3
"""Where mqttsession's time goes: cProfile of the publish path (both threads) and of a restore.

    python bench/profile_hotspots.py [--messages N] [--restore-messages M] [--top K]
                                     [--out DIR] [--only publish,locks,micro,restore]

* ``publish``: ``publish_data`` N times + ``flush()`` with a state file, SessionSync=none and
  always, QoS 1 and QoS 2, against a quiet mosquitto on 127.0.0.1. cProfile runs in the
  publishing thread AND in paho's network thread (``paho.mqtt.client.Client._thread_main`` is
  wrapped for the run), since the acknowledgement half of every message (hook_puback /
  hook_pubrec / hook_pubcomp, their journal records, the next PUBLISH from ``_pump``) runs there.
  The same is done for plain paho, for the baseline.
* ``locks``: how long each thread waits for the client's lock during the same run (the lock is
  replaced by a timing wrapper), and the CPU time of each thread (``time.thread_time``).
* ``micro``: per-call cost of the pieces of one message (timeit, no network, no profiler).

The session-1 ``whatif`` and ``groupcommit`` experiments (candidate optimizations and a group
commit, monkeypatched in) were removed once the optimizations they measured were made in the
library; their results are in README.md.
* ``restore``: cProfile of ``Client.restore_session("")`` of M (default 100,000) held messages.

Writes ``DIR/*.prof`` (load with ``python -m pstats`` or snakeviz) and prints the top K
functions of each by own time (tottime) and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import timeit
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession import Client, codec
from mqttsession.journal import Journal, frame
from mqttsession.state import SessionState
from mqttsession.testing import MosquittoBroker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_throughput import CONF, PAYLOAD, TOPIC, WINDOW  # noqa: E402

# ------------------------------------------------------------------------------- thread profiling

_net_profiles: list[cProfile.Profile] = []
_net_cpu: list[float] = []
_net_mode = {"mode": ""}  # "": untouched, "cpu": CPU time only, "profile": cProfile + CPU time
_orig_thread_main = mqtt.Client._thread_main


def _profiled_thread_main(self: mqtt.Client) -> None:
    mode = _net_mode["mode"]
    if not mode:
        return _orig_thread_main(self)
    prof = cProfile.Profile() if mode == "profile" else None
    if prof is not None:
        _net_profiles.append(prof)
    t0 = time.thread_time()
    if prof is not None:
        prof.enable()
    try:
        return _orig_thread_main(self)
    finally:
        if prof is not None:
            prof.disable()
        _net_cpu.append(time.thread_time() - t0)


mqtt.Client._thread_main = _profiled_thread_main  # type: ignore[method-assign]


def _stats_text(prof: cProfile.Profile | pstats.Stats, sort: str, top: int) -> str:
    s = io.StringIO()
    st = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof, stream=s)
    st.stream = s  # type: ignore[attr-defined]
    st.strip_dirs().sort_stats(sort).print_stats(top)
    lines = s.getvalue().splitlines()
    # drop pstats' preamble up to the header row
    for i, line in enumerate(lines):
        if line.lstrip().startswith("ncalls"):
            return "\n".join(lines[i - 2:] if i >= 2 else lines)
    return s.getvalue()


# ------------------------------------------------------------------------------- timed lock


class TimedRLock:
    """An RLock that adds up, per thread, the time spent waiting to acquire it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.waited: dict[str, float] = {}
        self.acquires: dict[str, int] = {}
        self.contended: dict[str, int] = {}

    def _account(self, t0: float, blocked: bool) -> None:
        name = "network" if threading.current_thread().name.startswith("paho") else (
            "publisher" if threading.current_thread() is threading.main_thread() else
            threading.current_thread().name.split("-")[0])
        self.waited[name] = self.waited.get(name, 0.0) + (time.perf_counter() - t0)
        self.acquires[name] = self.acquires.get(name, 0) + 1
        if blocked:
            self.contended[name] = self.contended.get(name, 0) + 1

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            self._account(time.perf_counter(), False)
            return True
        if not blocking:
            return False
        t0 = time.perf_counter()
        got = self._lock.acquire(True, timeout)
        if got:
            self._account(t0, True)
        return got

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    # what threading.Condition uses on an RLock
    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- publish


SETTINGS: list[str] = []


def publish_run(broker: MosquittoBroker, n: int, qos: int, sync: str | None, workdir: str,
                profile: bool, timed_lock: TimedRLock | None = None,
                publishers: int = 1) -> dict[str, Any]:
    c = Client(client_id=f"prof-{uuid.uuid4().hex[:8]}", clean_session=True)
    c.config(f"MaxInflight={WINDOW}")
    if timed_lock is not None:
        # the Client's lock is its driver's (the network thread's hooks take it there)
        c._driver.lock = c._lock = timed_lock  # type: ignore[assignment]
        c._driver.changed = threading.Condition(timed_lock)  # type: ignore[arg-type]
    d = tempfile.mkdtemp(dir=workdir)
    if sync is not None:
        c.config(f"SessionStateFile={os.path.join(d, 's.json')}")
        c.config(f"SessionSync={sync}")
    for setting in SETTINGS:
        try:
            c.config(setting)
        except Exception:  # an older tree that does not know it runs without it
            pass
    _net_profiles.clear()
    _net_cpu.clear()
    _net_mode["mode"] = "profile" if profile else "cpu"
    main_prof = cProfile.Profile()
    try:
        c.connect(broker.host, broker.port, timeout=10)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        if profile:
            main_prof.enable()
        if publishers == 1:
            for _ in range(n):
                c.publish_data(TOPIC, qos, PAYLOAD)
        else:
            def part() -> None:
                for _ in range(n // publishers):
                    c.publish_data(TOPIC, qos, PAYLOAD)
            ts = [threading.Thread(target=part) for _ in range(publishers)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        ok = c.flush(300)
        if profile:
            main_prof.disable()
        cpu_main = time.thread_time() - c0
        wall = time.perf_counter() - t0
        assert ok, "flush timed out"
    finally:
        c.close()
        _net_mode["mode"] = ""
        shutil.rmtree(d, ignore_errors=True)
    return {"wall": wall, "cpu_main": cpu_main, "main": main_prof,
            "net": list(_net_profiles), "cpu_net": sum(_net_cpu)}


def paho_run(broker: MosquittoBroker, n: int, qos: int, profile: bool = True) -> dict[str, Any]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"prof-paho-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(WINDOW)
    done, conn = threading.Event(), threading.Event()
    count = 0

    def on_publish(*_a: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    c.on_publish = on_publish
    c.on_connect = lambda *_a: conn.set()
    _net_profiles.clear()
    _net_cpu.clear()
    _net_mode["mode"] = "profile" if profile else "cpu"
    c.connect(broker.host, broker.port)
    c.loop_start()
    conn.wait(10)
    main_prof = cProfile.Profile()
    t0 = time.perf_counter()
    c0 = time.thread_time()
    if profile:
        main_prof.enable()
    for _ in range(n):
        c.publish(TOPIC, PAYLOAD, qos)
    done.wait(300)
    if profile:
        main_prof.disable()
    cpu_main = time.thread_time() - c0
    wall = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    _net_mode["mode"] = ""
    return {"wall": wall, "cpu_main": cpu_main, "main": main_prof, "net": list(_net_profiles),
            "cpu_net": sum(_net_cpu)}


def report_profile(name: str, res: dict[str, Any], n: int, out: Path, top: int) -> None:
    main_path = out / f"{name}.main.prof"
    res["main"].dump_stats(str(main_path))
    print(f"\n{'=' * 100}\n{name}: {n} messages, wall {res['wall']:.3f} s under the profiler"
          f" ({n / res['wall']:.0f} msgs/s); CPU: publisher thread {res['cpu_main']:.3f} s,"
          f" network thread {res['cpu_net']:.3f} s")
    print(f"-- publisher thread, by own time ({main_path.name})")
    print(_stats_text(res["main"], "tottime", top))
    if res["net"]:
        net_path = out / f"{name}.net.prof"
        st = pstats.Stats(res["net"][0])
        for p in res["net"][1:]:
            st.add(p)
        st.dump_stats(str(net_path))
        print(f"-- network thread, by own time ({net_path.name})")
        print(_stats_text(st, "tottime", top))
        print("-- network thread, cumulative")
        print(_stats_text(pstats.Stats(str(net_path)), "cumulative", top))


def lock_report(broker: MosquittoBroker, n: int, workdir: str) -> None:
    print(f"\n{'=' * 100}\nlock waits and thread CPU ({n} messages, no profiler)")
    print(f"{'configuration':<22} {'QoS':>3} {'wall s':>7} {'pub CPU':>8} {'net CPU':>8}"
          f" {'pub waits':>10} {'net waits':>10} {'pub wait s':>10} {'net wait s':>10}")
    for sync in (None, "none", "always"):
        for qos in (1, 2):
            tl = TimedRLock()
            r = publish_run(broker, n, qos, sync, workdir, profile=False, timed_lock=tl)
            label = "no state file" if sync is None else f"SessionSync={sync}"
            print(f"{label:<22} {qos:>3} {r['wall']:>7.3f} {r['cpu_main']:>8.3f}"
                  f" {r['cpu_net']:>8.3f} {tl.contended.get('publisher', 0):>10}"
                  f" {tl.contended.get('network', 0):>10} {tl.waited.get('publisher', 0):>10.3f}"
                  f" {tl.waited.get('network', 0):>10.3f}")
    for qos in (1, 2):
        r = paho_run(broker, n, qos, profile=False)
        print(f"{'plain paho':<22} {qos:>3} {r['wall']:>7.3f} {r['cpu_main']:>8.3f}"
              f" {r['cpu_net']:>8.3f}")
    print("(no profiler; the client's lock is a timing wrapper: waits = acquisitions that found"
          " it taken, wait s = total time blocked; CPU = time.thread_time of each thread)")


# ------------------------------------------------------------------------------- micro


def micro(workdir: str) -> None:
    """Per-call cost of each piece of the per-message work, in microseconds."""
    from mqttsession.state import Event, OutgoingMessage, Phase, Stepped, validate_topic
    from dataclasses import replace
    import json

    print(f"\n{'=' * 100}\nper-call cost of the pieces of one message (µs, best of 5 x timeit)")
    st = SessionState(client_id="m")
    rec_a = st.accept(TOPIC, PAYLOAD, 1)
    m = rec_a.message
    rec_s = Stepped(m.seq, Event.SEND, m.packet_id)
    enc_a = codec.encode_record(rec_a)
    path = os.path.join(workdir, "micro.json")
    j = Journal(path, "m", sync=False)
    j.compact(SessionState(client_id="m"))
    fd = os.open(os.path.join(workdir, "micro.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    small = frame(enc_a)

    def accept_retract() -> None:
        r = st.accept(TOPIC, PAYLOAD, 1)
        st.retract(r)

    def hand_built() -> bytes:
        import base64
        return (b'["A",%d,%d,"%s","%s",%d,%s,""]' % (
            m.seq, m.packet_id, m.topic.encode(), base64.b64encode(m.payload), m.qos,
            b"true" if m.retain else b"false"))

    import struct
    import zlib
    import base64
    head = struct.Struct(">II")

    def binary_record() -> bytes:
        t = m.topic.encode()
        body = struct.pack(">BQHBBH", 0x41, m.seq, m.packet_id, m.qos, m.retain, len(t)) + t + m.payload
        return head.pack(len(body), zlib.crc32(body)) + body

    _ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    cases: list[tuple[str, Callable[[], object]]] = [
        ("validate_topic", lambda: validate_topic(TOPIC)),
        ("SessionState.accept + retract (dataclass, apply, checks)", accept_retract),
        ("dataclasses.replace(OutgoingMessage, phase=...)",
         lambda: replace(m, phase=Phase.AWAIT_PUBACK, packet_id=m.packet_id)),
        ("codec.encode_record(Accepted)  [binary]", lambda: codec.encode_record(rec_a)),
        ("codec.encode_record(Stepped)", lambda: codec.encode_record(rec_s)),
        ("  json.dumps of the Accepted array alone",
         lambda: json.dumps(["A", 1, 1, TOPIC, "x" * 136, 1, False, ""], separators=(",", ":"),
                            ensure_ascii=False, allow_nan=False)),
        ("  one module-level JSONEncoder(...).encode of the same array",
         lambda: _ENC(["A", 1, 1, TOPIC, "x" * 136, 1, False, ""])),
        ("  base64.b64encode(100 bytes).decode()", lambda: base64.b64encode(PAYLOAD).decode("ascii")),
        ("  hand-built bytes %-format of the same record", hand_built),
        ("  binary record (struct + raw payload) incl. frame", binary_record),
        ("journal.frame(payload)  [struct + crc32]", lambda: frame(enc_a)),
        ("os.write 250 B (O_APPEND)", lambda: os.write(fd, small)),
        ("Journal.append(Stepped, sync=False)", lambda: j.append([rec_s], st, sync=False)),
        ("os.write + os.fdatasync (the SessionSync=always cost)",
         lambda: (os.write(fd, small), os.fdatasync(fd))),
        ("codec.decode_record(Accepted)  [binary]",
         lambda: codec.decode_record(enc_a)),
    ]
    # restore: one snapshot entry, format 1 (object, checked path) vs format 2 (array, quick path)
    obj = codec.outgoing_to_obj(m)
    row = codec.outgoing_to_row(m)
    topics = {m.topic}
    cases += [
        ("codec._outgoing(object)  [restore, format 1, checked path]",
         lambda: codec._outgoing(obj, "state.outgoing[0]")),
        ("codec._row_quick(array)  [restore, format 2, per held message]",
         lambda: codec._row_quick(row, topics)),
        ("codec.outgoing_to_row(m)  [compaction, per held message]",
         lambda: codec.outgoing_to_row(m)),
    ]
    for label, fn in cases:
        number = 200 if "fdatasync" in label else 5000
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
        print(f"  {label:<66} {best:8.2f} µs")
    os.close(fd)
    j.close()


# ------------------------------------------------------------------------------- restore


def restore_profile(m: int, workdir: str, out: Path, top: int) -> None:
    from bench_restore import build_state_file

    d = tempfile.mkdtemp(dir=workdir)
    path = os.path.join(d, "s.json")
    build_state_file(path, m, client_id="restore")
    c = Client(client_id="restore")
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=none")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    c.restore_session("")
    prof.disable()
    wall = time.perf_counter() - t0
    c._file.close()  # as a killed process leaves it (not close(): that compacts)
    shutil.rmtree(d, ignore_errors=True)
    p = out / f"restore-{m}.prof"
    prof.dump_stats(str(p))
    print(f"\n{'=' * 100}\nrestore_session of {m} held messages: {wall:.3f} s under the profiler"
          f" ({p.name})")
    print("-- by own time")
    print(_stats_text(prof, "tottime", top))
    print("-- cumulative")
    print(_stats_text(pstats.Stats(str(p)), "cumulative", top))


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", "-n", type=int, default=5000)
    ap.add_argument("--restore-messages", type=int, default=100_000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=str(HERE / "profiles"))
    ap.add_argument("--only", default="publish,locks,micro,restore")
    ap.add_argument("--settings", default="",
                    help="config() settings for the publish runs, ';'-separated")
    ap.add_argument("--configs", default="none,always",
                    help="SessionSync modes of the publish runs, ',' separated")
    args = ap.parse_args(argv)
    SETTINGS[:] = [x for x in args.settings.split(";") if x]
    parts = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="mqttsession-prof-")
    broker = None
    try:
        if parts & {"publish", "locks"}:
            broker = MosquittoBroker(str(CONF)).start()
        if "publish" in parts:
            assert broker is not None
            for qos in (1, 2):
                report_profile(f"paho-qos{qos}", paho_run(broker, args.messages, qos),
                               args.messages, out, args.top)
            for sync in args.configs.split(","):
                for qos in (1, 2):
                    res = publish_run(broker, args.messages, qos, sync, workdir, profile=True)
                    report_profile(f"publish-sync-{sync}-qos{qos}", res, args.messages, out,
                                   args.top)
        if "locks" in parts:
            assert broker is not None
            lock_report(broker, args.messages, workdir)
        if "micro" in parts:
            micro(workdir)
        if "restore" in parts:
            restore_profile(args.restore_messages, workdir, out, args.top)
    finally:
        if broker is not None:
            broker.stop()
            broker.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
