"""A message an MQTT 3.1.1 broker closes the connection on (too large for mosquitto's
``max_packet_size``): 3.1.1 has no other way to refuse it, and the session sends it first again
at every reconnect, so the messages behind it wait. After three such closes in a row (no ack
on the connection) ``on_error`` names it; the session keeps it (a close proves no refusal).
Before (a hunt): reconnects for ever, not a word."""

from __future__ import annotations

import threading
import uuid

import pytest

from mqttsession import Client
from mqttsession.events import ErrorEvent
from mqttsession.testing import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def test_a_message_the_broker_closes_on_three_times_is_reported() -> None:
    with MosquittoBroker(extra_config="max_packet_size 1000\n") as b:
        c = Client(client_id=f"poison-{uuid.uuid4().hex[:8]}", clean_session=False,
                   protocol_version=4)
        c.config("ReconnectDelayMin=0.1")
        errors: list[ErrorEvent] = []
        said = threading.Event()

        def on_error(e: ErrorEvent) -> None:
            errors.append(e)
            if "closed 3 connections" in e.description:
                said.set()

        c.on_error = on_error
        try:
            c.connect(b.host, b.port, 5)
            c.publish_data("poison/big", 1, b"x" * 2000)
            c.publish_data("poison/small", 1, b"after")
            assert said.wait(20), [e.description for e in errors]
            assert "poison/big" in next(e.description for e in errors
                                        if "closed 3" in e.description)
            assert [m.topic for m in c.outgoing_messages] == ["poison/big", "poison/small"]
        finally:
            c.close()
