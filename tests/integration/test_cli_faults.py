"""The ``mqttsession`` command when what it reads or talks to misbehaves:

* ``inspect FILE`` of a live client: a file of its disk queue that goes away between the listing
  and the read (a segment read back and deleted, ``.open`` sealed to ``.seg``) is read again, no
  traceback and no "damaged" exit 2; one that keeps going away is one line, exit 2;
* ``inspect -`` reads standard input only up to the bound of a state file, and refuses past it;
* ``demo --broker`` against a broker that refuses or drops the CONNECT: one line naming it, exit 2
  (exit 1 is the demo's "RESULT: FAILED"), at once, not "no SUBACK" after 10 s;
* ``demo --embedded mosquitto`` without a working mosquitto: how to get it, exit 2, no traceback;
* the demo counts the disk queue in what the killed publisher's file holds;
* two demos at once on one broker do not count each other's messages (ids and topic per run);
* ``compat`` names a malformed packet from the server as such, not as an ACL.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
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
from mqttsession.cli import main
from mqttsession import spool
from mqttsession.spool import QUEUE_SUFFIX, Spool
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.proxy import MQTTProxy

pytestmark = pytest.mark.integration

ROOT = Path(mqttsession.__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = str(ROOT) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH")
                                      else "")
    return subprocess.run([sys.executable, "-m", "mqttsession", *args], capture_output=True,
                          text=True, timeout=timeout, env=full, check=False)


# ------------------------------------------------------------------------------ inspect


@pytest.fixture
def queued_file(tmp_path: Path) -> Path:
    """A state file with 60 never-sent messages, 55 of them in its disk queue (several
    segments), as an offline client leaves it."""
    path = tmp_path / "live.state"
    c = Client(client_id="cli-faults", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=5")
    c.config("QueueSegmentBytes=4096")
    c.restore_session("")
    for n in range(60):
        c.publish_message("cli/faults", 1, "x" * 300 + str(n))
    c.close()
    assert len(os.listdir(str(path) + QUEUE_SUFFIX)) > 2
    return path


@pytest.mark.parametrize("where", ["listing", "segment", "sealed"])
def test_inspect_reads_again_what_went_away_under_it(
        queued_file: Path, where: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A live client's doing, made certain: a file of the queue folder deleted right after the
    command listed it to sum the sizes (not summed), or the first segment read or checked gone
    for that read (renamed away and back, as sealing renames ``.open``: the read is made again;
    before, a traceback or "disk queue segment ...: No such file or directory", exit 2)."""
    queue = str(queued_file) + QUEUE_SUFFIX
    leftover = os.path.join(queue, "x.tmp")  # (a name the disk queue ignores)
    Path(leftover).write_bytes(b"12345")
    real_listdir, real_read, real_check = os.listdir, Spool._read, spool.check_regular
    vanished: list[str] = []

    def listdir(path: Any = ".") -> list[str]:
        names = real_listdir(path)
        if sys._getframe(1).f_globals.get("__name__") == "mqttsession.inspecting" and "x.tmp" in names:
            os.unlink(leftover)
            vanished.append(leftover)
        return names

    def read(self: Spool, path: str, *args: Any) -> bytes:
        if not vanished:
            vanished.append(path)
            os.rename(path, path + ".away")
            try:
                return real_read(self, path, *args)
            finally:
                os.rename(path + ".away", path)
        return real_read(self, path, *args)

    def check_regular(seg: Any) -> os.stat_result:
        if not vanished:
            vanished.append(seg.path)
            os.rename(seg.path, seg.path + ".away")
            try:
                return real_check(seg)
            finally:
                os.rename(seg.path + ".away", seg.path)
        return real_check(seg)

    monkeypatch.setattr(*{"listing": (os, "listdir", listdir), "segment": (Spool, "_read", read),
                          "sealed": (spool, "check_regular", check_regular)}[where])
    assert main(["inspect", str(queued_file)]) == 0
    out = capsys.readouterr()
    assert len(vanished) == 1, vanished
    assert "outgoing queue:   60 messages" in out.out, out
    assert "of which 55 wait in the disk queue" in out.out, out
    assert out.err == "", out.err


def test_inspect_of_a_file_that_keeps_changing_says_so(
        queued_file: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def read(self: Spool, path: str, *args: Any) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(Spool, "_read", read)
    start = time.monotonic()
    assert main(["inspect", str(queued_file)]) == 2
    assert time.monotonic() - start < 3
    err = capsys.readouterr().err
    assert err == f"mqttsession: {queued_file}: the session changed while it was read; try again\n"


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_inspect_stdin_is_refused_past_the_bound_of_a_file(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mqttsession import recovery

    monkeypatch.setattr(recovery, "MAX_STATE_BYTES", 1000)
    stdin = _Stdin(b"\0" * 5000)
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["inspect", "-"]) == 2
    assert stdin.buffer.tell() == 1001  # read no further than the bound + 1
    assert capsys.readouterr().err == ("mqttsession: standard input is more than the 1000 bytes"
                                       " a state file may be; not read\n")


# ------------------------------------------------------------------------------ demo


def test_demo_against_a_broker_that_refuses_the_connect() -> None:
    with FakeBroker(connack_reason=5) as broker:  # (MQTT 3.1.1: not authorized)
        port, start = broker.port, time.monotonic()
        out = run_cli("demo", "--broker", f"{broker.host}:{port}", timeout=30)
    assert time.monotonic() - start < 8, out
    assert out.returncode == 2, out
    assert out.stderr == (f"mqttsession demo: the broker at 127.0.0.1:{port} refused the"
                          " demo's MQTT 3.1.1 CONNECT: CONNACK Not authorized (the demo sends no"
                          " user name or password)\n"), out
    assert "RESULT" not in out.stdout and "SUBACK" not in out.stderr, out


@contextlib.contextmanager
def _server(answer: bytes | None) -> Iterator[int]:
    """A TCP port that reads each connection's CONNECT, then closes it (``answer`` None) or
    sends ``answer`` and keeps it open."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(4096)
            if answer is None:
                conn.close()
            else:
                conns.append(conn)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        for conn in conns:
            conn.close()


@pytest.fixture
def closing_server() -> Iterator[int]:
    """A TCP port that accepts and closes every connection before any CONNACK."""
    with _server(None) as port:
        yield port


def test_demo_against_a_server_that_closes_before_connack(closing_server: int) -> None:
    start = time.monotonic()
    out = run_cli("demo", "--broker", f"127.0.0.1:{closing_server}", timeout=30)
    assert time.monotonic() - start < 8, out
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"mqttsession demo: the broker at 127.0.0.1:{closing_server}"
                                 " closed the connection before CONNACK"), out
    assert len(out.stderr.splitlines()) == 1, out


def _broken_mosquitto(tmp_path: Path) -> str:
    path = tmp_path / "mosquitto"
    path.write_text("#!/bin/sh\necho 'mosquitto: error while loading shared libraries' >&2\n"
                    "exit 127\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("kind", ["missing", "broken"])
def test_demo_embedded_mosquitto_that_cannot_run(tmp_path: Path, kind: str) -> None:
    binary = "/nonexistent/mosquitto" if kind == "missing" else _broken_mosquitto(tmp_path)
    out = run_cli("demo", "--embedded", "mosquitto", env=dict(os.environ, MOSQUITTO_BIN=binary))
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr, out.stderr
    line, = out.stderr.splitlines()
    assert line.startswith("mqttsession demo: starting the embedded mosquitto broker "), line
    assert ("needs mosquitto, which is not installed" if kind == "missing" else "failed: ") in line
    assert line.endswith("install it: apt-get install mosquitto (or pass --embedded amqtt or"
                         " --broker HOST:PORT of a running broker)"), line


def test_demo_counts_the_disk_queue_in_what_the_file_holds(mosquitto: Any) -> None:
    """The broker's acknowledgements withheld while the first publisher runs: all 1100 messages
    it sent stay in its file, 100 of them past QueueInMemory (1000), in the disk queue."""
    with MQTTProxy(mosquitto.host, mosquitto.port) as px:
        px.drop("s2c", "PUBACK", "PUBREC")
        full = dict(os.environ)
        full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
        lines = []
        with subprocess.Popen([sys.executable, "-m", "mqttsession", "demo", "--broker",
                               px.address, "--count", "2200"], stdout=subprocess.PIPE, text=True,
                              env=full) as p:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line)
                if line.startswith("2. a NEW process"):
                    px.clear_drops()
        assert p.wait(120) == 0, "".join(lines)
    out = "".join(lines)
    holds = re.search(r"publisher\.session holds (\d+) message\(s\) to finish \(.*, (\d+) of them"
                      r" in its disk queue publisher\.session\.queue/\)", out)
    restored = re.search(r"it restored (\d+) message", out)
    assert holds and restored, out
    assert holds.group(1) == restored.group(1) == "1100", out
    assert holds.group(2) == "100", out


def test_two_demos_at_once_on_one_broker(mosquitto: Any) -> None:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "mqttsession", "demo", "--broker", mosquitto.address,
           "--count", "200"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=full) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "sent 200, received 200 distinct, missing 0" in out, out


# ------------------------------------------------------------------------------ compat


@pytest.fixture
def garbage_server() -> Iterator[int]:
    """Accepts the CONNECT, then a packet whose Remaining Length never ends."""
    with _server(b"\x20\x02\x00\x00" + b"\xff" * 64) as port:
        yield port


def test_compat_names_a_malformed_packet_not_an_acl(
        garbage_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compat", "--broker", f"127.0.0.1:{garbage_server}", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mqttsession compat: the broker at 127.0.0.1:{garbage_server} sent a"
                          " malformed packet: "), err
    assert "not allowed" not in err and "let the user" not in err, err
