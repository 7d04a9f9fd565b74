"""Pins of ``_paho.PahoConnection``'s own logic, the adapter alone (no broker, no network): a
fake socket stands for paho's. The joined sends (which queued packets may share one ``send``,
up to ``_JOIN_BYTES``), a publishing thread's own send (``_send_now``) and its QoS 0 count,
the split of received bytes into packets (several and partial ones in a read, a new socket's
buffer, reading paused), packets before the CONNACK, protocol violations, ``reconnect``'s
failure paths, and the CONNECT's keep-alive and Clean Start flag."""

from __future__ import annotations

import errno
import socket
import threading
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import _ConnectionState
import pytest

from mqttsession import _wire
from mqttsession._paho import CLEAN_START_FIRST_ONLY, PahoConnection, _Unsent
from mqttsession._wire import PacketType
from mqttsession.actions import PACKET_COST
from mqttsession.errors import ProtocolViolation

_OK = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
_DROP = mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST


class _Sock:
    """A socket as paho and the adapter use one: ``send`` takes up to ``cap`` bytes (all: None)
    and records them; ``recv`` gives ``chunks`` one a call, then would block."""

    def __init__(self, chunks: list[bytes] | None = None, cap: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.chunks = list(chunks or [])
        self.cap = cap
        self.closed = False

    def send(self, data: Any) -> int:
        n = len(data) if self.cap is None else min(self.cap, len(data))
        self.sent.append(bytes(data[:n]))
        return n

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)[:n]

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class _Hooks:
    """The session's side: what it was handed, and what failed."""

    def __init__(self) -> None:
        self.packets: list[Any] = []
        self.acks: list[tuple[PacketType, int]] = []
        self.failures: list[tuple[Exception, str]] = []
        self.server: tuple[str, int] | None = None
        self.reset_error: Exception | None = None
        self.on_packet: Any = None
        self.connacks: list[tuple[Any, ...]] = []
        self.ack_error: Exception | None = None
        self.ticks = 0

    def _hook_packet(self, p: Any) -> None:
        self.packets.append(p)
        if self.on_packet is not None:
            self.on_packet(p)

    def _hook_ack(self, kind: PacketType, packet_id: int) -> None:
        if self.ack_error is not None:
            raise self.ack_error
        self.acks.append((kind, packet_id))

    def _hook_acks(self, acks: list[tuple[PacketType, int]]) -> None:
        self.acks.extend(acks)

    def _hook_failure(self, exc: Exception, context: str) -> None:
        self.failures.append((exc, context))

    def _hook_connection_reset(self) -> tuple[str, int] | None:
        if self.reset_error is not None:
            raise self.reset_error
        return self.server

    def _hook_publisher_waits(self) -> bool:
        return False

    def _hook_connect_properties(self) -> Any:
        return None

    def _hook_tick(self) -> None:
        self.ticks += 1

    def _hook_batch_waits(self) -> bool:
        return False

    def _hook_batch_end(self) -> None:
        return None

    def _hook_connack(self, *args: Any) -> None:
        self.connacks.append(args)


def _conn(level: int = 4, clean: bool = True) -> tuple[PahoConnection, _Hooks]:
    hooks = _Hooks()
    return PahoConnection(hooks, "pins", level, clean), hooks  # type: ignore[arg-type]


def _pub(topic: str, qos: int = 1, packet_id: int | None = 1, size: int = 10) -> bytes:
    return _wire.encode_publish(topic, b"x" * size, qos=qos,
                                packet_id=packet_id if qos else None, protocol=4)


def _entry(kind: PacketType, packet: bytes, qos: int = 0, info: Any = None) -> dict[str, Any]:
    return {"command": int(kind) << 4, "mid": 0, "qos": qos, "pos": 0,
            "to_process": len(packet), "packet": packet, "info": info}


def _write_all(conn: PahoConnection, sock: _Sock) -> list[bytes]:
    conn._sock = sock
    conn._packet_write()
    assert not conn._out_packet  # every queued byte went, once
    return sock.sent


# ------------------------------------------------------------------ joined sends


def test_two_queued_acks_share_one_send() -> None:
    """Two joinable packets at the queue's head are one ``send`` (not only three or more)."""
    conn, _ = _conn()
    a, b = _wire.encode_ack(PacketType.PUBACK, 1), _wire.encode_ack(PacketType.PUBREC, 2)
    conn._out_packet.extend([_entry(PacketType.PUBACK, a), _entry(PacketType.PUBREC, b)])
    assert _write_all(conn, _Sock()) == [a + b]


def test_qos1_publishes_join_acks_and_qos0_publishes_and_disconnect_go_alone() -> None:
    """QoS 1 / 2 PUBLISHes join the acks; a QoS 0 PUBLISH (paho marks it published) and a
    DISCONNECT (paho closes the socket after it) are each a send of their own."""
    conn, _ = _conn()
    ack1, ack2 = _wire.encode_ack(PacketType.PUBACK, 1), _wire.encode_ack(PacketType.PUBACK, 2)
    p1, q0 = _pub("a", 1, 5), _pub("b", 0)
    disc = _wire.encode_disconnect(0, protocol=4)
    info = _Unsent(conn, len(q0) + PACKET_COST, False)
    conn._out_packet.extend([_entry(PacketType.PUBACK, ack1), _entry(PacketType.PUBLISH, p1, 1),
                             _entry(PacketType.PUBLISH, q0, 0, info),
                             _entry(PacketType.PUBACK, ack2), _entry(PacketType.DISCONNECT, disc)])
    sock = _Sock()
    assert _write_all(conn, sock) == [ack1 + p1, q0, ack2, disc]
    assert sock.closed and conn.unsent_qos0 == 0


def test_a_disconnect_is_never_joined_to_the_ack_before_it() -> None:
    """A DISCONNECT behind an ack is a send of its own: paho sees it is one and closes the
    socket after it (joined, it would pass for the ack, the socket left open)."""
    conn, _ = _conn()
    ack, disc = _wire.encode_ack(PacketType.PUBACK, 1), _wire.encode_disconnect(0, protocol=4)
    conn._out_packet.extend([_entry(PacketType.PUBACK, ack), _entry(PacketType.DISCONNECT, disc)])
    sock = _Sock()
    assert _write_all(conn, sock) == [ack, disc]
    assert sock.closed and conn._sock is None


def test_a_packet_begun_is_finished_alone_before_any_join() -> None:
    """A packet partly written (``pos`` > 0) is finished by itself: its rest, not its whole
    again joined with the next ones (which go as paho writes them then)."""
    conn, _ = _conn()
    a, b, c = (_wire.encode_ack(PacketType.PUBACK, i) for i in (1, 2, 3))
    begun = {**_entry(PacketType.PUBACK, a), "pos": 1, "to_process": len(a) - 1}
    conn._out_packet.extend([begun, _entry(PacketType.PUBACK, b), _entry(PacketType.PUBACK, c)])
    assert _write_all(conn, _Sock()) == [a[1:], b, c]


def test_a_join_stops_once_it_reached_the_join_bound() -> None:
    """Packets are joined while the join holds fewer than ``_JOIN_BYTES`` (64 KiB): three
    PUBLISHes of 40 KB are one send of two, then one alone; each byte written once."""
    conn, _ = _conn()
    pubs = [_pub(f"t/{i}", 1, i + 1, 40_000) for i in range(3)]
    conn._out_packet.extend(_entry(PacketType.PUBLISH, p, 1) for p in pubs)
    assert _write_all(conn, _Sock()) == [pubs[0] + pubs[1], pubs[2]]


def test_a_joined_send_cut_short_is_finished_before_what_follows() -> None:
    """The socket takes part of a joined send: its rest goes next, then the packet queued
    behind the join (a QoS 0 PUBLISH), every byte once, in order."""
    conn, _ = _conn()
    a, b, q0 = _wire.encode_ack(PacketType.PUBACK, 1), _pub("t", 1, 2, 50), _pub("z", 0)
    conn._out_packet.extend([_entry(PacketType.PUBACK, a), _entry(PacketType.PUBLISH, b, 1),
                             _entry(PacketType.PUBLISH, q0, 0,
                                    _Unsent(conn, len(q0) + PACKET_COST, False))])
    sock = _Sock(cap=7)
    conn._sock = sock
    for _ in range(50):
        if not conn._out_packet:
            break
        conn._packet_write()
    assert not conn._out_packet and b"".join(sock.sent) == a + b + q0
    assert conn.unsent_qos0 == 0


# ------------------------------------------------------------------ a publishing thread's send


def _direct(conn: PahoConnection, sock: _Sock) -> None:
    conn._sock, conn._direct = sock, True


def test_a_partial_send_now_queues_the_rest_counted_once() -> None:
    """A QoS 0 PUBLISH the socket took part of: the rest queued from where it stopped, its
    bytes counted unsent until paho wrote them, then not."""
    conn, _ = _conn()
    q0 = _pub("t", 0, size=100)
    sock = _Sock(cap=10)
    _direct(conn, sock)
    assert conn._send_now(PacketType.PUBLISH, q0, 0, 0, False)
    assert sock.sent == [q0[:10]]
    (rest,) = conn._out_packet
    assert (rest["pos"], rest["to_process"]) == (10, len(q0) - 10)
    assert conn.unsent_qos0 == len(q0) + PACKET_COST
    sock.cap = None
    conn._packet_write()
    assert b"".join(sock.sent) == q0 and conn.unsent_qos0 == 0


def test_a_whole_send_now_of_a_counted_publish_uncounts_it() -> None:
    """A QoS 0 PUBLISH held with a read batch (counted since) and then sent whole by the
    publishing thread is no longer counted; one not counted before is not uncounted."""
    conn, _ = _conn()
    q0 = _pub("t", 0, size=30)
    _direct(conn, _Sock())
    conn.count_unsent(len(q0) + PACKET_COST)
    assert conn._send_now(PacketType.PUBLISH, q0, 0, 0, True)
    assert conn.unsent_qos0 == 0
    assert conn._send_now(PacketType.PUBLISH, q0, 0, 0, False)
    assert conn.unsent_qos0 == 0 and not conn._out_packet


def test_send_now_never_overtakes_a_queued_packet() -> None:
    """Something queued: the publishing thread does not send (it queues behind it)."""
    conn, _ = _conn()
    sock = _Sock()
    _direct(conn, sock)
    conn._out_packet.append(_entry(PacketType.PUBACK, _wire.encode_ack(PacketType.PUBACK, 1)))
    assert not conn._send_now(PacketType.PUBLISH, _pub("t"), 1, 1, False)
    assert sock.sent == []


def test_a_disconnect_from_another_thread_is_queued_not_sent_by_it() -> None:
    """A DISCONNECT goes through paho's queue (paho closes the socket after writing it), never
    sent by the thread that asked for it."""
    conn, _ = _conn()
    sock = _Sock()
    _direct(conn, sock)
    conn._thread = threading.Thread(target=lambda: None)  # the network thread: not this one
    disc = _wire.encode_disconnect(0, protocol=4)
    conn._queue(PacketType.DISCONNECT, disc, 0, 0)
    assert sock.sent == [] and [p["packet"] for p in conn._out_packet] == [disc]
    conn._queue(PacketType.PUBACK, _wire.encode_ack(PacketType.PUBACK, 1), 1, 0)
    assert sock.sent == []  # (behind it)


# ------------------------------------------------------------------ reading


def _reading(chunks: list[bytes], connack_seen: bool = True) -> tuple[PahoConnection, _Hooks,
                                                                      _Sock]:
    conn, hooks = _conn()
    sock = _Sock(chunks)
    conn._sock, conn._connack_seen = sock, connack_seen
    return conn, hooks, sock


def test_several_and_partial_packets_in_reads_are_each_handled_once_in_one_round() -> None:
    """Reads cut packets anywhere and hold several: one round (``loop_read``'s ``max_packets``
    of 1 too) reads them all, each packet handled once, in order, acks with them."""
    p1, p2 = _pub("a", 1, 1), _pub("b", 2, 2)
    ack, rec = _wire.encode_ack(PacketType.PUBACK, 5), _wire.encode_ack(PacketType.PUBREC, 6)
    stream = p1 + p2 + ack + rec
    cuts = [3, len(p1) + 4, len(p1) + len(p2) + 3, len(stream) - 1]
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)])]
    conn, hooks, _sock = _reading(chunks)
    assert conn._read_batch(1) == _OK
    assert [p.topic for p in hooks.packets] == ["a", "b"]
    assert hooks.acks == [(PacketType.PUBACK, 5), (PacketType.PUBREC, 6)]
    assert not conn._rbuf and not hooks.failures


def test_a_packet_larger_than_one_recv_is_read_in_one_round() -> None:
    """A plain TCP socket that filled a whole recv may hold more: the round reads on, and a
    PUBLISH larger than a recv (70 KB) is handled in the round it arrived in, with the one
    behind it."""
    conn, hooks = _conn()
    mine, broker = socket.socketpair()
    try:
        mine.setblocking(False)
        broker.sendall(_pub("big", 1, 1, 70_000) + _pub("small", 1, 2))
        conn._sock, conn._connack_seen = mine, True
        assert conn._read_batch(1) == _OK
        assert [p.topic for p in hooks.packets] == ["big", "small"]
    finally:
        conn._sock = None
        mine.close()
        broker.close()


def test_a_new_socket_starts_with_an_empty_buffer() -> None:
    """Bytes of a packet cut by a lost connection are not joined with the next connection's."""
    p = _pub("a")
    conn, hooks, _sock = _reading([p[:4]])
    assert conn._read_batch(1) == _OK and bytes(conn._rbuf) == p[:4]
    conn._sock = _Sock([_pub("b")])
    assert conn._read_batch(1) == _OK
    assert [x.topic for x in hooks.packets] == ["b"] and not hooks.failures


def test_reading_paused_by_a_packet_leaves_the_rest_buffered() -> None:
    """A packet that pauses reading (back-pressure) is the last one handled; the next ones
    wait in the buffer until reading goes on."""
    conn, hooks, _sock = _reading([_pub("a", 1, 1) + _pub("b", 1, 2)])

    def pause(_p: Any) -> None:
        conn.reading_paused = True

    hooks.on_packet = pause
    assert conn._read_batch(1) == _OK
    assert [p.topic for p in hooks.packets] == ["a"] and conn._rbuf
    conn.reading_paused, hooks.on_packet = False, None
    assert conn._read_batch(1) == _OK
    assert [p.topic for p in hooks.packets] == ["a", "b"]


def test_an_ack_the_session_failed_on_drops_the_connection() -> None:
    """The session failing on an ack: reported, the connection dropped (the broker resends),
    the packets behind it not handled."""
    ack = _wire.encode_ack(PacketType.PUBACK, 1)
    conn, hooks, sock = _reading([ack + _pub("after")])
    hooks.ack_error = RuntimeError("boom")
    conn._rbuf += sock.chunks.pop(0)
    rc, _n = conn._handle_buffered(sock)
    assert rc == _DROP and hooks.packets == []
    assert [c for _e, c in hooks.failures] == ["handling a PUBACK packet"]


def test_a_packet_the_session_failed_on_drops_the_connection() -> None:
    """The session failing on a PUBLISH: reported, the connection dropped without its ack,
    the packets behind it not handled."""
    conn, hooks, sock = _reading([_pub("a", 1, 1) + _pub("b", 1, 2)])

    def fail(_p: Any) -> None:
        raise RuntimeError("boom")

    hooks.on_packet = fail
    conn._rbuf += sock.chunks.pop(0)
    rc, _n = conn._handle_buffered(sock)
    assert rc == _DROP and [p.topic for p in hooks.packets] == ["a"]
    assert [c for _e, c in hooks.failures] == ["handling a PUBLISH packet"]


def test_a_failed_hook_under_mqtt5_sends_no_disconnect_and_raises_nothing() -> None:
    """MQTT 5: only a protocol violation ends with a DISCONNECT and its code; a session's own
    failure drops the connection silently, never raising into paho's thread."""
    conn, hooks = _conn(level=5)
    sock = _Sock()
    conn._sock, conn._connack_seen = sock, True
    hooks.ack_error = RuntimeError("boom")
    conn._rbuf += _wire.encode_ack(PacketType.PUBACK, 1)
    rc, _n = conn._handle_buffered(sock)
    assert rc == _DROP and sock.sent == [] and len(hooks.failures) == 1


def test_a_violation_without_a_socket_is_reported_all_the_same() -> None:
    """A violation found when the socket is already gone (MQTT 5): reported, no DISCONNECT
    tried on no socket, nothing raised."""
    conn, hooks = _conn(level=5)
    assert conn._violation(0x82, "late") == _DROP
    assert [type(e) for e, _c in hooks.failures] == [ProtocolViolation]


def test_a_handler_that_closed_the_connection_ends_the_round_quietly() -> None:
    """A packet's handler closed the connection (the application closed it in a callback):
    the round ends there, not read further nor taken for a lost connection."""
    conn, hooks, _sock = _reading([_pub("a", 1, 1)])
    conn._state = _ConnectionState.MQTT_CS_CONNECTED
    hooks.on_packet = lambda _p: conn._sock_close()
    assert conn._read_batch(1) == _OK
    assert conn._state == _ConnectionState.MQTT_CS_CONNECTED


def test_an_ack_before_the_connack_is_a_violation_not_an_ack() -> None:
    """Only a PUBLISH may come before the CONNACK (aedes): a PUBACK there closes the
    connection as a protocol violation [MQTT-3.2.0-1], the session never told of it."""
    conn, hooks, sock = _reading([_wire.encode_ack(PacketType.PUBACK, 1)], connack_seen=False)
    conn._rbuf += sock.chunks.pop(0)
    rc, _n = conn._handle_buffered(sock)
    assert rc == _DROP and hooks.acks == []
    assert [type(e) for e, _c in hooks.failures] == [ProtocolViolation]
    assert hooks.failures[0][0].code == 0x82
    assert sock.sent == []  # MQTT 3.1.1: no DISCONNECT with a reason


def test_a_violation_under_mqtt5_sends_disconnect_with_its_code() -> None:
    """MQTT 5: the connection ends with a DISCONNECT carrying the violation's reason code."""
    conn, hooks = _conn(level=5)
    sock = _Sock()
    conn._sock = sock
    assert conn._violation(0x81, "malformed") == _DROP
    assert sock.sent == [_wire.encode_disconnect(0x81, protocol=5)]
    assert hooks.failures[0][0].code == 0x81  # type: ignore[attr-defined]


def test_a_packet_of_type_0_before_the_connack_is_a_violation() -> None:
    """Type 0 (reserved, no ``PacketType`` name) first from a server: a violation reported,
    never an exception into paho's thread."""
    conn, hooks = _conn()
    assert conn._handle(0x00, b"") == _DROP
    assert [type(e) for e, _c in hooks.failures] == [ProtocolViolation]
    assert "type 0" in str(hooks.failures[0][0])


def test_the_end_of_the_stream_is_a_lost_connection() -> None:
    """The server closed its side (recv gives no byte): the connection is lost, the socket
    closed, not read again and again."""
    conn, _ = _conn()
    mine, broker = socket.socketpair()
    try:
        mine.setblocking(False)
        broker.close()
        conn._sock, conn._connack_seen = mine, True
        assert conn._read_batch(1) == _DROP
        assert conn._sock is None
    finally:
        mine.close()


def test_bytes_read_and_sent_count_for_the_keep_alive() -> None:
    """Bytes received, and a PUBLISH a publishing thread sent itself, are activity paho's
    keep-alive sees (no PINGREQ needed, the link not taken for dead)."""
    conn, _ = _conn()
    conn._sock, conn._connack_seen = _Sock([_wire.encode_ack(PacketType.PUBACK, 1)]), True
    conn._last_bytes_received = conn._last_msg_out = 0.0
    assert conn._read_batch(1) == _OK
    assert conn._last_bytes_received > 0
    conn._direct = True
    assert conn._send_now(PacketType.PUBLISH, _pub("t"), 1, 1, False)
    assert conn._last_msg_out > 0


def test_at_most_64_publishes_before_the_connack_are_kept() -> None:
    """64 PUBLISHes before the CONNACK are kept for after it; a 65th is a violation."""
    conn, hooks = _conn()
    p = _pub("early")
    for _ in range(64):
        assert conn._handle(p[0], p[2:]) == _OK
    assert len(conn._early) == 64 and not hooks.failures
    assert conn._handle(p[0], p[2:]) == _DROP
    assert [type(e) for e, _c in hooks.failures] == [ProtocolViolation]


@pytest.mark.parametrize(("tls", "transport", "direct"), [
    (False, "tcp", True), (True, "tcp", False), (False, "websockets", False)])
def test_only_plain_tcp_lets_publishing_threads_send_after_the_connack(
        tls: bool, transport: str, direct: bool) -> None:
    """After the CONNACK a publishing thread sends its PUBLISH itself on plain TCP only; on
    TLS or a WebSocket (a layer no two threads may use at once) it is queued for paho's."""
    conn, _ = _conn()
    sock = _Sock()
    conn._sock, conn._ssl, conn._transport = sock, tls, transport
    conn._thread = threading.Thread(target=lambda: None)  # the network thread: not this one
    connack = _wire.encode_connack(False, 0, protocol=4)
    assert conn._handle(connack[0], connack[2:]) == _OK
    conn._queue(PacketType.PUBLISH, _pub("t"), 1, 1)
    assert (sock.sent == [_pub("t")]) is direct
    assert len(conn._out_packet) == (0 if direct else 1)


def test_a_closed_socket_ends_other_threads_own_sends() -> None:
    """Once paho closed the socket, no publishing thread sends by itself until the next
    CONNACK (a new socket's first bytes are paho's CONNECT)."""
    conn, _ = _conn()
    _direct(conn, _Sock())
    conn._sock_close()
    fresh = _Sock()
    conn._sock = fresh
    assert not conn._send_now(PacketType.PUBLISH, _pub("t"), 1, 1, False)
    assert fresh.sent == []


def test_no_network_thread_starts_after_disconnect() -> None:
    """``disconnect()`` is for good: a ``loop_start`` after it refuses to start a thread."""
    conn, _ = _conn()
    conn.disconnect()
    with pytest.raises(ConnectionAbortedError):
        conn.loop_start()
    assert conn._thread is None


def test_early_publishes_after_one_that_broke_the_protocol_are_not_handled() -> None:
    """PUBLISHes before the CONNACK are handled after it, in order, until one is a violation
    (QoS bits 11): the connection is dropped, the ones behind it never reach the session."""
    conn, hooks = _conn()
    conn._sock = _Sock()
    bad, good = bytearray(_pub("bad", 1, 1)), _pub("good", 1, 2)
    bad[0] |= 0x06  # QoS 3 [MQTT-3.3.1-4]
    for p in (bytes(bad), good):
        assert conn._handle(p[0], p[2:]) == _OK
    connack = _wire.encode_connack(False, 0, protocol=4)
    assert conn._handle(connack[0], connack[2:]) == _DROP
    assert len(hooks.connacks) == 1 and hooks.packets == []
    assert [type(e) for e, _c in hooks.failures] == [ProtocolViolation]


def test_disconnect_ends_a_connect_in_progress() -> None:
    """``disconnect()`` ends a TCP connect or handshake under way at once; a socket that
    appears after it is refused."""
    conn, _ = _conn()
    mine, peer = socket.socketpair()
    try:
        conn._new_sock = mine
        conn.disconnect()
        peer.settimeout(2)
        assert peer.recv(1) == b""  # shut down
        with pytest.raises(ConnectionAbortedError):
            conn._track(peer)
    finally:
        mine.close()
        peer.close()


# ------------------------------------------------------------------ reconnect


@pytest.fixture()
def paho_reconnect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """paho's own reconnect replaced: the server and connect timeout it saw each call (it
    raises the connection's ``_raise`` if set)."""
    seen: list[Any] = []

    def fake(self: PahoConnection) -> Any:
        seen.append((self._host, self._port, self._connect_timeout))
        if (raised := getattr(self, "_raise", None)) is not None:
            raise raised
        return _OK

    monkeypatch.setattr(mqtt.Client, "reconnect", fake)
    return seen


def test_reconnect_goes_to_the_server_chosen_with_a_short_connect_timeout(
        paho_reconnect: list[Any]) -> None:
    """The next server named by the session is the one paho reconnects to, its connect
    timeout 5 s at most; what the last connection had (CONNACK seen, early PUBLISHes, held
    packets) is gone."""
    conn, hooks = _conn()
    conn._host, conn._port, conn._connect_timeout = "a", 1, 30.0
    conn._connack_seen, conn._early = True, [(0x30, b"x")]
    q0 = _pub("t", 0)
    conn.count_unsent(len(q0) + PACKET_COST)
    conn._after_sync = [(object(), [(PacketType.PUBLISH, q0, 0, 0)])]  # type: ignore[list-item]
    hooks.server = ("b", 2)
    assert conn.reconnect() == _OK
    assert paho_reconnect == [("b", 2, 5.0)]
    assert not conn._connack_seen and conn._early == [] and conn._after_sync == []
    assert conn.unsent_qos0 == 0


def test_a_failing_server_choice_is_reported_and_the_same_server_tried(
        paho_reconnect: list[Any]) -> None:
    """The session failing to name the next server: reported, never raised into paho's
    thread; paho reconnects to the server it had."""
    conn, hooks = _conn()
    conn._host, conn._port, conn._connect_timeout = "a", 1, 30.0
    hooks.reset_error = RuntimeError("boom")
    assert conn.reconnect() == _OK
    assert paho_reconnect == [("a", 1, 30.0)]
    assert [c for _e, c in hooks.failures] == ["choosing the server to reconnect to"]


@pytest.mark.parametrize(("raised", "code", "reported"), [
    (ValueError("bad host name"), errno.EINVAL, False),
    (RuntimeError("paho broke"), errno.EIO, True),
])
def test_a_failed_reconnect_reaches_paho_as_an_oserror(
        paho_reconnect: list[Any], raised: Exception, code: int, reported: bool) -> None:
    """paho's thread retries an OSError only: a ValueError (a host name IDNA refuses) becomes
    EINVAL, anything else EIO and is reported."""
    conn, hooks = _conn()
    conn._host, conn._port = "a", 1
    conn._raise = raised  # type: ignore[attr-defined]
    with pytest.raises(OSError) as err:
        conn.reconnect()
    assert err.value.errno == code
    assert bool(hooks.failures) is reported


# ------------------------------------------------------------------ the CONNECT


@pytest.fixture()
def paho_connect(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """paho's CONNECT writer replaced: the keep-alive it was asked to write each time."""
    seen: list[int] = []

    def fake(self: PahoConnection, keepalive: int) -> Any:
        seen.append(keepalive)
        return _OK

    monkeypatch.setattr(mqtt.Client, "_send_connect", fake)
    return seen


def test_every_reconnect_asks_for_the_first_keep_alive(paho_connect: list[int]) -> None:
    """The keep-alive the client asked for goes with every CONNECT, not one a CONNACK's Server
    Keep Alive set meanwhile."""
    conn, _ = _conn()
    conn._send_connect(60)
    conn._send_connect(5)
    assert paho_connect == [60, 60] and conn._keepalive == 60


def test_clean_start_as_written(paho_connect: list[int]) -> None:
    """The Clean Start flag recorded is the one paho writes: MQTT 5 "first only" is set on the
    first CONNECT only; MQTT 3.1.1 CleanSession 0 is 0."""
    v5, _ = _conn(level=5)
    v5._clean_start = CLEAN_START_FIRST_ONLY
    v5._mqttv5_first_connect = True
    v5._send_connect(30)
    assert v5._clean_start_sent is True
    v5._mqttv5_first_connect = False
    v5._send_connect(30)
    assert v5._clean_start_sent is False
    v311, _ = _conn(level=4, clean=False)
    v311._send_connect(30)
    assert v311._clean_start_sent is False


# ------------------------------------------------------------------ after a sync off the loop


def _batching() -> tuple[PahoConnection, _Hooks]:
    conn, hooks = _conn()
    conn._batch, conn._batch_publishes = [], []  # a read batch begun, as loop_read does
    conn._batch_thread = conn.loop_thread = threading.current_thread()
    return conn, hooks


def _ack(packet_id: int) -> bytes:
    return _wire.encode_ack(PacketType.PUBACK, packet_id)


def test_packets_held_by_syncs_are_written_in_the_syncs_order() -> None:
    """Two batches' acks wait for their syncs: the later sync done first writes nothing;
    the earlier one done writes both batches' packets, in order."""
    conn, _ = _batching()
    conn.write(_ack(1), PacketType.PUBACK, 1)
    first: Future[None] = Future()
    conn._wait_sync(first)
    conn._batch = []
    conn.write(_ack(2), PacketType.PUBACK, 2)
    second: Future[None] = Future()
    conn._wait_sync(second)
    second.set_result(None)
    conn._synced(second)
    assert not conn._out_packet
    first.set_result(None)
    conn._synced(first)
    assert [p["packet"] for p in conn._out_packet] == [_ack(1), _ack(2)]
    assert conn._after_sync == []


def test_publishes_go_first_again_once_the_held_ones_are_written() -> None:
    """PUBLISHes held behind a sync: once it is done and they are written, the next batch's
    PUBLISHes go ahead of its acks again (not held for good)."""
    conn, _ = _batching()
    conn.hold_publishes()
    conn.write(_pub("a", 1, 1), PacketType.PUBLISH, 1, 1)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    fut.set_result(None)
    conn._synced(fut)
    assert [p["packet"] for p in conn._out_packet] == [_pub("a", 1, 1)]
    conn._batch, conn._batch_publishes = [], []  # the next read batch
    conn.write(_pub("b", 1, 2), PacketType.PUBLISH, 2, 1)
    assert conn._batch == [] and conn._batch_publishes == [
        (PacketType.PUBLISH, _pub("b", 1, 2), 2, 1)]


def test_a_failed_sync_drops_the_connection() -> None:
    """A sync that failed: the packets that needed it are never written, the failure
    reported once, the connection closed (paho reconnects, the session resends)."""
    conn, hooks = _batching()
    sock = _Sock()
    conn._sock = sock
    conn.write(_ack(1), PacketType.PUBACK, 1)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    fut.set_exception(OSError(5, "EIO"))
    conn._synced(fut)
    assert len(hooks.failures) == 1 and conn._sock is None and sock.closed
    assert sock.sent == [] and not conn._out_packet


def test_a_failed_sync_seen_by_its_sync_thread_is_reported_by_the_network_thread_only() -> None:
    """The sync thread's callback on a failed sync still waited for leaves it to the network
    thread (``loop_misc``): reported once, not twice."""
    conn, hooks = _batching()
    conn.write(_ack(1), PacketType.PUBACK, 1)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    fut.set_exception(OSError(5, "EIO"))
    other = threading.Thread(target=conn._synced, args=(fut,))
    other.start()
    other.join(5)
    assert hooks.failures == []
    conn._synced(fut)
    assert len(hooks.failures) == 1


def test_the_network_thread_writes_what_a_done_sync_released_at_once() -> None:
    """The network thread that found a sync done (``loop_misc``) writes the packets it held
    in that round, not at some later one."""
    conn, _ = _batching()
    conn._thread = threading.current_thread()  # (this test plays paho's network thread)
    sock = _Sock()
    conn._sock = sock
    conn.write(_ack(1), PacketType.PUBACK, 1)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    fut.set_result(None)
    conn._synced(fut)
    assert sock.sent == [_ack(1)] and not conn._out_packet


def test_a_publish_after_the_batch_ended_is_not_kept_for_the_next_batch() -> None:
    """A read batch ended, its acks still waiting for a sync off the loop: a PUBLISH written
    now is queued at once, not kept among the batch's PUBLISHes until the next batch ends."""
    conn, _ = _batching()
    conn.write(_ack(1), PacketType.PUBACK, 1)
    conn._queue_publishes(keep=False)  # the batch's end (``_end_batch``)
    conn._wait_sync(Future())
    conn.write(_pub("t", 1, 2), PacketType.PUBLISH, 2, 1)
    assert [p["packet"] for p in conn._out_packet] == [_pub("t", 1, 2)]


def test_a_read_batch_writes_its_publishes_at_its_end() -> None:
    """The PUBLISHes a read batch wrote (none waiting for its sync) leave at its end, in
    that network-loop round."""
    conn, _ = _batching()
    conn._thread = threading.current_thread()  # (this test plays paho's network thread)
    sock = _Sock()
    conn._sock = sock
    conn.write(_pub("t", 1, 1), PacketType.PUBLISH, 1, 1)
    assert sock.sent == []
    assert conn._end_batch(_OK) == _OK
    assert sock.sent == [_pub("t", 1, 1)]


def test_the_session_timers_run_only_while_connected() -> None:
    """``loop_misc`` runs the session's timers after paho's keep-alive check, and not while
    there is no connection (paho's check failed)."""
    conn, hooks = _conn()
    conn.loop_misc()
    assert hooks.ticks == 0
    conn._sock, conn._keepalive = _Sock(), 60
    conn._last_msg_out = conn._last_bytes_received = mqtt.time_func()
    assert conn.loop_misc() == _OK
    assert hooks.ticks == 1


def test_a_read_batch_ended_by_a_lost_connection_drops_what_it_held() -> None:
    """A QoS 0 PUBLISH written while a read batch ran that then lost its connection is
    dropped with the batch: no longer counted as unsent memory."""
    conn, hooks, _sock = _reading([_pub("a"), b""])

    def reply(_p: Any) -> None:
        conn.write(_pub("r", 0), PacketType.PUBLISH, 0, 0)

    hooks.on_packet = reply
    conn._batch_thread = threading.current_thread()
    assert conn.loop_read() == _DROP
    assert [p.topic for p in hooks.packets] == ["a"]
    assert conn.unsent_qos0 == 0 and not conn._out_packet


def test_a_sync_failing_after_its_connection_was_lost_is_reported() -> None:
    """A sync thread's sync still running when the connection was lost: its failure is
    reported when it comes (its packets were dropped with the connection)."""
    conn, hooks = _batching()
    conn.write(_ack(1), PacketType.PUBACK, 1)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    conn._drop_held()  # the connection lost
    assert hooks.failures == []
    fut.set_exception(OSError(5, "EIO"))
    assert [c for _e, c in hooks.failures] == [
        "making the session records of received packets durable"]
    assert not conn._out_packet
