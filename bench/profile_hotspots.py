#!/usr/bin/env python3
"""Where mqttsession's time goes: cProfile of the publish path (both threads) and of a restore.

    python bench/profile_hotspots.py [--messages N] [--restore-messages M] [--top K]
                                     [--out DIR] [--only publish,locks,whatif,groupcommit,micro,restore]

* ``publish``: ``publish_data`` N times + ``flush()`` with a state file, SessionSync=none and
  always, QoS 1 and QoS 2, against a quiet mosquitto on 127.0.0.1. cProfile runs in the
  publishing thread AND in paho's network thread (``paho.mqtt.client.Client._thread_main`` is
  wrapped for the run), since the acknowledgement half of every message (hook_puback /
  hook_pubrec / hook_pubcomp, their journal records, the next PUBLISH from ``_pump``) runs there.
  The same is done for plain paho, for the baseline.
* ``locks``: how long each thread waits for the client's lock during the same run (the lock is
  replaced by a timing wrapper), and the CPU time of each thread (``time.thread_time``).
* ``micro``: per-call cost of the pieces of one message (timeit, no network, no profiler).
* ``whatif``: throughput with candidate optimizations monkeypatched in, one at a time (the
  library is not changed: the patches live in this file and are undone after each run).
* ``groupcommit``: SessionSync=always today vs a group-commit prototype (monkeypatched, see
  ``_patch_group_commit``), on this disk and with an emulated slower fsync (``--fsync-delays``),
  counting fdatasyncs per message.
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


def publish_run(broker: MosquittoBroker, n: int, qos: int, sync: str | None, workdir: str,
                profile: bool, timed_lock: TimedRLock | None = None,
                publishers: int = 1) -> dict[str, Any]:
    c = Client(client_id=f"prof-{uuid.uuid4().hex[:8]}", clean_session=True)
    c.config(f"MaxInflight={WINDOW}")
    if timed_lock is not None:
        c._lock = timed_lock  # type: ignore[assignment]
        c._changed = threading.Condition(timed_lock)  # type: ignore[arg-type]
    d = tempfile.mkdtemp(dir=workdir)
    if sync is not None:
        c.config(f"SessionStateFile={os.path.join(d, 's.json')}")
        c.config(f"SessionSync={sync}")
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


# ------------------------------------------------------------------------------- what-if


def _patch_batch_read() -> Callable[[], None]:
    """PahoConnection.loop_read reads every packet that is there, not one per select().

    paho sizes a read burst by ``len(_out_messages) + len(_in_messages)``, which mqttsession
    keeps empty, so paho reads ONE packet per trip through select()/loop_write."""
    from paho.mqtt.enums import MQTTErrorCode
    from mqttsession._paho import PahoConnection

    def loop_read(self: Any, max_packets: int = 1) -> Any:
        for _ in range(1000):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    PahoConnection.loop_read = loop_read  # type: ignore[method-assign]
    return lambda: delattr(PahoConnection, "loop_read")


def _patch_encoder() -> Callable[[], None]:
    """codec._dump through one module-level JSONEncoder instead of json.dumps(**options)."""
    import json
    enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    old = codec._dump
    codec._dump = enc  # type: ignore[assignment]
    return lambda: setattr(codec, "_dump", old)


def _patch_replace() -> Callable[[], None]:
    """state.replace (dataclasses.replace) -> a direct OutgoingMessage(...) call."""
    from mqttsession import state as st
    from mqttsession.state import OutgoingMessage
    old = st.replace

    def fast(m: Any, **kw: Any) -> Any:
        if type(m) is OutgoingMessage and kw.keys() <= {"phase", "packet_id"}:
            return OutgoingMessage(m.seq, kw.get("packet_id", m.packet_id), m.topic, m.payload,
                                   m.qos, m.retain, m.properties, kw.get("phase", m.phase))
        return old(m, **kw)

    st.replace = fast  # type: ignore[assignment]
    return lambda: setattr(st, "replace", old)


WHATIFS: dict[str, Callable[[], Callable[[], None]]] = {
    "batch-read": _patch_batch_read,
    "cached-json-encoder": _patch_encoder,
    "no-dataclass-replace": _patch_replace,
}


def whatif(broker: MosquittoBroker, n: int, workdir: str, repeats: int) -> None:
    """Throughput with each candidate optimization patched in (bench-only monkeypatches)."""
    print(f"\n{'=' * 100}\nwhat-if: msgs/s with one optimization patched in at a time"
          f" ({n} messages, median of {repeats}, interleaved; no profiler)")
    variants = ["baseline", *WHATIFS, "all four"]
    configs = [(sync, qos) for sync in (None, "none", "always") for qos in (1, 2)]
    rates: dict[tuple[str, Any, int], list[float]] = {}
    for rnd in range(repeats):
        for v in (variants if rnd % 2 == 0 else variants[::-1]):
            undo = [WHATIFS[w]() for w in (WHATIFS if v == "all four" else
                                           [v] if v in WHATIFS else [])]
            try:
                for sync, qos in configs:
                    r = publish_run(broker, n, qos, sync, workdir, profile=False)
                    rates.setdefault((v, sync, qos), []).append(n / r["wall"])
            finally:
                for u in undo:
                    u()
    paho = {q: statistics.median(n / paho_run(broker, n, q, profile=False)["wall"]
                                 for _ in range(repeats)) for q in (1, 2)}
    head = "".join(f" {('file ' + str(s)) if s else 'no file':>10}/Q{q}" for s, q in configs)
    print(f"{'variant':<22}{head}")
    for v in variants:
        cells = "".join(f" {statistics.median(rates[(v, s, q)]):>13.0f}" for s, q in configs)
        print(f"{v:<22}{cells}")
    print(f"{'plain paho':<22}" + "".join(f" {paho[q]:>13.0f}" for _s, q in configs))


def _patch_notify_when_empty() -> Callable[[], None]:
    """Client._finished wakes flush() only when the last outgoing message is gone, not on
    every acknowledgement (each wake-up makes the waiting thread take the GIL and the lock)."""
    old = Client._finished

    def _finished(self: Client, m: Any, reason_code: int) -> None:
        self._inflight.pop(m.seq, None)
        if not self._state.outgoing:
            self._changed.notify_all()
        self._pump()

    Client._finished = _finished  # type: ignore[method-assign]
    return lambda: setattr(Client, "_finished", old)


WHATIFS["notify-when-empty"] = _patch_notify_when_empty


# ------------------------------------------------------------------------------- group commit


class _FsyncCounter:
    """Counts os.fdatasync / os.fsync calls; optionally adds a delay to emulate a slower disk."""

    def __init__(self, extra_delay: float = 0.0) -> None:
        self.calls = 0
        self.extra = extra_delay
        self._fdatasync = os.fdatasync
        self._fsync = os.fsync

    def __enter__(self) -> _FsyncCounter:
        def fdatasync(fd: int) -> None:
            self.calls += 1
            self._fdatasync(fd)
            if self.extra:
                time.sleep(self.extra)  # like the real call: releases the GIL while it waits

        def fsync(fd: int) -> None:
            self.calls += 1
            self._fsync(fd)
            if self.extra:
                time.sleep(self.extra)

        os.fdatasync = fdatasync  # type: ignore[assignment]
        os.fsync = fsync  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.fdatasync = self._fdatasync  # type: ignore[assignment]
        os.fsync = self._fsync  # type: ignore[assignment]


def _patch_group_commit() -> Callable[[], None]:
    """A PROTOTYPE of group commit, as bench-only monkeypatches (not for production).

    * ``Journal.append(sync=True)`` writes the frame (under the client's lock, as now) but does
      not fdatasync; it notes the journal position that must become durable (an LSN:
      compaction generation + byte offset) in a thread-local;
    * the public entry points that make a record durable (publish_data, hook_pubrec,
      hook_publish_in, hook_pubrel_in, hook_connack, disconnect) call ``sync_to(lsn)`` AFTER
      they release the client's lock: if another thread's fdatasync already covered the
      position, nothing is done; else one fdatasync (under a separate sync mutex) makes
      everything written so far durable, by either thread;
    * compaction takes the sync mutex and bumps the generation (it fsyncs everything itself).

    Differences from today: publish_data may write the PUBLISH before its Accepted record is
    on disk (it still returns only after); the PUBREL is still written only after the
    "released" record is durable (hook_pubrec returns after sync_to)."""
    from mqttsession import journal as jmod

    local = threading.local()
    mutex = threading.Lock()
    durable: dict[int, tuple[int, int]] = {}  # id(journal) -> (generation, offset)
    gens: dict[int, int] = {}
    orig_append = jmod.Journal.append
    orig_compact = jmod.Journal.compact

    def append(self: Any, rec: Any, state: Any, sync: bool = True) -> None:
        orig_append(self, rec, state, sync=False)
        if sync and self.sync:
            lsn = (gens.get(id(self), 0), self._size)
            cur = getattr(local, "need", None)
            if cur is None or lsn > cur[1]:
                local.need = (self, lsn)

    def compact(self: Any, state: Any, text: Any = None) -> None:
        with mutex:
            orig_compact(self, state, text)
            gens[id(self)] = gens.get(id(self), 0) + 1
            durable[id(self)] = (gens[id(self)], self._size)

    def sync_to(j: Any, lsn: tuple[int, int]) -> None:
        if durable.get(id(j), (0, 0)) >= lsn:
            return
        with mutex:
            if durable.get(id(j), (0, 0)) >= lsn or j._fd is None:
                return
            target = (gens.get(id(j), 0), j._size)  # all written so far, by any thread
            os.fdatasync(j._fd)
            durable[id(j)] = target

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            depth = getattr(local, "depth", 0)
            if depth == 0:
                local.need = None
            local.depth = depth + 1
            try:
                return fn(*a, **kw)
            finally:
                local.depth = depth
                if depth == 0 and local.need is not None:
                    j, lsn = local.need
                    local.need = None
                    sync_to(j, lsn)
        return wrapper

    names = ["publish_data", "hook_pubrec", "hook_publish_in", "hook_pubrel_in", "hook_connack",
             "disconnect"]
    saved = {n: getattr(Client, n) for n in names}
    for n in names:
        setattr(Client, n, wrap(saved[n]))
    jmod.Journal.append = append  # type: ignore[method-assign]
    jmod.Journal.compact = compact  # type: ignore[method-assign]

    def undo() -> None:
        for n, f in saved.items():
            setattr(Client, n, f)
        jmod.Journal.append = orig_append  # type: ignore[method-assign]
        jmod.Journal.compact = orig_compact  # type: ignore[method-assign]

    return undo


def group_commit(broker: MosquittoBroker, n: int, workdir: str, repeats: int,
                 delays: list[float], publishers: tuple[int, ...] = (1, 4)) -> None:
    print(f"\n{'=' * 100}\nSessionSync=always: today vs a group-commit prototype ({n} messages,"
          f" median of {repeats}, interleaved; fdatasyncs counted during the timed run)")
    print(f"{'disk':<26} {'publishing threads':>18} {'variant':<14} {'QoS':>3} {'msgs/s':>8}"
          f" {'fsyncs/msg':>10}")
    for delay, pubs in [(d, p) for d in delays for p in publishers]:
        disk = "this disk" if not delay else f"+{delay * 1000:.1f} ms/fsync (emulated)"
        count = n if not delay else max(400, min(n, int(2.0 / delay) * pubs))
        count -= count % pubs
        res: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for rnd in range(repeats):
            for variant in (("today", "group-commit") if rnd % 2 == 0 else
                            ("group-commit", "today")):
                undo = _patch_group_commit() if variant == "group-commit" else None
                try:
                    for qos in (1, 2):
                        with _FsyncCounter(delay) as fc:
                            r = publish_run(broker, count, qos, "always", workdir, profile=False,
                                            publishers=pubs)
                            calls = fc.calls
                        res.setdefault((variant, qos), []).append((count / r["wall"],
                                                                   calls / count))
                finally:
                    if undo is not None:
                        undo()
        for variant in ("today", "group-commit"):
            for qos in (1, 2):
                rows = res[(variant, qos)]
                print(f"{disk:<26} {pubs:>18} {variant:<14} {qos:>3}"
                      f" {statistics.median(x for x, _ in rows):>8.0f}"
                      f" {statistics.median(y for _, y in rows):>10.2f}")
    print("(fsyncs/msg counts every fdatasync/fsync in the run, compactions at connect and"
          " close included)")


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
        ("codec.encode_record(Accepted)  [json.dumps + 2x base64]", lambda: codec.encode_record(rec_a)),
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
        ("Journal.append(Stepped, sync=False)", lambda: j.append(rec_s, st, sync=False)),
        ("os.write + os.fdatasync (the SessionSync=always cost)",
         lambda: (os.write(fd, small), os.fdatasync(fd))),
        ("codec.decode_record(Accepted)  [json.loads + _Fields + b64decode]",
         lambda: codec.decode_record(enc_a)),
    ]
    # restore: one snapshot entry, today vs a fast path (sketch of the suggestion in README)
    import binascii
    from mqttsession.state import MAX_PACKET_ID
    obj = codec.outgoing_to_obj(m)
    out_keys = frozenset(obj)
    phases = {p.value: p for p in Phase}
    valid_topics: set[str] = set()

    def fast_outgoing(o: dict[str, Any]) -> OutgoingMessage:
        if type(o) is not dict or o.keys() != out_keys:
            raise ValueError("fall back to the checked path")
        seq, pid, topic, qos = o["seq"], o["packet_id"], o["topic"], o["qos"]
        if (type(seq) is not int or seq < 1 or type(pid) is not int or not 0 <= pid <= MAX_PACKET_ID
                or qos not in (1, 2) or type(qos) is not int or type(o["retain"]) is not bool):
            raise ValueError("fall back to the checked path")
        if topic not in valid_topics:
            validate_topic(topic)
            valid_topics.add(topic)
        props = o["properties"]
        return OutgoingMessage(seq, pid, topic, binascii.a2b_base64(o["payload"], strict_mode=True),
                               qos, o["retain"],
                               binascii.a2b_base64(props, strict_mode=True) if props else b"",
                               phases[o["phase"]])

    cases += [
        ("codec._outgoing(entry)  [restore, per held message, today]",
         lambda: codec._outgoing(obj, "state.outgoing[0]")),
        ("  fast path: keys ==, topic cache, binascii strict (sketch)", lambda: fast_outgoing(obj)),
        ("codec.outgoing_to_obj(m)  [compaction, per held message]",
         lambda: codec.outgoing_to_obj(m)),
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
    with c._lock:
        if c._journal is not None:
            c._journal.close()
            c._journal = None
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
    ap.add_argument("--only", default="publish,locks,whatif,groupcommit,micro,restore")
    ap.add_argument("--fsync-delays", default="0,0.002",
                    help="extra seconds per fsync to emulate slower disks in groupcommit")
    ap.add_argument("--repeats", "-r", type=int, default=3, help="rounds of the what-if runs")
    args = ap.parse_args(argv)
    parts = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="mqttsession-prof-")
    broker = None
    try:
        if parts & {"publish", "locks", "whatif", "groupcommit"}:
            broker = MosquittoBroker(str(CONF)).start()
        if "publish" in parts:
            assert broker is not None
            for qos in (1, 2):
                report_profile(f"paho-qos{qos}", paho_run(broker, args.messages, qos),
                               args.messages, out, args.top)
            for sync in ("none", "always"):
                for qos in (1, 2):
                    res = publish_run(broker, args.messages, qos, sync, workdir, profile=True)
                    report_profile(f"publish-sync-{sync}-qos{qos}", res, args.messages, out,
                                   args.top)
        if "locks" in parts:
            assert broker is not None
            lock_report(broker, args.messages, workdir)
        if "whatif" in parts:
            assert broker is not None
            whatif(broker, args.messages, workdir, args.repeats)
        if "groupcommit" in parts:
            assert broker is not None
            group_commit(broker, args.messages, workdir, args.repeats,
                         [float(x) for x in args.fsync_delays.split(",") if x])
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
