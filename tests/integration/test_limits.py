"""A machine at its limits (a hunt of resource limits): no thread to be had (RLIMIT_NPROC, a full
pids cgroup: CPython raises ``RuntimeError("can't start new thread")``, injected here the same
way), no file descriptor free (RLIMIT_NOFILE, in a child process), no memory for a packet. Each
is a documented error or a report through ``on_error``, never a raw error, a dead network
thread or a client that cannot be used again; nothing accepted is lost."""

from __future__ import annotations

import contextlib
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
from mqttsession import Client, ConnectError, MQTTSessionError
from mqttsession.gateway import Gateway
from mqttsession.testing import MosquittoBroker

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


@contextlib.contextmanager
def _no_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every new thread fails to start, as when the process may have no more."""
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as m:
        m.setattr(threading, "_start_joinable_thread" if hasattr(threading, "_start_joinable_thread")
                  else "_start_new_thread", refused)  # (3.13 renamed it)
        yield


def test_connect_without_a_thread_is_connect_error_and_the_client_goes_on(
        mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a raw RuntimeError, and the client could neither connect nor close again
    (paho kept a thread that never started, and joined it)."""
    c = Client(client_id="no-thread")
    try:
        with _no_threads(monkeypatch), pytest.raises(ConnectError, match="network thread"):
            c.connect(mosquitto.host, mosquitto.port, 5)
        c.connect(mosquitto.host, mosquitto.port, 5)
        assert c.connected
        with _no_threads(monkeypatch):
            c.disconnect()  # (its stalled-link watch cannot start: it goes without)
        c.connect(mosquitto.host, mosquitto.port, 5)
        assert c.connected
    finally:
        c.close()


def test_an_interval_sync_without_a_thread_syncs_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, ``SessionSync=interval`` arms a timer thread: when none can start, the
    records are synced at once. Before: the publish, already kept, raised a raw RuntimeError
    (a retry sent the QoS 2 message twice) and no interval sync ran again."""
    c = Client(client_id="no-sync-thread", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("SessionSync=interval")
    c.config("SessionSyncInterval=100")
    c.restore_session("")
    try:
        with _no_threads(monkeypatch):
            c.publish_message("limits/x", 2, "kept")
        assert [m.message for m in c.outgoing_messages] == [b"kept"]
        c.publish_message("limits/x", 2, "later")  # the timer is armed again
        _procs.wait_until(lambda: c._driver._sync_timer is None, 5,  # noqa: SLF001
                          what="the interval sync")
    finally:
        c.close()


def test_a_gateway_that_cannot_start_leaves_its_directory_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a raw RuntimeError, and the directory's lock stayed taken for the life of the
    process (every later Gateway on it: StateLockedError)."""
    with _no_threads(monkeypatch), pytest.raises(MQTTSessionError, match="thread"):
        Gateway(tmp_path / "gw")
    with Gateway(tmp_path / "gw") as gw:
        assert gw.thread.is_alive()


def test_a_websocket_reconnect_without_a_thread_reconnects_later(
        mosquitto_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A WebSocket connection's handshake deadline is a timer thread: when none can start
    the attempt goes on without it. Before: a RuntimeError ended paho's network thread: never
    reconnected, no on_error."""
    from mqttsession.testing.brokers import free_port, wait_for_port  # noqa: PLC0415

    ws_port = free_port()
    broker = mosquitto_factory(extra_config=f"listener {ws_port} 127.0.0.1\nprotocol websockets\n")
    assert wait_for_port("127.0.0.1", ws_port, 10)
    c = Client(client_id="ws-no-thread", clean_session=False, transport="websockets")
    c.config("ReconnectDelayMin=0.2")
    c.config("ReconnectDelayMax=0.5")
    try:
        c.connect("127.0.0.1", ws_port, 5)
        with _no_threads(monkeypatch):
            broker.restart()
            assert wait_for_port("127.0.0.1", ws_port, 10)
            time.sleep(1.5)  # reconnect attempts without a thread to be had
        _procs.wait_until(lambda: c.connected, 15, what="reconnected")
        c.publish_message("limits/ws", 1, "after")
        assert c.flush(10)
    finally:
        c.close()


def test_no_memory_for_a_packet_drops_the_link_and_is_reported(
        mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError while a packet is read (a huge message under a memory limit): reported
    to on_error, the connection dropped and made again, the session goes on. Before: it ended
    paho's network thread; ``connected`` stayed True and nothing more arrived."""
    from mqttsession._paho import PahoConnection  # noqa: PLC0415

    c = Client(client_id="no-memory", clean_session=False)
    c.config("ReconnectDelayMin=0.2")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    got: list[bytes] = []
    c.on_message_in = lambda e: got.append(e.message)
    real = PahoConnection._sock_recv  # noqa: SLF001
    once = [True]

    def recv(self: PahoConnection, n: int) -> Any:
        if once[0] and threading.current_thread().name.startswith("paho"):
            once[0] = False
            raise MemoryError
        return real(self, n)

    try:
        c.connect(mosquitto.host, mosquitto.port, 5)
        c.subscribe("limits/mem", 1)
        monkeypatch.setattr(PahoConnection, "_sock_recv", recv)
        _procs.publish_direct(mosquitto.host, mosquitto.port, "limits/mem", [(1, "one")])
        _procs.wait_until(lambda: errors, 10, what="on_error")
        assert any("reading a packet" in e for e in errors), errors
        _procs.wait_until(lambda: c.connected and b"one" in got, 15, what="the message again")
    finally:
        c.close()


def test_no_file_descriptor_free_is_persistence_error_not_state_error(tmp_path: Path) -> None:
    """In a child process at RLIMIT_NOFILE: ``outgoing_messages`` with a disk queue, and a
    restore, raise ``PersistenceError`` (before: a raw OSError, and ``StateError``, which
    says the state is damaged: an application may start over on it)."""
    child = f"""
import resource
from mqttsession import Client, PersistenceError
def client():
    c = Client(client_id="nofile", clean_session=False)
    c.config("SessionStateFile={tmp_path / 's'}")
    c.config("QueueInMemory=5")
    c.config("QueueSegmentBytes=4096")
    return c
c = client()
c.restore_session("")
for n in range(100):
    c.publish_message("t", 1, "%05d" % n + "x" * 90)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
try:
    c.outgoing_messages
except PersistenceError:
    print("outgoing: PersistenceError")
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
assert len(c.outgoing_messages) == 100
c.close()
d = client()
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
try:
    d.restore_session("")
except PersistenceError:
    print("restore: PersistenceError")
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
d.close()
e = client()
e.restore_session("")
assert len(e.outgoing_messages) == 100
e.close()
"""
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", child], env=env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["outgoing: PersistenceError",
                                          "restore: PersistenceError"], out.stdout + out.stderr


def test_a_gateway_session_connect_without_a_thread_is_connect_error(
        mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connect pool cannot start its thread: ``ConnectError`` (before: a raw
    RuntimeError); the next connect works."""
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("pool-no-thread", clean_session=False)
        with _no_threads(monkeypatch), pytest.raises(ConnectError, match="thread"):
            c.connect(mosquitto.host, mosquitto.port, 5)
        c.connect(mosquitto.host, mosquitto.port, 5)
        assert c.connected
