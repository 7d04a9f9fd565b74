#!/usr/bin/env python3
"""Store-and-forward at gateway scale: a million held messages on the disk queue.

    python bench/bench_queue.py [--messages N] [--steady M] [--workdir DIR] [--json]

Each phase runs in its own Python process (its peak RSS is its own), against ONE mosquitto on
127.0.0.1 (``mosquitto-bench.conf``), 100-byte QoS 1 payloads, ``SessionSync=none``:

1. ``publish``: a client with a state file that never connects publishes N messages: the time,
   the slowest single ``publish_data`` call, peak RSS, bytes written; then ``close()``.
2. ``restore``: a new process: ``restore_session`` with N held; peak RSS.
3. ``drain``: a new process: restore, ``connect()`` (timed: CONNACK and the resume plan),
   then everything acknowledged by the broker (``flush``): messages/s; peak RSS.
4. ``paho``: plain paho-mqtt publishes the same N messages to the same broker (window 20) and
   waits for every PUBACK: messages/s, the yardstick for the drain. It is kept at most 10,000
   messages ahead of its PUBACKs: paho holds its backlog in memory under message ids that wrap
   at 65535, and with more than that queued it overwrites messages and stalls (seen here at
   300,000: 65,858 acknowledged, then nothing).
5. ``steady``: a connected client publishes M messages while the broker keeps up (at most 200
   unacknowledged): the bytes it writes (``/proc/self/io`` ``wchar`` plus the bytes copied
   into mapped files, ``mapped.py``; and ``write_bytes``
   where the file system reports it) per message, against the size of one message's record.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONF = HERE / "mosquitto-bench.conf"
TOPIC = "bench/queue"
PAYLOAD = bytes(range(100))
WINDOW = 20
PAHO_BACKLOG = 10000  # unacknowledged messages plain paho is given at most
IN_MEMORY = int(os.environ.get("BENCH_QUEUE_IN_MEMORY", "0"))  # 0: the default QueueInMemory


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MAPPED = [0]  # bytes the library copied into mapped files (``mapped.py``): no write() for them


def _count_mapped() -> None:
    """Count the records copied into a mapping of their file: ``wchar`` sees only write()."""
    try:
        from mqttsession.mapped import MappedTail
    except ImportError:  # a tree before session 18: it writes everything
        return
    put = MappedTail.put
    if getattr(put, "counted", False):
        return

    def counted(self: Any, fd: int, alloc: int, at: int, data: bytes) -> bool:
        done = put(self, fd, alloc, at, data)
        if done:
            _MAPPED[0] += len(data)
        return done

    counted.counted = True  # type: ignore[attr-defined]
    MappedTail.put = counted  # type: ignore[method-assign]


def _io() -> dict[str, int]:
    """``/proc/self/io``, with ``wchar`` counting the bytes mapped too (written either way)."""
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    out["wchar"] += _MAPPED[0]
    return out


def _client(path: str, cid: str) -> Any:
    from mqttsession import Client

    _count_mapped()
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=none")
    c.config("MaxQueuedBytes=0")
    if IN_MEMORY:
        c.config(f"QueueInMemory={IN_MEMORY}")
    return c


def phase_publish(a: argparse.Namespace) -> dict[str, Any]:
    c = _client(a.path, a.cid)
    c.restore_session("")
    io0, worst, t0 = _io(), 0.0, time.perf_counter()
    for _ in range(a.n):
        t = time.perf_counter()
        c.publish_data(TOPIC, 1, PAYLOAD)
        worst = max(worst, time.perf_counter() - t)
    took = time.perf_counter() - t0
    io1 = _io()
    t = time.perf_counter()
    c.close()
    return {"seconds": took, "per_message_us": took / a.n * 1e6, "worst_publish_ms": worst * 1e3,
            "close_s": time.perf_counter() - t, "rss_mb": _rss_mb(),
            "wchar_per_message": (io1["wchar"] - io0["wchar"]) / a.n}


def phase_restore(a: argparse.Namespace) -> dict[str, Any]:
    c = _client(a.path, a.cid)
    t = time.perf_counter()
    c.restore_session("")
    took = time.perf_counter() - t
    held = c.queue_stats().messages
    c._file.close()  # not close(): that would compact; nothing changed
    return {"restore_s": took, "held": held, "rss_mb": _rss_mb()}


def phase_drain(a: argparse.Namespace) -> dict[str, Any]:
    c = _client(a.path, a.cid)
    t = time.perf_counter()
    c.restore_session("")
    restore = time.perf_counter() - t
    held = c.queue_stats().messages
    t = time.perf_counter()
    c.connect("127.0.0.1", a.port)
    connect = time.perf_counter() - t
    t = time.perf_counter()
    if not c.flush(3600):
        raise RuntimeError("drain did not finish")
    took = time.perf_counter() - t
    c.close()
    return {"restore_s": restore, "connect_s": connect, "held": held, "seconds": took,
            "rate": held / took, "rss_mb": _rss_mb()}


def phase_paho(a: argparse.Namespace) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(WINDOW)
    connected, done, count = threading.Event(), threading.Event(), [0]
    room = threading.Condition()

    def on_publish(*_: Any) -> None:
        with room:
            count[0] += 1
            room.notify_all()
        if count[0] == a.n:
            done.set()

    c.on_connect = lambda *_: connected.set()
    c.on_publish = on_publish
    c.connect("127.0.0.1", a.port, 60)
    c.loop_start()
    connected.wait(10)
    t = time.perf_counter()
    for i in range(a.n):
        c.publish(TOPIC, PAYLOAD, 1)
        if i - count[0] >= PAHO_BACKLOG:  # paho's message ids wrap at 65535: more are lost
            with room:
                room.wait_for(lambda: i - count[0] < PAHO_BACKLOG // 2, 60)
    if not done.wait(3600):
        raise RuntimeError("paho did not finish")
    took = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return {"seconds": took, "rate": a.n / took, "rss_mb": _rss_mb()}


def phase_steady(a: argparse.Namespace) -> dict[str, Any]:
    from mqttsession.records import Accepted, OutgoingMessage, encode_record

    c = _client(a.path, a.cid)
    c.connect("127.0.0.1", a.port)
    cond = c._driver.changed
    io0 = _io()
    for _ in range(a.n):
        c.publish_data(TOPIC, 1, PAYLOAD)
        if len(c._engine.state.outgoing) > 200:
            with cond:
                cond.wait_for(lambda: len(c._engine.state.outgoing) <= 100, 10)
    c.flush(60)
    io1 = _io()
    c.close()
    record = 8 + len(encode_record(Accepted(OutgoingMessage(1, 1, TOPIC, PAYLOAD, 1))))
    w = (io1["wchar"] - io0["wchar"]) / a.n
    b = (io1["write_bytes"] - io0["write_bytes"]) / a.n
    return {"record_bytes": record, "wchar_per_message": w, "write_bytes_per_message": b,
            "wchar_ratio": w / record, "write_bytes_ratio": b / record}


PHASES = {"publish": phase_publish, "restore": phase_restore, "drain": phase_drain,
          "paho": phase_paho, "steady": phase_steady}


def _run(phase: str, **kw: Any) -> dict[str, Any]:
    args = [sys.executable, __file__, "--phase", phase] + [
        f"--{k}={v}" for k, v in kw.items()]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=1_000_000)
    p.add_argument("--steady", type=int, default=100_000)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--phase", choices=sorted(PHASES))
    p.add_argument("--path", default="")
    p.add_argument("--cid", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--n", type=int, default=0)
    a = p.parse_args(argv)
    if a.phase:
        print(json.dumps(PHASES[a.phase](a)))
        return 0
    from mqttsession.testing import MosquittoBroker

    work = tempfile.mkdtemp(prefix="mqttsession-queue-bench-", dir=a.workdir)
    broker = MosquittoBroker(str(CONF))
    broker.start()
    res: dict[str, Any] = {"messages": a.messages}
    try:
        port = broker.port
        path, cid = os.path.join(work, "gw.state"), f"bench-{uuid.uuid4().hex[:8]}"
        n = a.messages
        res["publish"] = _run("publish", path=path, cid=cid, n=n)
        queue = Path(path + ".queue")  # (none while every message fits QueueInMemory)
        size = sum(f.stat().st_size for f in queue.iterdir()) if queue.is_dir() else 0
        res["disk_bytes"] = size + os.path.getsize(path) + os.path.getsize(path + ".journal")
        res["restore"] = _run("restore", path=path, cid=cid, n=n)
        res["drain"] = _run("drain", path=path, cid=cid, port=port, n=n)
        res["paho"] = _run("paho", port=port, n=n)
        res["drain_vs_paho"] = res["drain"]["rate"] / res["paho"]["rate"]
        res["steady"] = _run("steady", path=os.path.join(work, "steady.state"),
                             cid=cid + "-s", port=port, n=a.steady)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    pub, rst, dr, ph, sd = (res[k] for k in ("publish", "restore", "drain", "paho", "steady"))
    print(f"{n} held 100-byte QoS 1 messages, SessionSync=none, mosquitto on 127.0.0.1")
    print(f"publish offline: {pub['per_message_us']:.1f} us/msg, slowest call"
          f" {pub['worst_publish_ms']:.1f} ms, close {pub['close_s']:.3f} s,"
          f" peak RSS {pub['rss_mb']:.0f} MB, {pub['wchar_per_message']:.0f} B written/msg;"
          f" on disk {res['disk_bytes'] / n:.0f} B/msg")
    print(f"restore in a new process: {rst['restore_s']:.3f} s ({rst['held']} held),"
          f" peak RSS {rst['rss_mb']:.0f} MB")
    print(f"drain: restore {dr['restore_s']:.3f} s, connect() {dr['connect_s']:.3f} s,"
          f" {dr['rate']:.0f} msgs/s, peak RSS {dr['rss_mb']:.0f} MB")
    print(f"plain paho, same stream: {ph['rate']:.0f} msgs/s (peak RSS {ph['rss_mb']:.0f} MB);"
          f" drain / paho = {res['drain_vs_paho']:.2f}")
    print(f"steady stream ({a.steady} msgs): {sd['wchar_per_message']:.0f} B written/msg"
          f" ({sd['wchar_ratio']:.2f}x its {sd['record_bytes']} B record);"
          f" write_bytes {sd['write_bytes_per_message']:.0f} B/msg ({sd['write_bytes_ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
