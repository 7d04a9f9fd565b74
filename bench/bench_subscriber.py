#!/usr/bin/env python3
"""A durable subscriber draining its queue: plain paho-mqtt against mqttsession, same run.

    python bench/bench_subscriber.py [--messages N] [--repeats R] [--qos Q]

For each configuration a subscriber with a persistent session subscribes at QoS Q and goes
away; a plain paho publisher then publishes N 100-byte messages at QoS Q, which one mosquitto
(``max_queued_messages 0``: it keeps them all) holds for it; the subscriber comes back and the
time from its CONNECT to its N-th delivery is the drain. Configurations: plain paho
(VERSION2, ``clean_session=False``), mqttsession without a state file, with ``SessionSync=none``
and with ``SessionSync=always``. Rounds are interleaved; the table gives median rates and the
ratio to paho.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
PAYLOAD = bytes(range(100))


def publish(port: int, topic: str, n: int, qos: int) -> None:
    done, count = threading.Event(), [0]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(100)

    def on_publish(*_: Any) -> None:
        count[0] += 1
        if count[0] == n:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    for i in range(n):
        c.publish(topic, PAYLOAD, qos)
        if i - count[0] > 10000:  # paho's ids wrap at 65535
            while i - count[0] > 5000:
                time.sleep(0.001)
    done.wait(600)
    c.disconnect()
    c.loop_stop()


def paho_sub(port: int, topic: str, n: int, qos: int, work: str) -> float:
    cid = f"sub-{uuid.uuid4().hex[:8]}"
    got, done = [0], threading.Event()

    def make() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.max_inflight_messages_set(20)

        def on_message(*_: Any) -> None:
            got[0] += 1
            if got[0] == n:
                done.set()

        c.on_message = on_message
        return c

    c = make()
    ready = threading.Event()
    c.on_subscribe = lambda *_: ready.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos)
    ready.wait(10)
    c.disconnect()
    c.loop_stop()
    publish(port, topic, n, qos)
    c = make()
    t = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"paho subscriber: {got[0]} of {n}")
    took = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return n / took


def session_sub(port: int, topic: str, n: int, qos: int, work: str, sync: str | None) -> float:
    cid = f"sub-{uuid.uuid4().hex[:8]}"
    d = tempfile.mkdtemp(dir=work)
    got, done = [0], threading.Event()

    def make() -> Client:
        c = Client(client_id=cid, clean_session=False)
        if sync is not None:
            c.config(f"SessionStateFile={os.path.join(d, 's')}")
            c.config(f"SessionSync={sync}")

        def on_message(_e: Any) -> None:
            got[0] += 1
            if got[0] == n:
                done.set()

        c.on_message_in = on_message
        return c

    c = make()
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos)
    time.sleep(0.2)  # the SUBACK
    c.close()
    publish(port, topic, n, qos)
    c = make()
    if sync is not None:
        c.restore_session("")
    t = time.perf_counter()
    c.connect("127.0.0.1", port)
    if not done.wait(600):
        raise RuntimeError(f"mqttsession subscriber: {got[0]} of {n}")
    took = time.perf_counter() - t
    c.close()
    shutil.rmtree(d, ignore_errors=True)
    return n / took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=10000)
    p.add_argument("--repeats", "-r", type=int, default=3)
    p.add_argument("--qos", type=int, default=2, choices=(1, 2))
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="mqttsession-sub-")
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"),
                             extra_config="max_queued_messages 0\nmax_inflight_messages 20\n")
    broker.start()
    configs = {
        "paho": lambda t: paho_sub(broker.port, t, a.messages, a.qos, work),
        "mqttsession, no state file": lambda t: session_sub(broker.port, t, a.messages, a.qos,
                                                            work, None),
        "mqttsession, SessionSync=none": lambda t: session_sub(broker.port, t, a.messages, a.qos,
                                                               work, "none"),
        "mqttsession, SessionSync=always": lambda t: session_sub(broker.port, t, a.messages,
                                                                 a.qos, work, "always"),
    }
    res: dict[str, list[float]] = {}
    try:
        names = list(configs)
        for r in range(a.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                res.setdefault(name, []).append(configs[name](f"bench/sub/{uuid.uuid4().hex[:8]}"))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(res["paho"])
    print(f"subscriber drain, {a.messages} QoS {a.qos} messages held by mosquitto,"
          f" median of {a.repeats}")
    for name in configs:
        rate = statistics.median(res[name])
        print(f"  {name:<34} {rate:8.0f} msgs/s  {rate / base:5.2f}x paho")
    return 0


if __name__ == "__main__":
    sys.exit(main())
