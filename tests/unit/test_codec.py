"""The save_session() text: encode/decode round trips, and every kind of bad input -> StateError."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import re
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import mqttsession
from mqttsession import NewerFormatError, SavedState, StateError, codec, load_state, session_expired
from mqttsession.state import IncomingMessage, OutgoingMessage, Phase, SessionState

from ._support import (
    FAST,
    PREFIX,
    PREFIX3,
    dump,
    sample_state,
    text_from_obj,
    valid_states,
    wrap,
)

DECODERS: list[Callable[[Any], object]] = [
    codec.decode,
    load_state,
    lambda t: session_expired(t, 1e9),
]
DECODER_IDS = ["decode", "load_state", "session_expired"]


def assert_all_refuse(data: object) -> None:
    """Every public reader raises StateError (never another exception) on ``data``."""
    for fn in DECODERS:
        with pytest.raises(StateError):
            fn(data)


# =========================================================================== round trips


@FAST
@given(valid_states())
@example(SessionState())
@example(sample_state())
def test_encode_decode_round_trip(state: SessionState) -> None:
    text = codec.encode(state)
    assert isinstance(text, str) and "\n" not in text
    assert text.startswith(PREFIX3)
    again = codec.decode(text)
    assert again == state
    assert again.snapshot_fields() == state.snapshot_fields()
    assert list(again.outgoing) == list(state.outgoing)  # order kept [MQTT-4.6.0-1]
    assert again.outgoing_by_packet_id(0) is None
    for m in state.outgoing.values():
        if m.packet_id:
            assert again.outgoing_by_packet_id(m.packet_id) == m
    assert codec.encode(again) == text  # stable text
    assert codec.decode(text.encode("utf-8")) == state  # bytes in
    assert codec.decode(bytearray(text.encode("utf-8"))) == state
    assert codec.decode("  " + text + "\n") == state  # surrounding whitespace is fine


@FAST
@given(valid_states())
def test_load_state_gives_a_matching_view(state: SessionState) -> None:
    view = load_state(codec.encode(state))
    assert isinstance(view, SavedState)
    assert view == SavedState.of(state)
    assert (view.client_id, view.protocol_version, view.clean_session,
            view.session_expiry_interval, view.broker, view.connected_at, view.disconnected_at,
            view.last_activity) == (
        state.client_id, state.protocol_version, state.clean_session,
        state.session_expiry_interval, state.broker, state.connected_at, state.disconnected_at,
        state.last_activity)
    assert view.outgoing == tuple(state.outgoing.values())
    assert view.incoming == tuple(state.incoming.values())
    assert dict(view.subscriptions) == state.subscriptions
    assert view.never_sent == tuple(m for m in state.outgoing.values() if m.phase is Phase.QUEUED)
    assert view.in_flight == tuple(m for m in state.outgoing.values() if m.phase is not Phase.QUEUED)
    with pytest.raises(TypeError):
        view.subscriptions["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        view.client_id = "other"  # type: ignore[misc]


def test_public_api_exports() -> None:
    assert mqttsession.load_state is load_state
    assert mqttsession.session_expired is session_expired
    for name in mqttsession.__all__:
        assert hasattr(mqttsession, name)


def test_sha256_covers_the_state_body() -> None:
    text = codec.encode(sample_state())
    digest = text[len(PREFIX):len(PREFIX) + 64]
    body = text[len(PREFIX) + 64 + len('","state":'):-1]
    assert hashlib.sha256(body.encode("utf-8")).hexdigest() == digest
    assert json.loads(text)["state"] == json.loads(body)
    assert wrap(body, version=3) == text  # the test helper builds texts exactly like encode


# =========================================================================== garbage in


@settings(FAST, max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_raise_state_error(data: bytes) -> None:
    assert_all_refuse(data)


ANY_CHAR = st.integers(0, 0x10FFFF).map(chr)  # includes lone surrogates and U+0000


@settings(FAST, max_examples=150)
@given(st.one_of(st.text(max_size=300), st.text(ANY_CHAR, max_size=100)))
def test_random_text_raises_state_error(text: str) -> None:
    assert_all_refuse(text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)


@settings(FAST, max_examples=100)
@given(JSONISH)
def test_random_json_raises_state_error(obj: object) -> None:
    assert_all_refuse(json.dumps(obj))


@settings(FAST, max_examples=100)
@given(JSONISH)
def test_random_state_objects_with_valid_checksum_raise_state_error(obj: object) -> None:
    """The field validator itself (the checksum passes) refuses anything that is not a state."""
    assert_all_refuse(text_from_obj(obj))


@pytest.mark.parametrize("bad", [None, 42, 4.2, [], {}, object(), ["text"], True],
                         ids=lambda v: type(v).__name__)
def test_non_text_input_raises_state_error(bad: object) -> None:
    assert_all_refuse(bad)


@pytest.mark.parametrize("bad", ["", " ", "\n\t", "null", "[]", '"x"', "1", "{}", "{", "}",
                                 "NaN", "Infinity", "[" * 100_000, '{"format":"mqttsession"}'])
def test_degenerate_texts_raise_state_error(bad: str) -> None:
    assert_all_refuse(bad)
    assert_all_refuse(bad.encode("utf-8"))


def test_non_utf8_bytes_raise_state_error() -> None:
    raw = codec.encode(sample_state()).encode("utf-8")
    assert_all_refuse(raw.replace(b'"a/b"', b'"a\xffb"'))
    assert_all_refuse(codec.encode(sample_state()).encode("utf-16"))


# =========================================================================== truncation


def _unicode_state() -> SessionState:
    s = SessionState(client_id="ü-€-𝄞", protocol_version=5, session_expiry_interval=0xFFFFFFFF)
    s.accept("ü/€/𝄞\x01", "π".encode() * 3, 2, properties=b"\x26\x00\x01a\x00\x01b")
    s.send(1)
    s.receive(65535, "in/ß", b"\x00")
    s.subscribe("+/ü/#", 2)
    s.connected(1.5e9, "bröker", True)
    return s


TRUNCATION_STATES = [SessionState(), sample_state(), _unicode_state()]


@pytest.mark.parametrize("state", TRUNCATION_STATES, ids=["empty", "sample", "unicode"])
def test_every_truncation_raises_state_error(state: SessionState) -> None:
    text = codec.encode(state)
    raw = text.encode("utf-8")
    for n in range(len(text)):
        with pytest.raises(StateError):
            codec.decode(text[:n])
    for n in range(len(raw)):
        with pytest.raises(StateError):
            codec.decode(raw[:n])
    assert codec.decode(text) == state


def test_every_truncation_refused_by_load_state_and_session_expired() -> None:
    text = codec.encode(sample_state())
    for n in range(0, len(text), 7):
        assert_all_refuse(text[:n])


# =========================================================================== substitution


def _modest_state() -> SessionState:
    s = SessionState(client_id="gw", protocol_version=5, session_expiry_interval=7)
    s.accept("a/b", b"hi", 2)
    s.send(1)
    s.receive(9, "in", b"x")
    s.subscribe("a/+", 1)
    s.connected(100.25, None, False)
    return s


def _replacements(orig: int) -> set[int]:
    """A handful of bytes, plus one of the same class, so many substitutions stay valid JSON."""
    out = {ord(c) for c in '0 a"}\\'} | {0x00, 0xFF, 0x80}
    c = chr(orig)
    if c in string.digits:
        out.add(ord("7" if c != "7" else "3"))  # a digit in a number or in the checksum
    if c in "abcdef":
        out.add(ord("e" if c != "e" else "b"))  # a hex digit of the checksum
        out.add(ord(c.upper()))
    if c.isalpha():
        out.add(ord("q" if c != "q" else "z"))  # a letter in a topic or a key
    out.discard(orig)
    return out


def test_every_single_byte_substitution_raises_state_error() -> None:
    """Exhaustive: every position x a handful of bytes, incl. ones that keep the JSON valid."""
    raw = codec.encode(_modest_state()).encode("utf-8")
    assert 250 < len(raw) < 700
    valid_json = 0
    tried = 0
    for i, orig in enumerate(raw):
        for b in _replacements(orig):
            mutated = raw[:i] + bytes([b]) + raw[i + 1:]
            tried += 1
            try:
                json.loads(mutated)
                valid_json += 1
            except ValueError:
                pass
            with pytest.raises(StateError):
                codec.decode(mutated)
    assert tried > 2500
    assert valid_json > 300  # many substitutions kept the JSON valid: only the checksum caught them


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"a/b"', '"a/c"'),  # a letter in a topic
        ('"qos":2', '"qos":1'),  # a digit in a number (a subscription's)
        ('[1,1,', '[1,2,'),  # an outgoing message's packet id
        ('"session_expiry_interval":7', '"session_expiry_interval":8'),
        ('"await_pubrec"', '"await_pubcom"'),
        ("100.25", "100.35"),
        ('"client_id":"gw"', '"client_id":"gx"'),
        ('"retain":false', '"retain":true '),  # an incoming message's
    ],
)
def test_edits_that_keep_the_json_valid_are_caught_by_the_checksum(old: str, new: str) -> None:
    text = codec.encode(_modest_state())
    assert old in text
    changed = text.replace(old, new, 1)
    json.loads(changed)  # still valid JSON
    with pytest.raises(StateError, match="checksum"):
        codec.decode(changed)


def test_checksum_hex_digit_changed() -> None:
    text = codec.encode(_modest_state())
    i = len(PREFIX) + 10
    for c in "0123456789abcdef":
        if c != text[i]:
            with pytest.raises(StateError):
                codec.decode(text[:i] + c + text[i + 1:])


@settings(FAST, max_examples=100)
@given(valid_states(), st.data())
def test_random_single_char_substitution_raises_state_error(state: SessionState, data) -> None:
    text = codec.encode(state)
    i = data.draw(st.integers(0, len(text) - 1), label="position")
    c = data.draw(st.characters(codec="utf-8"), label="char")  # no lone surrogates here, see below
    assume(c != text[i])
    assert_all_refuse(text[:i] + c + text[i + 1:])


@settings(FAST, max_examples=100)
@given(valid_states(), st.data())
def test_random_single_byte_substitution_raises_state_error(state: SessionState, data) -> None:
    raw = codec.encode(state).encode("utf-8")
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    b = data.draw(st.integers(0, 255), label="byte")
    assume(b != raw[i])
    assert_all_refuse(raw[:i] + bytes([b]) + raw[i + 1:])


# =========================================================================== outer document


def _outer(**changes: Any) -> str:
    """The outer document rebuilt with changes (checksum left valid for the body)."""
    text = codec.encode(_modest_state())
    body = text[len(PREFIX) + 64 + len('","state":'):-1]
    doc = {"format": "mqttsession", "version": 3,
           "sha256": hashlib.sha256(body.encode()).hexdigest()}
    doc.update(changes)
    head = dump({k: v for k, v in doc.items()})[:-1]
    return head + ',"state":' + body + "}"


def test_outer_rebuild_is_the_encoded_text() -> None:
    assert _outer() == codec.encode(_modest_state())


def _newer(version: int) -> str:
    """A text as a newer version may write it: its state has a field this one does not know."""
    text = codec.encode(_modest_state())
    state = json.loads(text[len(PREFIX) + 64 + len('","state":'):-1])
    state["a_newer_field"] = 1
    body = dump(state)
    head = dump({"format": "mqttsession", "version": version,
                 "sha256": hashlib.sha256(body.encode()).hexdigest()})[:-1]
    return head + ',"state":' + body + "}"


@pytest.mark.parametrize("version", [4, 100, 2**40])
def test_newer_format_version_is_refused_saying_so(version: int) -> None:
    with pytest.raises(NewerFormatError, match="newer"):
        codec.decode(_newer(version))
    with pytest.raises(NewerFormatError, match="newer"):
        load_state(_newer(version))


@pytest.mark.parametrize("version", [4, 7, 9])
def test_a_damaged_version_digit_is_damage_not_newer(version: int) -> None:
    """The checksum does not cover the version: a digit gone bad over a body this version
    reads is damage (kept aside by a state file), never "newer" (left in place for ever: a
    review's finding)."""
    with pytest.raises(StateError, match="version field is damaged") as info:
        codec.decode(_outer(version=version))
    assert not isinstance(info.value, NewerFormatError)


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, None, True, [1]])
def test_bad_format_version_is_refused(version: object) -> None:
    assert_all_refuse(_outer(version=version))


@pytest.mark.parametrize("fmt", ["mqttsessions", "MQTTSESSION", "", None, 1, ["mqttsession"]])
def test_wrong_format_name_is_refused(fmt: object) -> None:
    with pytest.raises(StateError, match="not an mqttsession state"):
        codec.decode(_outer(format=fmt))


def test_extra_outer_field_is_refused() -> None:
    assert_all_refuse(_outer(extra=1))


def test_missing_state_or_checksum_is_refused() -> None:
    assert_all_refuse('{"format":"mqttsession","version":1,"sha256":"' + "0" * 64 + '"}')
    assert_all_refuse('{"format":"mqttsession","version":1,"state":{}}')


def test_changed_layout_is_refused_even_with_valid_checksum() -> None:
    text = codec.encode(_modest_state())
    doc = json.loads(text)
    for relaid in (
        json.dumps(doc),  # spaces after separators
        json.dumps(doc, separators=(",", ":"), sort_keys=True),  # keys reordered
        text.replace(text[len(PREFIX):len(PREFIX) + 64], text[len(PREFIX):len(PREFIX) + 64].upper()),
    ):
        assert relaid != text
        assert_all_refuse(relaid)


def test_wrong_checksum_with_valid_layout_is_refused() -> None:
    text = codec.encode(_modest_state())
    fake = text[:len(PREFIX)] + hashlib.sha256(b"other").hexdigest() + text[len(PREFIX) + 64:]
    with pytest.raises(StateError, match="checksum"):
        codec.decode(fake)


# =========================================================================== field-level errors
#
# Each text below has a VALID checksum over its (mutated) body, so the error comes from the field
# validator, which must name the field.


def _base_obj() -> dict[str, Any]:
    """Format 1 (outgoing messages as objects): the mutations below name fields by key."""
    return codec.state_to_obj(sample_state(), version=1)


def _as_format_2(obj: dict[str, Any], extra: tuple[Any, ...] = ()) -> dict[str, Any]:
    """The same state in format 2: every outgoing object with exactly the row's keys becomes
    its array; anything else is left for the decoder to refuse. ``extra``: format 3 adds the
    accepted time."""
    row = codec.OUTGOING_ROW[:8]
    obj = copy.deepcopy(obj)
    out = obj.get("outgoing")
    if isinstance(out, list):
        obj["outgoing"] = [
            [m[k] for k in row] + list(extra)
            if isinstance(m, dict) and set(m) == set(row) else m for m in out
        ]
    return obj


def _as_format_3(obj: dict[str, Any]) -> dict[str, Any]:
    return _as_format_2(obj, (0.0,))


def _check(mutate: Callable[[dict[str, Any]], None], match: str, allow_nan: bool = False,
           versions: tuple[int, ...] = (1, 2, 3)) -> None:
    obj = _base_obj()
    mutate(obj)
    for version in versions:
        shaped = obj if version == 1 else _as_format_2(obj) if version == 2 else _as_format_3(obj)
        text = text_from_obj(shaped, allow_nan=allow_nan, version=version)
        for fn in DECODERS:
            with pytest.raises(StateError) as info:
                fn(text)
            assert match in str(info.value), f"v{version}: {match!r} not in {str(info.value)!r}"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]
    return mutate


def test_unmutated_base_decodes() -> None:
    assert codec.decode(text_from_obj(_base_obj())) == sample_state()
    v2 = text_from_obj(_as_format_2(_base_obj()), version=2)
    assert codec.decode(v2) == sample_state()
    v3 = text_from_obj(_as_format_3(_base_obj()), version=3)
    assert codec.decode(v3) == sample_state() and v3 == codec.encode(sample_state())


FIELD_ERRORS = [
    # (id, mutation, text the message must contain)
    ("qos-3", _set("outgoing.0.qos", 3), "state.outgoing[0].qos"),
    ("qos-0", _set("outgoing.0.qos", 0), "state.outgoing[0].qos"),
    ("qos-str", _set("outgoing.0.qos", "1"), "state.outgoing[0].qos"),
    ("qos-bool", _set("outgoing.0.qos", True), "state.outgoing[0].qos"),
    ("qos-float", _set("outgoing.0.qos", 1.0), "state.outgoing[0].qos"),
    ("phase-unknown", _set("outgoing.1.phase", "sent"), "state.outgoing[1].phase"),
    ("phase-not-str", _set("outgoing.1.phase", 1), "state.outgoing[1].phase"),
    ("phase-for-qos1", _set("outgoing.0.phase", "await_pubcomp"), "phase await_pubcomp is not valid for qos 1"),
    ("phase-for-qos2", _set("outgoing.1.phase", "await_puback"), "phase await_puback is not valid for qos 2"),
    ("dup-packet-id", _set("outgoing.1.packet_id", 5), "packet_id 5 is held twice"),
    ("sent-id-0", _set("outgoing.0.packet_id", 0), "a sent message must hold a packet id"),
    ("packet-id-big", _set("outgoing.0.packet_id", 65536), "state.outgoing[0].packet_id"),
    ("packet-id-neg", _set("outgoing.0.packet_id", -1), "state.outgoing[0].packet_id"),
    ("seq-not-below-next", _set("next_seq", 2), "not below next_seq"),
    ("seq-0", _set("outgoing.0.seq", 0), "state.outgoing[0].seq"),
    ("seq-dup", _set("outgoing.1.seq", 1), "state.outgoing[1].seq"),
    ("seq-falling", lambda o: o["outgoing"].reverse(), "sequence numbers must rise"),
    ("next-seq-0", _set("next_seq", 0), "state.next_seq"),
    ("payload-not-b64", _set("outgoing.0.payload", "not base64!"), "state.outgoing[0].payload"),
    ("payload-bad-pad", _set("outgoing.0.payload", "abc"), "state.outgoing[0].payload"),
    ("payload-not-str", _set("outgoing.0.payload", [1, 2]), "state.outgoing[0].payload"),
    ("properties-b64", _set("outgoing.1.properties", "%%%%"), "state.outgoing[1].properties"),
    ("in-payload-b64", _set("incoming.0.payload", "a"), "state.incoming[0].payload"),
    ("topic-empty", _set("outgoing.0.topic", ""), "state.outgoing[0].topic"),
    ("topic-nul", _set("outgoing.0.topic", "a\x00"), "state.outgoing[0].topic"),
    ("topic-wildcard", _set("outgoing.0.topic", "a/#"), "wildcards"),
    ("topic-not-str", _set("outgoing.0.topic", 5), "state.outgoing[0].topic"),
    ("retain-not-bool", _set("outgoing.0.retain", 0), "state.outgoing[0].retain"),
    ("in-topic-empty", _set("incoming.0.topic", ""), "state.incoming[0].topic"),
    ("in-qos-1", _set("incoming.0.qos", 1), "state.incoming[0].qos"),
    ("in-packet-id-0", _set("incoming.0.packet_id", 0), "state.incoming[0].packet_id"),
    ("in-dup-not-bool", _set("incoming.0.dup", "no"), "state.incoming[0].dup"),
    ("expiry-negative", _set("session_expiry_interval", -1), "state.session_expiry_interval"),
    ("expiry-too-big", _set("session_expiry_interval", 0x100000000), "state.session_expiry_interval"),
    ("expiry-float", _set("session_expiry_interval", 2.5), "state.session_expiry_interval"),
    ("protocol-3", _set("protocol_version", 3), "state.protocol_version"),
    ("clean-not-bool", _set("clean_session", "yes"), "state.clean_session"),
    ("client-id-not-str", _set("client_id", 5), "state.client_id"),
    ("client-id-nul", _set("client_id", "a\x00"), "state.client_id"),
    ("broker-not-str", _set("broker", 1), "state.broker"),
    ("time-str", _set("connected_at", "yesterday"), "state.connected_at"),
    ("time-bool", _set("last_activity", True), "state.last_activity"),
    ("last-packet-id", _set("last_packet_id", 65536), "state.last_packet_id"),
    ("outgoing-not-list", _set("outgoing", {}), "state.outgoing"),
    ("outgoing-item-not-obj", _set("outgoing.0", 5), "state.outgoing[0]"),
    ("subs-qos-3", _set("subscriptions.0.qos", 3), "state.subscriptions[0].qos"),
    ("subs-filter-bad", _set("subscriptions.0.filter", "a/#/b"), "'#' must be the whole last level"),
    ("subs-filter-empty", _set("subscriptions.0.filter", ""), "state.subscriptions[0].filter"),
    ("unknown-field", _set("extra", 1), "state: unknown field 'extra'"),
    ("missing-field", _delete("next_seq"), "state: missing field 'next_seq'"),
    ("unknown-field-out", _set("outgoing.0.extra", 1), "state.outgoing[0]: unknown field 'extra'"),
    ("missing-field-out", _delete("outgoing.0.phase"), "state.outgoing[0]: missing field 'phase'"),
    ("missing-field-in", _delete("incoming.0.dup"), "state.incoming[0]: missing field 'dup'"),
    ("unknown-field-sub", _set("subscriptions.0.x", 1), "state.subscriptions[0]: unknown field 'x'"),
]


@pytest.mark.parametrize(("mutate", "match"), [f[1:] for f in FIELD_ERRORS],
                         ids=[f[0] for f in FIELD_ERRORS])
def test_field_errors_name_the_field(mutate: Callable[[dict[str, Any]], None], match: str) -> None:
    # an outgoing object's own key errors exist in format 1 only (format 2 rows have no keys)
    keyed = match.startswith("state.outgoing[") and " field '" in match
    _check(mutate, match, versions=(1,) if keyed else (1, 2))


@pytest.mark.parametrize(("row", "match"), [
    ({"not": "a row"}, "state.outgoing[0]: expected an array"),
    ([1, 1, "a/b"], "state.outgoing[0]: expected 8 fields, got 3"),
    ("x", "state.outgoing[0]: expected an array"),
])
def test_format_2_rows_of_the_wrong_shape_are_named(row: object, match: str) -> None:
    obj = _as_format_2(_base_obj())
    obj["outgoing"][0] = row
    for fn in DECODERS:
        with pytest.raises(StateError, match=re.escape(match)):
            fn(text_from_obj(obj, version=2))


def test_format_1_text_is_still_read() -> None:
    """Texts saved before format 2 restore unchanged."""
    v1 = text_from_obj(_base_obj(), version=1)
    assert v1.startswith(PREFIX) and '"phase":"await_pubcomp"' in v1
    assert codec.decode(v1) == sample_state()


def test_duplicates_in_incoming_and_subscriptions_are_named() -> None:
    def dup_incoming(obj: dict[str, Any]) -> None:
        obj["incoming"].append(copy.deepcopy(obj["incoming"][0]))

    def dup_sub(obj: dict[str, Any]) -> None:
        obj["subscriptions"].append({"filter": "a/#", "qos": 2})

    _check(dup_incoming, "state.incoming[1].packet_id")
    _check(dup_sub, "state.subscriptions[1].filter")


def test_unanswered_filters_round_trip_and_are_checked() -> None:
    """Filters whose SUBSCRIBE / UNSUBSCRIBE the broker has not answered (format 3, optional:
    absent, none)."""
    state = sample_state()
    state.unanswered = {"x/+", "gone/#"}
    text = codec.encode(state)
    assert '"unanswered":["gone/#","x/+"]' in text
    assert codec.decode(text) == state and codec.decode(text).unanswered == {"x/+", "gone/#"}
    assert "unanswered" not in codec.encode(sample_state())

    def bad(obj: dict[str, Any]) -> None:
        obj["unanswered"] = ["x/#/y"]

    _check(bad, "state.unanswered", versions=(3,))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["connected_at", "disconnected_at", "last_activity"])
def test_non_finite_time_is_refused(constant: str, field: str) -> None:
    """json text `NaN` / `Infinity` in a time (the checksum is valid for it)."""
    value = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[constant]
    obj = _base_obj()
    obj[field] = value
    body = dump(obj, allow_nan=True)
    assert f'"{field}":{constant}' in body
    for fn in DECODERS:
        with pytest.raises(StateError, match=constant.lstrip("-")):
            fn(wrap(body))


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_overflowing_float_time_is_refused_naming_the_field(literal: str) -> None:
    """1e400 parses to inf without being the `Infinity` constant: the validator catches it."""
    body = dump(_base_obj()).replace('"connected_at":1000.0', f'"connected_at":{literal}')
    assert literal in body
    for fn in DECODERS:
        with pytest.raises(StateError, match="state.connected_at"):
            fn(wrap(body))


def test_nan_elsewhere_is_refused() -> None:
    body = dump(_base_obj()).replace('"next_seq":3', '"next_seq":NaN')
    assert_all_refuse(wrap(body))


def test_deeply_nested_state_is_refused() -> None:
    body = dump(_base_obj()).replace('"broker":"localhost:1883"',
                                     '"broker":' + "[" * 50_000 + "]" * 50_000)
    assert_all_refuse(wrap(body))


def test_topic_too_long_is_refused() -> None:
    _check(_set("outgoing.0.topic", "x" * 65536), "longer than 65535 bytes")


def test_outgoing_messages_decode_to_the_right_types() -> None:
    s = codec.decode(codec.encode(sample_state()))
    m = s.outgoing[2]
    assert isinstance(m, OutgoingMessage) and m.phase is Phase.AWAIT_PUBCOMP
    assert m.payload == b"\x00\xff" and m.properties == b"\x01" and m.retain is True
    assert isinstance(s.incoming[9], IncomingMessage) and s.incoming[9].dup is True
    assert isinstance(s.connected_at, float)


def test_integer_times_are_read_as_floats() -> None:
    obj = _base_obj()
    obj["connected_at"] = 1000
    s = codec.decode(text_from_obj(obj))
    assert s.connected_at == 1000.0 and type(s.connected_at) is float


# =========================================================================== BUGS found (see report)


def test_lone_surrogate_in_a_string_raises_state_error() -> None:
    """A str input with a lone surrogate inside a JSON string (e.g. a topic) must be refused with
    StateError; decode() reaches body.encode('utf-8') for the checksum, which raises
    UnicodeEncodeError instead."""
    text = codec.encode(_modest_state())
    assert text.count('"a/b"') == 1
    assert_all_refuse(text.replace('"a/b"', '"a\ud800b"'))


@pytest.mark.parametrize("field", ["connected_at", "disconnected_at", "last_activity"])
def test_huge_integer_time_raises_state_error(field: str) -> None:
    """A JSON integer too large for a float (valid checksum) must give StateError naming the
    field; _Fields.get_opt_time calls math.isfinite(int), which raises OverflowError."""
    obj = _base_obj()
    obj[field] = 10**400
    text = text_from_obj(obj)
    for fn in DECODERS:
        with pytest.raises(StateError, match=f"state.{field}"):
            fn(text)


@FAST
@given(valid_states())
def test_format_1_and_format_2_texts_of_a_state_decode_alike(state: SessionState) -> None:
    v1 = text_from_obj(codec.state_to_obj(state, version=1), version=1)
    v2 = text_from_obj(codec.state_to_obj(state, version=2), version=2)
    v3 = codec.encode(state)
    assert v3 == text_from_obj(codec.state_to_obj(state), version=3)
    assert codec.decode(v1) == codec.decode(v2) == codec.decode(v3) == state


# =========================================================================== mutation-hunt pins
#
# Each test below pins one rule the decoder's fast path (``_row_quick``) and its checked path
# (``_row`` / ``_outgoing`` / ``obj_to_state``) must agree on; hand-built texts carry a VALID
# checksum, so only the field rules can refuse them.


def _v3_obj(**extra: Any) -> dict[str, Any]:
    """``sample_state()`` as a format 3 object (outgoing rows of 9 fields), with ``extra``."""
    obj = _as_format_3(_base_obj())
    obj.update(extra)
    return obj


def _queued_row(accepted_at: object) -> list[Any]:
    """A never-sent QoS 1 message (packet id 0) as a format 3 row: seq 3."""
    return [3, 0, "q", "", 1, False, "", "queued", accepted_at]


def test_integer_accepted_at_takes_the_checked_path_and_reads_as_float() -> None:
    """An ``accepted_at`` written as a JSON integer is not the fast path's float: the checked
    path reads it (a queued message's packet id 0 included) and gives a float."""
    obj = _v3_obj(next_seq=4)
    obj["outgoing"].append(_queued_row(5))
    state = codec.decode(text_from_obj(obj, version=3))
    m = state.outgoing[3]
    assert m.packet_id == 0 and m.phase is Phase.QUEUED
    assert m.accepted_at == 5.0 and type(m.accepted_at) is float


@pytest.mark.parametrize("literal", ["-1", "-0.5", "1e400"])
def test_accepted_at_negative_or_infinite_is_refused(literal: str) -> None:
    """``accepted_at`` is a finite time >= 0 on either path (1e400 parses to inf)."""
    obj = _v3_obj(next_seq=4)
    obj["outgoing"].append(_queued_row(123456.25))
    body = dump(obj).replace("123456.25", literal)
    assert literal in body
    text = wrap(body, version=3)
    for fn in DECODERS:
        with pytest.raises(StateError, match=re.escape("state.outgoing[2].accepted_at")):
            fn(text)


def test_incoming_taken_false_reads_as_not_taken() -> None:
    """An incoming message's optional ``taken`` is read for its value, not its presence."""
    obj = _v3_obj()
    obj["incoming"][0]["taken"] = False
    assert codec.decode(text_from_obj(obj, version=3)).incoming[9].taken is False
    obj["incoming"][0]["taken"] = True
    assert codec.decode(text_from_obj(obj, version=3)).incoming[9].taken is True


def test_untaken_incoming_is_written_without_taken() -> None:
    """``taken`` is written only when true (format 3, optional)."""
    assert '"taken"' not in codec.encode(sample_state())


@pytest.mark.parametrize(("version", "row"), [
    (3, [3, 0, "q", "", 1, False, "", "queued", 0.0, "extra"]),
    (2, [3, 0, "q", "", 1, False, "", "queued", 0.0]),  # a format 3 row in a format 2 text
])
def test_a_row_with_a_field_too_many_is_refused(version: int, row: list[Any]) -> None:
    """A row must have exactly its format's fields: never truncated to fit."""
    obj = _v3_obj(next_seq=4) if version == 3 else _as_format_2(_base_obj())
    obj["next_seq"] = 4
    obj["outgoing"].append(row)
    text = text_from_obj(obj, version=version)
    width = len(codec.OUTGOING_ROW) - (3 - version)
    for fn in DECODERS:
        with pytest.raises(StateError, match=re.escape(
                f"state.outgoing[2]: expected {width} fields, got {len(row)}")):
            fn(text)


@pytest.mark.parametrize("key", ["spool_next", "spool_last"])
def test_spool_bounds_of_zero_are_refused(key: str) -> None:
    """``spool_next`` / ``spool_last`` are written only when set: a 0 in the text is damage."""
    text = text_from_obj(_v3_obj(**{key: 0}), version=3)
    for fn in DECODERS:
        with pytest.raises(StateError, match=f"state.{key}"):
            fn(text)


@pytest.mark.parametrize("reserved", [[1, 2, 3], [0, 5], [True, 5], [5, True], [1, "2"], [7], []])
def test_bad_reserved_ranges_are_refused(reserved: list[Any]) -> None:
    """``reserved`` is exactly two packet ids 1..65535 (integers, not booleans)."""
    text = text_from_obj(_v3_obj(reserved=reserved), version=3)
    for fn in DECODERS:
        with pytest.raises(StateError, match="state.reserved"):
            fn(text)


def test_a_good_reserved_range_is_read() -> None:
    state = codec.decode(text_from_obj(_v3_obj(reserved=[7, 262]), version=3))
    assert (state.reserved_first, state.reserved_last) == (7, 262)


def test_null_clock_offset_is_refused() -> None:
    """``clock_offset`` present is a number (absent: 0); null is damage."""
    text = text_from_obj(_v3_obj(clock_offset=None), version=3)
    for fn in DECODERS:
        with pytest.raises(StateError, match="state.clock_offset"):
            fn(text)


@pytest.mark.parametrize(("key", "value"), [
    ("spool_next", 1), ("spool_last", 1), ("orphans", []), ("reserved", [1, 2]),
    ("clock_offset", 1.0), ("unanswered", []),
])
def test_format_3_optional_fields_are_unknown_in_format_2(key: str, value: Any) -> None:
    """Format 2 had none of format 3's optional fields: one in a format 2 text is refused."""
    obj = _as_format_2(_base_obj())
    obj[key] = value
    text = text_from_obj(obj, version=2)
    for fn in DECODERS:
        with pytest.raises(StateError, match=f"state: unknown field '{key}'"):
            fn(text)


def test_older_formats_are_written_without_format_3_fields() -> None:
    """``state_to_obj`` for format 1 or 2 leaves out every format 3 field (its text must read
    back as that format)."""
    state = sample_state()
    state.spool_next, state.spool_last = 2, 5
    state.orphans = [IncomingMessage(11, "o", b"x")]
    state.reserved_first, state.reserved_last = 7, 262
    state.clock_offset = 1.5
    state.unanswered = {"x/+"}
    full = codec.state_to_obj(state)
    assert {"spool_next", "spool_last", "orphans", "reserved", "clock_offset",
            "unanswered"} <= set(full)
    for version in (1, 2):
        obj = codec.state_to_obj(state, version=version)
        assert set(obj) == set(_base_obj()), version


def test_non_ascii_base64_in_a_row_is_a_state_error() -> None:
    """A payload with a non-ASCII character (base64 decoding raises plain ValueError there)
    is refused as StateError naming the field, in every format."""
    _check(_set("outgoing.0.payload", "aé=="), "state.outgoing[0].payload")
    _check(_set("outgoing.1.properties", "é"), "state.outgoing[1].properties")


def test_decode_with_digest_gives_the_texts_sha256() -> None:
    """The digest returned is the text's whole 64-hex ``sha256`` field (it names a snapshot)."""
    text = codec.encode(sample_state())
    state, digest = codec.decode_with_digest(text)
    assert state == sample_state()
    assert digest == json.loads(text)["sha256"] and len(digest) == 64


def test_a_field_after_state_covered_by_the_checksum_is_refused() -> None:
    """An outer field after ``state`` that the checksum covers along with the body still makes
    the document's fields wrong."""
    body = dump(_base_obj())
    covered = body + ',"extra":1'
    text = f'{PREFIX}{hashlib.sha256(covered.encode()).hexdigest()}","state":{covered}}}'
    assert json.loads(text)["extra"] == 1
    for fn in DECODERS:
        with pytest.raises(StateError, match="state text has fields"):
            fn(text)


def test_decode_leaves_a_disabled_collector_disabled() -> None:
    """Decoding pauses the cyclic collector and restores it as it was, off included."""
    text = codec.encode(sample_state())
    was = gc.isenabled()
    gc.disable()
    try:
        codec.decode(text)
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()
    codec.decode(text)
    assert gc.isenabled() == was


def test_unanswered_filters_are_written_sorted() -> None:
    """The same state gives the same text (and sha256) in every process: ``unanswered`` (a
    set) is written in sorted order, whatever the hash seed."""
    state = sample_state()
    filters = [f"f/{c}" for c in "qwertyuiopasdfgh"]
    state.unanswered = set(filters)
    written = json.loads(codec.encode(state))["state"]["unanswered"]
    assert written == sorted(filters)
