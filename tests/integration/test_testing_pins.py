"""Pins on the test tools of ``mqttsession.testing`` found by a mutation hunt, that need a
process, a loopback socket or mosquitto:

* ``_ProcessBroker`` (with a small Python child standing in for a broker): its own process
  group, tracked while running for the exit-time kill, SIGKILL after an ignored stop signal,
  ``kill()`` is SIGKILL, a child that never became ready is killed and reaped, a ready line
  from a child that already exited or after a failure line does not count;
* ``MosquittoBroker``: a broker that cannot start gives one attempt, its log in the error, and
  no port;
* ``wait_for_port`` waits its timeout; ``_ServerBroker.kill()`` kills the whole process group;
* ``node_brokers``: Node.js version checks and ``redis-server`` asked for only by a cluster;
* ``FakeBroker``'s replies (CONNACK, SUBACK, UNSUBACK, PUBACK/PUBREC/PUBCOMP, PINGRESP, one
  client at a time).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mqttsession.testing.brokers as brokers
from mqttsession import _wire as wire
from mqttsession._wire import Packet, PacketType
from mqttsession.testing.brokers import BrokerStartError, MosquittoBroker, _ProcessBroker, wait_for_port
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.node_brokers import _node_major, aedes_unavailable
from mqttsession.testing.pytest_plugin import require_mosquitto
from mqttsession.testing.server_brokers import _ServerBroker

READY_SLEEP = "import time; print('READY', flush=True); time.sleep(5)"
IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                " print('READY', flush=True); time.sleep(5)")


class _Script(_ProcessBroker):
    """A Python child as the 'broker': ready once it prints READY."""

    kind = "script"

    def __init__(self, code: str, **kwargs: float) -> None:
        self.code = code
        super().__init__(**kwargs)

    def _command(self) -> list[str]:
        return [sys.executable, "-c", self.code]

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        return self._wait_log_line(proc, "READY", deadline)


# ------------------------------------------------------------------------------ _ProcessBroker


def test_child_runs_in_its_own_group_and_is_tracked_until_stopped() -> None:
    """A started broker leads its own process group (no stray Ctrl-C), is in the set killed at
    exit while it runs, and leaves it (pid gone, a second stop a no-op) once stopped."""
    broker = _Script(READY_SLEEP)
    try:
        broker.start()
        assert os.getpgid(broker.pid) == broker.pid
        assert broker in brokers._RUNNING
        assert broker.stop() == -signal.SIGTERM
        assert broker not in brokers._RUNNING
        assert broker.stop() is None
        with pytest.raises(RuntimeError, match="not started"):
            _ = broker.pid
    finally:
        broker.kill()
        broker.cleanup()


def test_stop_kills_a_child_that_ignores_the_stop_signal() -> None:
    """``stop(timeout)`` sends SIGKILL once ``timeout`` passed (not the default stop timeout)."""
    broker = _Script(IGNORES_TERM, stop_timeout=30.0)
    try:
        broker.start()
        assert broker.stop(timeout=0.3) == -signal.SIGKILL
        assert not broker.running
    finally:
        broker.kill()
        broker.cleanup()


def test_kill_is_sigkill() -> None:
    """``kill()`` does not ask: SIGKILL, even for a child that ignores SIGTERM."""
    broker = _Script(IGNORES_TERM)
    try:
        broker.start()
        assert broker.kill() == -signal.SIGKILL
        assert broker.returncodes == [-signal.SIGKILL]
    finally:
        broker.kill()
        broker.cleanup()


def test_restart_stops_cleanly_or_kills() -> None:
    """``restart()`` stops with the stop signal, ``restart(kill=True)`` with SIGKILL."""
    broker = _Script(READY_SLEEP)
    try:
        broker.start()
        broker.restart()
        assert broker.returncodes == [-signal.SIGTERM]
        broker.restart(kill=True)
        assert broker.returncodes == [-signal.SIGTERM, -signal.SIGKILL]
    finally:
        broker.kill()
        broker.cleanup()


class _NeverReady(_Script):
    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        return self._wait_log_line(proc, "NEVER PRINTED", deadline)


def test_a_child_not_ready_in_time_is_killed_and_reaped() -> None:
    """At the startup timeout the still running child is SIGKILLed and waited for (no orphan);
    the error names the timeout and carries the log."""
    broker = _NeverReady(READY_SLEEP, startup_timeout=0.5)
    try:
        with pytest.raises(BrokerStartError, match=r"did not start within 0\.5s") as info:
            broker.start()
        assert "READY" in str(info.value)
        assert broker.returncodes == [-signal.SIGKILL]
        assert not broker.running
    finally:
        broker.cleanup()


def test_a_ready_line_from_an_exited_child_does_not_count() -> None:
    """The ready line is not enough when the child has already exited."""
    broker = _Script(READY_SLEEP)
    try:
        broker.log_path.write_text("READY\n")
        proc = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
        proc.wait()
        assert broker._wait_log_line(proc, "READY", time.monotonic() + 2.0) is False
    finally:
        broker.cleanup()


def test_a_failure_line_ends_the_wait_before_a_later_ready_line() -> None:
    """``failure`` seen (e.g. eaddrinuse) ends the wait as failed: a ready line logged after it
    does not make the start succeed."""
    broker = _Script(READY_SLEEP)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])  # noqa: S603
    late = threading.Timer(1.0, lambda: broker.log_path.write_text("boom eaddrinuse\nREADY\n"))
    try:
        broker.log_path.write_text("boom eaddrinuse\n")
        late.start()
        assert broker._wait_log_line(proc, "READY", time.monotonic() + 4.0,
                                     failure="eaddrinuse") is False
    finally:
        late.cancel()
        late.join()
        proc.kill()
        proc.wait()
        broker.cleanup()


def test_mosquitto_that_cannot_start_gives_one_attempt_its_log_and_no_port() -> None:
    """A configuration error is not retried on another port (only 'in use' is); the error shows
    mosquitto's own complaint; the broker has no port afterwards."""
    broker = MosquittoBroker(mosquitto_bin=require_mosquitto(), extra_config="no_such_option 1\n")
    try:
        with pytest.raises(BrokerStartError) as info:
            broker.start()
        assert "no_such_option" in str(info.value)
        assert len(broker.returncodes) == 1 and broker.returncodes[0] != 0
        assert not broker.running
        with pytest.raises(RuntimeError, match="not started"):
            _ = broker.port
    finally:
        broker.cleanup()


def test_wait_for_port_waits_for_a_late_listener() -> None:
    """``wait_for_port`` keeps trying until its timeout, not just once."""
    port = brokers.free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_late() -> None:
        time.sleep(0.3)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)

    thread = threading.Thread(target=listen_late)
    thread.start()
    try:
        assert wait_for_port("127.0.0.1", port, timeout=5.0) is True
    finally:
        thread.join()
        listener.close()


class _Group(_ServerBroker):
    """A shell with a child of its own: a broker whose process leaves children behind."""

    kind = "group"

    def _command(self) -> list[str]:
        return ["/bin/sh", "-c", 'sleep 5 & echo "READY $!"; wait']

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        return self._wait_log_line(proc, "READY", deadline)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_server_broker_kill_takes_its_children_too() -> None:
    """``kill()`` of a server broker SIGKILLs its process group: no orphan is left."""
    broker = _Group()
    child = 0
    try:
        broker.start()
        deadline = time.monotonic() + 5
        while "\n" not in broker.log_since_start() and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(broker.log_since_start().split("READY ", 1)[1].split()[0])
        group = broker.pid
        broker.kill()
        deadline = time.monotonic() + 2
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone(child)
    finally:
        broker.kill()
        if child:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        broker.cleanup()


# ------------------------------------------------------------------------------ node_brokers


def _fake_node(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


def test_node_version_is_read_and_20_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``node --version`` prints ``v20.1.0``: major 20, enough; 18 is refused naming 20+."""
    aedes = tmp_path / "aedes"
    (aedes / "node_modules" / "aedes").mkdir(parents=True)
    (aedes / "broker.js").write_text("")
    monkeypatch.setenv("MQTTSESSION_AEDES_DIR", str(aedes))
    monkeypatch.setenv("REDIS_SERVER_BIN", "/nonexistent/redis-server")
    old = _fake_node(tmp_path / "node18", "v18.19.0")
    assert _node_major(old) == 18
    monkeypatch.setenv("NODE_BIN", old)
    assert aedes_unavailable() == f"aedes 1.x needs Node.js 20+, {old} is 18"
    monkeypatch.setenv("NODE_BIN", _fake_node(tmp_path / "node20", "v20.1.0"))
    assert aedes_unavailable() is None  # one node needs no redis-server
    reason = aedes_unavailable(redis=True)
    assert reason is not None and "redis-server not found" in reason


# ------------------------------------------------------------------------------ fake_broker


class _Raw:
    """A raw MQTT client socket on a FakeBroker."""

    def __init__(self, port: int, level: int = 4) -> None:
        self.level = level
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def raw_packet(self) -> bytes:
        while (split := wire.split(self.buf)) is None:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        total = split[1]
        packet, self.buf = bytes(self.buf[:total]), self.buf[total:]
        return packet

    def packet(self) -> Packet:
        data = self.raw_packet()
        header_len = wire.split(data)[0]  # type: ignore[index]
        return wire.decode(data[0], data[header_len:], self.level)

    def connect(self) -> Packet:
        self.send(wire.encode_connect("pin", protocol=self.level))
        return self.packet()

    def closed(self) -> bool:
        """True once the broker closed this connection (EOF or reset)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:  # still open after the socket's 5 s timeout
            return False

    def close(self) -> None:
        self.sock.close()


def test_fake_refused_connack_has_no_session_present() -> None:
    """A refusing CONNACK never says SessionPresent (MQTT 5 3.2.2.1.1), whatever is scripted."""
    with FakeBroker(session_present=True, connack_reason=0x87) as broker:
        client = _Raw(broker.port, 5)
        try:
            connack = client.connect()
            assert (connack.session_present, connack.reason_code) == (False, 0x87)
        finally:
            client.close()
    with FakeBroker(session_present=True) as broker:
        client = _Raw(broker.port, 5)
        try:
            assert client.connect().session_present is True
        finally:
            client.close()


def test_fake_311_connack_has_no_properties() -> None:
    """An MQTT 3.1.1 CONNACK is the two bytes of 3.1.1, even with MQTT 5 properties scripted."""
    with FakeBroker(receive_maximum=5, maximum_packet_size=1000, server_reference="x") as broker:
        client = _Raw(broker.port, 4)
        try:
            client.send(wire.encode_connect("pin", protocol=4))
            assert client.raw_packet() == b"\x20\x02\x00\x00"
        finally:
            client.close()


@pytest.mark.parametrize("level", [4, 5])
def test_fake_suback_grants_qos1_per_filter_and_unsuback_codes(fake: FakeBroker, level: int) -> None:
    """SUBACK has one code per filter (QoS 1 granted unless scripted); an MQTT 5 UNSUBACK has a
    success code per filter, a 3.1.1 one none."""
    client = _Raw(fake.port, level)
    try:
        client.connect()
        client.send(wire.encode_subscribe(3, [("a", 2), ("b", 0)], protocol=level))
        suback = client.packet()
        assert (suback.type, suback.packet_id, suback.reason_codes) == (PacketType.SUBACK, 3, (1, 1))
        client.send(wire.encode_unsubscribe(4, ["a", "b"], protocol=level))
        unsuback = client.packet()
        assert (unsuback.type, unsuback.packet_id) == (PacketType.UNSUBACK, 4)
        assert unsuback.reason_codes == ((0, 0) if level == 5 else ())
    finally:
        client.close()


def test_fake_answers_publishes_pubrel_and_pingreq(fake: FakeBroker) -> None:
    """QoS 1 -> PUBACK, QoS 2 -> PUBREC, PUBREL -> PUBCOMP, PINGREQ -> PINGRESP; qos2_ack='puback'
    answers QoS 2 with a PUBACK."""
    client = _Raw(fake.port)
    try:
        client.connect()
        client.send(wire.encode_publish("t", b"1", qos=1, packet_id=1))
        puback = client.packet()
        assert (puback.type, puback.packet_id) == (PacketType.PUBACK, 1)
        client.send(wire.encode_publish("t", b"2", qos=2, packet_id=2))
        pubrec = client.packet()
        assert (pubrec.type, pubrec.packet_id) == (PacketType.PUBREC, 2)
        client.send(wire.encode_ack(PacketType.PUBREL, 2))
        pubcomp = client.packet()
        assert (pubcomp.type, pubcomp.packet_id) == (PacketType.PUBCOMP, 2)
        client.send(wire.encode_pingreq())
        assert client.packet().type == PacketType.PINGRESP
        fake.qos2_ack = "puback"
        client.send(wire.encode_publish("t", b"3", qos=2, packet_id=3))
        assert client.packet().type == PacketType.PUBACK
    finally:
        client.close()


def test_fake_closes_on_a_scripted_subscribe(fake: FakeBroker) -> None:
    """A SUBSCRIBE naming a filter of ``closes_on_subscribe`` is answered by a close, no SUBACK."""
    fake.closes_on_subscribe.add("bad/#")
    client = _Raw(fake.port)
    try:
        client.connect()
        client.send(wire.encode_subscribe(1, [("ok", 1), ("bad/#", 1)]))
        assert client.closed()
    finally:
        client.close()


def test_fake_serves_one_client_at_a_time(fake: FakeBroker) -> None:
    """A new connection takes over: the previous one is closed."""
    first = _Raw(fake.port)
    second = None
    try:
        first.connect()
        second = _Raw(fake.port)
        assert second.connect().type == PacketType.CONNACK
        assert first.closed()
        assert fake.connections == 2
    finally:
        first.close()
        if second is not None:
            second.close()


def test_fake_publish_with_qos_bits_in_flags_carries_a_packet_id(fake: FakeBroker) -> None:
    """``publish(flags=...)`` with QoS bits set writes the packet id even at ``qos=0``."""
    client = _Raw(fake.port)
    client.connect()
    client.close()
    assert fake.publish("t", b"x", 0, 7, flags=0x06) == wire.encode_publish(
        "t", b"x", qos=0, packet_id=7, flags=0x06)
    assert fake.publish("t", b"x", 0, 7) == wire.encode_publish("t", b"x", qos=0)


def test_fake_broker_stopped_at_once_raises_nothing_in_its_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A FakeBroker stopped right after it was made ends its thread quietly (before: its
    thread set the timeout of a listener ``stop()`` had closed, OSError EBADF; a hunt)."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    for _ in range(20):
        FakeBroker().stop()
    assert errors == []
