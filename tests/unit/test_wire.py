"""mqttsession._wire, the MQTT packet codec: round trips of every packet type on 3.1.1 and 5,
framing of truncated input, arbitrary bytes (a Packet or MalformedPacket, nothing else), and the
malformed packets the specification names."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mqttsession import _wire as w
from mqttsession._wire import MalformedPacket, Packet, PacketType, Property, Will

from ._support import FAST

MANY = settings(FAST, max_examples=300)

# ------------------------------------------------------------------------------------------ strategies

protocols = st.sampled_from([4, 5])
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
packet_ids = st.integers(1, 0xFFFF)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
names = texts.filter(bool)  # topic filters
topics = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"),
                 min_size=1, max_size=12)

props: st.SearchStrategy[list[Property]] = st.lists(st.one_of(
    st.tuples(st.just(w.SESSION_EXPIRY_INTERVAL), u32),
    st.tuples(st.just(w.RECEIVE_MAXIMUM), u16),
    st.tuples(st.just(w.MAXIMUM_PACKET_SIZE), u32),
    st.tuples(st.just(w.REASON_STRING), texts),
    st.tuples(st.just(0x01), u8),  # Payload Format Indicator
    st.tuples(st.just(0x09), st.binary(max_size=8)),  # Correlation Data
    st.tuples(st.just(0x0B), st.integers(0, w.MAX_VARINT)),  # Subscription Identifier
    st.tuples(st.just(0x26), st.tuples(texts, texts)),  # User Property
), max_size=4)


def packed(protocol: int, properties: Sequence[Property]) -> bytes:
    return w.pack_properties(properties) if protocol == 5 else b""


def roundtrip(data: bytes, protocol: int, expected: Packet) -> None:
    header, total = w.split(data + b"\xff") or (0, 0)
    assert total == len(data) and 2 <= header <= 5
    assert w.decode_packet(data, protocol) == expected


# ------------------------------------------------------------------------------------------ round trips


@FAST
@given(protocols, texts, st.booleans(), u16, st.none() | texts, st.none() | st.binary(max_size=8),
       st.none() | u32, st.none() | st.tuples(topics, st.binary(max_size=8), st.integers(0, 2),
                                              st.booleans(), props), props)
def test_connect(protocol: int, client_id: str, clean: bool, keepalive: int, username: str | None,
                 password: bytes | None, expiry: int | None,
                 will_args: tuple[str, bytes, int, bool, list[Property]] | None,
                 properties: list[Property]) -> None:
    if protocol == 4:
        expiry, properties = None, []
        if password is not None and username is None:
            username = ""  # [MQTT-3.1.2-22]
    will = None
    if will_args is not None:
        topic, payload, qos, retain, will_props = will_args
        will = Will(topic, payload, qos, retain, w.pack_properties(will_props) if protocol == 5 else b"")
    data = w.encode_connect(client_id, protocol=protocol, clean=clean, keepalive=keepalive,
                            username=username, password=password, session_expiry=expiry, will=will,
                            properties=properties)
    all_props = ([(w.SESSION_EXPIRY_INTERVAL, expiry)] if expiry is not None else []) + properties
    expected = Packet(PacketType.CONNECT, properties=packed(protocol, all_props), protocol_level=protocol,
                      client_id=client_id, clean_start=clean, keepalive=keepalive, username=username,
                      password=password, will=will)
    roundtrip(data, protocol, expected)
    got = w.decode_packet(data, 4 if protocol == 5 else 5)  # a CONNECT says its own level
    assert got == expected
    if expiry is not None:
        assert got.prop(w.SESSION_EXPIRY_INTERVAL) == expiry


def test_connect_mqtt31() -> None:
    data = w.encode_connect("c", protocol=3, username="u", password="p")
    assert data[2:10] == b"\x00\x06MQIsdp"
    got = w.decode_packet(data)
    assert (got.protocol_level, got.client_id, got.username, got.password) == (3, "c", "u", b"p")


@FAST
@given(protocols, st.booleans(), u8, props)
def test_connack(protocol: int, session_present: bool, reason: int, properties: list[Property]) -> None:
    if protocol == 4:
        properties = []
    data = w.encode_connack(session_present, reason, protocol=protocol, properties=properties)
    roundtrip(data, protocol, Packet(PacketType.CONNACK, session_present=session_present,
                                     reason_code=reason, properties=packed(protocol, properties)))


@MANY
@given(protocols, topics, st.binary(max_size=40), st.integers(0, 2), packet_ids, st.booleans(),
       st.booleans(), props)
@example(5, "a", b"", 0, 1, False, False, [(w.MAXIMUM_PACKET_SIZE, 500)])
def test_publish(protocol: int, topic: str, payload: bytes, qos: int, packet_id: int, dup: bool,
                 retain: bool, properties: list[Property]) -> None:
    if protocol == 4:
        properties = []
    dup = dup and qos > 0
    pid = packet_id if qos else None
    data = w.encode_publish(topic, payload, qos=qos, packet_id=pid, dup=dup, retain=retain,
                            protocol=protocol, properties=properties)
    flags = (8 if dup else 0) | qos << 1 | int(retain)
    expected = Packet(PacketType.PUBLISH, flags, pid, topic, payload,
                      properties=packed(protocol, properties))
    roundtrip(data, protocol, expected)
    got = w.decode_packet(data, protocol)
    assert (got.qos, got.dup, got.retain) == (qos, dup, retain)


def test_publish_v5_empty_topic_for_a_topic_alias() -> None:
    data = w.encode_publish("", b"x", protocol=5, properties=[(0x23, 3)])
    assert w.decode_packet(data, 5).prop(0x23) == 3


@FAST
@given(protocols, st.sampled_from([PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
                                   PacketType.PUBCOMP]), u16, u8, props)
def test_acks(protocol: int, ptype: PacketType, packet_id: int, reason: int,
              properties: list[Property]) -> None:
    if protocol == 4:
        reason, properties = 0, []
    data = w.encode_ack(ptype, packet_id, reason=reason, protocol=protocol, properties=properties)
    assert data[0] == ptype << 4 | (2 if ptype is PacketType.PUBREL else 0)
    roundtrip(data, protocol, Packet(ptype, data[0] & 0x0F, packet_id,
                                     reason_code=reason if protocol == 5 else None,
                                     properties=w.pack_properties(properties) if properties else b""))


@FAST
@given(protocols, packet_ids, st.lists(st.tuples(names, st.integers(0, 2), st.integers(0, 0x3F)),
                                       min_size=1, max_size=4), props)
def test_subscribe(protocol: int, packet_id: int, filters: list[tuple[str, int, int]],
                   properties: list[Property]) -> None:
    if protocol == 4:
        properties = []
    pairs = [(f, qos | (extra & 0x1C if protocol == 5 and extra & 0x30 != 0x30 else 0))
             for f, qos, extra in filters]
    data = w.encode_subscribe(packet_id, pairs, protocol=protocol, properties=properties)
    roundtrip(data, protocol, Packet(PacketType.SUBSCRIBE, 2, packet_id,
                                     properties=packed(protocol, properties),
                                     filters=tuple(f for f, _ in pairs), options=tuple(o for _, o in pairs)))


@FAST
@given(protocols, u16, st.lists(u8, min_size=1, max_size=4), props)
def test_suback(protocol: int, packet_id: int, codes: list[int], properties: list[Property]) -> None:
    if protocol == 4:
        codes, properties = [c if c in (0, 1, 2) else 0x80 for c in codes], []
    data = w.encode_suback(packet_id, codes, protocol=protocol, properties=properties)
    roundtrip(data, protocol, Packet(PacketType.SUBACK, 0, packet_id, reason_codes=tuple(codes),
                                     properties=packed(protocol, properties)))


@FAST
@given(protocols, packet_ids, st.lists(names, min_size=1, max_size=4), props)
def test_unsubscribe(protocol: int, packet_id: int, filters: list[str],
                     properties: list[Property]) -> None:
    if protocol == 4:
        properties = []
    data = w.encode_unsubscribe(packet_id, filters, protocol=protocol, properties=properties)
    roundtrip(data, protocol, Packet(PacketType.UNSUBSCRIBE, 2, packet_id,
                                     properties=packed(protocol, properties), filters=tuple(filters)))


@FAST
@given(protocols, u16, st.lists(u8, min_size=1, max_size=4), props)
def test_unsuback(protocol: int, packet_id: int, codes: list[int], properties: list[Property]) -> None:
    if protocol == 4:
        codes, properties = [], []
    data = w.encode_unsuback(packet_id, codes, protocol=protocol, properties=properties)
    roundtrip(data, protocol, Packet(PacketType.UNSUBACK, 0, packet_id, reason_codes=tuple(codes),
                                     properties=packed(protocol, properties)))


@pytest.mark.parametrize("protocol", [4, 5])
def test_ping(protocol: int) -> None:
    roundtrip(w.encode_pingreq(), protocol, Packet(PacketType.PINGREQ))
    roundtrip(w.encode_pingresp(), protocol, Packet(PacketType.PINGRESP))


@FAST
@given(protocols, u8, st.none() | u32, props)
def test_disconnect(protocol: int, reason: int, expiry: int | None, properties: list[Property]) -> None:
    if protocol == 4:
        reason, expiry, properties = 0, None, []
    data = w.encode_disconnect(reason, protocol=protocol, session_expiry=expiry, properties=properties)
    all_props = ([(w.SESSION_EXPIRY_INTERVAL, expiry)] if expiry is not None else []) + properties
    roundtrip(data, protocol, Packet(PacketType.DISCONNECT, reason_code=reason if protocol == 5 else None,
                                     properties=w.pack_properties(all_props) if all_props else b""))


@FAST
@given(u8, props)
def test_auth(reason: int, properties: list[Property]) -> None:
    data = w.encode_auth(reason, properties=properties)
    roundtrip(data, 5, Packet(PacketType.AUTH, reason_code=reason,
                              properties=w.pack_properties(properties) if properties else b""))


@FAST
@given(props)
def test_properties(properties: list[Property]) -> None:
    assert w.parse_properties(w.pack_properties(properties)) == tuple(properties)


@MANY
@given(st.integers(0, w.MAX_VARINT))
@example(0)
@example(127)
@example(128)
@example(16_383)
@example(16_384)
@example(w.MAX_VARINT)
def test_varint(value: int) -> None:
    data = w.encode_varint(value)
    assert len(data) == 1 + (value > 127) + (value > 16_383) + (value > 2_097_151)
    assert w.decode_varint(data + b"\x00") == (value, len(data))
    assert all(w.decode_varint(data[:i]) is None for i in range(len(data)))


def test_known_bytes() -> None:
    assert w.encode_ack(PacketType.PUBREL, 7) == b"\x62\x02\x00\x07"
    assert w.encode_ack(PacketType.PUBACK, 7, reason=0x10, protocol=5) == b"\x40\x03\x00\x07\x10"
    assert w.encode_disconnect(0x8E, protocol=5) == b"\xe0\x01\x8e"
    assert w.encode_disconnect(protocol=5) == w.encode_disconnect() == b"\xe0\x00"
    assert w.encode_disconnect(protocol=5, session_expiry=1) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x01"
    assert w.encode_connack(True, protocol=5, properties=[(w.RECEIVE_MAXIMUM, 10)]) == \
        b"\x20\x06\x01\x00\x03\x21\x00\x0a"
    assert w.encode_publish("a", b"", qos=1, packet_id=2, flags=0x06) == b"\x36\x05\x00\x01a\x00\x02"
    assert w.encode_varint(321) == b"\xc1\x02"


# ------------------------------------------------------------------------------------------ framing


def valid_packets() -> st.SearchStrategy[tuple[bytes, int]]:
    """Encoded packets of every type with the protocol level to decode them with."""
    def pub(args: tuple[int, str, bytes, int]) -> tuple[bytes, int]:
        protocol, topic, payload, qos = args
        return w.encode_publish(topic, payload, qos=qos, packet_id=qos or None, protocol=protocol), protocol

    return st.one_of(
        st.tuples(protocols, topics, st.binary(max_size=300), st.integers(0, 2)).map(pub),
        st.tuples(protocols, texts).map(lambda a: (w.encode_connect(a[1], protocol=a[0]), a[0])),
        props.map(lambda p: (w.encode_connack(protocol=5, properties=p), 5)),
        props.map(lambda p: (w.encode_ack(PacketType.PUBREL, 9, reason=0x92, protocol=5, properties=p), 5)),
        st.tuples(protocols, st.lists(names, min_size=1, max_size=3)).map(
            lambda a: (w.encode_subscribe(3, [(f, 1) for f in a[1]], protocol=a[0]), a[0])),
        st.tuples(protocols, st.lists(names, min_size=1, max_size=3)).map(
            lambda a: (w.encode_unsubscribe(3, a[1], protocol=a[0]), a[0])),
        props.map(lambda p: (w.encode_disconnect(0x8E, protocol=5, properties=p), 5)),
        st.just((w.encode_pingresp(), 4)),
    )


@FAST
@given(valid_packets(), st.binary(max_size=8))
def test_every_truncation_is_incomplete(packet: tuple[bytes, int], more: bytes) -> None:
    data, protocol = packet
    for i in range(len(data)):
        assert w.split(data[:i]) is None
    header, total = w.split(data + more) or (0, 0)
    assert total == len(data)
    assert w.decode(data[0], data[header:total], protocol).type == data[0] >> 4


@FAST
@given(valid_packets(), st.binary(max_size=8), st.binary(max_size=8))
def test_split_at_an_offset_frames_the_packet_there(packet: tuple[bytes, int], before: bytes,
                                                    more: bytes) -> None:
    """The network thread frames packets in place in its read buffer (``split(buf, pos)``)."""
    data, _ = packet
    at = len(before)
    assert w.split(before + data + more, at) == w.split(data)
    for i in range(len(data)):
        assert w.split(before + data[:i], at) is None


def test_split_large_remaining_length() -> None:
    data = w.encode_publish("t", bytes(200_000))  # Remaining Length 200 003: three bytes
    assert w.split(data) == (4, 200_007)
    assert w.split(data[:4]) is None and w.split(data[:-1]) is None


# ------------------------------------------------------------------------------------------ arbitrary bytes


def packet_or_malformed(first: int, body: bytes, protocol: int) -> None:
    try:
        packet = w.decode(first, body, protocol)
    except MalformedPacket:
        return
    assert isinstance(packet, Packet) and packet.type == first >> 4


@MANY
@given(u8, st.binary(max_size=40), st.sampled_from([3, 4, 5]))
def test_random_bytes_decode_or_malformed(first: int, body: bytes, protocol: int) -> None:
    packet_or_malformed(first, body, protocol)


@MANY
@given(valid_packets(), st.data())
def test_damaged_packets_decode_or_malformed(packet: tuple[bytes, int], data: st.DataObject) -> None:
    raw, protocol = packet
    header, _ = w.split(raw) or (0, 0)
    body = bytearray(raw[header:])
    for _ in range(data.draw(st.integers(1, 3))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(u8)
    cut = data.draw(st.integers(0, len(body)))
    packet_or_malformed(raw[0], bytes(body[:cut]), protocol)


@MANY
@given(st.binary(max_size=12))
def test_random_stream_frames_or_malformed(data: bytes) -> None:
    try:
        found = w.split(data)
    except MalformedPacket:
        return
    assert found is None or found[1] <= len(data)


# ------------------------------------------------------------------------------------------ strictness


MALFORMED: list[tuple[str, int, bytes, int, str]] = [
    ("packet type 0", 0x00, b"", 4, "reserved packet type 0"),
    ("publish qos 3", 0x36, b"\x00\x01a\x00\x07", 4, "QoS bits 11"),
    ("publish dup on qos 0", 0x38, b"\x00\x01a", 4, "DUP set on a QoS 0"),
    ("publish wildcard topic", 0x30, b"\x00\x03a/#", 4, "wildcard"),
    ("publish empty topic 3.1.1", 0x30, b"\x00\x00x", 4, "empty topic name"),
    ("publish packet id 0", 0x32, b"\x00\x01a\x00\x00", 4, "packet identifier 0"),
    ("publish topic past the end", 0x30, b"\x00\x09ab", 4, "truncated"),
    ("publish invalid utf-8", 0x30, b"\x00\x02\xc3\x28", 4, "invalid UTF-8"),
    ("publish surrogate", 0x30, b"\x00\x03\xed\xa0\x80", 4, "invalid UTF-8"),
    ("publish U+0000", 0x30, b"\x00\x02a\x00", 4, r"U\+0000"),
    ("publish v5 no properties", 0x32, b"\x00\x01a\x00\x07", 5, "truncated"),
    ("puback flags", 0x41, b"\x00\x07", 4, "reserved fixed-header flags 0001"),
    ("pubrel flags 0000", 0x60, b"\x00\x07", 4, "PUBREL: reserved fixed-header flags 0000"),
    ("pubrel flags 0011", 0x63, b"\x00\x07", 5, "PUBREL: reserved fixed-header flags 0011"),
    ("subscribe flags 0000", 0x80, b"\x00\x01\x00\x01a\x00", 4, "SUBSCRIBE: reserved fixed-header"),
    ("unsubscribe flags 0000", 0xA0, b"\x00\x01\x00\x01a", 4, "UNSUBSCRIBE: reserved fixed-header"),
    ("puback 3.1.1 with a reason code", 0x40, b"\x00\x07\x10", 4, "unexpected byte"),
    ("puback short", 0x40, b"\x00", 5, "truncated"),
    ("puback v5 properties past the end", 0x40, b"\x00\x07\x10\x05\x11", 5, "past the packet"),
    ("unknown property", 0x40, b"\x00\x07\x10\x02\x7f\x00", 5, "unknown property 0x7f"),
    ("property overrun", 0x40, b"\x00\x07\x10\x02\x11\x00\x00\x00\x00", 5, "overruns"),
    ("pingreq with a body", 0xC0, b"\x00", 4, "unexpected byte"),
    ("disconnect 3.1.1 with a body", 0xE0, b"\x00", 4, "unexpected byte"),
    ("auth on 3.1.1", 0xF0, b"", 4, "AUTH"),
    ("connack reserved flags", 0x20, b"\x02\x00", 4, "reserved acknowledge flags"),
    ("connack 3.1.1 too long", 0x20, b"\x00\x00\x00", 4, "unexpected byte"),
    ("suback 3.1.1 code 3", 0x90, b"\x00\x01\x03", 4, "reserved return code"),
    ("suback without codes", 0x90, b"\x00\x01", 4, "no reason code"),
    ("subscribe without filters", 0x82, b"\x00\x01", 4, "no topic filter"),
    ("subscribe qos 3", 0x82, b"\x00\x01\x00\x01a\x03", 4, "subscription options 0x03"),
    ("subscribe 3.1.1 reserved bits", 0x82, b"\x00\x01\x00\x01a\x04", 4, "subscription options 0x04"),
    ("subscribe v5 reserved bits", 0x82, b"\x00\x01\x00\x00\x01a\x40", 5, "subscription options 0x40"),
    ("subscribe v5 retain handling 3", 0x82, b"\x00\x01\x00\x00\x01a\x30", 5, "subscription options 0x30"),
    ("subscribe empty filter", 0x82, b"\x00\x01\x00\x00\x01", 4, "empty topic filter"),
    ("unsubscribe without filters", 0xA2, b"\x00\x01", 4, "no topic filter"),
    ("connect bad protocol name", 0x10, b"\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", 4, "not MQTT"),
    ("connect level 6", 0x10, b"\x00\x04MQTT\x06\x02\x00\x3c\x00\x00", 4, "level 6"),
    ("connect reserved flag", 0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", 4, "reserved connect flag"),
    ("connect will qos 3", 0x10, b"\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00", 4, "Will QoS 3"),
    ("connect will retain without will", 0x10, b"\x00\x04MQTT\x04\x22\x00\x3c\x00\x00", 4, "without a Will"),
    ("connect password without user", 0x10, b"\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x00", 4,
     "password without a user name"),
]


@pytest.mark.parametrize(("first", "body", "protocol", "why"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed(first: int, body: bytes, protocol: int, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        w.decode(first, body, protocol)


def test_malformed_is_a_value_error() -> None:
    assert issubclass(MalformedPacket, ValueError)


@pytest.mark.parametrize(("data", "why"), [
    (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),  # [MQTT-1.5.5-1]: at most 4 bytes
    (b"\x30\x80\x00", "shortest form"),
    (b"\x30\x85\x80\x00", "shortest form"),
])
def test_split_refuses_bad_remaining_length(data: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        w.split(data)
    with pytest.raises(MalformedPacket, match=why):
        w.decode_varint(data, 1)


def test_split_incomplete() -> None:
    assert w.split(b"") is None and w.split(b"\x30") is None
    assert w.split(b"\x30\xff\xff\xff") is None  # a four-byte length still to come
    assert w.split(b"\x30\x05ab") is None


def test_decode_packet_wants_exactly_one() -> None:
    with pytest.raises(MalformedPacket, match="not exactly one packet"):
        w.decode_packet(w.encode_pingreq() + b"\x00")
    with pytest.raises(MalformedPacket, match="not exactly one packet"):
        w.decode_packet(b"\xc0")


def test_encoders_refuse_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        w.encode_varint(w.MAX_VARINT + 1)
    with pytest.raises(ValueError):
        w.encode_varint(-1)
    with pytest.raises(ValueError):
        w.encode_connect("x", protocol=4, session_expiry=10)
    with pytest.raises(ValueError):
        w.encode_publish("t", b"", qos=1)  # no packet id
    with pytest.raises(ValueError):
        w.encode_publish("t", b"", packet_id=1)
    with pytest.raises(ValueError):
        w.encode_ack(PacketType.PUBACK, 1, reason=0x80)  # 3.1.1 has no reason codes
    with pytest.raises(ValueError):
        w.encode_ack(PacketType.SUBACK, 1)
    with pytest.raises(ValueError):
        w.encode_disconnect(session_expiry=1)
    with pytest.raises(ValueError):
        w.encode_unsuback(1, [0])
    with pytest.raises(ValueError):
        w.encode_publish("x" * 70_000, b"")
    with pytest.raises(ValueError):
        w.pack_properties([(w.RECEIVE_MAXIMUM, 70_000)])
    with pytest.raises(ValueError):
        w.pack_properties([(w.REASON_STRING, 1)])
    with pytest.raises(ValueError):
        w.pack_properties([(0x7F, 1)])


def test_describe() -> None:
    p = w.decode_packet(w.encode_publish("a/b", b"hello", qos=1, packet_id=3, dup=True))
    assert p.describe() == "PUBLISH id=3 qos=1 dup=1 retain=0 'a/b' 5B"
    assert w.decode_packet(w.encode_suback(4, [1, 0x80])).describe() == "SUBACK id=4 codes=0x01,0x80"


def test_module_is_pure() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(w))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "struct", "collections", "dataclasses", "enum", "typing"}


def test_received_publish_fault() -> None:
    """What an MQTT 5 client refuses in a PUBLISH it receives (it sets no Topic Alias Maximum)."""
    from mqttsession._wire import pack_properties, received_publish_fault

    assert received_publish_fault("t", b"") is None
    assert received_publish_fault("t", b"\x00") is None
    repeatable = pack_properties([(0x26, ("a", "1")), (0x26, ("a", "2")), (0x0B, 1), (0x0B, 2)])
    assert received_publish_fault("t", repeatable) is None
    assert received_publish_fault("", b"")[0] == 0x82  # type: ignore[index]
    assert received_publish_fault("", pack_properties([(0x23, 3)]))[0] == 0x94  # type: ignore[index]
    assert received_publish_fault("t", pack_properties([(0x02, 5), (0x02, 6)]))[0] == 0x82  # type: ignore[index]
    assert received_publish_fault("t", pack_properties([(0x21, 5)]))[0] == 0x82  # type: ignore[index]
    # a Subscription Identifier of 0 is a Protocol Error (3.3.2.3.8): was delivered and acked
    assert received_publish_fault("t", pack_properties([(0x0B, 0)]))[0] == 0x82  # type: ignore[index]


def test_packets_paho_handles_are_checked_first() -> None:
    """PINGREQ / PINGRESP / DISCONNECT / AUTH went to paho unchecked: a PINGREQ from a broker
    or a flagged PINGRESP was taken, a 3.1.1 DISCONNECT or an AUTH ended the connection with
    no ``on_error`` (a defect hunt). Each is a violation now."""
    from mqttsession._wire import pack_properties, paho_packet_fault

    assert paho_packet_fault(0xD0, b"", 4) is None  # a PINGRESP
    assert paho_packet_fault(0xE0, b"", 5) is None  # a DISCONNECT, MQTT 5
    assert paho_packet_fault(0xE0, b"\x8b" + pack_properties([(0x1F, "bye")]), 5) is None
    for first, body, level, code in [(0xC0, b"", 4, 0x82), (0xD0, b"\x00", 5, 0x81),
                                     (0xD1, b"", 4, 0x81), (0xE0, b"", 4, 0x82),
                                     (0xF0, b"", 5, 0x82), (0xE1, b"", 5, 0x81),
                                     (0xE0, b"\x00" + pack_properties([(0x11, 5)]), 5, 0x82)]:
        fault = paho_packet_fault(first, body, level)
        assert fault is not None and fault[0] == code, (hex(first), body, fault)


def test_connack_properties_paho_raises_on_are_violations() -> None:
    """A CONNACK with a property twice, Receive Maximum or Maximum Packet Size 0, or no
    Property Length at all (MQTT 5): paho raised and the error read as the session's own
    (-1, its raw text); now a violation (0x81 / 0x82)."""
    from mqttsession._wire import connack_fault, decode, pack_properties

    def connack(props: bytes) -> Packet:
        return decode(0x20, b"\x00\x00" + props, 5)

    assert connack_fault(connack(pack_properties([(0x21, 10)])), 5) is None
    assert connack_fault(decode(0x20, b"\x00\x00", 4), 4) is None
    assert connack_fault(connack(b""), 5) == (0x81, connack_fault(connack(b""), 5)[1])  # type: ignore[index]
    for props in ([(0x21, 10), (0x21, 11)], [(0x21, 0)], [(0x27, 0)]):
        fault = connack_fault(connack(pack_properties(props)), 5)
        assert fault is not None and fault[0] == 0x82, props



ACK_KINDS = [PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP]


@FAST
@given(st.lists(st.tuples(st.sampled_from(ACK_KINDS), u16), min_size=1, max_size=6),
       st.binary(max_size=6))
def test_an_ack_run_is_the_acks_encoded_back_to_back(acks: list[tuple[PacketType, int]],
                                                     tail: bytes) -> None:
    """``ack_run`` (the network thread's fast path): the first ack and the flow acks right
    after it, as ``decode`` reads them; none after a PUBREL (it may deliver); anything else
    (a longer ack, another packet, bytes cut short) left for the general decoder."""
    data = b"".join(w.encode_ack(t, pid, protocol=4) for t, pid in acks) + b"\x30" + tail
    run = w.ack_run(data, data[0], 2, len(data))
    assert run is not None
    got, end = run
    expect = [acks[0]]
    if acks[0][0] is not PacketType.PUBREL:
        for t, pid in acks[1:]:
            if t is PacketType.PUBREL:
                break
            expect.append((t, pid))
    assert got == expect and end == 4 * len(expect)
    assert w.ack_run(b"\x30\x02\x00\x01", 0x30, 2, 4) is None  # a PUBLISH is no ack
