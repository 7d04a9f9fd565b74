"""Pins on ``mqttsession/compat/raw.py`` found by a mutation hunt, against a scripted server on
127.0.0.1 (one connection; it answers each packet the client sends with the next canned bytes):

* a CONNACK with a non-zero code is ``Refused`` (and the connection closed);
* a SUBACK failure code 0x80 and a PUBACK reason 0x80 are errors, not a grant or a delivery;
* a per-call timeout overrides the client's, and a zero one is a ``Timeout``, not a crash;
* a packet one byte over the CONNACK's Maximum Packet Size is not sent, one at the limit is;
  a new connection forgets the last CONNACK's limits;
* a packet read while waiting for another is kept for later; a QoS 2 PUBLISH is answered
  with PUBREC;
* the broker closing is ``ConnectionClosed`` (``closed_by_broker``), not a timeout; ``complete``
  of a QoS 2 PUBLISH waits for the PUBREL;
* a connection reset is ``closed_by_broker`` too; a QoS 2 PUBLISH answered with PUBACK
  (RabbitMQ 3.x) ends its flow there and is recorded;
* ``drain(count=...)`` stops at that many PUBLISHes; packet ids wrap from 65535 to 1;
* a 3.1.1 CONNACK code to an MQTT 5 client is named by the 3.1.1 table.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator, Sequence

import pytest

from mqttsession import _wire as wire
from mqttsession.compat.raw import (
    BeyondServerLimit,
    ConnectionClosed,
    PacketType,
    RawClient,
    RawError,
    Refused,
    Timeout,
    connack_reason,
    encode_publish,
)

pytestmark = pytest.mark.integration


RESET = b"RESET"


@contextlib.contextmanager
def _server(answers: Sequence[bytes], got: list[int] | None = None) -> Iterator[int]:
    """Accept one connection; answer the n-th packet received with ``answers[n]`` (then stay
    silent until the client closes; an empty answer closes the connection, ``RESET`` resets
    it); the received
    packets' first bytes go to ``got``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                buf = bytearray()
                todo = list(answers)
                while True:
                    found = wire.split(buf)
                    if found is None:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        buf += chunk
                        continue
                    if got is not None:
                        got.append(buf[0])
                    del buf[:found[1]]
                    if todo:
                        answer = todo.pop(0)
                        if answer == RESET:
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        if not answer or answer == RESET:
                            return
                        conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(6)


CONNACK4 = b"\x20\x02\x00\x00"
CONNACK5 = b"\x20\x03\x00\x00\x00"


def test_connack_with_a_code_is_refused() -> None:
    """CONNACK code 5 (not authorized) raises Refused with its name; the socket is closed."""
    with _server([b"\x20\x02\x00\x05"]) as port, RawClient("127.0.0.1", port, timeout=3) as c:
        with pytest.raises(Refused, match="not authorized") as info:
            c.connect("c1", clean=True)
        assert info.value.code == 5 and c.sock is None


def test_suback_failure_code_0x80_is_an_error() -> None:
    """SUBACK 0x80 (failure) must not be taken as a grant."""
    with _server([CONNACK4, b"\x90\x03\x00\x01\x80"]) as port, RawClient("127.0.0.1", port, timeout=3) as c:
        c.connect("c1", clean=True)
        with pytest.raises(RawError, match="refused"):
            c.subscribe("t", 1)


def test_puback_reason_0x80_is_an_error() -> None:
    """An MQTT 5 PUBACK with reason 0x80 (unspecified error) is not a delivery [MQTT-4.4.0-2]."""
    with _server([CONNACK5, b"\x40\x03\x00\x01\x80"]) as port, \
            RawClient("127.0.0.1", port, protocol=5, timeout=3) as c:
        c.connect("c1", clean=True)
        with pytest.raises(RawError, match="answered"):
            c.publish("t", b"x", 1)


def test_per_call_timeout_overrides_and_zero_is_a_timeout() -> None:
    """``expect(timeout=...)`` waits that long, not the client's timeout; 0 is a Timeout."""
    with _server([CONNACK4]) as port, RawClient("127.0.0.1", port, timeout=5) as c:
        c.connect("c1", clean=True)
        with pytest.raises(Timeout, match=r"within 0\.2 s"):
            c.expect(PacketType.PUBLISH, timeout=0.2)
        with pytest.raises(Timeout, match=r"within 0\.0 s"):
            c.expect(PacketType.PUBLISH, timeout=0)


def test_a_311_connack_code_to_an_mqtt5_client_is_named() -> None:
    """A broker without MQTT 5 answers a v5 CONNECT with code 1: named, not "unknown code"."""
    assert connack_reason(1, 5) == "unacceptable protocol version"
    assert connack_reason(0x84, 5) == "unsupported protocol version"


def _connack5_max_size(limit: int) -> bytes:
    """An MQTT 5 CONNACK with Maximum Packet Size ``limit``."""
    return b"\x20\x08\x00\x00\x05\x27" + limit.to_bytes(4, "big")


def test_maximum_packet_size_is_exact_and_forgotten_on_a_new_connection() -> None:
    """[MQTT-3.2.2-15]: ``limit + 1`` bytes are refused, ``limit`` bytes are sent; open() of a
    new connection drops the old CONNACK's limit."""
    size = len(encode_publish("t", b"x", qos=0, protocol=5))
    with _server([_connack5_max_size(size - 1)]) as port, \
            RawClient("127.0.0.1", port, protocol=5, timeout=3) as c:
        c.connect("c1", clean=True)
        assert c.max_packet_size == size - 1
        with pytest.raises(BeyondServerLimit):
            c.publish("t", b"x", 0)
        with _server([]) as port2:
            c.port = port2
            c.open()
            assert c.max_packet_size is None
            c.close()
    with _server([_connack5_max_size(size)]) as port, \
            RawClient("127.0.0.1", port, protocol=5, timeout=3) as c:
        c.connect("c1", clean=True)
        assert c.publish("t", b"x", 0) is None


def test_drain_stops_at_count_and_packet_ids_wrap() -> None:
    """``drain(count=1)`` returns the first PUBLISH alone, the other stays unread."""
    two = encode_publish("t", b"1", qos=0) + encode_publish("t", b"2", qos=0)
    with _server([CONNACK4 + two]) as port, RawClient("127.0.0.1", port, timeout=3) as c:
        c.connect("c1", clean=True)
        assert [p.payload for p in c.drain(2.0, count=1)] == [b"1"]
        assert c.expect_publish("t").payload == b"2"
    c = RawClient("127.0.0.1", 1)
    c._next_id = 65534
    assert [c.next_packet_id(), c.next_packet_id()] == [65535, 1]


def test_a_packet_read_meanwhile_is_kept_and_qos2_is_answered_with_pubrec() -> None:
    """A PUBLISH arriving before the SUBACK is not lost; ``complete`` of a QoS 2 one sends
    PUBREC, waits for PUBREL, sends PUBCOMP."""
    publish = wire.encode_publish("t", b"q2", qos=2, packet_id=7)
    suback = b"\x90\x03\x00\x01\x02"
    pubrel = wire.encode_ack(PacketType.PUBREL, 7)
    got: list[int] = []
    with _server([CONNACK4, publish + suback, pubrel], got) as port, \
            RawClient("127.0.0.1", port, timeout=3) as c:
        c.connect("c1", clean=True)
        assert c.subscribe("t", 2) == 2
        p = c.expect_publish("t", timeout=1)
        assert (p.payload, p.qos, p.packet_id) == (b"q2", 2, 7)
        c.complete(p)
        c.disconnect(linger=1.0)
    assert [b >> 4 for b in got] == [PacketType.CONNECT, PacketType.SUBSCRIBE, PacketType.PUBREC,
                                     PacketType.PUBCOMP, PacketType.DISCONNECT]


def test_the_broker_closing_is_connection_closed_not_a_timeout() -> None:
    """EOF while waiting for SUBACK: ConnectionClosed naming what was awaited, closed_by_broker."""
    with _server([CONNACK4, b""]) as port, RawClient("127.0.0.1", port, timeout=3) as c:
        c.connect("c1", clean=True)
        with pytest.raises(ConnectionClosed, match="closed the connection while waiting for SUBACK"):
            c.subscribe("t", 1)
        assert c.closed_by_broker


def test_complete_of_qos2_waits_for_the_pubrel() -> None:
    """No PUBREL after our PUBREC: ``complete`` is a Timeout, no PUBCOMP is sent unasked."""
    publish = wire.encode_publish("t", b"q2", qos=2, packet_id=9)
    with _server([CONNACK4 + publish]) as port, RawClient("127.0.0.1", port, timeout=0.3) as c:
        c.connect("c1", clean=True)
        p = c.expect_publish("t")
        with pytest.raises(Timeout, match="PUBREL id=9"):
            c.complete(p)


def test_a_reset_connection_counts_as_closed_by_the_broker() -> None:
    """RST while waiting: ConnectionClosed and ``closed_by_broker`` (scenarios judge by it)."""
    with _server([CONNACK4, RESET]) as port, RawClient("127.0.0.1", port, timeout=3) as c:
        c.connect("c1", clean=True)
        with pytest.raises(ConnectionClosed, match="while waiting for SUBACK"):
            c.subscribe("t", 1)
        assert c.closed_by_broker


def test_qos2_publish_answered_with_puback_ends_there_and_is_recorded() -> None:
    """A broker taking QoS 2 as QoS 1 answers PUBACK: no PUBREL is sent, the id is recorded."""
    got: list[int] = []
    with _server([CONNACK4, wire.encode_ack(PacketType.PUBACK, 1)], got) as port, \
            RawClient("127.0.0.1", port, timeout=0.5) as c:
        c.connect("c1", clean=True)
        assert c.publish("t", b"x", 2) == 1
        assert c.pubacked_qos2 == [1]
    assert [b >> 4 for b in got] == [PacketType.CONNECT, PacketType.PUBLISH]
