"""Pins from a mutation hunt over ``connecting.py``: a forgotten id's 3.1.1 old session ended
by a connection of its own (``end_old_session``) against a one-purpose loopback server that
answers the CONNECT with a chosen CONNACK (or never answers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mqttsession import Client, ConnectError
from mqttsession._config import ConnectParams
from mqttsession.connecting import end_old_session

pytestmark = pytest.mark.integration


class _Server:
    """A loopback TCP server: each connection's CONNECT read, then ``reply`` sent (None: kept
    silent until the test ends); what each connection sent is kept."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                got = b""
                try:
                    got = conn.recv(4096)
                    if self.reply is not None:
                        conn.sendall(self.reply)
                        got += conn.recv(4096)  # the DISCONNECT (or the close)
                    else:
                        self.stop.wait(5.0)
                except OSError:
                    pass
                self.received.append(got)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[list[_Server]]:
    servers: list[_Server] = []
    yield servers
    for s in servers:
        s.close()


def _params() -> ConnectParams:
    return ConnectParams(keep_alive=60, username=None, password=None, will_topic="",
                         will_message=b"")


def _connack(rc: int) -> bytes:
    return bytes([0x20, 0x02, 0x00, rc])


def test_an_accepted_clean_start_is_followed_by_a_disconnect(serve: list[_Server]) -> None:
    """CONNACK 0: no error; the connection asked CleanSession=1 and sent a DISCONNECT."""
    s = _Server(_connack(0))
    serve.append(s)
    end_old_session("pin-ok", "127.0.0.1", s.port, _params(), 2.0, lambda: None)
    s.close()
    [sent] = s.received
    assert sent[0] == 0x10 and sent[9] & 0x02  # CONNECT, CleanSession=1 (3.1.1 header)
    assert sent.endswith(b"\xe0\x00")  # DISCONNECT


@pytest.mark.parametrize("rc,words", [(4, "(wrong username or password?)"),
                                      (5, "(wrong username or password?)"),
                                      (3, "refused the connection")])
def test_a_refused_clean_start_tells_the_3_1_1_return_code(
        serve: list[_Server], rc: int, words: str) -> None:
    """A refusal raises ``ConnectError`` with the 3.1.1 return code (paho gives its MQTT 5
    form: mapped back), in words naming the forgotten id's old session."""
    s = _Server(_connack(rc))
    serve.append(s)
    with pytest.raises(ConnectError) as err:
        end_old_session("pin-rc", "127.0.0.1", s.port, _params(), 2.0, lambda: None)
    assert err.value.status_code == rc
    assert "ending the old session of a forgotten id" in str(err.value) and words in str(err.value)


def test_an_unknown_return_code_is_a_refusal(serve: list[_Server]) -> None:
    """A CONNACK return code 3.1.1 does not define (paho: "Unspecified error") is a refusal
    (told as 3, server unavailable), never taken for an accepted clean start."""
    s = _Server(_connack(9))
    serve.append(s)
    with pytest.raises(ConnectError) as err:
        end_old_session("pin-odd", "127.0.0.1", s.port, _params(), 2.0, lambda: None)
    assert err.value.status_code == 3


def test_no_connack_within_the_timeout_is_told(serve: list[_Server]) -> None:
    s = _Server(None)
    serve.append(s)
    with pytest.raises(ConnectError, match=r"no CONNACK within 1 s"):
        end_old_session("pin-silent", "127.0.0.1", s.port, _params(), 1.0, lambda: None)


def test_the_check_ends_the_wait(serve: list[_Server]) -> None:
    """What ``check`` raises (close(), disconnect()) ends the wait for the CONNACK."""
    s = _Server(None)
    serve.append(s)

    def check() -> None:
        raise ConnectError("ended", -4)
    with pytest.raises(ConnectError, match="ended") as err:
        end_old_session("pin-check", "127.0.0.1", s.port, _params(), 5.0, check)
    assert err.value.status_code == -4


@pytest.mark.parametrize("end", ["disconnect", "close"])
def test_disconnect_or_close_ends_a_connect_waiting_for_its_connack(
        serve: list[_Server], end: str) -> None:
    """A connect() waiting for a CONNACK that never comes returns at once (``ConnectError``
    -4, ended) when another thread calls disconnect() or close(), not at its timeout."""
    s = _Server(None)
    serve.append(s)
    client = Client()
    client.client_id = "pin-ended"
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            client.connect("127.0.0.1", s.port, 60)
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            errors.append(exc)
    t = threading.Thread(target=connect, daemon=True)
    t.start()
    deadline = time.monotonic() + 5.0
    while not s.received and time.monotonic() < deadline and not _connected_tcp(client):
        time.sleep(0.02)
    getattr(client, end)()
    t.join(5.0)
    try:
        assert not t.is_alive(), "connect() still waits for its CONNACK"
        [err] = errors
        assert isinstance(err, ConnectError) and err.status_code == -4
    finally:
        if end == "disconnect":
            client.close()


def _connected_tcp(client: Client) -> bool:
    conn = client._driver.conn  # noqa: SLF001 - the attempt's TCP connection made
    return conn is not None and conn.socket() is not None


def test_a_connect_without_connack_says_none_came(serve: list[_Server]) -> None:
    """connect() to a server that never answers the CONNECT: ``ConnectError`` "no CONNACK
    from <server> within <timeout> s" (not a refusal)."""
    s = _Server(None)
    serve.append(s)
    client = Client()
    client.client_id = "pin-late"
    try:
        with pytest.raises(ConnectError, match=rf"^no CONNACK from 127\.0\.0\.1:{s.port} within 0\.5 s$"):
            client.connect("127.0.0.1", s.port, 0.5)
        assert not client.connected
    finally:
        client.close()
