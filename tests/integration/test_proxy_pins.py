"""Pins found by a mutation hunt over the fault-injection tools in ``mqttsession.testing``.

``MQTTProxy`` runs between a raw loopback client socket and a raw loopback server socket (no
broker), so each test states the exact bytes forwarded and the records logged: the fields parsed
(MQTT 3.1.1 or 5, chosen from the connection's CONNECT), drops (only their direction and type,
only while set, ``count``), partial packets, malformed and unframeable bytes, ``cut()`` and EOF.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mqttsession import _wire as wire
from mqttsession.testing.proxy import MQTTProxy, PacketRecord

PacketType = wire.PacketType
WAIT = 5.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (its timeout bounds each read)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {data!r}")
        data += chunk
    return data


def _quiet(sock: socket.socket, wait: float = 0.2) -> bytes:
    """What ``sock`` receives within ``wait`` seconds (b"" if nothing)."""
    sock.settimeout(wait)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return b""
    finally:
        sock.settimeout(WAIT)


@dataclass
class Link:
    proxy: MQTTProxy
    server: socket.socket  # the listening "broker"
    client: socket.socket
    upstream: socket.socket  # the server side of the proxy's upstream connection

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """Another client connection through the proxy, and its upstream end."""
        client = socket.create_connection((self.proxy.host, self.proxy.port), WAIT)
        client.settimeout(WAIT)
        upstream, _ = self.server.accept()
        upstream.settimeout(WAIT)
        return client, upstream

    def c2s(self, data: bytes) -> bytes:
        """Send ``data`` from the client; what the server receives (as many bytes)."""
        self.client.sendall(data)
        return _recv_exact(self.upstream, len(data))

    def s2c(self, data: bytes) -> bytes:
        self.upstream.sendall(data)
        return _recv_exact(self.client, len(data))


@pytest.fixture
def link() -> Iterator[Link]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(WAIT)
    proxy = MQTTProxy("127.0.0.1", server.getsockname()[1]).start()
    socks: list[socket.socket] = [server]
    try:
        lk = Link(proxy, server, *(None, None))  # type: ignore[arg-type]
        lk.client, lk.upstream = lk.connect()
        socks += [lk.client, lk.upstream]
        yield lk
    finally:
        proxy.stop()
        for s in socks + [x for x in (lk.client, lk.upstream) if x is not None]:
            s.close()


CONNECT4 = wire.encode_connect("c-1", clean=False, keepalive=30)
CONNECT5 = wire.encode_connect("c-5", protocol=5, keepalive=7, session_expiry=60)


def _fields(r: PacketRecord) -> dict[str, object]:
    keep = ("conn", "direction", "type", "flags", "length", "dropped", "dup", "qos", "retain",
            "packet_id", "topic", "payload", "session_present", "reason_code", "reason_codes",
            "filters", "protocol_level", "client_id", "clean_start", "keepalive", "error")
    return {k: getattr(r, k) for k in keep}


# ------------------------------------------------------------------------------------------------
# forwarding and parsing


def test_forwards_exact_bytes_and_logs_each_field_on_mqtt311(link: Link) -> None:
    """Both directions are forwarded byte for byte; each record carries the packet's fields
    (PUBLISH flags from the fixed header, CONNECT/CONNACK fields) and its whole length."""
    publish = wire.encode_publish("t/a", b"xy", qos=2, packet_id=7, retain=True)
    assert link.c2s(CONNECT4 + publish) == CONNECT4 + publish
    connack = wire.encode_connack(session_present=True)
    pubrec = wire.encode_ack(PacketType.PUBREC, 7)
    assert link.s2c(connack + pubrec) == connack + pubrec
    link.proxy.wait_for("s2c", "PUBREC")
    recs = link.proxy.packets()
    assert [r.seq for r in recs] == sorted(r.seq for r in recs)
    base = dict(conn=1, dropped=False, dup=False, qos=0, retain=False, packet_id=None, topic=None,
                payload=None, session_present=None, reason_code=None, reason_codes=None,
                filters=None, protocol_level=4, client_id=None, clean_start=None, keepalive=None,
                error=None)
    assert [_fields(r) for r in recs] == [
        {**base, "direction": "c2s", "type": "CONNECT", "flags": 0, "length": len(CONNECT4),
         "client_id": "c-1", "clean_start": False, "keepalive": 30},
        {**base, "direction": "c2s", "type": "PUBLISH", "flags": 0x05, "length": len(publish),
         "qos": 2, "retain": True, "packet_id": 7, "topic": "t/a", "payload": b"xy"},
        {**base, "direction": "s2c", "type": "CONNACK", "flags": 0, "length": len(connack),
         "session_present": True, "reason_code": 0},
        {**base, "direction": "s2c", "type": "PUBREC", "flags": 0, "length": len(pubrec),
         "packet_id": 7},
    ]
    dup = wire.encode_publish("t/b", b"", qos=1, packet_id=8, dup=True)
    link.c2s(dup)
    r = link.proxy.wait_for("c2s", "PUBLISH", count=2)
    assert (r.dup, r.qos, r.retain, r.flags) == (True, 1, False, 0x0A)


def test_subscribe_filters_and_suback_codes(link: Link) -> None:
    """SUBSCRIBE records its filters, SUBACK its return codes."""
    sub = wire.encode_subscribe(3, [("a/#", 1), ("b", 0)])
    suback = wire.encode_suback(3, [1, 0x80])
    link.c2s(CONNECT4 + sub)
    link.s2c(suback)
    assert link.proxy.wait_for("c2s", "SUBSCRIBE").filters == ("a/#", "b")
    r = link.proxy.wait_for("s2c", "SUBACK")
    assert (r.packet_id, r.reason_codes, r.filters) == (3, (1, 0x80), None)


def test_mqtt5_is_chosen_from_connect(link: Link) -> None:
    """After a level 5 CONNECT both directions are read as MQTT 5: ack reason codes and the
    CONNECT / CONNACK properties as on the wire."""
    connack = wire.encode_connack(protocol=5, properties=[(0x11, 10)])  # Session Expiry Interval
    puback = wire.encode_ack(PacketType.PUBACK, 4, reason=0x10, protocol=5)
    link.c2s(CONNECT5)
    link.s2c(connack + puback)
    c = link.proxy.wait_for("c2s", "CONNECT")
    assert (c.protocol_level, c.client_id, c.keepalive, c.clean_start) == (5, "c-5", 7, True)
    assert c.properties == wire.pack_properties([(0x11, 60)])
    ack = link.proxy.wait_for("s2c", "CONNACK")
    assert (ack.protocol_level, ack.properties) == (5, wire.pack_properties([(0x11, 10)]))
    r = link.proxy.wait_for("s2c", "PUBACK")
    assert (r.protocol_level, r.packet_id, r.reason_code, r.error) == (5, 4, 0x10, None)
    with_props = wire.encode_ack(PacketType.PUBACK, 5, reason=0x10, protocol=5,
                                 properties=[(0x1F, "why")])  # Reason String
    link.s2c(with_props)
    r = link.proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.packet_id == 5)
    assert (r.packet_id, r.reason_code, r.properties) == (5, 0x10, None)  # CONNECT/CONNACK only


def test_before_connect_packets_are_read_as_mqtt311(link: Link) -> None:
    """Until the connection's CONNECT, packets are parsed as MQTT 3.1.1 (level unknown: None)."""
    publish = wire.encode_publish("t", b"\x05abc", qos=1, packet_id=2)
    link.c2s(publish)
    r = link.proxy.wait_for("c2s", "PUBLISH")
    assert (r.error, r.payload, r.protocol_level) == (None, b"\x05abc", None)


def test_a_second_connect_records_its_own_level(link: Link) -> None:
    """A CONNECT's record says its own protocol level, even after another CONNECT."""
    link.c2s(CONNECT4 + CONNECT5)
    link.proxy.wait_for("c2s", "CONNECT", count=2)
    assert [r.protocol_level for r in link.proxy.packets("c2s", "CONNECT")] == [4, 5]


def test_partial_packets_are_joined_across_reads(link: Link) -> None:
    """A packet split over several reads is logged once, whole, and forwarded unchanged."""
    publish = wire.encode_publish("split/topic", b"p" * 300, qos=1, packet_id=9)
    link.client.sendall(CONNECT4 + publish[:1])
    time.sleep(0.1)
    link.client.sendall(publish[1:3])
    time.sleep(0.1)
    link.client.sendall(publish[3:])
    assert _recv_exact(link.upstream, len(CONNECT4 + publish)) == CONNECT4 + publish
    r = link.proxy.wait_for("c2s", "PUBLISH")
    assert (r.length, r.payload, r.packet_id) == (len(publish), b"p" * 300, 9)
    assert len(link.proxy.packets()) == 2


def test_malformed_packet_is_logged_and_forwarded(link: Link) -> None:
    """A packet that frames but is malformed is forwarded with an ``error`` and no fields; a
    reserved type is named RESERVED<n>; parsing goes on with the next packet."""
    bad = wire.encode_publish("a/+", b"z", qos=1, packet_id=1)
    reserved = b"\x00\x00"
    ping = wire.encode_pingreq()
    assert link.c2s(CONNECT4 + bad + reserved + ping) == CONNECT4 + bad + reserved + ping
    link.proxy.wait_for("c2s", "PINGREQ")
    _, b, z, p = link.proxy.packets()
    assert b.type == "PUBLISH" and b.error and (b.qos, b.topic, b.packet_id) == (1, None, None)
    assert z.type == "RESERVED0" and z.error
    assert p.type == "PINGREQ" and p.error is None


def test_unframeable_bytes_are_forwarded_unparsed(link: Link) -> None:
    """Bytes whose Remaining Length cannot be one are forwarded at once, and everything after
    them in that direction unparsed; the other direction is still parsed."""
    junk = b"\x30\xff\xff\xff\xff\x7f"
    assert link.c2s(CONNECT4 + junk) == CONNECT4 + junk
    ping = wire.encode_pingreq()
    assert link.c2s(ping) == ping
    assert link.s2c(wire.encode_pingresp()) == wire.encode_pingresp()
    link.proxy.wait_for("s2c", "PINGRESP")
    assert [r.type for r in link.proxy.packets()] == ["CONNECT", "PINGRESP"]


# ------------------------------------------------------------------------------------------------
# drops


def test_drop_applies_to_its_direction_and_types_only(link: Link) -> None:
    """``drop("s2c", "PUBACK")`` drops only s2c PUBACKs (logged with dropped=True); the same
    type c2s and other types s2c go through; ``clear_drops()`` forwards again."""
    link.c2s(CONNECT4)
    link.proxy.drop("s2c", "puback")  # type names in any case
    c2s_ack = wire.encode_ack(PacketType.PUBACK, 1)
    assert link.c2s(c2s_ack) == c2s_ack
    pingresp = wire.encode_pingresp()
    link.upstream.sendall(wire.encode_ack(PacketType.PUBACK, 2) + pingresp)
    assert _recv_exact(link.client, len(pingresp)) == pingresp
    assert link.proxy.packets(dropped=True) == [link.proxy.wait_for("s2c", "PUBACK")]
    assert [r.packet_id for r in link.proxy.packets("s2c", "PUBACK", dropped=True)] == [2]
    assert [r.dropped for r in link.proxy.packets("c2s", "PUBACK")] == [False]
    assert "DROPPED" in link.proxy.log_text()
    link.proxy.clear_drops()
    ack3 = wire.encode_ack(PacketType.PUBACK, 3)
    assert link.s2c(ack3) == ack3


def test_drop_count_drops_only_that_many(link: Link) -> None:
    """With ``count``, a rule drops the next ``count`` matching packets, then forwards; each
    packet is counted by one rule only (two rules of count 1 drop two packets)."""
    link.c2s(CONNECT4)
    link.proxy.drop("s2c", "PUBACK", count=1)
    link.proxy.drop("s2c", "PUBACK", "PUBREC", count=1)
    acks = [wire.encode_ack(PacketType.PUBACK, i) for i in (1, 2, 3)]
    link.upstream.sendall(b"".join(acks))
    assert _recv_exact(link.client, len(acks[2])) == acks[2]
    link.proxy.wait_for("s2c", "PUBACK", count=3)
    assert [r.dropped for r in link.proxy.packets("s2c", "PUBACK")] == [True, True, False]
    with pytest.raises(ValueError):
        link.proxy.drop("s2c", "PUBACK", count=0)
    with pytest.raises(ValueError):
        link.proxy.drop("s2c")
    with pytest.raises(ValueError):
        link.proxy.drop("up", "PUBACK")


# ------------------------------------------------------------------------------------------------
# the log


def test_packets_filters_and_wait_for_count(link: Link) -> None:
    """``packets`` filters by dropped and conn; ``wait_for(count=n)`` returns the n-th match
    (and waits for it); ``clear_log`` forgets."""
    client2, upstream2 = link.connect()
    try:
        link.c2s(CONNECT4)
        client2.sendall(wire.encode_connect("c-2"))
        link.proxy.wait_for("c2s", "CONNECT", count=2)
        assert [r.client_id for r in link.proxy.packets(conn=2)] == ["c-2"]
        assert link.proxy.packets(dropped=True) == []
        pings = [wire.encode_pingreq()] * 3
        link.c2s(b"".join(pings))
        all_pings = link.proxy.packets("c2s", "PINGREQ")
        assert link.proxy.wait_for("c2s", "PINGREQ", count=2) == all_pings[1]
        with pytest.raises(TimeoutError):
            link.proxy.wait_for("c2s", "PINGREQ", count=4, timeout=0.2)
        link.proxy.clear_log()
        assert link.proxy.packets() == []
    finally:
        client2.close()
        upstream2.close()


# ------------------------------------------------------------------------------------------------
# connections


def test_cut_resets_both_sides_and_keeps_listening(link: Link) -> None:
    """``cut()`` closes every pair with RST on both sides and returns how many; the proxy still
    accepts connections, numbered on."""
    client2, upstream2 = link.connect()
    try:
        link.c2s(CONNECT4)
        assert link.proxy.active_connections == 2
        assert link.proxy.cut() == 2
        assert link.proxy.active_connections == 0
        for s in (link.client, link.upstream, client2, upstream2):
            with pytest.raises(ConnectionResetError):
                s.recv(10)
    finally:
        client2.close()
        upstream2.close()
    link.client, link.upstream = link.connect()
    link.c2s(CONNECT4)
    assert link.proxy.wait_for("c2s", "CONNECT", count=2).conn == 3
    assert link.proxy.accepted == 3


def test_client_eof_is_passed_on_as_fin(link: Link) -> None:
    """A client's orderly close reaches the server as EOF (not a reset), and the pair is gone."""
    link.c2s(CONNECT4)
    link.client.close()
    assert link.upstream.recv(10) == b""
    deadline = time.monotonic() + WAIT
    while link.proxy.active_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.proxy.active_connections == 0


_BIG = b"\x30\xff\xff\xff\xff\x7f" + bytes(range(256)) * (64 << 10)  # 16 MiB, unframeable


def _small_server() -> socket.socket:
    """A listening loopback server whose accepted sockets take 64 KiB before they are full
    (a fixed receive buffer: no autotuning)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(WAIT)
    return server


def test_client_eof_first_hands_over_what_is_still_buffered(caplog: pytest.LogCaptureFixture) -> None:
    """On a client's orderly close, bytes the proxy still holds for the server (its socket was
    full) are sent before the FIN, not discarded. (The server reads only once the proxy logged
    the EOF: nothing was drained before.)"""
    caplog.set_level(logging.DEBUG, logger="mqttsession.testing.proxy")
    server, data = _small_server(), _BIG
    with server, MQTTProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        with socket.create_connection((proxy.host, proxy.port), WAIT) as client:
            upstream, _ = server.accept()
            with upstream:
                upstream.settimeout(WAIT)
                client.sendall(data)  # the server reads nothing yet: the proxy buffers the rest
                client.close()
                deadline = time.monotonic() + WAIT
                while not any("c2s EOF" in r.getMessage() for r in caplog.records):
                    assert time.monotonic() < deadline, "the proxy never saw the EOF"
                    time.sleep(0.005)
                got = bytearray()
                while chunk := upstream.recv(1 << 20):
                    got += chunk
    assert len(got) == len(data) and bytes(got) == data


def test_a_full_server_socket_is_written_once_it_drains() -> None:
    """What the proxy could not write at once (the server's socket full) is written when the
    socket drains, with the client still open and sending nothing more."""
    server, data = _small_server(), _BIG
    with server, MQTTProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        with socket.create_connection((proxy.host, proxy.port), WAIT) as client:
            upstream, _ = server.accept()
            with upstream:
                upstream.settimeout(WAIT)
                client.sendall(data)
                assert _recv_exact(upstream, len(data)) == data


def test_upstream_refused_resets_the_client() -> None:
    """When the upstream connection fails, the client connection is reset."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with MQTTProxy("127.0.0.1", port, connect_timeout=1.0) as proxy:
        with pytest.raises(ConnectionResetError):  # (the reset may come while connecting)
            with socket.create_connection((proxy.host, proxy.port), WAIT) as c:
                c.settimeout(WAIT)
                c.recv(10)
        assert proxy.accepted == 1


def test_lifecycle_checks() -> None:
    """Only loopback upstreams ("localhost" too); no second start; a restart keeps the port."""
    with pytest.raises(ValueError):
        MQTTProxy("broker.invalid", 1883)  # (a name, never resolved: refused as it is)
    proxy = MQTTProxy("localhost", 1)
    assert proxy.upstream_host == "localhost"
    proxy.start()
    try:
        port = proxy.port
        with pytest.raises(RuntimeError):
            proxy.start()
        proxy.stop()
        assert not proxy.running
        assert proxy.cut(timeout=1.0) == 0  # nothing to cut, no loop to wait for
        proxy.start()
        assert proxy.port == port
    finally:
        proxy.stop()
