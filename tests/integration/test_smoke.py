"""The small real-broker selection (``-m smoke``) that .ci/run also runs on the lowest and the
highest claimed Python and paho-mqtt, each in its own venv:

* connect, subscribe, publish QoS 1 and 2 with a state file, receive, disconnect against
  mosquitto (MQTT 3.1.1 and 5) and embedded amqtt, several times: nothing is logged at ERROR
  (paho's "Client is not connected" after a normal disconnect was);
* ``mqttsession compat`` (the raw packet client) and ``mqttsession demo`` run on this Python.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client
from mqttsession.events import MessageEvent

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.smoke]
CYCLES = 12  # the ERROR came from a race with paho's network thread: several rounds


def _round_trips(address: str, protocol: int, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                 cycles: int = CYCLES) -> None:
    host, _, port = address.rpartition(":")
    caplog.set_level(logging.DEBUG, logger="mqttsession")
    for i in range(cycles):
        got: queue.Queue[MessageEvent] = queue.Queue()
        c = Client(client_id=f"smoke-{protocol}-{i}", clean_session=False)
        c.protocol_version = protocol
        c.config(f"SessionStateFile={tmp_path / f'smoke-{i}.session'}")
        c.restore_session("")
        c.on_message_in = got.put
        c.connect(host, int(port), timeout=10)
        c.subscribe(f"smoke/{protocol}/{i}", 2)
        c.publish_message(f"smoke/{protocol}/{i}", 1, "one")
        c.publish_message(f"smoke/{protocol}/{i}", 2, "two")
        assert c.flush(10)
        assert sorted(got.get(timeout=10).message for _ in range(2)) == [b"one", b"two"]
        c.close()
    errors = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("protocol", [4, 5])
def test_connect_disconnect_logs_no_error_mosquitto(
    mosquitto: Any, protocol: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _round_trips(mosquitto.address, protocol, tmp_path, caplog)


def test_connect_disconnect_logs_no_error_amqtt(
    embedded_amqtt: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _round_trips(embedded_amqtt.address, 4, tmp_path, caplog, cycles=6)


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqttsession", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_compat_command_runs(mosquitto: Any) -> None:
    out = _run("compat", "--broker", mosquitto.address, "--scenario", "session-present-resumed",
               "--scenario", "redelivery-qos2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed, 0 failed" in out.stdout, out.stdout


def test_demo_command_runs(mosquitto: Any) -> None:
    out = _run("demo", "--broker", mosquitto.address, "--count", "40")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT: nothing lost, no QoS 2 duplicate" in out.stdout, out.stdout
