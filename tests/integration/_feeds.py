"""A message from an independent plain paho client, for the fault tests' subscribers."""

from __future__ import annotations

import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def publish(broker: Any, topic: str, payload: bytes, qos: int = 2) -> None:
    """``payload`` to ``topic`` on ``broker`` (``.host``, ``.port``), acknowledged."""
    p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"feed-{uuid.uuid4().hex[:8]}")
    p.connect(broker.host, broker.port)
    p.loop_start()
    try:
        p.publish(topic, payload, qos=qos).wait_for_publish(10)
    finally:
        p.disconnect()
        p.loop_stop()
