"""Pins of ``records``: the binary layouts byte for byte, every bound of a decoded field, and
every malformed record (binary or JSON) a ``StateError`` (``NewerFormatError`` only for one
ASCII letter), never another exception."""

from __future__ import annotations

import struct

import pytest

from mqttsession import StateError
from mqttsession.errors import NewerFormatError
from mqttsession.records import (
    Accepted,
    Activity,
    Answered,
    Configured,
    Connected,
    Disconnected,
    Event,
    IncomingMessage,
    Loaded,
    OrphanReleased,
    OrphansReleased,
    Orphaned,
    OutgoingMessage,
    Received,
    Record,
    Released,
    Reserved,
    SessionReset,
    SpoolMark,
    Stepped,
    Subscribed,
    Unsubscribed,
    decode_queued,
    decode_record,
    encode_message,
    encode_record,
)

_M = OutgoingMessage(1, 0, "t", b"p", 1, True, b"x", accepted_at=1.5)
# b, seq 1, packet id 0, qos 1, retain 1, lengths 1 / 1 / 1, accepted at 1.5, then t p x
_M_BYTES = (b"b" + bytes.fromhex("0000000000000001" "0000" "01" "01" "0001" "00000001"
                                 "00000001" "3ff8000000000000") + b"tpx")


def test_the_binary_accepted_layout_is_big_endian_byte_for_byte() -> None:
    """The ``b`` record (journal and disk queue) is part of the file format."""
    assert encode_message(_M) == _M_BYTES
    assert encode_record(Accepted(_M)) == _M_BYTES
    assert decode_record(_M_BYTES) == Accepted(_M)


@pytest.mark.parametrize("code,event", list(enumerate([
    "send", "puback", "pubrec", "pubrec_failed", "pubcomp", "session_lost", "too_large",
    "dropped", "expired"])))
def test_the_stepped_layout_and_its_event_codes_are_fixed(code: int, event: str) -> None:
    """The binary event codes are append only: each keeps its number, seq and packet id
    big-endian."""
    rec = Stepped(0x0102030405060708, Event(event), 0x0A0B)
    raw = b"s" + bytes.fromhex("0102030405060708") + bytes([code]) + b"\x0a\x0b"
    assert encode_record(rec) == raw
    assert decode_record(raw) == rec


def test_the_loaded_layout_is_big_endian_byte_for_byte() -> None:
    raw = (b"l" + bytes.fromhex("0000000000000003" "00000001")
           + len(_M_BYTES).to_bytes(4, "big") + _M_BYTES)
    assert encode_record(Loaded((_M,), 3)) == raw
    assert decode_record(raw) == Loaded((_M,), 3)


def test_the_received_and_released_layouts_are_byte_for_byte() -> None:
    rec = Received(IncomingMessage(0x0102, "t", b"p", 2, True, False, b"x"))
    raw = b"r" + bytes.fromhex("0102" "01" "00" "0001" "00000001" "00000001") + b"tpx"
    assert encode_record(rec) == raw
    assert decode_record(raw) == rec
    assert encode_record(Released(0x0102)) == b"e\x01\x02"


_LOADED = struct.Struct(">cQI")


@pytest.mark.parametrize("raw", [
    _LOADED.pack(b"l", 0, 0),  # spool_next 0
    _LOADED.pack(b"l", 1, 1),  # a message announced, not even its length there
    _LOADED.pack(b"l", 1, 1) + b"\x00\x00",  # its length cut short
    _LOADED.pack(b"l", 1, 1) + len(_M_BYTES).to_bytes(4, "big") + b"a" + _M_BYTES[1:],
    _LOADED.pack(b"l", 1, 1) + (12).to_bytes(4, "big") + encode_record(Stepped(1, Event.SEND, 1)),
    _LOADED.pack(b"l", 1, 1) + len(_M_BYTES).to_bytes(4, "big") + _M_BYTES + b"!",
    _LOADED.pack(b"l", 1, 0) + b"!",
], ids=["spool-next-0", "no-length", "cut-length", "a-record", "s-record", "trailing",
        "trailing-empty"])
def test_bad_loaded_records_are_state_error(raw: bytes) -> None:
    """A ``Loaded`` record holds ``b`` records only, each exactly as long as its length says,
    and nothing after them; spool_next is 1 or more."""
    with pytest.raises(StateError):
        decode_record(raw)


_R = struct.Struct(">cHBBHII")


@pytest.mark.parametrize("raw", [
    _R.pack(b"r", 0, 0, 0, 1, 0, 0) + b"t",  # packet id 0
    _R.pack(b"r", 1, 2, 0, 1, 0, 0) + b"t",  # retain 2
    _R.pack(b"r", 1, 0, 2, 1, 0, 0) + b"t",  # dup 2
    _R.pack(b"r", 1, 0, 0, 0, 1, 0) + b"p",  # an empty topic
    b"e\x00\x00",  # Released packet id 0
], ids=["pid-0", "retain-2", "dup-2", "empty-topic", "released-pid-0"])
def test_bad_incoming_binary_records_are_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        decode_record(raw)


def test_incoming_retain_and_dup_are_read_each_from_its_own_byte() -> None:
    for retain, dup in ((True, False), (False, True)):
        rec = Received(IncomingMessage(9, "t", b"", 2, retain, dup, b""))
        assert decode_record(encode_record(rec)) == rec


_A = struct.Struct(">cQHBBHIId")


@pytest.mark.parametrize("raw", [
    _A.pack(b"b", 1, 0, 0, 0, 1, 0, 0, 0.0) + b"t",  # qos 0: never held
    _A.pack(b"b", 1, 0, 1, 0, 1, 0, 0, -1.0) + b"t",  # accepted before 1970
    _A.pack(b"b", 1, 0, 1, 0, 1, 0, 0, float("inf")) + b"t",
], ids=["qos-0", "negative-time", "inf-time"])
def test_bad_accepted_records_are_refused_by_both_decoders(raw: bytes) -> None:
    with pytest.raises(StateError):
        decode_record(raw)
    assert decode_queued(raw) is None


@pytest.mark.parametrize("tag", [b"a", b"s", b"x", b"["])
def test_decode_queued_reads_b_frames_only(tag: bytes) -> None:
    """A frame whose tag is not ``b`` is no queued message, whatever its bytes after."""
    assert decode_queued(_M_BYTES) == (_M, 3)
    assert decode_queued(tag + _M_BYTES[1:]) is None


def test_an_unknown_lowercase_binary_tag_is_a_newer_format() -> None:
    with pytest.raises(NewerFormatError):
        decode_record(b"z\x00\x01")


@pytest.mark.parametrize("raw", [
    b"[]", b"[1]", b"[null,1]", b'["AB",1]', b'["\xc3\xa9",1]', b'["L",7,8]', b'["L"]',
    b'["S",1,["send"],1]', b'["S",1,"sent",1]', b'["O",[true]]', b'["O",[0]]',
    b'["N",[""]]', b'["N",[1]]', b'["T",null]', b'["T",true]', b'["T",1e400]',
    b'["U","",1]', b'["U","a",3]', b'["K","c",3,true,null]', b'["Z",[],[],[0]]',
    b'["Q",-1,1]', b'["V",0,65536]', b'["D",1.0,4294967296]', b'["D",1.0,-1]',
    b'["A",1,0,"t","","",0,false,""]', b'["A",1,0,"t","",0,false,""]',
    b'["R",1,"t","!!",false,false,""]', b'["C",1.0,1,true]', b'["M",0]',
    b'["X","\\ud800"]', b'["X","a\\u0000"]', b'["C",NaN,null,true]',
], ids=lambda b: b.decode("utf-8"))
def test_bad_json_records_are_state_error_not_newer(raw: bytes) -> None:
    """A malformed JSON record (several letters, a non-ASCII tag, a field out of range or of
    the wrong type, one field too many or too few) is ``StateError``, not ``NewerFormatError``
    and never another exception."""
    with pytest.raises(StateError) as info:
        decode_record(raw)
    assert type(info.value) is StateError


@pytest.mark.parametrize("rec", [
    OrphanReleased(0, 1), OrphanReleased(2**31, 65535), Reserved(0, 0), Reserved(65535, 1),
    Configured("", 4, True, None), Configured("c", 5, False, 0xFFFFFFFF),
    Subscribed("a/#", 0), Subscribed("a", 2), Unsubscribed("a"), Answered(("a", "b")),
    SessionReset((1,), (2**63 - 1,), (1, 65535)), Orphaned((1, 65535)), OrphansReleased(()),
    Disconnected(0.0, None), Disconnected(1.5, 0), Connected(1.25, None, True),
    Connected(2.0, "b:1", False), Activity(1.5), Activity(0.0), SpoolMark(2**63 - 1),
], ids=repr)
def test_json_records_round_trip_at_their_bounds(rec: Record) -> None:
    assert decode_record(encode_record(rec)) == rec


def test_format_1_accepted_records_of_a_queued_message_hold_packet_id_0() -> None:
    assert decode_record(b'["A",3,0,"t","",1,false,""]') == Accepted(
        OutgoingMessage(3, 0, "t", b"", 1, False, b""))


# ------------------------------------------------------------------------- properties


def test_no_properties_pack_to_no_bytes_and_back_to_none() -> None:
    """``pack_properties`` gives b"" for none (paho's lone length byte b"\\x00" included);
    ``unpack_properties(b"")`` is None: the stored form of a message without properties."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    from mqttsession.properties import pack_properties, unpack_properties  # noqa: PLC0415

    assert pack_properties(None) == b""
    assert pack_properties(Properties(PacketTypes.PUBLISH)) == b""
    assert unpack_properties(b"") is None


def test_connect_and_disconnect_properties_are_packed_exactly() -> None:
    """CONNECT carries Session Expiry Interval and Receive Maximum together; a DISCONNECT's
    interval 0 is sent (absent would keep the CONNECT's), in DISCONNECT properties."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415

    from mqttsession.properties import (  # noqa: PLC0415
        connect_properties,
        disconnect_properties,
        pack_properties,
    )

    assert pack_properties(connect_properties(10, 5)) == b"\x08\x11\x00\x00\x00\x0a\x21\x00\x05"
    assert pack_properties(connect_properties(None, 5)) == b"\x03\x21\x00\x05"
    assert pack_properties(connect_properties(0)) == b"\x05\x11\x00\x00\x00\x00"
    assert connect_properties(None) is None
    off = disconnect_properties(0)
    assert off is not None and off.packetType == PacketTypes.DISCONNECT
    assert pack_properties(off) == b"\x05\x11\x00\x00\x00\x00"
    assert disconnect_properties(None) is None


def test_server_reference_is_a_string_or_none() -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from mqttsession.properties import server_reference  # noqa: PLC0415

    assert server_reference(SimpleNamespace(ServerReference="b:1883")) == "b:1883"
    assert server_reference(SimpleNamespace(ServerReference=b"b:1883")) is None
    assert server_reference(None) is None


@pytest.mark.parametrize("pair", [("a", "b", "c"), ("a",)])
def test_a_user_property_must_be_a_pair(pair: tuple[str, ...]) -> None:
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    from mqttsession import UsageError  # noqa: PLC0415
    from mqttsession.properties import publish_properties  # noqa: PLC0415

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = pair
    with pytest.raises(UsageError, match="pair"):
        publish_properties(props)


def test_a_nan_time_is_never_written() -> None:
    """A JSON record whose time is NaN could not be read back: it is refused when written."""
    with pytest.raises(ValueError):
        encode_record(Connected(float("nan"), None, True))
