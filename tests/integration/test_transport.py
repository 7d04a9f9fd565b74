"""MQTT over WebSockets (paho's ``transport="websockets"``) against a real mosquitto WebSockets
listener, through each front end, ``Options`` and the environment; and what the upgrade request
carries (path, headers), read by a loopback socket that answers it with 403.

TLS over WebSockets (wss) and ``tls_context`` are in ``test_tls_auth.py``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, ConnectError, Connection, Options
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.brokers import free_port, load_template, render_template, wait_for_port
from mqttsession.testing.pytest_plugin import require_mosquitto

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


@pytest.fixture(scope="module")
def ws_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoBroker, int]]:
    """mosquitto with a WebSockets listener on loopback; yields (broker, WebSockets port)."""
    d = tmp_path_factory.mktemp("ws")
    ws_port = free_port()
    text, _ = load_template("mosquitto-websockets.conf")
    conf = d / "mosquitto-websockets.conf"
    conf.write_text(render_template(text, ws_port=ws_port), encoding="utf-8")
    broker = MosquittoBroker(conf, mosquitto_bin=require_mosquitto())
    broker.start()
    try:
        assert wait_for_port("127.0.0.1", ws_port, 10), broker.log_text()
        yield broker, ws_port
    finally:
        broker.stop()


def _ws_options(ws_port: int, **kw: Any) -> Options:
    return Options(address=f"127.0.0.1:{ws_port}", transport="websockets",
                   request_timeout_seconds=5.0, **kw)


def _via_client(o: Options) -> None:
    c = Client(client_id=f"ws-{uuid.uuid4().hex[:12]}", transport=o.transport,
               websocket_path=o.websocket_path, websocket_headers=o.websocket_headers)
    got: list[bytes] = []
    arrived, subscribed = threading.Event(), threading.Event()
    c.on_message_in = lambda e: (got.append(e.message), arrived.set())
    c.on_subscribed = lambda e: subscribed.set()
    try:
        c.connect(o.host, o.port, o.request_timeout_seconds)
        c.subscribe("ws/client", 2)
        assert subscribed.wait(10)
        c.publish_message("ws/client", 2, "over websockets")
        assert c.flush(10) and arrived.wait(10)
        assert got == [b"over websockets"]
    finally:
        c.close()


def _via_mesh(o: Options) -> None:
    with Connection(o).create_session() as session:
        session.subscribe("ws/mesh", 1)
        session.publish("ws/mesh", "over websockets")
        msg = session.receive(10)
        assert msg is not None and msg.message == b"over websockets"


def _via_aio(o: Options) -> None:
    async def main() -> None:
        async with await AsyncSession.create(o) as session:
            await session.subscribe("ws/aio", 1)
            await session.publish("ws/aio", "over websockets")
            msg = await session.receive(10)
            assert msg is not None and msg.message == b"over websockets"

    asyncio.run(main())


VIA: dict[str, Callable[[Options], None]] = {
    "client": _via_client, "mesh": _via_mesh, "aio": _via_aio,
}


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("via", sorted(VIA))
def test_websockets_round_trip(ws_broker: tuple[MosquittoBroker, int], via: str,
                               version: int) -> None:
    VIA[via](_ws_options(ws_broker[1], protocol_version=version,
                         websocket_headers={"X-Gateway": "gw-1"}))


def test_websockets_from_the_environment(
    ws_broker: tuple[MosquittoBroker, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", f"127.0.0.1:{ws_broker[1]}")
    monkeypatch.setenv("MQTTSESSION_TRANSPORT", "websockets")
    monkeypatch.setenv("MQTTSESSION_WS_PATH", "/mqtt")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "5")
    o = Options.from_env()
    assert o.transport == "websockets"
    _via_aio(o)
    _via_mesh(Options.from_env())


def test_websockets_reconnect_resumes_the_session(
    ws_broker: tuple[MosquittoBroker, int], tmp_path: Path
) -> None:
    """The session survives a dropped WebSockets connection: paho makes a new one (a new
    upgrade) and the messages published meanwhile go out on it."""
    broker, ws_port = ws_broker
    c = Client(client_id=f"ws-re-{uuid.uuid4().hex[:8]}", clean_session=False,
               transport="websockets")
    c.config(f"SessionStateFile={tmp_path / 'session'}")
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.5")
    connects: list[bool] = []
    lost, back = threading.Event(), threading.Event()
    c.on_connected = lambda e: (connects.append(e.session_present), back.set())
    c.on_disconnected = lambda e: lost.set()
    try:
        c.connect("127.0.0.1", ws_port, 5)
        back.clear()
        broker.restart()
        assert lost.wait(10)
        pid = c.publish_message("ws/offline", 1, "while the broker was away")
        assert pid > 0
        assert back.wait(20), broker.log_text()
        assert c.flush(10)
        assert len(connects) == 2
    finally:
        c.close()


# ------------------------------------------------------------------ what the upgrade carries


class _UpgradeCatcher:
    """A loopback socket that reads one HTTP upgrade request and answers 403."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port: int = self.sock.getsockname()[1]
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> dict[str, str]:
        """The request line (key ``""``) and headers, lower-cased names."""
        self.thread.join(10)
        self.sock.close()
        line, *rest = self.request.decode("latin-1").split("\r\n")
        headers = {"": line}
        for h in rest:
            name, sep, value = h.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers


def test_path_and_headers_from_the_client() -> None:
    catcher = _UpgradeCatcher()
    c = Client(transport="websockets", websocket_path="/broker/mqtt",
               websocket_headers={"Authorization": "Bearer t0k3n"})
    try:
        with pytest.raises(ConnectError, match="WebSocket handshake"):
            c.connect("127.0.0.1", catcher.port, 5)
    finally:
        c.close()
        request = catcher.close()
    assert request[""].startswith("GET /broker/mqtt HTTP/1.1")
    assert request["authorization"] == "Bearer t0k3n"
    assert request["upgrade"].lower() == "websocket"


def test_path_and_headers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    catcher = _UpgradeCatcher()
    monkeypatch.setenv("MQTTSESSION_ADDRESS", f"127.0.0.1:{catcher.port}")
    monkeypatch.setenv("MQTTSESSION_TRANSPORT", "websockets")
    monkeypatch.setenv("MQTTSESSION_WS_PATH", "/from/env")
    monkeypatch.setenv("MQTTSESSION_WS_HEADERS", '{"X-Api-Key": "k-123", "X-Site": "north"}')
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "5")
    try:
        with pytest.raises(ConnectError, match="WebSocket handshake"):
            Connection().create_session().open()
    finally:
        request = catcher.close()
    assert request[""].startswith("GET /from/env HTTP/1.1")
    assert request["x-api-key"] == "k-123" and request["x-site"] == "north"


def test_a_restart_naming_the_broker_otherwise_is_no_move_over_websockets(
        ws_broker: tuple[MosquittoBroker, int], tmp_path: Path) -> None:
    """As over TCP (``test_client_failover``): the session last ran on ``127.0.0.1``, a
    restart names ``localhost``; paho's websocket wrapper has no ``getpeername`` of its own
    (before: taken for a move, every subscription sent again, the retained message again)."""
    broker, ws_port = ws_broker
    topic, cid = f"ws/alias/{uuid.uuid4().hex[:8]}", f"ws-alias-{uuid.uuid4().hex[:8]}"
    _procs.publish_direct(broker.host, broker.port, topic, [(2, "config-v1")], retain=True)

    def run(host: str) -> list[bytes]:
        return _procs.run_subscriber(host, ws_port, str(tmp_path / "s"), cid, topic,
                                     transport="websockets")

    assert run("127.0.0.1") == [b"config-v1"]
    assert run("localhost") == []


# ------------------------------------------------------------------ faults (a defect hunt)


def test_a_message_bigger_than_the_send_buffer_and_the_next_one_go_out(
    ws_broker: tuple[MosquittoBroker, int]
) -> None:
    """A 16 MB QoS 1 message (more than the socket takes at once) then a small one, over ws:
    both are delivered and ``flush`` confirms them. Before: paho's WebSocket wrapper reported
    the partly sent frame as nothing sent, paho forgot the packet and credited the frame's
    rest to the next one, which was never sent: both stayed in flight while the link lived."""
    broker, ws_port = ws_broker
    c = Client(client_id=f"ws-big-{uuid.uuid4().hex[:8]}", transport="websockets",
               keep_alive_interval=60)
    try:
        with _procs.observed(broker.host, broker.port, "ws/big/#") as got:
            c.connect("127.0.0.1", ws_port, 10)
            c.publish_data("ws/big/0", 1, b"x" * 16_000_000)
            time.sleep(1.0)  # the big frame partly sent: the rest waits in paho's wrapper
            c.publish_data("ws/big/1", 1, b"small")
            assert c.flush(30), "QoS 1 messages stuck in flight over WebSockets"
            _procs.wait_until(lambda: len(got) == 2, what="both messages")
            assert sorted(len(m) for m in got) == [5, 16_000_000]
    finally:
        c.close()


class _Trickle:
    """A loopback server that answers a WebSocket upgrade one byte a second, for ever."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                while not self.stop.wait(1.0):
                    conn.sendall(b"X")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_websocket_upgrade_answered_a_byte_a_second_is_cut_at_the_timeout() -> None:
    """``connect(timeout=2)`` to a server that answers the upgrade a byte at a time raises
    ``ConnectError`` after about 2 s (before: never, while bytes came: paho's timeout bounds
    each read, not the upgrade); an ``AsyncSession`` the same."""
    server = _Trickle()
    c = Client(client_id="trickle", transport="websockets")
    try:
        with pytest.raises(ConnectError, match="handshake not done within 2 s"):
            c.connect("127.0.0.1", server.port, 2.0)

        async def start() -> None:
            s = AsyncSession(Options(address=f"127.0.0.1:{server.port}", transport="websockets",
                                     request_timeout_seconds=2.0), client_id="atrickle")
            with pytest.raises(ConnectError, match="handshake not done"):
                await asyncio.wait_for(s.start(), 10)

        asyncio.run(start())
    finally:
        c.close()
        server.close()


def test_a_forgotten_ids_old_session_is_ended_over_websockets_too(
        ws_broker: tuple[MosquittoBroker, int], tmp_path: Path) -> None:
    """MQTT 3.1.1: the connection that ends a forgotten id's old broker session
    (``connecting.end_old_session``) uses the session's transport: over WebSockets it
    connects, and the session's own connection then subscribes and receives."""
    from mqttsession import Gateway  # noqa: PLC0415

    _broker, ws_port = ws_broker
    cid = f"ws-{uuid.uuid4().hex[:12]}"
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client(cid, clean_session=False, protocol_version=4, transport="websockets")
        c.publish_data("ws/forgotten", 1, b"stored")  # (a session to forget)
        c.close()
        assert gw.forget(cid) is True
        c = gw.client(cid, clean_session=False, protocol_version=4, transport="websockets")
        got: list[bytes] = []
        arrived, subscribed = threading.Event(), threading.Event()
        c.on_message_in = lambda e: (got.append(e.message), arrived.set())
        c.on_subscribed = lambda e: subscribed.set()
        c.connect("127.0.0.1", ws_port, 10)
        c.subscribe("ws/forgotten", 1)
        assert subscribed.wait(10)
        c.publish_data("ws/forgotten", 1, b"after")
        assert c.flush(10) and arrived.wait(10)
        assert got == [b"after"]
        c.close()
    assert (tmp_path / "gw" / "forgotten").read_text().strip() == "[]"
