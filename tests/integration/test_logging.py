"""What an operator sees in the log of a healthy run: a publish / subscribe / reconnect run
against mosquitto (through a loopback proxy that cuts the connection once, with a QoS 1 message
and a QoS 2 PUBREL in flight), captured at DEBUG. Nothing at WARNING or above; INFO says where
it connected, with SessionPresent, the loss, the reconnect attempt, what was resumed, and the
compaction at disconnect; DEBUG traces the acknowledgements."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_a_healthy_run_logs_what_an_operator_needs(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    version: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = mqtt_proxy_factory(mosquitto)
    cid = f"log-{uuid.uuid4().hex[:10]}"
    c = Client(client_id=cid, clean_session=False, protocol_version=version)
    c.config(f"SessionStateFile={tmp_path / 'session'}")
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.5")
    got: list[bytes] = []
    arrived, back, subscribed = threading.Event(), threading.Event(), threading.Event()
    connects: list[bool] = []

    def on_message(e: Any) -> None:
        got.append(e.message)
        if len(got) == 2:
            arrived.set()

    c.on_message_in = on_message
    c.on_subscribed = lambda e: subscribed.set()
    c.on_connected = lambda e: (connects.append(e.session_present), back.set())
    try:
        c.restore_session("")
        c.connect(proxy.host, proxy.port, 10)
        c.subscribe("log/in", 2)
        assert subscribed.wait(10)
        c.publish_message("log/in", 1, "one")
        c.publish_message("log/in", 2, "two")
        assert c.flush(10) and arrived.wait(10)

        # in flight at the cut: a QoS 1 PUBLISH without its PUBACK, a QoS 2 without PUBCOMP
        proxy.clear_log()
        proxy.drop("s2c", "PUBACK", "PUBCOMP")
        c.publish_message("log/out", 1, "unacknowledged")
        c.publish_message("log/out", 2, "released")
        proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.dropped, timeout=10)
        proxy.wait_for("s2c", "PUBCOMP", predicate=lambda r: r.dropped, timeout=10)
        back.clear()
        proxy.clear_drops()
        proxy.cut()
        assert back.wait(20)
        assert c.flush(10)
        c.disconnect()
    finally:
        c.close()
    assert connects == [False, True]

    ours = [r for r in caplog.records
            if r.name.startswith("mqttsession") and not r.name.startswith("mqttsession.testing")]
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in ours if r.levelno >= logging.WARNING]
    assert not loud, loud
    info = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    where = f"{proxy.host}:{proxy.port}"
    mqtt = "5" if version == 5 else "3.1.1"

    def has(lines: list[str], text: str) -> bool:
        return any(text in line for line in lines)

    assert has(info, f"connected to {where} as '{cid}' (MQTT {mqtt}, SessionPresent=0)"), info
    assert has(info, f"connection to {where} lost"), info
    assert has(info, f"reconnecting to {where} (attempt 1)"), info
    assert has(info, f"reconnected to {where} as '{cid}' (MQTT {mqtt}, SessionPresent=1)"), info
    assert has(info, f"session of '{cid}' resumed (SessionPresent=1): 1 PUBLISH resent (DUP),"
                     " 1 PUBREL resent"), info
    assert has(info, f"disconnected from {where}"), info
    assert has(info, "compacted"), info
    assert has(debug, "PUBACK received for packet id"), debug
    assert has(debug, "PUBREL for packet id"), debug
    assert has(debug, "PUBCOMP received for packet id"), debug


def test_a_broker_restart_that_loses_the_session_is_logged_at_info(
    mosquitto_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker without persistence restarts: SessionPresent=0 on the reconnect; INFO says
    that the session was lost and what was done (the subscription sent again), nothing louder."""
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory()
    cid = f"lost-{uuid.uuid4().hex[:10]}"
    c = Client(client_id=cid, clean_session=False)
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.5")
    back, subscribed = threading.Event(), threading.Event()
    c.on_connected = lambda e: back.set()
    c.on_subscribed = lambda e: subscribed.set()
    lost: list[Any] = []
    c.on_session_lost = lost.append
    try:
        c.connect(broker.host, broker.port, 10)
        c.subscribe("lost/#", 1)
        assert subscribed.wait(10)
        back.clear()
        subscribed.clear()
        broker.restart()
        assert back.wait(20) and subscribed.wait(10)
    finally:
        c.close()
    assert len(lost) == 1 and lost[0].resubscribed == (("lost/#", 1),)
    ours = [r for r in caplog.records
            if r.name.startswith("mqttsession") and not r.name.startswith("mqttsession.testing")]
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in ours if r.levelno >= logging.WARNING]
    assert not loud, loud
    info = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert any(f"the broker lost the session of '{cid}' (SessionPresent=0)" in line
               and "1 subscriptions sent again" in line for line in info), info


def test_a_hostile_brokers_text_never_forges_or_colours_a_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """A CONNACK Reason String with a newline and a forged record after it (paho's DEBUG line
    held it as it was: a whole fake log line), then a DISCONNECT 0x9C whose Server Reference
    holds terminal escapes (logged as it was in five INFO records: "redirects to", "reconnecting
    to"): no record's text holds a control character, and the reference is not followed."""
    import time

    from mqttsession import _wire as wire
    from mqttsession.testing.fake_broker import FakeBroker

    forged = "ok\nCRITICAL mqttsession: FAKE session lost"
    escapes = "\x1b[2J\x1b[31mbroker\x1b[0m:1883"

    class Hostile(FakeBroker):
        def connack(self, session_present: bool = False, reason: int = 0) -> bytes:
            return wire.encode_connack(session_present, reason, protocol=self._level,
                                       properties=[(wire.REASON_STRING, forged)])

    caplog.set_level(logging.DEBUG, logger="mqttsession")
    b = Hostile()
    c = Client(client_id="hostile-log", clean_session=True, protocol_version=5)
    c.config("FollowServerReference=True")
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.2")
    try:
        c.connect(b.host, b.port, 5)
        b.send_raw(wire.encode_disconnect(0x9C, protocol=5,
                                          properties=[(wire.SERVER_REFERENCE, escapes)]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                "Server Reference" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        time.sleep(0.5)  # (a reconnect attempt or two)
    finally:
        c.close()
        b.stop()
    texts = [r.getMessage() for r in caplog.records if r.name.startswith("mqttsession")]
    assert any("FAKE" in t for t in texts)  # the reason string was logged (escaped)
    assert any("not redirected" in t for t in texts)
    assert [t for t in texts if not t.isprintable()] == []
