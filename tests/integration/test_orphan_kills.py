"""Orphans under kill -9: incoming QoS 2 messages the client held (PUBREC sent, no PUBREL yet)
when the broker answered SessionPresent=0, so it will never release them. Each one leaves the
session when the application took it (its ``on_message_in`` returned, or ``ack()`` under
ManualAck): a kill repeats only the one being handled (before: all of them, their removal was
written after the last one's callback) and loses none not taken (before, under ManualAck,
they were removed at once, taken or not, and a kill lost them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mqttsession.testing.fake_broker import FakeBroker

_CHILD = """
import os, sys, signal, time
import mqttsession
state, port, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
c = mqttsession.Client(client_id="orph", clean_session=False)
c.config("SessionStateFile=" + state)
c.config("SessionSync=always"); c.config("ReconnectDelayMin=1"); c.config("ReconnectDelayMax=1")
if mode == "manual":
    c.config("ManualAck=True")
c.restore_session("")
n = [0]
def on_in(e):
    n[0] += 1
    os.write(fd, b"%d %s\\n" % (os.getpid(), e.message))
    if mode == "kill3" and n[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # killed inside the third orphan's callback
c.on_message_in = on_in
c.connect("127.0.0.1", port, 5)
os.write(fd, b"%d connected\\n" % os.getpid())
time.sleep(60)
"""


def _child(state: Path, port: int, out: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(state), str(port), str(out), mode])


def _deliveries(out: Path, wait_for: int, timeout: float = 15.0) -> list[list[bytes]]:
    """The messages each process was handed, in order, once ``wait_for`` were."""
    deadline = time.monotonic() + timeout
    while True:
        lines = out.read_bytes().split(b"\n") if out.exists() else []
        got = [ln.split(b" ", 1) for ln in lines if ln and not ln.endswith(b"connected")]
        if len(got) >= wait_for or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    runs: dict[bytes, list[bytes]] = {}
    for pid, msg in got:
        runs.setdefault(pid, []).append(msg)
    return list(runs.values())


@pytest.mark.parametrize("mode", ["kill3", "manual"])
def test_orphans_leave_the_session_only_when_taken(tmp_path: Path, mode: str) -> None:
    state, out = tmp_path / "state", tmp_path / "got"
    fake = FakeBroker(session_present=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_child(state, fake.port, out, mode))
        fake.wait_connections(1)
        fake.wait_for("CONNECT")
        time.sleep(0.3)
        fake.send_raw(b"".join(fake.publish("t/a", b"msg%d" % i, 2, i) for i in (1, 2, 3)))
        fake.wait_for("PUBREC", 3)
        fake.close_client()  # the reconnect is answered SessionPresent=0: three orphans
        fake.wait_connections(2)
        first = _deliveries(out, 3)
        assert first == [[b"msg1", b"msg2", b"msg3"]]
        if mode == "kill3":
            assert procs[0].wait(15) == -signal.SIGKILL
        else:  # handed over, never acknowledged: kept (ManualAck)
            time.sleep(0.3)
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].wait(15)
        fake.session_present = True
        procs.append(_child(state, fake.port, out, "auto"))
        fake.wait_connections(3)
        expected = [b"msg3"] if mode == "kill3" else [b"msg1", b"msg2", b"msg3"]
        runs = _deliveries(out, 3 + len(expected))
        assert runs[1:] == [expected]
        time.sleep(0.5)
        assert _deliveries(out, 0)[1:] == [expected]  # not again (taken: removed)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        fake.stop()
