"""A blocking raw-socket MQTT 3.1.1 / 5 client that shows what a broker sent.

paho acknowledges and retries by itself; the compatibility scenarios must decide when (and whether)
to acknowledge, and see every flag and packet id the broker used. The packets are
:mod:`mqttsession._wire`'s; this module re-exports what the scenarios use, with errors as
:class:`RawError`.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final, TypeVar

from .. import _wire as wire
from .._wire import (
    Packet,
    PacketType,
    PropValue,
    encode_ack,
    encode_connect,
    encode_disconnect,
    encode_publish,
)
from ..errors import MQTTSessionError

# typing.Self is 3.11+; this TypeVar keeps "returns its own type" on 3.10
_R = TypeVar("_R", bound="RawClient")

__all__ = [
    "BeyondServerLimit",
    "ConnectionClosed",
    "MalformedPacket",
    "Packet",
    "PacketType",
    "PropValue",
    "RawClient",
    "RawError",
    "Refused",
    "Timeout",
    "connack_reason",
    "decode",
    "encode_ack",
    "encode_connect",
    "encode_disconnect",
    "encode_publish",
    "encode_subscribe",
    "split",
]

log = logging.getLogger(__name__)

NEVER_EXPIRES: Final = 0xFFFFFFFF
MAXIMUM_QOS: Final = 0x24
MAXIMUM_PACKET_SIZE: Final = 0x27


class RawError(MQTTSessionError):
    """Talking to the broker went wrong; the message is a one-line reason."""


class ConnectionClosed(RawError):
    """The broker closed the connection (or it broke)."""


class MalformedPacket(RawError, wire.MalformedPacket):
    """Bytes from the broker that are not a valid MQTT packet."""


class Timeout(RawError):
    """An expected packet did not arrive in time."""


class BeyondServerLimit(RawError):
    """Not sent: the broker's MQTT 5 CONNACK forbids the client this packet (a PUBLISH above its
    Maximum QoS [MQTT-3.2.2-11], a packet over its Maximum Packet Size [MQTT-3.2.2-15])."""


class Refused(RawError):
    """CONNACK with a non-zero return / reason code."""

    def __init__(self, code: int, protocol: int) -> None:
        super().__init__(f"CONNACK refused the connection: code {code} ({connack_reason(code, protocol)})")
        self.code = code
        self.protocol = protocol


_CONNACK_3: Final = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
_CONNACK_5: Final = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}


def connack_reason(code: int, protocol: int) -> str:
    """The name of a CONNACK return (3.1.1) or reason (5) code."""
    # A broker without MQTT 5 answers a v5 CONNECT with a 3.1.1 CONNACK (code 1).
    table = _CONNACK_5 if protocol == 5 and code >= 0x80 else _CONNACK_3
    return table.get(code, "unknown code")


# ------------------------------------------------------------------------------------------ packets


def encode_subscribe(packet_id: int, topic: str, qos: int, *, protocol: int = 4) -> bytes:
    """SUBSCRIBE to one topic filter (MQTT 5 options: just the maximum QoS)."""
    return wire.encode_subscribe(packet_id, [(topic, qos)], protocol=protocol)


def split(buf: bytes | bytearray) -> tuple[int, int] | None:
    """``(header length, total length)`` of the first whole packet in ``buf``, or None."""
    try:
        return wire.split(buf)
    except wire.MalformedPacket as exc:
        raise MalformedPacket(str(exc)) from None


def decode(first: int, body: bytes, protocol: int = 4) -> Packet:
    """Decode one packet from its first byte and body."""
    try:
        return wire.decode(first, body, protocol)
    except wire.MalformedPacket as exc:
        raise MalformedPacket(str(exc)) from None


def _describe_raw(data: bytes, protocol: int) -> str:
    """``Packet.describe`` of encoded bytes (for the debug log)."""
    try:
        return wire.decode_packet(data, protocol).describe()
    except wire.MalformedPacket:
        return repr(data[:16])


# ------------------------------------------------------------------------------------------ client


class RawClient:
    """One blocking MQTT connection with explicit acknowledgements.

    Packets read while waiting for another one are kept (``pending``) for later calls. Every
    packet sent and received is logged at DEBUG under ``name``.
    """

    def __init__(self, host: str, port: int, *, protocol: int = 4, timeout: float = 3.0,
                 name: str = "raw") -> None:
        if protocol not in (4, 5):
            raise ValueError(f"protocol must be 4 (MQTT 3.1.1) or 5, got {protocol!r}")
        self.host, self.port, self.protocol, self.timeout, self.name = host, port, protocol, timeout, name
        self.sock: socket.socket | None = None
        self.connack: Packet | None = None
        self.closed_by_broker = False
        self.pending: deque[Packet] = deque()
        self._buf = bytearray()
        self._next_id = 0
        self.pubacked_qos2: list[int] = []
        """Packet ids of QoS 2 PUBLISHes the broker answered with PUBACK (QoS 2 taken as QoS 1)."""

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def session_present(self) -> bool:
        return bool(self.connack is not None and self.connack.session_present)

    def _connack_int(self, prop_id: int) -> int | None:
        value = self.connack.prop(prop_id) if self.protocol == 5 and self.connack is not None else None
        return value if isinstance(value, int) else None

    @property
    def max_qos(self) -> int:
        """The CONNACK's Maximum QoS (MQTT 5); 2 when it has none (3.2.2.3.4)."""
        value = self._connack_int(MAXIMUM_QOS)
        return 2 if value is None else value

    @property
    def max_packet_size(self) -> int | None:
        """The CONNACK's Maximum Packet Size (MQTT 5); None: no limit but the protocol's."""
        return self._connack_int(MAXIMUM_PACKET_SIZE)

    def open(self) -> None:
        """Open the TCP connection (``OSError`` if it cannot be made)."""
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()
        self.pending.clear()
        self.closed_by_broker = False
        self.connack = None  # the limits of the last connection are not this one's

    def connect(self, client_id: str, *, clean: bool, session_expiry: int | None = None,
                username: str | None = None, password: str | None = None, keepalive: int = 60) -> Packet:
        """Open, send CONNECT, return the CONNACK; ``Refused`` for a non-zero code."""
        self.open()
        self.send(encode_connect(client_id, protocol=self.protocol, clean=clean, keepalive=keepalive,
                                 username=username, password=password, session_expiry=session_expiry))
        self.connack = self.expect(PacketType.CONNACK)
        if self.connack.reason_code:
            self.close()
            raise Refused(self.connack.reason_code, self.protocol)
        return self.connack

    def disconnect(self, session_expiry: int | None = None, linger: float = 1.0) -> None:
        """Send DISCONNECT and wait (up to ``linger``) for the broker to close the connection.

        Waiting for the close means the broker has handled the DISCONNECT before the caller
        reconnects with the same client id.
        """
        if self.sock is None:
            return
        try:
            self.send(encode_disconnect(protocol=self.protocol, session_expiry=session_expiry))
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + linger
            while self._read(deadline) is not None:
                pass  # late packets are of no interest once we said goodbye
        except (RawError, OSError):
            pass  # closed: what we waited for
        self.close()

    def close(self) -> None:
        """Drop the connection without DISCONNECT."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- raw I/O -----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one encoded packet; ``BeyondServerLimit`` (nothing sent) for one the CONNACK
        forbids."""
        if self.sock is None:
            raise ConnectionClosed(f"{self.name}: not connected")
        self._check_limits(data)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s > %s", self.name, _describe_raw(data, self.protocol))
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionClosed(f"connection lost while sending: {exc.strerror or exc}") from exc

    def _check_limits(self, data: bytes) -> None:
        """What a client must not send after this CONNACK (MQTT 5 only; a 3.1.1 one has none)."""
        if self.connack is None:
            return
        qos = (data[0] >> 1) & 3
        if data[0] >> 4 == PacketType.PUBLISH and qos > self.max_qos:
            raise BeyondServerLimit(f"CONNACK Maximum QoS {self.max_qos}: a client must not publish"
                                    f" at QoS {qos} [MQTT-3.2.2-11]")
        limit = self.max_packet_size
        if limit is not None and len(data) > limit:
            raise BeyondServerLimit(f"CONNACK Maximum Packet Size {limit}: a client must not send a"
                                    f" {len(data)}-byte {_describe_raw(data, self.protocol).split()[0]}"
                                    " [MQTT-3.2.2-15]")

    def _read(self, deadline: float) -> Packet | None:
        """The next packet from the socket, None at ``deadline``; ConnectionClosed on EOF."""
        while True:
            found = split(self._buf)
            if found is not None:
                header, total = found
                raw = bytes(self._buf[:total])
                del self._buf[:total]
                packet = decode(raw[0], raw[header:], self.protocol)
                log.debug("%s < %s", self.name, packet.describe())
                return packet
            if self.sock is None:
                raise ConnectionClosed(f"{self.name}: not connected")
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
                if not ready:
                    return None
                chunk = self.sock.recv(65536)
            except OSError as exc:
                self.closed_by_broker = True
                raise ConnectionClosed(f"connection lost: {exc.strerror or exc}") from exc
            if not chunk:
                self.closed_by_broker = True
                raise ConnectionClosed("the broker closed the connection")
            self._buf += chunk

    def wait_for(self, match: Callable[[Packet], bool], what: str, timeout: float | None = None) -> Packet:
        """The first packet (kept or new) that ``match``es; others stay in ``pending``.

        ``Timeout`` / ``ConnectionClosed`` name ``what`` and the packets seen meanwhile.
        """
        for packet in self.pending:
            if match(packet):
                self.pending.remove(packet)
                return packet
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        seen = len(self.pending)
        while True:
            try:
                got = self._read(deadline)
            except ConnectionClosed as exc:
                raise ConnectionClosed(f"{exc} while waiting for {what}{self._others(seen)}") from exc
            if got is None:
                raise Timeout(f"no {what} within {limit:.1f} s{self._others(seen)}")
            if match(got):
                return got
            self.pending.append(got)

    def _others(self, since: int) -> str:
        others = list(self.pending)[since:]
        return f" (got: {', '.join(p.describe() for p in others[:4])})" if others else ""

    def expect(self, ptype: PacketType, packet_id: int | None = None, timeout: float | None = None) -> Packet:
        """The next packet of ``ptype`` (with ``packet_id`` if given)."""
        what = ptype.name + (f" id={packet_id}" if packet_id is not None else "")
        return self.wait_for(
            lambda p: p.type is ptype and (packet_id is None or p.packet_id == packet_id), what, timeout)

    def expect_publish(self, topic: str | None = None, timeout: float | None = None) -> Packet:
        """The next PUBLISH (on ``topic`` if given)."""
        what = "PUBLISH" + (f" on {topic!r}" if topic else "")
        return self.wait_for(
            lambda p: p.type is PacketType.PUBLISH and (topic is None or p.topic == topic), what, timeout)

    def collect(self, duration: float) -> list[Packet]:
        """Every packet kept or arriving within ``duration``; stops early if the broker closes."""
        out = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + duration
        try:
            while (packet := self._read(deadline)) is not None:
                out.append(packet)
        except ConnectionClosed:
            pass  # closed_by_broker tells the caller
        return out

    def drain(self, duration: float, *, count: int | None = None) -> list[Packet]:
        """Receive for ``duration`` (or until ``count`` PUBLISHes), acknowledging as a client
        should: PUBACK, PUBREC, and PUBCOMP for each PUBREL. Returns the PUBLISHes."""
        got: list[Packet] = []
        deadline = time.monotonic() + duration
        while True:
            packet = self.pending.popleft() if self.pending else self._read(deadline)
            if packet is None:
                return got
            if packet.type is PacketType.PUBLISH:
                got.append(packet)
                self.ack(packet)
                if count is not None and len(got) >= count:
                    return got
            elif packet.type is PacketType.PUBREL and packet.packet_id is not None:
                self.send(encode_ack(PacketType.PUBCOMP, packet.packet_id, protocol=self.protocol))

    # -- MQTT operations ---------------------------------------------------------------------------

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def subscribe(self, topic: str, qos: int) -> int:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS (RawError on a failure code)."""
        packet_id = self.next_packet_id()
        self.send(encode_subscribe(packet_id, topic, qos, protocol=self.protocol))
        ack = self.expect(PacketType.SUBACK, packet_id)
        if len(ack.reason_codes) != 1 or ack.reason_codes[0] > 2:
            raise RawError(f"SUBSCRIBE {topic!r} qos {qos} refused: {ack.describe()}")
        return ack.reason_codes[0]

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> int | None:
        """PUBLISH and complete its flow (PUBACK, or PUBREC/PUBREL/PUBCOMP); returns the id."""
        packet_id = self.next_packet_id() if qos else None
        self.send(encode_publish(topic, payload, qos=qos, packet_id=packet_id, retain=retain,
                                 protocol=self.protocol))
        if packet_id is None:
            return None
        if qos == 1:
            self._check_ack(self.expect(PacketType.PUBACK, packet_id))
            return packet_id
        if self.expect_pubrec(packet_id) is None:
            return packet_id  # answered with PUBACK: the flow ends as the broker meant it
        self.send(encode_ack(PacketType.PUBREL, packet_id, protocol=self.protocol))
        self._check_ack(self.expect(PacketType.PUBCOMP, packet_id))
        return packet_id

    def expect_pubrec(self, packet_id: int, timeout: float | None = None) -> Packet | None:
        """The PUBREC answering our QoS 2 PUBLISH ``packet_id``; None when the broker answered
        PUBACK instead (RabbitMQ 3.x takes QoS 2 as QoS 1; recorded in ``pubacked_qos2``)."""
        ack = self.wait_for(lambda p: p.type in (PacketType.PUBREC, PacketType.PUBACK)
                            and p.packet_id == packet_id, f"PUBREC id={packet_id}", timeout)
        self._check_ack(ack)
        if ack.type is PacketType.PUBACK:
            self.pubacked_qos2.append(packet_id)
            return None
        return ack

    @staticmethod
    def _check_ack(ack: Packet) -> None:
        if ack.reason_code is not None and ack.reason_code >= 0x80:  # [MQTT-4.4.0-2]
            raise RawError(f"the broker answered {ack.describe()}")

    def ack(self, publish: Packet) -> None:
        """First acknowledgement of a received PUBLISH: PUBACK (QoS 1) or PUBREC (QoS 2)."""
        if publish.packet_id is None:
            return
        ptype = PacketType.PUBACK if publish.qos == 1 else PacketType.PUBREC
        self.send(encode_ack(ptype, publish.packet_id, protocol=self.protocol))

    def complete(self, publish: Packet) -> None:
        """Acknowledge a received PUBLISH fully (QoS 2: PUBREC, wait PUBREL, PUBCOMP)."""
        self.ack(publish)
        if publish.qos == 2 and publish.packet_id is not None:
            self.expect(PacketType.PUBREL, publish.packet_id)
            self.send(encode_ack(PacketType.PUBCOMP, publish.packet_id, protocol=self.protocol))
