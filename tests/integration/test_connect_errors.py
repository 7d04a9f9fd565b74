"""A connection closed before CONNACK is reported as what happened, not blamed on a TLS client
certificate when no TLS was configured (test_tls_auth.py covers the TLS listener that wants one):

* a loopback server that answers the CONNECT with an HTTP response and closes;
* a loopback server that accepts and closes at once.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from mqttsession import Client, ConnectError

pytestmark = pytest.mark.integration

HTTP_REPLY = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
              b"Connection: close\r\n\r\nBad Request")


def _answer_http(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(HTTP_REPLY)


def _close_at_once(_conn: socket.socket) -> None:
    pass


@pytest.fixture(params=[_answer_http, _close_at_once], ids=["http", "closes"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A one-purpose TCP server on a free 127.0.0.1 port; each connection gets ``behaviour``."""
    behaviour: Callable[[socket.socket], None] = request.param
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    behaviour(conn)
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client may have closed first

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_closed_before_connack_does_not_blame_certificates(server: tuple[str, int]) -> None:
    host, port = server
    c = Client(client_id="not-a-broker", clean_session=True)
    c.on_error = lambda _e: None
    with pytest.raises(ConnectError) as info:
        c.connect(host, port, timeout=10)
    text = str(info.value)
    assert "certificate" not in text.lower(), text
    assert "TLS" not in text.replace("a TLS listener (turn TLS on)", ""), text  # (the hint:
    # a plain client at a TLS listener is closed so; nothing blames our TLS settings)
    assert f"{host}:{port}" in text and "CONNACK" in text, text
    assert "not an MQTT broker" in text, text


@pytest.mark.mosquitto
def test_a_will_topic_the_broker_refuses_is_named_as_a_possible_cause(mosquitto: object) -> None:
    """mosquitto closes a connection whose will topic is deeper than 200 levels, before
    CONNACK: the error names that possibility (before, a hunt: only "not an MQTT broker, a
    TLS listener, or it stopped", all wrong here)."""
    c = Client(client_id="deep-will", clean_session=True, will_topic="a/" * 250 + "b")
    c.on_error = lambda _e: None
    with pytest.raises(ConnectError, match="will topic"):
        c.connect(mosquitto.host, mosquitto.port, timeout=10)  # type: ignore[attr-defined]
    c.close()
