"""Pins from a mutation hunt over mqttsession._wire and mqttsession.validation: edges the
round-trip and strictness tests in test_wire.py left open (framing at an offset, the ack fast
path at the buffer's end, property blocks, the CONNACK / paho-packet fault checks, topic and
filter validation)."""

from __future__ import annotations

import pytest

from mqttsession import UsageError
from mqttsession.errors import TransitionError
from mqttsession import _wire as w
from mqttsession._wire import MalformedPacket, PacketType, Will
from mqttsession.validation import (check_expiry, check_sendable_text, check_text, publish_packet_size,
                                     split_filters, validate_subscribe_filter, will_payload)

# ------------------------------------------------------------------------------------------ framing


def test_split_at_an_offset_with_a_multi_byte_remaining_length() -> None:
    """``split(buf, pos)`` with a two-byte Remaining Length: lengths relative to ``pos``, and
    complete exactly when the whole packet is in ``buf``."""
    data = w.encode_publish("t", bytes(200))  # Remaining Length 203: two bytes
    buf = w.encode_pingresp() + data
    assert w.split(data) == (3, len(data))
    assert w.split(buf, 2) == (3, len(data))
    assert w.split(buf + b"\x00", 2) == (3, len(data))
    assert w.split(buf[:-1], 2) is None


# ------------------------------------------------------------------------------------------ ack_run


def test_an_ack_run_may_end_exactly_at_the_buffers_end() -> None:
    data = w.encode_ack(PacketType.PUBACK, 1) + w.encode_ack(PacketType.PUBCOMP, 2)
    assert w.ack_run(data, data[0], 2, len(data)) == ([(PacketType.PUBACK, 1), (PacketType.PUBCOMP, 2)], 8)


def test_an_ack_run_stops_at_an_ack_with_a_reason_code() -> None:
    """An MQTT 5 ack with a reason code (Remaining Length 3) is not of the run's form."""
    data = (w.encode_ack(PacketType.PUBACK, 1, protocol=5)
            + w.encode_ack(PacketType.PUBACK, 2, reason=0x10, protocol=5))
    assert data[5] == 3
    assert w.ack_run(data, data[0], 2, len(data)) == ([(PacketType.PUBACK, 1)], 4)


def test_a_pubrel_with_flags_0000_is_no_ack_for_the_fast_path() -> None:
    """[MQTT-3.6.1-1] a PUBREL's flags are 0010: first byte 0x60 is malformed, left to ``decode``."""
    assert w.ack_run(b"\x60\x02\x00\x01", 0x60, 2, 4) is None
    data = w.encode_ack(PacketType.PUBACK, 1) + b"\x60\x02\x00\x02"
    assert w.ack_run(data, data[0], 2, len(data)) == ([(PacketType.PUBACK, 1)], 4)
    with pytest.raises(MalformedPacket, match="reserved fixed-header flags 0000"):
        w.decode(0x60, b"\x00\x02", 4)


# ------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize(("prop_id", "value"), [(0x01, 256), (w.RECEIVE_MAXIMUM, 65536),
                                                (w.SESSION_EXPIRY_INTERVAL, 1 << 32), (0x01, -1)])
def test_pack_properties_refuses_an_integer_its_type_cannot_hold(prop_id: int, value: int) -> None:
    """A Byte / Two / Four Byte Integer property one past its range is a ValueError (not an
    OverflowError from ``int.to_bytes``)."""
    with pytest.raises(ValueError, match=f"property 0x{prop_id:02x}"):
        w.pack_properties([(prop_id, value)])


def test_pack_properties_takes_the_largest_value_of_each_integer_type() -> None:
    props = [(0x01, 255), (w.RECEIVE_MAXIMUM, 65535), (w.SESSION_EXPIRY_INTERVAL, (1 << 32) - 1)]
    assert w.parse_properties(w.pack_properties(props)) == tuple(props)


def test_parse_properties_refuses_bytes_after_the_block() -> None:
    with pytest.raises(MalformedPacket, match="unexpected byte"):
        w.parse_properties(b"\x00\x00")
    with pytest.raises(MalformedPacket, match="unexpected byte"):
        w.parse_properties(w.pack_properties([(w.RECEIVE_MAXIMUM, 5)]) + b"\x21")


# ------------------------------------------------------------------------------------------ fault checks


def test_connack_fault_session_present_only_answering_clean_start() -> None:
    """SessionPresent=1 is a violation only in answer to Clean Start 1 ([MQTT-3.2.2-1] 3.1.1,
    [MQTT-3.2.2-2] 5); resuming a session it is the expected answer."""
    present = w.decode(0x20, b"\x01\x00", 4)
    assert w.connack_fault(present, 4, clean_start=False) is None
    fault = w.connack_fault(present, 4, clean_start=True)
    assert fault is not None and fault[0] == 0x82


def test_connack_fault_a_refusal_without_properties_is_no_violation() -> None:
    """An MQTT 5 CONNACK refusing (reason code >= 0x80) without a Property Length: the refusal
    is reported as such, not as a malformed CONNACK."""
    assert w.connack_fault(w.decode(0x20, b"\x00\x87", 5), 5) is None
    fault = w.connack_fault(w.decode(0x20, b"\x00\x00", 5), 5)
    assert fault is not None and fault[0] == 0x81


def test_connack_fault_a_second_connack() -> None:
    fault = w.connack_fault(w.decode(0x20, b"\x00\x00", 4), 4, again=True)
    assert fault is not None and fault[0] == 0x82 and "second CONNACK" in fault[1]


def test_paho_packet_fault_on_mqtt_31_and_311() -> None:
    """MQTT 3.1 (level 3) has no DISCONNECT from a server either; an AUTH before MQTT 5 is a
    reserved packet type: Malformed Packet (0x81), not the Protocol Error of MQTT 5's check."""
    fault = w.paho_packet_fault(0xE0, b"", 3)
    assert fault is not None and fault[0] == 0x82
    fault = w.paho_packet_fault(0xF0, b"", 4)
    assert fault is not None and fault[0] == 0x81 and "AUTH" in fault[1]


# ------------------------------------------------------------------------------------------ strictness


PINNED_MALFORMED: list[tuple[str, int, bytes, int, str]] = [
    # [MQTT-3.1.2-13] (3.1.1 numbering): Will QoS 0 without a Will, Will Retain alone is in test_wire
    ("connect will qos without will", 0x10, b"\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00", 4, "without a Will"),
    ("connect will qos 2 without will", 0x10, b"\x00\x04MQTT\x05\x12\x00\x3c\x00\x00\x00", 5,
     "without a Will"),
    # [MQTT-3.2.2-1] (5): CONNACK acknowledge flags bits 7-1 reserved; bit 7 too
    ("connack reserved flag bit 7", 0x20, b"\x80\x00", 4, "reserved acknowledge flags 0x80"),
    # [MQTT-3.3.2-2]: no wildcard in a topic name, '+' as '#'
    ("publish '+' in the topic", 0x30, b"\x00\x03a/+", 4, "wildcard"),
    ("publish '+' within a level", 0x30, b"\x00\x02a+", 5, "wildcard"),
    # MQTT 5 3.8.3.1: subscription options bits 6 and 7 reserved; 3.1.1 [MQTT-3-8.3-4]: bits 2-7
    ("subscribe v5 reserved bit 7", 0x82, b"\x00\x01\x00\x00\x01a\x80", 5, "subscription options 0x80"),
    ("subscribe 3.1.1 reserved bit 7", 0x82, b"\x00\x01\x00\x01a\x80", 4, "subscription options 0x80"),
    # [MQTT-4.7.3-1]: a topic filter is at least one character, in UNSUBSCRIBE as in SUBSCRIBE
    ("unsubscribe empty filter", 0xA2, b"\x00\x01\x00\x01a\x00\x00", 4, "empty topic filter"),
    # [MQTT-2.3.1-1] (3.1.1), [MQTT-2.2.1-3] (5): a non-zero packet identifier, as in PUBLISH
    ("subscribe packet id 0", 0x82, b"\x00\x00\x00\x01a\x01", 4, "packet identifier 0"),
    ("unsubscribe packet id 0", 0xA2, b"\x00\x00\x00\x00\x01a", 5, "packet identifier 0"),
]


@pytest.mark.parametrize(("first", "body", "protocol", "why"), [m[1:] for m in PINNED_MALFORMED],
                         ids=[m[0] for m in PINNED_MALFORMED])
def test_more_malformed(first: int, body: bytes, protocol: int, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        w.decode(first, body, protocol)


@pytest.mark.parametrize("ptype", [PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBCOMP])
def test_v5_ack_with_a_reason_code_and_an_empty_property_length(ptype: PacketType) -> None:
    """MQTT 5 3.4.2.2: the Property Length may be present and 0 (one byte) after the reason code."""
    got = w.decode(ptype << 4, b"\x00\x07\x10\x00", 5)
    assert (got.packet_id, got.reason_code, got.properties) == (7, 0x10, b"\x00")


@pytest.mark.parametrize("first", [0x90, 0xB0], ids=["SUBACK", "UNSUBACK"])
def test_v5_suback_and_unsuback_need_a_reason_code(first: int) -> None:
    """MQTT 5 3.9.3 / 3.11.3: one reason code per topic filter, so at least one."""
    with pytest.raises(MalformedPacket, match="no reason code"):
        w.decode(first, b"\x00\x01\x00", 5)
    assert w.decode(first, b"\x00\x01\x00\x11", 5).reason_codes == (0x11,)


@pytest.mark.parametrize("first", [0xE0, 0xF0], ids=["DISCONNECT", "AUTH"])
def test_v5_reason_code_then_an_empty_property_length(first: int) -> None:
    """MQTT 5 3.14.2.2 / 3.15.2.2: a Property Length of 0 (one byte) after the reason code."""
    got = w.decode(first, b"\x18\x00", 5)
    assert (got.reason_code, got.properties) == (0x18, b"\x00")


def test_encode_connect_refuses_will_properties_on_311() -> None:
    will = Will("w", b"x", properties=w.pack_properties([(0x01, 1)]))
    with pytest.raises(ValueError, match="will has no properties"):
        w.encode_connect("c", protocol=4, will=will)
    assert w.decode_packet(w.encode_connect("c", protocol=5, will=will), 5).will == will


def test_encode_connect_refuses_an_unknown_protocol_level() -> None:
    with pytest.raises(ValueError, match="unknown protocol level 6"):
        w.encode_connect("c", protocol=6)


def test_connack_limits() -> None:
    """Absent properties (and 3.1.1) mean no limit; Maximum QoS 0 or 1 and Retain Available 0
    are taken as given (MQTT 5 3.2.2.3.4, 3.2.2.3.5)."""
    assert w.connack_limits(w.decode(0x20, b"\x00\x00", 4)) == (65535, None, None, 2, True)
    got = w.decode_packet(w.encode_connack(protocol=5, properties=[
        (w.RECEIVE_MAXIMUM, 10), (w.MAXIMUM_PACKET_SIZE, 1000), (w.MAXIMUM_QOS, 1),
        (w.RETAIN_AVAILABLE, 0)]), 5)
    assert w.connack_limits(got) == (10, 1000, None, 1, False)
    got = w.decode_packet(w.encode_connack(protocol=5, properties=[
        (w.MAXIMUM_QOS, 0), (w.RETAIN_AVAILABLE, 1)]), 5)
    assert w.connack_limits(got) == (65535, None, None, 0, True)


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("flt", ["$share", "$shared/x", "$sharex/a/b"])
def test_only_share_slash_starts_a_shared_subscription(flt: str) -> None:
    """A filter is a shared subscription only when it starts "$share/" (MQTT 5 4.8.2)."""
    assert validate_subscribe_filter(flt) == flt


def test_a_single_filter_keeps_its_spaces() -> None:
    assert split_filters(" a b ", ",") == [" a b "]
    assert split_filters(" a , b", ",") == ["a", "b"]


def test_check_sendable_text_refuses_u0000() -> None:
    """[MQTT-1.5.4-2]: U+0000 is named even after another control character."""
    with pytest.raises(UsageError, match=r"U\+0000"):
        check_sendable_text("reason", "a\x00")
    with pytest.raises(UsageError, match=r"U\+0000"):
        check_sendable_text("reason", "\x01\x00")
    check_sendable_text("reason", "fine")


def test_a_will_payload_of_65535_bytes_fits() -> None:
    """The will payload's length is a Two Byte Integer in CONNECT (MQTT 3.1.3.3): 65535 fits."""
    assert will_payload(b"x" * 65535) == b"x" * 65535
    with pytest.raises(UsageError, match="at most 65535"):
        will_payload(b"x" * 65536)


@pytest.mark.parametrize("payload_size", [0, 122, 123, 16_377, 16_378, 2_097_146, 2_097_147])
@pytest.mark.parametrize("qos", [0, 1])
def test_publish_packet_size_matches_the_encoder_at_varint_edges(payload_size: int, qos: int) -> None:
    """Remaining Length 127 / 128, 16 383 / 16 384, 2 097 151 / 2 097 152 (one more length byte)."""
    remaining, total = publish_packet_size("abc", payload_size, qos)
    data = w.encode_publish("abc", bytes(payload_size), qos=qos, packet_id=1 if qos else None)
    assert (remaining, total) == (w.split(data)[1] - w.split(data)[0], len(data))  # type: ignore[index]


@pytest.mark.parametrize("reason_len", [120, 121, 122, 123, 124, 125])
def test_publish_packet_size_counts_a_two_byte_property_length(reason_len: int) -> None:
    props = w.pack_properties([(w.REASON_STRING, "r" * reason_len)])
    prop_size = reason_len + 3
    assert len(props) == prop_size + (1 if prop_size < 128 else 2)
    data = w.encode_publish("t", b"p", protocol=5, properties=[(w.REASON_STRING, "r" * reason_len)])
    assert publish_packet_size("t", 1, 0, prop_size, mqtt5=True)[1] == len(data)


def test_check_text_none_only_when_optional() -> None:
    check_text("x", None, optional=True)
    with pytest.raises(TransitionError):
        check_text("x", None)


def test_session_expiry_interval_range_ends() -> None:
    """0 .. 0xFFFFFFFF (MQTT 5 3.1.2.11.2: 0xFFFFFFFF never expires)."""
    check_expiry(0)
    check_expiry(0xFFFF_FFFF)
    check_expiry(None)
    for bad in (-1, 0x1_0000_0000):
        with pytest.raises(UsageError):
            check_expiry(bad)
