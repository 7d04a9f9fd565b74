"""``Tally``: an independent plain-paho subscriber the crash tests count deliveries with."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession.testing import MosquittoBroker

__all__ = ["Tally"]


class Tally:
    """An independent plain-paho subscriber counting deliveries by message number."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.counts: Counter[int] = Counter()
        self.lock = threading.Condition()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tally-{topic}")
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(topic, 2)
        assert ready.wait(10), "tally got no SUBACK"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.counts[int(msg.payload)] += 1
            self.lock.notify_all()

    def wait_for(self, numbers: set[int], timeout: float) -> None:
        """Until every number arrived or ``timeout``; the caller asserts on what is missing."""
        with self.lock:
            self.lock.wait_for(lambda: all(self.counts[n] for n in numbers), timeout)

    def close(self) -> None:
        """Stop the network thread and disconnect."""
        self.c.loop_stop()
        self.c.disconnect()
