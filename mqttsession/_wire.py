"""The MQTT 3.1.1 / 5 packet format: the one place in mqttsession that knows it.

Pure functions over bytes (no sockets, threads or paho): Variable Byte Integers, framing a byte
stream into packets (:func:`split`), decoding any packet into a frozen :class:`Packet`
(:func:`decode`), and encoding the packets the tools send (``encode_*``). Decoding is strict:
anything the specification calls malformed raises :class:`MalformedPacket` naming the rule,
with the spec statement id where there is one. Encoding checks only what it must to produce
bytes, so that tests can send deliberately odd packets (e.g. ``encode_publish(flags=...)``).

``protocol`` is the connection's protocol level everywhere: 3 (MQTT 3.1), 4 (3.1.1) or 5.
Properties (MQTT 5) are kept packed, as on the wire (length prefix included, ``b""`` when the
packet has none); :meth:`Packet.prop` and :func:`parse_properties` read them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "ack_run",
    "MAXIMUM_PACKET_SIZE",
    "MAX_VARINT",
    "RECEIVE_MAXIMUM",
    "REASON_STRING",
    "SESSION_EXPIRY_INTERVAL",
    "AliasFault",
    "MalformedPacket",
    "Packet",
    "PacketType",
    "PropValue",
    "TopicAliases",
    "Property",
    "Will",
    "decode",
    "decode_packet",
    "decode_varint",
    "encode_ack",
    "encode_auth",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_packet",
    "encode_pingreq",
    "encode_pingresp",
    "encode_publish",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_unsubscribe",
    "encode_varint",
    "pack_properties",
    "parse_properties",
    "split",
]


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


class MalformedPacket(ValueError):
    """Bytes that are not a valid MQTT packet; the message says which rule they break."""


MAX_VARINT: Final = 268_435_455  # the largest Variable Byte Integer: four bytes of 7 bits

# MQTT 5 property identifiers the tools read or write.
SESSION_EXPIRY_INTERVAL: Final = 0x11
SERVER_REFERENCE: Final = 0x1C  # CONNACK / DISCONNECT: another server to use (MQTT 5 4.11)
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
MAXIMUM_QOS: Final = 0x24
RETAIN_AVAILABLE: Final = 0x25
MAXIMUM_PACKET_SIZE: Final = 0x27

PropValue = int | str | bytes | tuple[str, str]
Property = tuple[int, PropValue]

# Property id -> wire type (MQTT 5, 2.2.2.2).
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROP_TYPES: Final = {
    0x01: _BYTE, 0x02: _U32, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _U32, 0x12: _UTF8, 0x13: _U16, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
_INT_SIZES: Final = {_BYTE: 1, _U16: 2, _U32: 4}

# Fixed-header flags every type but PUBLISH must carry: [MQTT-2.2.2-1] (3.1.1), [MQTT-2.1.3-1] (5).
_FIXED_FLAGS: Final = {PacketType.PUBREL: 0x2, PacketType.SUBSCRIBE: 0x2, PacketType.UNSUBSCRIBE: 0x2}
_ACKS: Final = frozenset({PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP})
_PROTOCOL_NAMES: Final = {3: "MQIsdp", 4: "MQTT", 5: "MQTT"}
_SUBACK_CODES_311: Final = frozenset({0x00, 0x01, 0x02, 0x80})


# ------------------------------------------------------------------------------------------ packets


@dataclass(frozen=True)
class Will:
    """The Will Message of a CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: bytes = b""
    """MQTT 5 will properties, packed (``b""`` on 3.1.1)."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet. Fields that do not apply to its type keep their defaults."""

    type: PacketType
    flags: int = 0
    """The low 4 bits of the fixed header."""
    packet_id: int | None = None
    topic: str | None = None
    """PUBLISH topic name."""
    payload: bytes = b""
    """PUBLISH application payload."""
    session_present: bool | None = None
    """CONNACK only."""
    reason_code: int | None = None
    """CONNACK return/reason code; MQTT 5 acknowledgement, DISCONNECT and AUTH reason code."""
    reason_codes: tuple[int, ...] = ()
    """SUBACK / MQTT 5 UNSUBACK codes."""
    properties: bytes = b""
    """MQTT 5 properties as on the wire (length prefix included); ``b""`` if the packet has none."""
    filters: tuple[str, ...] = ()
    """SUBSCRIBE / UNSUBSCRIBE topic filters."""
    options: tuple[int, ...] = ()
    """SUBSCRIBE: the options byte of each filter (its low 2 bits: the maximum QoS)."""
    protocol_level: int | None = None
    """CONNECT only, like the fields below: 3 (MQTT 3.1), 4 (3.1.1) or 5."""
    client_id: str | None = None
    clean_start: bool | None = None
    """Clean Session (3.1.1) / Clean Start (5)."""
    keepalive: int | None = None
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None

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
        """The first value of a property (e.g. :data:`SESSION_EXPIRY_INTERVAL`), or None."""
        return next((v for k, v in parse_properties(self.properties) if k == prop_id), None)

    def describe(self) -> str:
        """One line, e.g. ``PUBLISH id=3 qos=1 dup=1 retain=0 'a/b' 5B``."""
        parts = [self.type.name]
        if self.packet_id is not None:
            parts.append(f"id={self.packet_id}")
        if self.type is PacketType.PUBLISH:
            parts += [f"qos={self.qos}", f"dup={int(self.dup)}", f"retain={int(self.retain)}",
                      repr(self.topic), f"{len(self.payload)}B"]
        if self.client_id is not None:
            parts += [repr(self.client_id), f"clean={int(bool(self.clean_start))}"]
        if self.filters:
            parts.append("filters=" + ",".join(self.filters))
        if self.session_present is not None:
            parts.append(f"sp={int(self.session_present)}")
        if self.reason_code is not None:
            parts.append(f"rc=0x{self.reason_code:02x}")
        if self.reason_codes:
            parts.append("codes=" + ",".join(f"0x{c:02x}" for c in self.reason_codes))
        return " ".join(parts)


# ------------------------------------------------------------------------------------------ framing


def encode_varint(value: int) -> bytes:
    """A Variable Byte Integer (ValueError outside 0 .. :data:`MAX_VARINT`)."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """``(value, next position)`` of the Variable Byte Integer at ``pos``; None if incomplete."""
    end = len(buf)
    if pos >= end:
        return None
    byte = buf[pos]
    if byte < 0x80:  # one byte: every ack, most packets (the network thread reads each)
        return byte, pos + 1
    value, shift, pos = byte & 0x7F, 7, pos + 1
    while shift <= 21:  # at most four bytes: 5.0 section 1.5.5, 3.1.1 section 2.2.3
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:  # [MQTT-1.5.5-1] the fewest bytes that hold the value
                raise MalformedPacket("Variable Byte Integer not in its shortest form")
            return value, pos
        shift += 7
    raise MalformedPacket("Variable Byte Integer longer than 4 bytes")


_PUBREL_FIRST: Final = int(PacketType.PUBREL) << 4 | 2  # a PUBREL's first byte (flags 0010)
_ACK_TYPES: Final = {int(t): t for t in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
                                         PacketType.PUBCOMP)}
# first bytes of the acks of the client's own flows (flags 0): they deliver nothing
_FLOW_ACKS: Final = frozenset(k << 4 for k in _ACK_TYPES if k != PacketType.PUBREL)


def ack_run(buf: bytes | bytearray, first: int, pos: int, end: int
            ) -> tuple[list[tuple[PacketType, int]], int] | None:
    """The usual ack whose first byte is ``first`` and whose packet id alone (a Remaining
    Length of 2 [MQTT 5 3.4.2.1]) is at ``pos``, with the flow acks of the same form right
    after it in ``buf[:end]`` (none after a PUBREL: it may deliver): the acks, and where they
    end. None: ``first`` is no such ack."""
    if first not in _FLOW_ACKS and first != _PUBREL_FIRST:
        return None
    acks = [(_ACK_TYPES[first >> 4], buf[pos] << 8 | buf[pos + 1])]
    pos += 2
    while first != _PUBREL_FIRST and end - pos >= 4 and buf[pos + 1] == 2 and buf[pos] in _FLOW_ACKS:
        acks.append((_ACK_TYPES[buf[pos] >> 4], buf[pos + 2] << 8 | buf[pos + 3]))
        pos += 4
    return acks, pos


def split(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """``(header length, total length)`` of the whole packet at ``buf[pos]``; None if incomplete.

    MalformedPacket if the Remaining Length cannot be one (the stream cannot be framed).
    """
    if len(buf) - pos >= 2 and buf[pos + 1] < 0x80:  # one byte: every ack (the network thread)
        total = 2 + buf[pos + 1]
        return (2, total) if len(buf) - pos >= total else None
    found = decode_varint(buf, pos + 1)
    if found is None:
        return None
    remaining, end = found
    return (end - pos, end - pos + remaining) if len(buf) >= end + remaining else None


def encode_packet(first: int, body: bytes) -> bytes:
    """Fixed header (first byte, Remaining Length) + body."""
    return bytes([first]) + encode_varint(len(body)) + body


# ------------------------------------------------------------------------------------------ fields


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value} does not fit a Two Byte Integer")
    return struct.pack(">H", value)


def _bin(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _str(text: str) -> bytes:
    return _bin(text.encode("utf-8"))


def pack_properties(props: Iterable[Property] = ()) -> bytes:
    """An MQTT 5 property block, length prefix included (ValueError for an unknown id or value)."""
    out = bytearray()
    for prop_id, value in props:
        kind = _PROP_TYPES.get(prop_id)
        out += encode_varint(prop_id)
        if kind == _PAIR and isinstance(value, tuple):
            out += _str(value[0]) + _str(value[1])
        elif kind == _UTF8 and isinstance(value, str):
            out += _str(value)
        elif kind == _BINARY and isinstance(value, bytes):
            out += _bin(value)
        elif kind == _VARINT and isinstance(value, int):
            out += encode_varint(value)
        elif kind in _INT_SIZES and isinstance(value, int) and 0 <= value < 1 << 8 * _INT_SIZES[kind]:
            out += value.to_bytes(_INT_SIZES[kind], "big")
        else:
            raise ValueError(f"property 0x{prop_id:02x}: cannot encode {value!r}")
    return encode_varint(len(out)) + bytes(out)


def parse_properties(data: bytes) -> tuple[Property, ...]:
    """The ``(id, value)`` pairs of a packed property block (``b""``: none)."""
    if not data:
        return ()
    r = _Reader(data, "properties")
    props = r.properties_list()
    r.done()
    return props


# MQTT 5 PUBLISH properties (3.3.2.3), and those of them that may come more than once
_PUBLISH_PROPS: Final = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26})
_REPEATABLE: Final = frozenset({0x0B, 0x26})


def received_publish_fault(topic: str, props: bytes) -> tuple[int, str] | None:
    """What is wrong with an MQTT 5 PUBLISH a client received (its topic and packed properties;
    a reason code and words, None: nothing), for a client that sets no Topic Alias Maximum."""
    seen: set[int] = set()
    for prop_id, value in parse_properties(props) if len(props) > 1 else ():
        if prop_id == 0x0B and value == 0:  # 3.3.2.3.8: a Subscription Identifier of 0
            return 0x82, "a Subscription Identifier of 0 (a Protocol Error, MQTT 5 3.3.2.3.8)"
        if prop_id == 0x23:  # [MQTT-3.1.2-27] the client allowed none (Topic Alias Maximum 0)
            return 0x94, "a Topic Alias, though this client allows none [MQTT-3.1.2-27]"
        if prop_id not in _PUBLISH_PROPS:
            return 0x82, f"property 0x{prop_id:02x}, which a PUBLISH cannot carry"
        if prop_id in seen and prop_id not in _REPEATABLE:  # (2.2.2.2: a Protocol Error)
            return 0x82, f"property 0x{prop_id:02x} twice"
        seen.add(prop_id)
    if not topic:  # [MQTT-4.7.3-1], with no Topic Alias to stand for it
        return 0x82, "an empty topic name and no Topic Alias [MQTT-4.7.3-1]"
    return None


class AliasFault(ValueError):
    """A Topic Alias the client cannot take: ``code`` is the DISCONNECT reason code."""

    def __init__(self, code: int, words: str) -> None:
        super().__init__(words)
        self.code = code


class TopicAliases:
    """The Topic Aliases a broker sets on one connection for the PUBLISHes it sends (MQTT 5
    3.3.2.3.4), up to the ``maximum`` the client's CONNECT allowed (0: none)."""

    def __init__(self, maximum: int = 0) -> None:
        self.maximum = maximum
        self.topics: dict[int, str] = {}

    def resolve(self, topic: str, props: bytes) -> tuple[str, bytes]:
        """A received PUBLISH's topic and properties with its Topic Alias resolved and taken
        out (a stored message holds no alias of one connection); ``AliasFault`` for one out
        of range or never set."""
        parsed = parse_properties(props) if len(props) > 1 and self.maximum else ()
        found = [v for k, v in parsed if k == 0x23]
        if not found:  # (none allowed, maximum 0: ``received_publish_fault``'s)
            return topic, props
        alias = found[0]
        if not isinstance(alias, int) or not 0 < alias <= self.maximum:
            # [MQTT-3.1.2-26]; an alias of 0 is a Protocol Error too (3.3.2.3.4)
            raise AliasFault(0x94, f"a Topic Alias of {alias!r} (this client allows"
                                   f" 1..{self.maximum}) [MQTT-3.1.2-26]")
        if topic:
            self.topics[alias] = topic
        elif alias in self.topics:
            topic = self.topics[alias]
        else:  # 3.3.2.3.4: an alias with no mapping on this connection
            raise AliasFault(0x82, f"Topic Alias {alias} with an empty topic name, never set"
                                   " on this connection (3.3.2.3.4)")
        rest = [(k, v) for k, v in parsed if k != 0x23]
        return topic, pack_properties(rest) if rest else b""


def connack_fault(c: Packet, level: int, again: bool = False,
                  clean_start: bool = False) -> tuple[int, str] | None:
    """What is wrong with a CONNACK (``again``: a second one; ``clean_start``: answering Clean
    Start 1), its MQTT 5 properties paho would raise on included: a reason code and words for
    the violation; None: nothing."""
    if again:
        return 0x82, "a second CONNACK on one connection"
    if c.session_present and clean_start:
        return 0x82, ("CONNACK with SessionPresent=1 answering Clean Start 1"
                      " (3.1.1 [MQTT-3.2.2-1], 5.0 [MQTT-3.2.2-2])")
    if level == 5 and not c.properties and not c.reason_code:  # (a refusal: paho never sees it)
        return 0x81, "an MQTT 5 CONNACK without its Property Length (a 3.1.1 one?)"
    seen: set[int] = set()
    for prop_id, value in parse_properties(c.properties) if len(c.properties) > 1 else ():
        if prop_id in seen and prop_id not in _REPEATABLE:  # (2.2.2.2: a Protocol Error)
            return 0x82, f"a CONNACK with property 0x{prop_id:02x} twice"
        seen.add(prop_id)
        if prop_id in (RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE) and value == 0:  # 3.2.2.3.3, .6
            return 0x82, f"a CONNACK with property 0x{prop_id:02x} 0 (a Protocol Error)"
    return None


def paho_packet_fault(first: int, body: bytes, level: int) -> tuple[int, str] | None:
    """What is wrong with a PINGREQ, PINGRESP, DISCONNECT or AUTH a client received (paho
    handles them; a reason code and words, None: nothing) from a broker on a connection of
    ``level``, for a client that asks for no enhanced authentication."""
    kind = first >> 4
    if kind == PacketType.PINGREQ:
        return 0x82, "a PINGREQ from a broker (only a client sends one)"
    if kind == PacketType.DISCONNECT and level != 5:
        return 0x82, "a DISCONNECT from a broker (MQTT 3.1.1 has none from a server)"
    if kind == PacketType.AUTH and level == 5:  # [MQTT-4.12.0-6]
        return 0x82, "an AUTH, though this client asked for no enhanced authentication"
    try:
        p = decode(first, body, level)
    except MalformedPacket as exc:
        return 0x81, str(exc)
    if kind == PacketType.DISCONNECT and p.prop(SESSION_EXPIRY_INTERVAL) is not None:
        return 0x82, "a DISCONNECT from a broker with a Session Expiry Interval [MQTT-3.14.2-2]"
    return None


class _Reader:
    """Reads the fields of one packet body; MalformedPacket for anything past its end."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def fail(self, why: str) -> MalformedPacket:
        return MalformedPacket(f"{self.what}: {why}")

    def left(self) -> int:
        return len(self.data) - self.pos

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected byte(s) at the end")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def packet_id(self) -> int:
        value = self.u16()
        if value == 0:  # [MQTT-2.3.1-1] (3.1.1), [MQTT-2.2.1-3] (5)
            raise self.fail("packet identifier 0")
        return value

    def varint(self) -> int:
        try:
            found = decode_varint(self.data, self.pos)
        except MalformedPacket as exc:
            raise self.fail(str(exc)) from None
        if found is None:
            raise self.fail(f"truncated at byte {self.pos}")
        value, self.pos = found
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def utf8(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")  # [MQTT-1.5.3-1] (3.1.1), [MQTT-1.5.4-1] (5): well-formed
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8 string") from None
        if "\x00" in text:  # [MQTT-1.5.3-2] (3.1.1), [MQTT-1.5.4-2] (5)
            raise self.fail("U+0000 in a UTF-8 string")
        return text

    def properties(self) -> bytes:
        """The packed property block at the current position, checked."""
        start = self.pos
        self.properties_list()
        return self.data[start:self.pos]

    def properties_list(self) -> tuple[Property, ...]:
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise self.fail("properties run past the packet")
        out: list[Property] = []
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
                value = self.binary()
            elif kind == _PAIR:
                value = (self.utf8(), self.utf8())
            else:
                raise self.fail(f"unknown property 0x{prop_id:02x}")
            out.append((prop_id, value))
        if self.pos != end:
            raise self.fail("a property overruns the property length")
        return tuple(out)


# ------------------------------------------------------------------------------------------ decoding


def decode_packet(data: bytes | bytearray, protocol: int = 4) -> Packet:
    """Decode exactly one whole packet (fixed header included)."""
    found = split(data)
    if found is None or found[1] != len(data):
        raise MalformedPacket(f"{len(data)} bytes are not exactly one packet")
    return decode(data[0], bytes(data[found[0]:]), protocol)


def decode(first: int, body: bytes, protocol: int = 4) -> Packet:
    """Decode one packet from its first byte and its body (what follows the fixed header).

    ``protocol`` is the connection's level; a CONNECT says its own.
    """
    try:
        ptype = PacketType(first >> 4)
    except ValueError:
        raise MalformedPacket(f"reserved packet type 0 (first byte 0x{first:02x})") from None
    flags = first & 0x0F
    v5 = protocol == 5
    if ptype is PacketType.PUBLISH:
        if flags & 0x06 == 0x06:  # [MQTT-3.3.1-4]
            raise MalformedPacket("PUBLISH: QoS bits 11")
        if flags & 0x08 and not flags & 0x06:  # [MQTT-3.3.1-2]
            raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message")
    elif flags != _FIXED_FLAGS.get(ptype, 0):
        # [MQTT-3.6.1-1] PUBREL, [MQTT-3.8.1-1] SUBSCRIBE, [MQTT-3.10.1-1] UNSUBSCRIBE: 0010;
        # every other type 0000 ([MQTT-2.2.2-1] in 3.1.1, [MQTT-2.1.3-1] in 5)
        raise MalformedPacket(f"{ptype.name}: reserved fixed-header flags {flags:04b}")
    if ptype is PacketType.AUTH and not v5:
        raise MalformedPacket("AUTH: reserved packet type 15 before MQTT 5")
    r = _Reader(bytes(body), ptype.name)
    packet = _DECODERS[ptype](r, ptype, flags, v5)
    r.done()
    return packet


def _connect(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    name, level = r.utf8(), r.u8()
    if _PROTOCOL_NAMES.get(level) != name:  # [MQTT-3.1.2-1]
        raise r.fail(f"protocol {name!r} level {level} is not MQTT 3.1, 3.1.1 or 5")
    v5 = level == 5
    cflags, keepalive = r.u8(), r.u16()
    if cflags & 0x01:  # [MQTT-3.1.2-3]
        raise r.fail("reserved connect flag set")
    will_flag, will_qos, will_retain = bool(cflags & 0x04), (cflags >> 3) & 0x03, bool(cflags & 0x20)
    if will_qos == 3:  # [MQTT-3.1.2-14] (3.1.1 numbering, as the ids below)
        raise r.fail("Will QoS 3")
    if not will_flag and (will_qos or will_retain):  # [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        raise r.fail("Will QoS or Will Retain without a Will")
    if not v5 and cflags & 0x40 and not cflags & 0x80:  # [MQTT-3.1.2-22]
        raise r.fail("password without a user name")
    props = r.properties() if v5 else b""
    client_id = r.utf8()
    will = None
    if will_flag:
        will_props = r.properties() if v5 else b""
        will = Will(r.utf8(), r.binary(), will_qos, will_retain, will_props)
    username = r.utf8() if cflags & 0x80 else None
    password = r.binary() if cflags & 0x40 else None
    return Packet(ptype, flags, properties=props, protocol_level=level, client_id=client_id,
                  clean_start=bool(cflags & 0x02), keepalive=keepalive, username=username,
                  password=password, will=will)


def _connack(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    ack_flags, code = r.u8(), r.u8()
    if ack_flags & 0xFE:  # bits 7-1 reserved ([MQTT-3.2.2-1] in 5)
        raise r.fail(f"reserved acknowledge flags 0x{ack_flags:02x}")
    # A broker without MQTT 5 answers a v5 CONNECT with a 2-byte 3.1.1 CONNACK: no properties then.
    props = r.properties() if v5 and r.left() else b""
    return Packet(ptype, flags, session_present=bool(ack_flags & 1), reason_code=code,
                  properties=props)


def _publish(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    topic = r.utf8()
    if "+" in topic or "#" in topic:  # [MQTT-3.3.2-2]
        raise r.fail(f"wildcard in topic name {topic!r}")
    if not topic and not v5:  # [MQTT-4.7.3-1]; MQTT 5 may send a Topic Alias instead
        raise r.fail("empty topic name")
    packet_id = r.packet_id() if flags & 0x06 else None
    props = r.properties() if v5 else b""
    return Packet(ptype, flags, packet_id, topic, r.take(r.left()), properties=props)


def _ack(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    packet_id = r.u16()
    if not v5:
        return Packet(ptype, flags, packet_id)
    # MQTT 5: the reason code may be left out (success), then the properties (3.4.2.1, 3.4.2.2)
    code = r.u8() if r.left() else 0
    props = r.properties() if r.left() else b""
    return Packet(ptype, flags, packet_id, reason_code=code, properties=props)


def _subscribe(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    packet_id = r.packet_id()
    props = r.properties() if v5 else b""
    filters: list[str] = []
    options: list[int] = []
    while r.left():
        topic = r.utf8()
        if not topic:  # [MQTT-4.7.3-1]
            raise r.fail("empty topic filter")
        option = r.u8()
        # [MQTT-3-8.3-4] (3.1.1): reserved bits 0, QoS 0-2; MQTT 5: bits 6-7 reserved, Retain
        # Handling 0-2 (3.8.3.1)
        if option & (0xC0 if v5 else 0xFC) or option & 0x03 == 3 or (v5 and option & 0x30 == 0x30):
            raise r.fail(f"invalid subscription options 0x{option:02x}")
        filters.append(topic)
        options.append(option)
    if not filters:  # [MQTT-3.8.3-3] (3.1.1)
        raise r.fail("no topic filter")
    return Packet(ptype, flags, packet_id, properties=props, filters=tuple(filters),
                  options=tuple(options))


def _unsubscribe(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    packet_id = r.packet_id()
    props = r.properties() if v5 else b""
    filters: list[str] = []
    while r.left():
        topic = r.utf8()
        if not topic:  # [MQTT-4.7.3-1]
            raise r.fail("empty topic filter")
        filters.append(topic)
    if not filters:  # [MQTT-3.10.3-2] (3.1.1)
        raise r.fail("no topic filter")
    return Packet(ptype, flags, packet_id, properties=props, filters=tuple(filters))


def _suback(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    packet_id = r.u16()
    if ptype is PacketType.UNSUBACK and not v5:
        return Packet(ptype, flags, packet_id)  # 3.1.1 UNSUBACK: just the packet identifier
    props = r.properties() if v5 else b""
    codes = tuple(r.take(r.left()))
    if not codes:
        raise r.fail("no reason code")
    if not v5 and not _SUBACK_CODES_311.issuperset(codes):  # [MQTT-3.9.3-2] (3.1.1)
        raise r.fail(f"reserved return code in {codes}")
    return Packet(ptype, flags, packet_id, reason_codes=codes, properties=props)


def _empty(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    return Packet(ptype, flags)  # PINGREQ, PINGRESP, 3.1.1 DISCONNECT: r.done() checks it is empty


def _reason(r: _Reader, ptype: PacketType, flags: int, v5: bool) -> Packet:
    if not v5:
        return Packet(ptype, flags)  # 3.1.1 DISCONNECT
    # MQTT 5 DISCONNECT / AUTH: Remaining Length 0 means success and no properties (3.14.2.1)
    code = r.u8() if r.left() else 0
    props = r.properties() if r.left() else b""
    return Packet(ptype, flags, reason_code=code, properties=props)


_DECODERS: Final = {
    PacketType.CONNECT: _connect,
    PacketType.CONNACK: _connack,
    PacketType.PUBLISH: _publish,
    PacketType.PUBACK: _ack,
    PacketType.PUBREC: _ack,
    PacketType.PUBREL: _ack,
    PacketType.PUBCOMP: _ack,
    PacketType.SUBSCRIBE: _subscribe,
    PacketType.SUBACK: _suback,
    PacketType.UNSUBSCRIBE: _unsubscribe,
    PacketType.UNSUBACK: _suback,
    PacketType.PINGREQ: _empty,
    PacketType.PINGRESP: _empty,
    PacketType.DISCONNECT: _reason,
    PacketType.AUTH: _reason,
}


# ------------------------------------------------------------------------------------------ encoding


def _props(protocol: int, props: Sequence[Property], what: str) -> bytes:
    """The property block of a v5 packet; ValueError for properties on 3.1.1."""
    if protocol == 5:
        return pack_properties(props)
    if props:
        raise ValueError(f"MQTT 3.1.1 {what} has no properties")
    return b""


def encode_connect(
    client_id: str,
    *,
    protocol: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | bytes | None = None,
    session_expiry: int | None = None,
    will: Will | None = None,
    properties: Sequence[Property] = (),
) -> bytes:
    """CONNECT; ``session_expiry`` (MQTT 5 only) None leaves the property out (it then means 0)."""
    if protocol not in _PROTOCOL_NAMES:
        raise ValueError(f"unknown protocol level {protocol}")
    if session_expiry is not None:
        if protocol != 5:
            raise ValueError("MQTT 3.1.1 has no session expiry interval")
        properties = ((SESSION_EXPIRY_INTERVAL, session_expiry), *properties)
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    body = _str(_PROTOCOL_NAMES[protocol]) + bytes([protocol, flags]) + _u16(keepalive)
    body += _props(protocol, properties, "CONNECT") + _str(client_id)
    if will is not None:
        if protocol == 5:
            body += will.properties or b"\x00"
        elif will.properties:
            raise ValueError("MQTT 3.1.1 will has no properties")
        body += _str(will.topic) + _bin(will.payload)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password.encode("utf-8") if isinstance(password, str) else password)
    return encode_packet(0x10, body)


def encode_connack(session_present: bool = False, reason: int = 0, *, protocol: int = 4,
                   properties: Sequence[Property] = ()) -> bytes:
    """CONNACK with a return (3.1.1) or reason (5) code."""
    body = bytes([1 if session_present else 0, reason])
    return encode_packet(0x20, body + _props(protocol, properties, "CONNACK"))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    dup: bool = False,
    retain: bool = False,
    protocol: int = 4,
    properties: Sequence[Property] = (),
    flags: int | None = None,
) -> bytes:
    """PUBLISH; ``packet_id`` is required for QoS 1 and 2.

    ``flags`` replaces the fixed header's low nibble (dup/qos/retain) to build a deliberately
    malformed packet; the packet identifier is then written if it is given, unchecked.
    """
    if flags is None:
        if (qos > 0) != (packet_id is not None):
            raise ValueError("a packet id is required for QoS 1 and 2 and forbidden for QoS 0")
        flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _str(topic) + (_u16(packet_id) if packet_id is not None else b"")
    return encode_packet(0x30 | flags, body + _props(protocol, properties, "PUBLISH") + payload)


def encode_ack(ptype: PacketType, packet_id: int, *, reason: int = 0, protocol: int = 4,
               properties: Sequence[Property] = ()) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (MQTT 5: a reason code 0 and an empty property block
    are left out, 3.4.2.1, 3.4.2.2.1)."""
    if ptype not in _ACKS:
        raise ValueError(f"not an acknowledgement: {ptype.name}")
    if reason and protocol != 5:
        raise ValueError(f"MQTT 3.1.1 {ptype.name} has no reason code")
    return encode_packet((ptype << 4) | _FIXED_FLAGS.get(ptype, 0),
                         _u16(packet_id) + _reason_and_properties(reason, properties, protocol, ptype.name))


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]], *, protocol: int = 4,
                     properties: Sequence[Property] = ()) -> bytes:
    """SUBSCRIBE to ``(topic filter, options)`` pairs (options: the maximum QoS, and on MQTT 5
    No Local, Retain As Published and Retain Handling)."""
    body = _u16(packet_id) + _props(protocol, properties, "SUBSCRIBE")
    body += b"".join(_str(topic) + bytes([options]) for topic, options in filters)
    return encode_packet(0x82, body)


def encode_suback(packet_id: int, codes: Sequence[int], *, protocol: int = 4,
                  properties: Sequence[Property] = ()) -> bytes:
    """SUBACK with one return/reason code per filter."""
    return encode_packet(0x90, _u16(packet_id) + _props(protocol, properties, "SUBACK") + bytes(codes))


def encode_unsubscribe(packet_id: int, filters: Sequence[str], *, protocol: int = 4,
                       properties: Sequence[Property] = ()) -> bytes:
    """UNSUBSCRIBE from topic filters."""
    body = _u16(packet_id) + _props(protocol, properties, "UNSUBSCRIBE")
    return encode_packet(0xA2, body + b"".join(_str(topic) for topic in filters))


def encode_unsuback(packet_id: int, codes: Sequence[int] = (), *, protocol: int = 4,
                    properties: Sequence[Property] = ()) -> bytes:
    """UNSUBACK; MQTT 5 carries one reason code per filter, 3.1.1 none."""
    if codes and protocol != 5:
        raise ValueError("MQTT 3.1.1 UNSUBACK has no reason codes")
    return encode_packet(0xB0, _u16(packet_id) + _props(protocol, properties, "UNSUBACK") + bytes(codes))


def encode_pingreq() -> bytes:
    """PINGREQ."""
    return b"\xc0\x00"


def encode_pingresp() -> bytes:
    """PINGRESP."""
    return b"\xd0\x00"


def encode_disconnect(reason: int = 0, *, protocol: int = 4, session_expiry: int | None = None,
                      properties: Sequence[Property] = ()) -> bytes:
    """DISCONNECT; MQTT 5 may carry a reason code and a new Session Expiry Interval (3.14.2.2.2)."""
    if session_expiry is not None:
        properties = ((SESSION_EXPIRY_INTERVAL, session_expiry), *properties)
    if reason and protocol != 5:
        raise ValueError("MQTT 3.1.1 DISCONNECT has no reason code")
    return encode_packet(0xE0, _reason_and_properties(reason, properties, protocol, "DISCONNECT"))


def encode_auth(reason: int = 0, *, properties: Sequence[Property] = ()) -> bytes:
    """AUTH (MQTT 5 only)."""
    return encode_packet(0xF0, _reason_and_properties(reason, properties, 5, "AUTH"))


def _reason_and_properties(reason: int, props: Sequence[Property], protocol: int, what: str) -> bytes:
    """The tail of an MQTT 5 acknowledgement, DISCONNECT or AUTH in its shortest form: nothing for
    success without properties, the reason code alone without properties."""
    if props:
        return bytes([reason]) + _props(protocol, props, what)
    return bytes([reason]) if reason else b""


def connack_limits(c: Packet) -> tuple[int, int | None, None, int, bool]:
    """An accepted CONNACK's limits, as ``Hooks._hook_connack`` takes them after its first
    three: Receive Maximum, Maximum Packet Size, no Server Reference, Maximum QoS, Retain
    Available (MQTT 5; absent, or MQTT 3.1.1: no limit)."""
    recv_max, max_packet = c.prop(RECEIVE_MAXIMUM), c.prop(MAXIMUM_PACKET_SIZE)
    max_qos, retain = c.prop(MAXIMUM_QOS), c.prop(RETAIN_AVAILABLE)
    return (recv_max if isinstance(recv_max, int) else 65535,
            max_packet if isinstance(max_packet, int) else None, None,
            max_qos if isinstance(max_qos, int) and max_qos < 2 else 2, retain != 0)
