"""A small raw MQTT 3.1.1 / 5 packet codec and a blocking client that shows what a broker sent.

paho acknowledges and retries by itself; the compatibility scenarios must decide when (and whether)
to acknowledge, and see every flag and packet id the broker used. Only the packets the scenarios
need are encoded; every packet type is decoded.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Final, TypeVar

from ..errors import MQTTSessionError

# typing.Self is 3.11+; this TypeVar keeps "returns its own type" on 3.10
_R = TypeVar("_R", bound="RawClient")

__all__ = [
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

SESSION_EXPIRY: Final = 0x11  # MQTT 5 property: Session Expiry Interval (four-byte integer)
REASON_STRING: Final = 0x1F
NEVER_EXPIRES: Final = 0xFFFFFFFF


class PacketType(IntEnum):
    """MQTT control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class RawError(MQTTSessionError):
    """Talking to the broker went wrong; the message is a one-line reason."""


class ConnectionClosed(RawError):
    """The broker closed the connection (or it broke)."""


class MalformedPacket(RawError):
    """Bytes from the broker that are not a valid MQTT packet."""


class Timeout(RawError):
    """An expected packet did not arrive in time."""


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


# ------------------------------------------------------------------------------------------ encoding

PropValue = int | str | bytes | tuple[str, str]
Properties = tuple[tuple[int, PropValue], ...]

# Property id -> wire type (MQTT 5, 2.2.2.2).
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROP_TYPES: Final = {
    0x01: _BYTE, 0x02: _U32, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _U32, 0x12: _UTF8, 0x13: _U16, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _bin(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _props(session_expiry: int | None = None) -> bytes:
    """An MQTT 5 property block; only Session Expiry Interval is ever sent."""
    raw = b"" if session_expiry is None else bytes([SESSION_EXPIRY]) + struct.pack(">I", session_expiry)
    return _varint(len(raw)) + raw


def encode_connect(
    client_id: str,
    *,
    protocol: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
    session_expiry: int | None = None,
) -> bytes:
    """CONNECT; ``session_expiry`` (MQTT 5 only) None leaves the property out (it then means 0)."""
    if protocol == 4 and session_expiry is not None:
        raise ValueError("MQTT 3.1.1 has no session expiry interval")
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    body = _str("MQTT") + bytes([protocol, flags]) + struct.pack(">H", keepalive)
    if protocol == 5:
        body += _props(session_expiry)
    body += _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password.encode("utf-8"))
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, topic: str, qos: int, *, protocol: int = 4) -> bytes:
    """SUBSCRIBE to one topic filter (MQTT 5 options: just the maximum QoS)."""
    body = struct.pack(">H", packet_id) + (_props() if protocol == 5 else b"")
    return _packet(0x82, body + _str(topic) + bytes([qos]))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    dup: bool = False,
    retain: bool = False,
    protocol: int = 4,
) -> bytes:
    """PUBLISH; ``packet_id`` is required for QoS 1 and 2."""
    if (qos > 0) != (packet_id is not None):
        raise ValueError("a packet id is required for QoS 1 and 2 and forbidden for QoS 0")
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _str(topic) + (struct.pack(">H", packet_id) if packet_id is not None else b"")
    body += _props() if protocol == 5 else b""
    return _packet(first, body + payload)


def encode_ack(ptype: PacketType, packet_id: int, *, reason: int = 0, protocol: int = 4) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (MQTT 5: reason 0 is left out, 3.3.4 / 3.4.2.1)."""
    if ptype not in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        raise ValueError(f"not an acknowledgement: {ptype.name}")
    first = (ptype << 4) | (0x02 if ptype is PacketType.PUBREL else 0)
    body = struct.pack(">H", packet_id)
    if protocol == 5 and reason:
        body += bytes([reason])
    return _packet(first, body)


def encode_disconnect(*, protocol: int = 4, session_expiry: int | None = None) -> bytes:
    """DISCONNECT; MQTT 5 may carry a new Session Expiry Interval (3.14.2.2.2)."""
    if session_expiry is None:
        return _packet(0xE0, b"")
    if protocol != 5:
        raise ValueError("MQTT 3.1.1 DISCONNECT has no properties")
    return _packet(0xE0, b"\x00" + _props(session_expiry))


# ------------------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class Packet:
    """One decoded packet. Fields that do not apply to its type keep their defaults."""

    type: PacketType
    flags: int = 0
    packet_id: int | None = None
    topic: str | None = None
    payload: bytes = b""
    session_present: bool | None = None
    reason_code: int | None = None
    """CONNACK return/reason code; MQTT 5 acknowledgement and DISCONNECT reason code."""
    reason_codes: tuple[int, ...] = ()
    """SUBACK / MQTT 5 UNSUBACK codes."""
    properties: Properties = ()

    @property
    def dup(self) -> bool:
        return self.type is PacketType.PUBLISH and bool(self.flags & 0x08)

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03 if self.type is PacketType.PUBLISH else 0

    @property
    def retain(self) -> bool:
        return self.type is PacketType.PUBLISH and bool(self.flags & 0x01)

    def prop(self, prop_id: int) -> PropValue | None:
        """The first value of a property, or None."""
        return next((v for k, v in self.properties if k == prop_id), None)

    def describe(self) -> str:
        """One line, e.g. ``PUBLISH id=3 qos=1 dup=1 retain=0 'a/b' 5B``."""
        parts = [self.type.name]
        if self.packet_id is not None:
            parts.append(f"id={self.packet_id}")
        if self.type is PacketType.PUBLISH:
            parts += [f"qos={self.qos}", f"dup={int(self.dup)}", f"retain={int(self.retain)}",
                      repr(self.topic), f"{len(self.payload)}B"]
        if self.session_present is not None:
            parts.append(f"sp={int(self.session_present)}")
        if self.reason_code is not None:
            parts.append(f"rc=0x{self.reason_code:02x}")
        if self.reason_codes:
            parts.append("codes=" + ",".join(f"0x{c:02x}" for c in self.reason_codes))
        return " ".join(parts)


class _Reader:
    """Reads the fields of one packet body; MalformedPacket past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket(f"{self.what}: truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MalformedPacket(f"{self.what}: variable byte integer longer than 4 bytes")

    def utf8(self) -> str:
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"{self.what}: invalid UTF-8 string") from exc

    def properties(self) -> Properties:
        end = self.varint() + self.pos
        if end > len(self.data):
            raise MalformedPacket(f"{self.what}: properties run past the packet")
        out: list[tuple[int, PropValue]] = []
        while self.pos < end:
            prop_id = self.varint()
            kind = _PROP_TYPES.get(prop_id)
            value: PropValue
            if kind == _BYTE:
                value = self.u8()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _UTF8:
                value = self.utf8()
            elif kind == _BINARY:
                value = self.take(self.u16())
            elif kind == _PAIR:
                value = (self.utf8(), self.utf8())
            else:
                raise MalformedPacket(f"{self.what}: unknown property 0x{prop_id:02x}")
            out.append((prop_id, value))
        if self.pos != end:
            raise MalformedPacket(f"{self.what}: properties overrun their length")
        return tuple(out)


def split(buf: bytes | bytearray) -> tuple[int, int] | None:
    """``(header length, total length)`` of the first whole packet in ``buf``, or None."""
    length, shift = 0, 0
    for i in range(1, min(len(buf), 5)):
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            total = i + 1 + length
            return (i + 1, total) if len(buf) >= total else None
    if len(buf) >= 5:
        raise MalformedPacket("remaining length longer than 4 bytes")
    return None


def decode(first: int, body: bytes, protocol: int = 4) -> Packet:
    """Decode one packet from its first byte and body (a broker's, so server-to-client types)."""
    try:
        ptype = PacketType(first >> 4)
    except ValueError:
        raise MalformedPacket(f"reserved packet type 0 (first byte 0x{first:02x})") from None
    flags = first & 0x0F
    r = _Reader(body, ptype.name)
    v5 = protocol == 5
    code: int | None
    packet_id: int | None
    if ptype is PacketType.CONNACK:
        ack_flags, code = r.u8(), r.u8()
        # A broker without MQTT 5 answers with a 2-byte 3.1.1 CONNACK: no properties then.
        props = r.properties() if v5 and r.left() else ()
        return Packet(ptype, flags, session_present=bool(ack_flags & 1), reason_code=code,
                      properties=props)
    if ptype is PacketType.PUBLISH:
        topic = r.utf8()
        packet_id = r.u16() if (flags >> 1) & 3 else None
        props = r.properties() if v5 else ()
        return Packet(ptype, flags, packet_id, topic, r.take(r.left()), properties=props)
    if ptype in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        packet_id = r.u16()
        code = r.u8() if v5 and r.left() else (0 if v5 else None)
        props = r.properties() if v5 and r.left() else ()
        return Packet(ptype, flags, packet_id, reason_code=code, properties=props)
    if ptype in (PacketType.SUBACK, PacketType.UNSUBACK):
        packet_id = r.u16()
        props = r.properties() if v5 else ()
        return Packet(ptype, flags, packet_id, reason_codes=tuple(r.take(r.left())), properties=props)
    if ptype in (PacketType.DISCONNECT, PacketType.AUTH):
        code = r.u8() if r.left() else (0 if v5 else None)
        props = r.properties() if r.left() else ()
        return Packet(ptype, flags, reason_code=code, properties=props)
    return Packet(ptype, flags, payload=body)  # PINGRESP; anything else is unexpected from a broker


def _describe_raw(data: bytes, protocol: int) -> str:
    """``Packet.describe`` of encoded bytes (for the debug log)."""
    try:
        found = split(data)
        if found is not None:
            return decode(data[0], data[found[0]:found[1]], protocol).describe()
    except RawError:
        pass
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

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def session_present(self) -> bool:
        return bool(self.connack is not None and self.connack.session_present)

    def open(self) -> None:
        """Open the TCP connection (``OSError`` if it cannot be made)."""
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()
        self.pending.clear()
        self.closed_by_broker = False

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
        """Write one encoded packet."""
        if self.sock is None:
            raise ConnectionClosed(f"{self.name}: not connected")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s > %s", self.name, _describe_raw(data, self.protocol))
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionClosed(f"connection lost while sending: {exc.strerror or exc}") from exc

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
        self._check_ack(self.expect(PacketType.PUBREC, packet_id))
        self.send(encode_ack(PacketType.PUBREL, packet_id, protocol=self.protocol))
        self._check_ack(self.expect(PacketType.PUBCOMP, packet_id))
        return packet_id

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
