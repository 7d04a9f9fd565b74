"""Shared by the examples: a broker to talk to, and a plain paho subscriber that counts."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from typing import Any, Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession.testing import EmbeddedAmqtt, MosquittoBroker
from mqttsession.testing.brokers import find_mosquitto


def parse_args(doc: str, need_v5: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--broker", help="HOST:PORT (default: start a broker for this run)")
    args = p.parse_args()
    args.need_v5 = need_v5
    return args


@contextlib.contextmanager
def broker(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """The named broker, or one started for this run (mosquitto if installed, else amqtt)."""
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        yield host, int(port)
        return
    if find_mosquitto():
        b: Any = MosquittoBroker()
    elif args.need_v5:
        raise SystemExit("this example needs MQTT 5: install mosquitto or pass --broker")
    else:
        b = EmbeddedAmqtt()
    with b:
        print(f"(started {type(b).__name__} on {b.address})")
        yield b.host, b.port


class Tally:
    """An independent subscriber that records what arrives."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.got: list[str] = []
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda _c, _u, m: self.got.append(m.payload.decode())
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect(host, port)
        self.c.loop_start()
        self.c.subscribe(topic, 2)
        ready.wait(10)

    def wait(self, n: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.got)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
