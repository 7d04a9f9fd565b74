"""The examples and the README's demo command run as written, each against its own broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mqttsession.testing.pytest_plugin import require_mosquitto

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(
    "script",
    ["restore_in_on_connected.py", "restore_then_connect.py", "mqtt5_expiry.py",
     "working_with_sessions.py", "asyncio_gateway.py", "failover.py", "device_gateway.py"],
)
def test_example_runs_against_a_named_broker(script: str, mosquitto: Any) -> None:
    out = _run(f"examples/{script}", "--broker", mosquitto.address)
    assert out.returncode == 0, out.stdout + out.stderr


def test_expiry_example_reports_both_outcomes(mosquitto: Any) -> None:
    out = _run("examples/mqtt5_expiry.py", "--broker", mosquitto.address)
    assert "away 1.0 s: session_expired -> False" in out.stdout, out.stdout
    assert "away 3.5 s: session_expired -> True" in out.stdout, out.stdout
    assert out.stdout.count("SessionPresent -> True") == 1
    assert out.stdout.count("SessionPresent -> False") == 1


def test_example_starts_its_own_broker() -> None:
    out = _run("examples/restore_then_connect.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started" in out.stdout


def test_failover_example_moves_to_the_second_broker() -> None:
    require_mosquitto()  # it starts two of its own
    out = _run("examples/failover.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the second broker's subscriber received: ['published while failing over']" \
        in out.stdout, out.stdout


def test_readme_demo_command(mosquitto: Any) -> None:
    """README: `python3 -m mqttsession demo` (here against a named broker, fewer messages)."""
    out = _run("-m", "mqttsession", "demo", "--broker", mosquitto.address, "--count", "80")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT: nothing lost, no QoS 2 duplicate" in out.stdout


def test_readme_demo_default_broker() -> None:
    out = _run("-m", "mqttsession", "demo", "--count", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "its own mosquitto broker" in out.stdout
