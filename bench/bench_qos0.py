#!/usr/bin/env python3
"""QoS 0 publishing: memory over a stalled link, and the rate over a healthy one, plain
paho-mqtt 2.x vs mqttsession (``QoS0BacklogBytes``).

    python bench/bench_qos0.py [--seconds S] [--messages N] [--repeats R] [--only stall,rate]

* ``stall``: a server on 127.0.0.1 answers the CONNECT and then reads nothing more (a frozen
  broker whose kernel still took what fitted in its buffers); each client publishes 1 KB QoS 0
  messages as fast as it can for S seconds (default 5), keep-alive 60 s (the link is not cut
  meanwhile). Each client runs in a process of its own; reported: messages published, the
  process's resident memory grown (MB), and for mqttsession the messages it dropped (logged
  "the connection is behind"). Plain paho and ``QoS0BacklogBytes=0`` hold every one.
* ``rate``: N (default 100,000) 100-byte QoS 0 messages to mosquitto (``mosquitto-bench.conf``
  with ``max_queued_messages 0``: else it drops QoS 0 for a subscriber 1,000 behind),
  the time until a plain paho subscriber got them all; msgs/s and the ratio against paho, R
  rounds (default 3), medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession import Client
from mqttsession.testing import MosquittoBroker

HERE = Path(__file__).resolve().parent
CONF = HERE / "mosquitto-bench.conf"

_STALL_CHILD = r"""
import json, logging, sys, time
kind, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

body = b"r" * 1000
dropped = [0]
if kind == "paho":
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stall-paho")
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    time.sleep(0.5)
    publish = lambda: c.publish("stall/t", body, 0)
else:
    from mqttsession import Client

    class Count(logging.Handler):
        def emit(self, record):
            m = record.getMessage()
            if "connection is behind" in m and " dropped: " in m:  # (one record a drop)
                dropped[0] += 1

    logging.getLogger("mqttsession").addHandler(Count(logging.DEBUG))
    logging.getLogger("mqttsession").setLevel(logging.DEBUG)
    c = Client(client_id="stall-ms", keep_alive_interval=60)
    if kind == "mqttsession-unbounded":
        c.config("QoS0BacklogBytes=0")
    c.connect("127.0.0.1", port, timeout=5)
    publish = lambda: c.publish_data("stall/t", 0, body)
before, n = rss_mb(), 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        publish()
    n += 100
grown = rss_mb() - before
print(json.dumps({"published": n, "rss_grown_mb": round(grown, 1), "dropped": dropped[0]}),
      flush=True)
import os
os._exit(0)
"""


class _Frozen:
    """Answers each CONNECT with a CONNACK (MQTT 3.1.1, accepted), then reads nothing more."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
                conn.recv(4096)
                conn.sendall(b"\x20\x02\x00\x00")
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            c.close()


def stall(seconds: float) -> list[dict[str, Any]]:
    rows = []
    for kind in ("paho", "mqttsession", "mqttsession-unbounded"):
        server = _Frozen()
        try:
            out = subprocess.run([sys.executable, "-c", _STALL_CHILD, kind, str(server.port),
                                  str(seconds)], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        finally:
            server.close()
        if out.returncode:
            raise RuntimeError(f"{kind}: {out.stderr[-2000:]}")
        rows.append({"client": kind, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(f"  stall {kind:<22} {rows[-1]}", flush=True)
    return rows


def _subscriber(host: str, port: int, topic: str, n: int) -> tuple[mqtt.Client, threading.Event]:
    got = [0]
    done, ready = threading.Event(), threading.Event()
    s = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"q0sub-{uuid.uuid4().hex[:8]}")

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        got[0] += 1
        if got[0] == n:
            done.set()

    s.on_message = on_message
    s.on_subscribe = lambda *_a: ready.set()
    s.connect(host, port, 60)
    s.subscribe(topic, 0)
    s.loop_start()
    if not ready.wait(10):
        raise RuntimeError("no SUBACK")
    return s, done


def rate_once(kind: str, host: str, port: int, n: int) -> float:
    topic = f"bench/q0/{uuid.uuid4().hex[:8]}"
    payload = bytes(range(100))
    sub, done = _subscriber(host, port, topic, n)
    try:
        if kind == "paho":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"q0p-{uuid.uuid4().hex[:8]}")
            c.connect(host, port, 60)
            c.loop_start()
            time.sleep(0.3)
            t0 = time.perf_counter()
            for _ in range(n):
                c.publish(topic, payload, 0)
            ok = done.wait(120)
            secs = time.perf_counter() - t0
            c.disconnect()
            c.loop_stop()
        else:
            m = Client(client_id=f"q0m-{uuid.uuid4().hex[:8]}")
            m.connect(host, port, timeout=10)
            t0 = time.perf_counter()
            for _ in range(n):
                m.publish_data(topic, 0, payload)
            ok = done.wait(120)
            secs = time.perf_counter() - t0
            m.close()
        if not ok:
            raise RuntimeError(f"{kind}: not every message arrived")
        return n / secs
    finally:
        sub.disconnect()
        sub.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--messages", "-n", type=int, default=100_000)
    ap.add_argument("--repeats", "-r", type=int, default=3)
    ap.add_argument("--only", default="stall,rate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    parts = args.only.split(",")
    result: dict[str, Any] = {}
    if "stall" in parts:
        result["stall"] = stall(args.seconds)
    if "rate" in parts:
        # (mosquitto drops QoS 0 for a subscriber past max_queued_messages, 1000 by default:
        # the subscriber here is slower than the publishers)
        conf = Path(tempfile.mkdtemp(prefix="bench-qos0-")) / "mosquitto.conf"
        conf.write_text(CONF.read_text() + "max_queued_messages 0\n")
        broker = MosquittoBroker(str(conf))
        broker.start()
        try:
            rates: dict[str, list[float]] = {"paho": [], "mqttsession": []}
            for r in range(args.repeats):
                for kind in (("paho", "mqttsession") if r % 2 == 0 else ("mqttsession", "paho")):
                    rates[kind].append(rate_once(kind, broker.host, broker.port, args.messages))
                    print(f"  rate round {r + 1}: {kind:<12} {rates[kind][-1]:9.0f} msgs/s",
                          flush=True)
        finally:
            broker.stop()
        med = {k: statistics.median(v) for k, v in rates.items()}
        result["rate"] = {"messages": args.messages, "median_msgs_per_s": med,
                          "ratio": med["mqttsession"] / med["paho"]}
        print(f"  rate medians: paho {med['paho']:.0f}, mqttsession {med['mqttsession']:.0f}"
              f" msgs/s ({result['rate']['ratio']:.2f}x)")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
