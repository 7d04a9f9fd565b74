"""``mqttsession inspect``: a state file written by a real Client (never-sent, in-flight and incoming
messages, a subscription), read from the file or stdin, as text or JSON; read-only: a damaged file
is a one-line error with exit code 2 and is left exactly where and as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import Client
from mqttsession.compat.raw import RawClient
from mqttsession.journal import JOURNAL_SUFFIX, LOCK_SUFFIX, frame
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.pytest_plugin import ProxyFactory

pytestmark = pytest.mark.integration

_REPO = Path(mqttsession.__file__).resolve().parent.parent
CLIENT_ID = "inspect-gw"


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-m", "mqttsession", *args], input=stdin,
                         capture_output=True, timeout=60, env=env, check=False)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


def _wait(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoBroker) -> Iterator[Path]:
    """A closed MQTT 5 session file: 1 never-sent, 1 in-flight, 1 incoming QoS 2, 1 subscription."""
    proxy_factory = ProxyFactory()
    try:
        proxy = proxy_factory(mosquitto)
        proxy.drop("s2c", "PUBACK")  # our QoS 1 message stays in flight
        proxy.drop("s2c", "PUBREL")  # the incoming QoS 2 message waits for its PUBREL
        path = tmp_path_factory.mktemp("inspect") / "gw.session"
        c = Client(client_id=CLIENT_ID, clean_session=False, protocol_version=5)
        c.config(f"SessionStateFile={path}")
        c.config("SessionExpInterval=3600")
        c.restore_session("")
        subscribed = threading.Event()
        c.on_subscribed = lambda _e: subscribed.set()
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe("inspect/in", 2)
        assert subscribed.wait(10)
        c.publish_message("inspect/out", 1, "in flight")
        with RawClient(mosquitto.host, mosquitto.port, name="feeder") as feeder:
            feeder.connect("inspect-feeder", clean=True)
            feeder.publish("inspect/in", b"incoming qos 2", 2)
            feeder.disconnect()
        _wait(lambda: len(c.incoming_messages) == 1, "the incoming QoS 2 message")
        c.disconnect()
        c.publish_message("inspect/out", 2, "never sent")  # disconnected: waits in the session
        c.close()
        yield path
    finally:
        proxy_factory.close()
        with RawClient(mosquitto.host, mosquitto.port, protocol=5) as cleaner:
            cleaner.connect(CLIENT_ID, clean=True)  # end the broker-side session
            cleaner.disconnect()


def test_inspect_text(state_file: Path) -> None:
    out = run_cli("inspect", str(state_file))
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    for line in (f"client id:        '{CLIENT_ID}'", "protocol:         MQTT 5",
                 "expiry interval:  3600 s  (expired: no)", "never sent:       1",
                 "in flight:        1", "incoming QoS 2:   1", "subscriptions:    1",
                 "    'inspect/in' qos 2"):
        assert line in text.splitlines(), text
    assert "'inspect/out'" in text and "'inspect/in'" in text
    sizes = next(line for line in text.splitlines() if line.startswith("sizes:"))
    assert f"snapshot bytes {state_file.stat().st_size}" in sizes and "journal bytes" in sizes


def test_inspect_json(state_file: Path) -> None:
    out = run_cli("inspect", str(state_file), "--json")
    assert out.returncode == 0
    doc = json.loads(out.stdout)
    assert doc["client_id"] == CLIENT_ID and doc["protocol_version"] == 5
    assert doc["session_expiry_interval"] == 3600 and doc["expired"] is False
    assert [(m["topic"], m["qos"], m["bytes"]) for m in doc["never_sent"]] == [("inspect/out", 2, 10)]
    assert [(m["topic"], m["qos"]) for m in doc["in_flight"]] == [("inspect/out", 1)]
    assert [(m["topic"], m["qos"], m["bytes"]) for m in doc["incoming"]] == [("inspect/in", 2, 14)]
    assert doc["subscriptions"] == {"inspect/in": 2}
    assert doc["payload_bytes"] == 10 + 9 + 14
    assert doc["sizes"]["snapshot_bytes"] == state_file.stat().st_size
    assert doc["sizes"]["payload_bytes"] == doc["payload_bytes"]
    assert doc["queue"] == {"messages": 2, "bytes": 2 * len("inspect/out") + 10 + 9,
                            "on_disk": 0}


def test_inspect_stdin_matches_the_file(state_file: Path) -> None:
    from_file = json.loads(run_cli("inspect", str(state_file), "--json").stdout)
    out = run_cli("inspect", "-", "--json", stdin=state_file.read_bytes())
    assert out.returncode == 0, out.stderr
    from_stdin = json.loads(out.stdout)
    assert from_stdin["sizes"] == {"input_bytes": state_file.stat().st_size,
                                   "payload_bytes": from_file["payload_bytes"]}
    from_stdin.pop("sizes"), from_file.pop("sizes")
    # it says what it read: the text alone from stdin, the snapshot and its journal from a file
    assert from_stdin.pop("source") == (
        "standard input: the save_session() text alone (no journal, no disk queue)")
    assert from_file.pop("source") == "the state file: its snapshot, its journal and its disk queue"
    assert from_stdin == from_file
    text = run_cli("inspect", "-", stdin=state_file.read_bytes())
    assert text.returncode == 0 and "never sent:       1" in text.stdout
    assert text.stdout.splitlines()[0] == ("read from:        standard input: the save_session()"
                                           " text alone (no journal, no disk queue)"), text.stdout


def _snapshot_of(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())}


def test_inspect_damaged_snapshot_exit_2_and_untouched(state_file: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "gw.session"
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: the checksum catches it
    damaged.write_bytes(bytes(data))
    before = _snapshot_of(tmp_path)
    out = run_cli("inspect", str(damaged))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"mqttsession: state file {damaged} is damaged: ")
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert _snapshot_of(tmp_path) == before  # nothing moved aside, no lock file, no change
    stdin = run_cli("inspect", "-", stdin=bytes(data))
    assert stdin.returncode == 2 and len(stdin.stderr.splitlines()) == 1


def test_inspect_damaged_journal_exit_2_and_untouched(state_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "gw.session"
    path.write_bytes(state_file.read_bytes())
    Path(str(path) + JOURNAL_SUFFIX).write_bytes(frame(b'["not a journal header"]'))
    before = _snapshot_of(tmp_path)
    out = run_cli("inspect", str(path), "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"mqttsession: state file {path} is damaged: journal header is not valid\n"
    assert _snapshot_of(tmp_path) == before
    assert not Path(str(path) + LOCK_SUFFIX).exists()


def test_inspect_missing_file(tmp_path: Path) -> None:
    out = run_cli("inspect", str(tmp_path / "nope"))
    assert (out.returncode, out.stderr) == (2, f"mqttsession: {tmp_path / 'nope'}: no such file\n")


def test_inspect_a_file_in_use_by_a_live_client(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    # read-only: no lock needed, so a running client's file can be inspected (the old inspect
    # took the lock and failed with "in use by another process")
    path = tmp_path / "live.session"
    c = Client(client_id="inspect-live", clean_session=True)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.connect(mosquitto.host, mosquitto.port, timeout=10)
    try:
        assert Path(str(path) + LOCK_SUFFIX).exists()
        out = run_cli("inspect", str(path), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["client_id"] == "inspect-live"
        assert Path(str(path) + LOCK_SUFFIX).exists()  # the owner's lock is untouched
        c.publish_message("inspect/live", 1, "still works")
        assert c.flush(10)
    finally:
        c.close()


def test_inspect_an_unset_interval_shows_the_one_sent(tmp_path: Path) -> None:
    """An MQTT 5 persistent session with SessionExpInterval unset sends 3600 (README), and
    its expiry is judged on 3600; inspect said "absent (0)" (``--json``: null only)."""
    path = tmp_path / "unset.state"
    c = mqttsession.Client(client_id="unset", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_message("t", 1, "held")
    c.close()
    out = run_cli("inspect", str(path))
    assert out.returncode == 0 and "expiry interval:  unset (3600 s sent)" in out.stdout, out.stdout
    doc = json.loads(run_cli("inspect", str(path), "--json").stdout)
    assert doc["session_expiry_interval"] is None and doc["effective_expiry_interval"] == 3600
