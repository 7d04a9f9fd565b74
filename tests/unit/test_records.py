"""Journal records: binary Accepted / Stepped / Received / Released round trips, format-1
JSON still read, bad bytes refused; Taken (an incoming QoS 2 message delivered ahead of its
PUBREL)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttsession import StateError, codec
from mqttsession.state import (
    MAX_PACKET_ID,
    Accepted,
    Event,
    IncomingMessage,
    OutgoingMessage,
    Received,
    Released,
    SessionState,
    Stepped,
    Taken,
)
from mqttsession.errors import TransitionError
from mqttsession.records import decode_queued, encode_message

from ._support import FAST

TOPICS = st.text(st.characters(codec="utf-8", exclude_characters="+#\x00"), min_size=1,
                 max_size=40)
ACCEPTED = st.builds(
    lambda seq, pid, topic, payload, qos, retain, props: Accepted(
        OutgoingMessage(seq, pid, topic, payload, qos, retain, props)),
    st.integers(1, 2**63 - 1), st.integers(0, MAX_PACKET_ID), TOPICS, st.binary(max_size=300),
    st.sampled_from((1, 2)), st.booleans(), st.binary(max_size=20),
)
STEPPED = st.builds(Stepped, st.integers(1, 2**63 - 1), st.sampled_from(list(Event)),
                    st.integers(0, MAX_PACKET_ID))


RECEIVED = st.builds(
    lambda pid, topic, payload, retain, dup, props: Received(
        IncomingMessage(pid, topic, payload, 2, retain, dup, props)),
    st.integers(1, MAX_PACKET_ID), TOPICS, st.binary(max_size=300), st.booleans(),
    st.booleans(), st.binary(max_size=20),
)
RELEASED = st.builds(Released, st.integers(1, MAX_PACKET_ID))
BINARY = st.one_of(ACCEPTED, STEPPED, RECEIVED, RELEASED)


@FAST
@given(BINARY)
def test_binary_records_round_trip(rec: Accepted | Stepped | Received | Released) -> None:
    data = codec.encode_record(rec)
    assert data[:1] in codec.BINARY_TAGS
    assert codec.decode_record(data) == rec


@FAST
@given(BINARY, st.data())
def test_every_truncation_or_extension_of_a_binary_record_is_refused(
    rec: Accepted | Stepped | Received | Released, data: st.DataObject
) -> None:
    raw = codec.encode_record(rec)
    n = data.draw(st.integers(1, len(raw) - 1))
    with pytest.raises(StateError):
        codec.decode_record(raw[:n])
    with pytest.raises(StateError):
        codec.decode_record(raw + data.draw(st.binary(min_size=1, max_size=8)))


def _decoded_queued(data: bytes) -> tuple[OutgoingMessage, int] | None:
    """What the careful path gives for a disk-queue frame: its queued message and size."""
    try:
        rec = codec.decode_record(data)
    except StateError:
        return None
    if type(rec) is not Accepted or rec.message.packet_id or data[:1] != b"b":
        return None
    m = rec.message
    return m, len(m.payload) + len(m.topic.encode()) + len(m.properties)


@FAST
@given(ACCEPTED, st.data())
def test_decode_queued_agrees_with_decode_record(rec: Accepted, data: st.DataObject) -> None:
    """The disk queue's read-back path (``decode_queued``) gives exactly what ``decode_record``
    gives for a queued message, with its MaxQueuedBytes size, and None for every record the
    careful path refuses or that holds a packet id (a frame byte changed or cut too)."""
    raw = bytearray(codec.encode_record(rec))
    if data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    assert decode_queued(bytes(raw)) == _decoded_queued(bytes(raw))


@FAST
@given(st.binary(max_size=80))
def test_decode_queued_of_random_bytes_is_none_or_the_careful_paths_message(raw: bytes) -> None:
    assert decode_queued(b"b" + raw) == _decoded_queued(b"b" + raw)


def test_decode_queued_refuses_an_older_a_record_and_a_nan_time() -> None:
    """An ``a`` record (no publish time) is left to ``decode_record``; a NaN time is refused."""
    m = OutgoingMessage(5, 0, "t", b"p", 1, False, b"", accepted_at=float("nan"))
    assert decode_queued(encode_message(m)) is None
    a = struct.pack(">cQHBBHII", b"a", 5, 0, 1, 0, 1, 1, 0) + b"tp"
    assert decode_queued(a) is None
    assert codec.decode_record(a) == Accepted(replace(m, accepted_at=0.0))


@FAST
@given(st.sampled_from(codec.BINARY_TAGS), st.binary(max_size=60))
def test_random_binary_records_give_a_record_or_state_error(tag: bytes, rest: bytes) -> None:
    try:
        rec = codec.decode_record(tag + rest)
    except StateError:
        return
    assert codec.encode_record(rec) == tag + rest  # accepted bytes are exactly a record's bytes


_A = codec.encode_record(Accepted(OutgoingMessage(1, 1, "t", b"", 1)))  # qos at 11, retain 12


@pytest.mark.parametrize("bad", [
    b"s" + b"\x00" * 8 + b"\x00\x00\x01",  # seq 0
    b"s" + b"\x00" * 7 + b"\x01" + b"\x09\x00\x01",  # unknown event code
    _A + b"!",  # a byte more than its lengths say
    _A[:-1] + b"\xff",  # a topic that is not UTF-8
    _A[:-1] + b"\x00",  # U+0000 in the topic
    _A[:11] + b"\x03" + _A[12:],  # qos 3
    _A[:12] + b"\x02" + _A[13:],  # retain 2
    _A[:13] + b"\x00\x00" + _A[15:-1],  # an empty topic
], ids=["seq-0", "event", "lengths", "utf8", "nul", "qos", "retain", "empty-topic"])
def test_bad_binary_records_are_state_error(bad: bytes) -> None:
    with pytest.raises(StateError):
        codec.decode_record(bad)


def test_format_1_json_records_are_still_read() -> None:
    # journals written before records became binary replay unchanged
    st_ = SessionState(client_id="c", clean_session=False)
    a = codec.decode_record(b'["A",1,1,"t/1","aGk=",2,true,""]')
    assert a == Accepted(OutgoingMessage(1, 1, "t/1", b"hi", 2, True, b""))
    st_.apply(a)
    s = codec.decode_record(b'["S",1,"send",1]')
    assert s == Stepped(1, Event.SEND, 1)
    st_.apply(s)
    assert st_.outgoing[1].sent


def test_format_1_json_incoming_records_are_still_read() -> None:
    """Journals written before the binary incoming records hold them as JSON."""
    assert codec.decode_record(b'["L",7]') == Released(7)
    rec = codec.decode_record(b'["R",7,"in/t","aGk=",true,false,""]')
    assert rec == Received(IncomingMessage(7, "in/t", b"hi", 2, True, False, b""))


def test_the_fast_constructors_belong_to_their_module() -> None:
    """``quick_init``'s generated ``__init__`` names its class's module (pydoc of Python 3.13
    fails on a function whose ``__module__`` is None)."""
    import pydoc

    import mqttsession.events as events_mod

    for cls in (Accepted, Stepped, Received, OutgoingMessage, events_mod.ConnectedEvent):
        assert cls.__init__.__module__ == cls.__module__, cls
    plain = pydoc.plaintext  # type: ignore[attr-defined]  # (not in typeshed)
    assert "ConnectedEvent" in pydoc.render_doc(events_mod.ConnectedEvent, renderer=plain)


@FAST
@given(st.integers(1, MAX_PACKET_ID))
def test_taken_records_round_trip(pid: int) -> None:
    rec = Taken(pid)
    assert codec.decode_record(codec.encode_record(rec)) == rec


def test_taken_keeps_the_message_and_its_id_until_released() -> None:
    s = SessionState()
    s.configure(client_id="c", clean_session=False)
    s.receive(5, "in/t", b"x")
    with pytest.raises(TransitionError):
        s.apply(Taken(6))  # not held
    assert s.take(5) == Taken(5)
    assert s.incoming[5].taken and s.incoming[5].payload == b"x"
    assert s.receive(5, "in/t", b"x") is None  # its resend is a duplicate
    with pytest.raises(TransitionError):
        s.apply(Taken(5))  # taken once
    again = codec.decode(codec.encode(s))
    assert again.incoming[5].taken
    s.release(5)
    assert not s.incoming


@FAST
@given(st.integers(1, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_spool_marks_round_trip_and_only_raise_spool_last(seq: int, before: int) -> None:
    """A ``SpoolMark`` (a disk-queue segment begun at ``seq``) reads back as written and
    raises ``spool_last`` to it, never lowers it; a seq below 1 is refused."""
    from mqttsession.records import SpoolMark  # noqa: PLC0415

    rec = SpoolMark(seq)
    assert codec.decode_record(codec.encode_record(rec)) == rec
    s = SessionState()
    s.spool_last = before
    s.apply(rec)
    assert s.spool_last == max(before, seq)
    with pytest.raises(StateError):
        codec.decode_record(codec.encode_record(SpoolMark(0)))
