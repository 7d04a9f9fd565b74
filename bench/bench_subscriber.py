#!/usr/bin/env python3
"""A durable subscriber draining its queue: plain paho-mqtt against mqttsession, same run.

    python bench/bench_subscriber.py [--messages N] [--repeats R] [--qos Q] [--configs LIST]

For each configuration a subscriber with a persistent session subscribes at QoS Q (waiting
for its SUBACK) and goes away; a publisher (mqttsession without a state file, QoS Q, then
``flush``) publishes N 100-byte messages, which one mosquitto (``max_queued_messages``
above N) holds for the session; the subscriber comes back and the time from its CONNECT to its
N-th delivery is the drain. Each subscriber runs in a child process of its own, so one's
threads and garbage never meet another's. Configurations: plain paho (VERSION2,
``clean_session=False``, ``max_inflight_messages_set(20)``, which only bounds what it
publishes),
mqttsession without a state file (``nofile``), with ``SessionSync=none`` and with
``SessionSync=always``, and ``AsyncSession`` with a state file under ``always`` (``aio-always``:
``receive()`` in a loop, each call acknowledging the message before; its state file is
restored before the clock starts, as the ``Client``'s). Rounds are interleaved; the table gives
median rates and the ratio to paho, and for ``always`` the fdatasync calls per message.

Each payload carries its number: a run fails unless every subscriber got every number, and
QoS 2 each exactly once (a duplicate never stands in for a loss; each listens ``WINDOW``
seconds more, outside its clock, for late ones); QoS 1 duplicates are counted.

How many fdatasyncs a message ``always`` needs follows how many PUBLISHes a read batch brings:
mosquitto 2.0.11 sends a resumed session hundreds at a time (its ``max_inflight_messages``
of 20 is not what bounds a queued drain; hundreds of PUBRECs went out in one ``sendto``), so
one sync covers hundreds of PUBREC records. A broker that keeps to 20 in flight bounds it at
1/20 = 0.05 a message or more; these figures are this broker's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAYLOAD = bytes(range(100))


def payload(i: int) -> bytes:
    """The ``i``-th message: its number, then the rest of the 100 bytes."""
    return i.to_bytes(4, "big") + PAYLOAD[4:]


class Seen:
    """The numbers a subscriber got: ``done`` once it has all ``n``; ``check`` raises when one
    is missing or (QoS 2) came twice."""

    def __init__(self, n: int, qos: int, who: str) -> None:
        self.n, self.qos, self.who = n, qos, who
        self.got: set[int] = set()
        self.dups = 0
        self.done = threading.Event()

    def add(self, data: bytes) -> None:
        i = int.from_bytes(data[:4], "big")
        if i in self.got:
            self.dups += 1
        self.got.add(i)
        if len(self.got) == self.n:
            self.done.set()

    def check(self) -> None:
        missing = self.n - len(self.got & set(range(self.n)))
        if missing or (self.qos == 2 and self.dups):
            raise RuntimeError(f"{self.who}: {missing} of {self.n} missing, {self.dups}"
                               " duplicates")
CONFIGS = ("paho", "nofile", "none", "always", "aio-always")
WINDOW = 0.3  # seconds a subscriber goes on listening after its last number: late duplicates


def _paho_sub(port: int, topic: str, n: int, qos: int) -> tuple[float, float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cid = f"sub-{uuid.uuid4().hex[:8]}"
    seen, subscribed = Seen(n, qos, "paho subscriber"), threading.Event()

    def make() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.max_inflight_messages_set(20)

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            seen.add(m.payload)

        c.on_message = on_message
        c.on_subscribe = lambda *_: subscribed.set()
        return c

    c = make()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos)
    if not subscribed.wait(10):
        raise RuntimeError("paho subscriber: no SUBACK")
    c.disconnect()
    c.loop_stop()
    _publish(port, topic, n, qos)
    c = make()
    t = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    seen.done.wait(600)
    took = time.perf_counter() - t
    time.sleep(WINDOW)  # (a late duplicate shows within it; outside the clock)
    c.disconnect()
    c.loop_stop()
    seen.check()
    return n / took, 0.0


def _publish(port: int, topic: str, n: int, qos: int) -> None:
    from mqttsession import Client

    p = Client(client_id=f"pub-{uuid.uuid4().hex[:8]}", clean_session=True)
    p.connect("127.0.0.1", port, timeout=10)
    for i in range(n):
        p.publish_data(topic, qos, payload(i))
    if not p.flush(600):
        raise RuntimeError("publisher: flush timed out")
    p.close()


def _session_sub(port: int, topic: str, n: int, qos: int, sync: str) -> tuple[float, float]:
    from mqttsession import Client
    from mqttsession.events import MessageEvent, SubscribedEvent
    from mqttsession.testing.fsyncs import counting_fdatasyncs

    cid = f"sub-{uuid.uuid4().hex[:8]}"
    d = tempfile.mkdtemp(prefix="mqttsession-sub-")
    seen, subscribed = Seen(n, qos, "mqttsession subscriber"), threading.Event()

    def make() -> Client:
        c = Client(client_id=cid, clean_session=False)
        if sync != "nofile":
            c.config(f"SessionStateFile={os.path.join(d, 's')}")
            c.config(f"SessionSync={sync}")

        def on_message(e: MessageEvent) -> None:
            seen.add(e.message)

        def on_subscribed(_e: SubscribedEvent) -> None:
            subscribed.set()

        c.on_message_in = on_message
        c.on_subscribed = on_subscribed
        return c

    c = make()
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos)
    if not subscribed.wait(10):
        raise RuntimeError("mqttsession subscriber: no SUBACK")
    c.close()
    _publish(port, topic, n, qos)
    c = make()
    if sync != "nofile":
        c.restore_session("")
    with counting_fdatasyncs() as fsyncs:
        t = time.perf_counter()
        c.connect("127.0.0.1", port)
        seen.done.wait(600)
        took = time.perf_counter() - t
    time.sleep(WINDOW)
    c.close()
    seen.check()
    shutil.rmtree(d, ignore_errors=True)
    return n / took, fsyncs.syncs / n


def _aio_sub(port: int, topic: str, n: int, qos: int) -> tuple[float, float]:
    import asyncio

    from mqttsession import AsyncSession, Options
    from mqttsession.testing.fsyncs import counting_fdatasyncs

    cid = f"asub-{uuid.uuid4().hex[:8]}"
    d = tempfile.mkdtemp(prefix="mqttsession-asub-")
    options = Options(address=f"127.0.0.1:{port}")

    async def session() -> Any:
        return await AsyncSession.create(options, client_id=cid,
                                         state_file=os.path.join(d, "s"), session_sync="always")

    async def subscribe() -> None:
        s = await session()
        await s.subscribe(topic, qos)
        await s.close()

    async def drain() -> tuple[float, float]:
        seen = Seen(n, qos, "AsyncSession subscriber")
        s = await AsyncSession.create(options, client_id=cid, state_file=os.path.join(d, "s"),
                                      session_sync="always", connect=False)  # (restored)
        with counting_fdatasyncs() as fsyncs:
            t = time.perf_counter()
            await s.connect()
            while not seen.done.is_set():
                m = await s.receive(timeout=600)
                if m is None:
                    break
                seen.add(m.message)
            took = time.perf_counter() - t
        while (m := await s.receive(timeout=WINDOW)) is not None:  # (a late duplicate)
            seen.add(m.message)
        await s.close()
        seen.check()
        return n / took, fsyncs.syncs / n

    asyncio.run(subscribe())
    _publish(port, topic, n, qos)
    out = asyncio.run(drain())
    shutil.rmtree(d, ignore_errors=True)
    return out


def child(port: int, config: str, n: int, qos: int) -> None:
    topic = f"bench/sub/{uuid.uuid4().hex[:8]}"
    if config == "paho":
        rate, per = _paho_sub(port, topic, n, qos)
    elif config == "aio-always":
        rate, per = _aio_sub(port, topic, n, qos)
    else:
        rate, per = _session_sub(port, topic, n, qos, config)
    print(f"{rate:.1f} {per:.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", "-n", type=int, default=10000)
    p.add_argument("--repeats", "-r", type=int, default=3)
    p.add_argument("--qos", type=int, default=2, choices=(1, 2))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        port, config, n, qos = a.child
        child(int(port), config, int(n), int(qos))
        return 0
    sys.path.insert(0, str(ROOT))
    from mqttsession.testing import MosquittoBroker

    configs = [c for c in a.configs.split(",") if c]
    if "paho" not in configs:
        configs.insert(0, "paho")
    broker = MosquittoBroker(str(HERE / "mosquitto-bench.conf"),
                             extra_config=f"max_queued_messages {a.messages * 2}\n")
    broker.start()
    res: dict[str, list[tuple[float, float]]] = {}
    try:
        for r in range(a.repeats):
            for name in configs[r % len(configs):] + configs[:r % len(configs)]:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(broker.port), name,
                     str(a.messages), str(a.qos)],
                    env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{name}: {out.stderr.strip()[-2000:]}")
                rate, per = map(float, out.stdout.split())
                res.setdefault(name, []).append((rate, per))
    finally:
        broker.stop()
    base = statistics.median(x[0] for x in res["paho"])
    print(f"subscriber drain, {a.messages} QoS {a.qos} messages held by mosquitto,"
          f" median of {a.repeats}")
    for name in configs:
        rate = statistics.median(x[0] for x in res[name])
        per = statistics.median(x[1] for x in res[name])
        extra = f"  {per:.3f} fdatasync/msg" if name.endswith("always") else ""
        print(f"  {name:<10} {rate:8.0f} msgs/s  {rate / base:5.2f}x paho{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
