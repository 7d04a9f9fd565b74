"""SessionState <-> versioned JSON text, the format of ``save_session()``.

The text is one line::

    {"format":"mqttsession","version":2,"sha256":"<64 hex>","state":{...}}

Format 2 writes each outgoing message as an array, in the order of ``OUTGOING_ROW``; format 1
(still read) wrote it as an object with those keys (arrays parse almost three times as fast,
which a restore of 100,000 messages feels). ``sha256`` covers the exact bytes of the ``state``
value as written, so any change to the text (even one that still parses) is caught. Payloads and
MQTT 5 properties (paho's packed bytes) are base64. Decoding validates every field and raises
``StateError`` naming the first one that is wrong; a newer format version is refused. No pickle,
no eval.
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import json
import math
import re
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Final, Iterator, Mapping

from .errors import StateError, UsageError
from .expiry import effective_interval, expired
from .state import (
    MAX_PACKET_ID,
    Accepted,
    Activity,
    Configured,
    Connected,
    Disconnected,
    Event,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    Received,
    Record,
    Released,
    SessionReset,
    SessionState,
    Stepped,
    Subscribed,
    Unsubscribed,
    validate_topic,
)

__all__ = [
    "FORMAT", "VERSION", "encode", "decode", "SavedState", "load_state", "encode_record",
    "decode_record",
]

FORMAT: Final = "mqttsession"
VERSION: Final = 2
_PREFIXES: Final = {v: f'{{"format":"mqttsession","version":{v},"sha256":"' for v in (1, 2)}
_PREFIX: Final = _PREFIXES[VERSION]  # every prefix has the same length
OUTGOING_ROW: Final = ("seq", "packet_id", "topic", "payload", "qos", "retain", "properties",
                       "phase")  # format 2: the fields of an outgoing message's array
_ROW_TOPIC: Final = OUTGOING_ROW.index("topic")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_PHASES: Final = {p.value: p for p in Phase}


if sys.version_info >= (3, 11):

    def _b64decode(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover

    def _b64decode(text: str) -> bytes:
        return base64.b64decode(text, validate=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dump(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def state_to_obj(state: SessionState, version: int = VERSION) -> dict[str, Any]:
    """The JSON-ready object of one state (field order fixed) in format ``version``."""
    row = outgoing_to_row if version >= 2 else outgoing_to_obj
    return {
        "client_id": state.client_id,
        "protocol_version": state.protocol_version,
        "clean_session": state.clean_session,
        "session_expiry_interval": state.session_expiry_interval,
        "broker": state.broker,
        "connected_at": state.connected_at,
        "disconnected_at": state.disconnected_at,
        "last_activity": state.last_activity,
        "next_seq": state.next_seq,
        "last_packet_id": state.last_packet_id,
        "outgoing": [row(m) for m in state.outgoing.values()],
        "incoming": [incoming_to_obj(m) for m in state.incoming.values()],
        "subscriptions": [{"filter": f, "qos": q} for f, q in state.subscriptions.items()],
    }


def outgoing_to_obj(m: OutgoingMessage) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "packet_id": m.packet_id,
        "topic": m.topic,
        "payload": _b64(m.payload),
        "qos": m.qos,
        "retain": m.retain,
        "properties": _b64(m.properties),
        "phase": m.phase.value,
    }


def outgoing_to_row(m: OutgoingMessage) -> list[Any]:
    return [m.seq, m.packet_id, m.topic, _b64(m.payload) if m.payload else "", m.qos, m.retain,
            _b64(m.properties) if m.properties else "", m.phase.value]


def incoming_to_obj(m: IncomingMessage) -> dict[str, Any]:
    return {
        "packet_id": m.packet_id,
        "topic": m.topic,
        "payload": _b64(m.payload),
        "qos": m.qos,
        "retain": m.retain,
        "dup": m.dup,
        "properties": _b64(m.properties),
    }


def encode(state: SessionState) -> str:
    """The text of ``state`` (what ``save_session()`` returns)."""
    body = _dump(state_to_obj(state))
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f'{_PREFIX}{digest}","state":{body}}}'


# --------------------------------------------------------------------------- decoding


def _reject_constant(name: str) -> None:
    raise StateError(f"state text holds {name}, which is not a valid number")


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise StateError(f"state text is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise StateError(f"state text is not valid JSON: {exc}") from None


class _Fields:
    """Reads the fields of one JSON object, naming ``where`` in every error."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: object, where: str, keys: frozenset[str]) -> None:
        if not isinstance(obj, dict):
            raise StateError(f"{where}: expected an object, got {type(obj).__name__}")
        if obj.keys() == keys:  # the usual case, in one comparison
            self.obj: dict[str, Any] = obj
            self.where = where
            return
        missing = keys - obj.keys()
        if missing:
            raise StateError(f"{where}: missing field {sorted(missing)[0]!r}")
        extra = obj.keys() - keys
        if extra:
            raise StateError(f"{where}: unknown field {sorted(extra)[0]!r}")
        self.obj = obj
        self.where = where

    def fail(self, key: str, what: str) -> StateError:
        return StateError(f"{self.where}.{key}: {what}, got {self.obj[key]!r:.80}")

    def get_int(self, key: str, lo: int, hi: int) -> int:
        v = self.obj[key]
        if type(v) is not int or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer {lo}..{hi}")
        return v

    def get_opt_int(self, key: str, lo: int, hi: int) -> int | None:
        return None if self.obj[key] is None else self.get_int(key, lo, hi)

    def get_bool(self, key: str) -> bool:
        v = self.obj[key]
        if type(v) is not bool:
            raise self.fail(key, "expected true or false")
        return v

    def get_str(self, key: str, nonempty: bool = False) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or (nonempty and not v):
            raise self.fail(key, "expected a non-empty string" if nonempty else "expected a string")
        if "\x00" in v:
            raise self.fail(key, "must not contain U+0000")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise self.fail(key, "expected valid UTF-8 text") from None
        return v

    def get_opt_str(self, key: str) -> str | None:
        return None if self.obj[key] is None else self.get_str(key)

    def get_opt_time(self, key: str) -> float | None:
        v = self.obj[key]
        if v is None:
            return None
        try:
            t = float(v) if type(v) in (int, float) else math.nan
        except OverflowError:
            t = math.nan
        if not math.isfinite(t):
            raise self.fail(key, "expected a time in seconds or null")
        return t

    def get_bytes(self, key: str) -> bytes:
        v = self.obj[key]
        if not isinstance(v, str):
            raise self.fail(key, "expected base64 text")
        if not v:
            return b""
        try:
            return _b64decode(v)
        except (binascii.Error, ValueError):
            raise self.fail(key, "expected base64 text") from None

    def get_list(self, key: str) -> list[Any]:
        v = self.obj[key]
        if not isinstance(v, list):
            raise self.fail(key, "expected a list")
        return v


_STATE_KEYS: Final = frozenset(
    "client_id protocol_version clean_session session_expiry_interval broker connected_at"
    " disconnected_at last_activity next_seq last_packet_id outgoing incoming subscriptions"
    .split()
)
_OUT_KEYS: Final = frozenset("seq packet_id topic payload qos retain properties phase".split())
_IN_KEYS: Final = frozenset("packet_id topic payload qos retain dup properties".split())
_SUB_KEYS: Final = frozenset(("filter", "qos"))
_MAX_SEQ: Final = 2**63 - 1


def _outgoing(obj: object, where: str) -> OutgoingMessage:
    f = _Fields(obj, where, _OUT_KEYS)
    phase = _PHASES.get(f.obj["phase"]) if isinstance(f.obj["phase"], str) else None
    if phase is None:
        raise f.fail("phase", f"expected one of {sorted(_PHASES)}")
    return OutgoingMessage(
        seq=f.get_int("seq", 1, _MAX_SEQ),
        packet_id=f.get_int("packet_id", 0, MAX_PACKET_ID),
        topic=f.get_str("topic", nonempty=True),
        payload=f.get_bytes("payload"),
        qos=f.get_int("qos", 1, 2),
        retain=f.get_bool("retain"),
        properties=f.get_bytes("properties"),
        phase=phase,
    )


def _incoming(obj: object, where: str) -> IncomingMessage:
    f = _Fields(obj, where, _IN_KEYS)
    return IncomingMessage(
        packet_id=f.get_int("packet_id", 1, MAX_PACKET_ID),
        topic=f.get_str("topic", nonempty=True),
        payload=f.get_bytes("payload"),
        qos=f.get_int("qos", 2, 2),
        retain=f.get_bool("retain"),
        dup=f.get_bool("dup"),
        properties=f.get_bytes("properties"),
    )


def _outgoing_quick(obj: object, topics: set[str]) -> OutgoingMessage | None:
    """``_row_quick`` for a format 1 object."""
    if type(obj) is not dict or obj.keys() != _OUT_KEYS:
        return None
    return _row_quick([obj[k] for k in OUTGOING_ROW], topics)


def _row_quick(row: object, topics: set[str]) -> OutgoingMessage | None:
    """``_row`` for the usual, valid format 2 array (restoring 100k messages runs this 100k
    times); None sends anything unusual to ``_row``, which names the fault."""
    if type(row) is not list or len(row) != len(OUTGOING_ROW):
        return None
    seq, pid, topic, payload, qos, retain, props, phase = row
    if (type(seq) is not int or not 1 <= seq <= _MAX_SEQ or type(pid) is not int
            or not 0 <= pid <= MAX_PACKET_ID or type(qos) is not int or not 1 <= qos <= 2
            or type(retain) is not bool or type(topic) is not str or topic not in topics
            or type(payload) is not str or type(props) is not str or type(phase) is not str):
        return None
    phase = _PHASES.get(phase)
    if phase is None:
        return None
    try:
        return OutgoingMessage(seq, pid, topic, _b64decode(payload) if payload else b"", qos,
                               retain, _b64decode(props) if props else b"", phase)
    except (binascii.Error, ValueError):
        return None


def _row(row: object, where: str) -> OutgoingMessage:
    """``_outgoing`` for a format 2 array: the same checks, the same messages."""
    if not isinstance(row, list):
        raise StateError(f"{where}: expected an array, got {type(row).__name__}")
    if len(row) != len(OUTGOING_ROW):
        raise StateError(f"{where}: expected {len(OUTGOING_ROW)} fields, got {len(row)}")
    return _outgoing(dict(zip(OUTGOING_ROW, row)), where)


def _good_topic(obj: object, topics: set[str]) -> None:
    """Remember the topic of an outgoing entry once it has passed every check."""
    topic: object = None
    if isinstance(obj, list) and len(obj) == len(OUTGOING_ROW):
        topic = obj[_ROW_TOPIC]
    elif isinstance(obj, dict):
        topic = obj.get("topic")
    if type(topic) is str and topic not in topics:
        try:
            validate_topic(topic)
        except UsageError:
            return  # ``_outgoing`` / ``check_invariants`` report it
        topics.add(topic)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large state is built: it finds no cycles in
    these objects and would rescan them again and again (a third of a 100k restore)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def obj_to_state(obj: object, version: int = VERSION) -> SessionState:
    """Build and check a state from its JSON object in format ``version``; ``StateError``
    names what is wrong."""
    f = _Fields(obj, "state", _STATE_KEYS)
    outgoing: dict[int, OutgoingMessage] = {}
    topics: set[str] = set()  # topic names that passed validate_topic
    quick, full = (_row_quick, _row) if version >= 2 else (_outgoing_quick, _outgoing)
    for i, item in enumerate(f.get_list("outgoing")):
        m = quick(item, topics)
        if m is None:
            _good_topic(item, topics)
            m = quick(item, topics) or full(item, f"state.outgoing[{i}]")
        if m.seq in outgoing:
            raise StateError(f"state.outgoing[{i}].seq: {m.seq} appears twice")
        outgoing[m.seq] = m
    incoming: dict[int, IncomingMessage] = {}
    for i, item in enumerate(f.get_list("incoming")):
        im = _incoming(item, f"state.incoming[{i}]")
        if im.packet_id in incoming:
            raise StateError(f"state.incoming[{i}].packet_id: {im.packet_id} appears twice")
        incoming[im.packet_id] = im
    subscriptions: dict[str, int] = {}
    for i, item in enumerate(f.get_list("subscriptions")):
        s = _Fields(item, f"state.subscriptions[{i}]", _SUB_KEYS)
        flt = s.get_str("filter", nonempty=True)
        if flt in subscriptions:
            raise StateError(f"state.subscriptions[{i}].filter: {flt!r} appears twice")
        subscriptions[flt] = s.get_int("qos", 0, 2)
    state = SessionState(
        client_id=f.get_str("client_id"),
        protocol_version=f.get_int("protocol_version", 4, 5),
        clean_session=f.get_bool("clean_session"),
        session_expiry_interval=f.get_opt_int("session_expiry_interval", 0, 0xFFFFFFFF),
        broker=f.get_opt_str("broker"),
        connected_at=f.get_opt_time("connected_at"),
        disconnected_at=f.get_opt_time("disconnected_at"),
        last_activity=f.get_opt_time("last_activity"),
        next_seq=f.get_int("next_seq", 1, _MAX_SEQ),
        last_packet_id=f.get_int("last_packet_id", 0, MAX_PACKET_ID),
        outgoing=outgoing,
        incoming=incoming,
        subscriptions=subscriptions,
    )
    state.check_invariants(topics_checked=topics)
    return state


def _as_text(state_data: object) -> str:
    if isinstance(state_data, (bytes, bytearray, memoryview)):
        try:
            return bytes(state_data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateError(f"state data is not UTF-8 text: {exc}") from None
    if not isinstance(state_data, str):
        raise StateError(f"state data must be str, got {type(state_data).__name__}")
    return state_data


def decode(state_data: str | bytes) -> SessionState:
    """Parse and check a ``save_session()`` text; ``StateError`` on anything wrong."""
    return decode_with_digest(state_data)[0]


def decode_with_digest(state_data: str | bytes) -> tuple[SessionState, str]:
    """``decode``, and the text's checked ``sha256`` (which names this snapshot)."""
    text = _as_text(state_data).strip()
    if not text:
        raise StateError("state text is empty")
    with gc_paused():
        doc = _parse_json(text)
        return _doc_to_state(doc, text), text_digest(text)


def text_digest(text: str) -> str:
    """The ``sha256`` field of a state text (read, not computed; every format's prefix has
    the same length)."""
    return text[len(_PREFIX):len(_PREFIX) + 64]


def _doc_to_state(doc: object, text: str) -> SessionState:
    if not isinstance(doc, dict):
        raise StateError(f"state text must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise StateError(f"not an mqttsession state (format={doc.get('format')!r:.40})")
    version = doc.get("version")
    if type(version) is not int:
        raise StateError(f"state format version must be an integer, got {version!r:.40}")
    if version > VERSION:
        raise StateError(
            f"state format version {version} is newer than this mqttsession reads ({VERSION});"
            " upgrade mqttsession"
        )
    if version < 1:
        raise StateError(f"unknown state format version {version}")
    if set(doc) != {"format", "version", "sha256", "state"}:
        raise StateError(f"state text has fields {sorted(doc)}, expected format, version, sha256, state")
    prefix = _PREFIXES[version]
    digest = text[len(prefix):len(prefix) + 64]
    rest = text[len(prefix) + 64:]
    if not (text.startswith(prefix) and _HEX64.fullmatch(digest) and rest.startswith('","state":')
            and rest.endswith("}")):
        raise StateError("state text layout was altered (it must be kept exactly as saved)")
    body = rest[len('","state":'):-1]
    try:
        raw = body.encode("utf-8")
    except UnicodeEncodeError:
        raise StateError("state text holds a character that is not valid UTF-8") from None
    if hashlib.sha256(raw).hexdigest() != digest:
        raise StateError("state text checksum mismatch: the text was changed or damaged")
    return obj_to_state(doc["state"], version)


# --------------------------------------------------------------------------- read-only view


@dataclass(frozen=True)
class SavedState:
    """A read-only, typed view of a saved session (``load_state``)."""

    client_id: str
    protocol_version: int
    clean_session: bool
    session_expiry_interval: int | None
    broker: str | None
    connected_at: float | None
    disconnected_at: float | None
    last_activity: float | None
    outgoing: tuple[OutgoingMessage, ...]
    incoming: tuple[IncomingMessage, ...]
    subscriptions: Mapping[str, int]

    @classmethod
    def of(cls, state: SessionState) -> SavedState:
        return cls(
            state.client_id,
            state.protocol_version,
            state.clean_session,
            state.session_expiry_interval,
            state.broker,
            state.connected_at,
            state.disconnected_at,
            state.last_activity,
            tuple(state.outgoing.values()),
            tuple(state.incoming.values()),
            MappingProxyType(dict(state.subscriptions)),
        )

    def _phase(self, test: Callable[[OutgoingMessage], bool]) -> tuple[OutgoingMessage, ...]:
        return tuple(m for m in self.outgoing if test(m))

    @property
    def never_sent(self) -> tuple[OutgoingMessage, ...]:
        return self._phase(lambda m: m.phase is Phase.QUEUED)

    @property
    def in_flight(self) -> tuple[OutgoingMessage, ...]:
        return self._phase(lambda m: m.phase is not Phase.QUEUED)

    def expired(self, now: float) -> bool | None:
        """``session_expired`` for this state at ``now``."""
        return expired(
            self.protocol_version,
            effective_interval(self.protocol_version, self.clean_session,
                               self.session_expiry_interval),
            self.connected_at,
            self.disconnected_at,
            self.last_activity,
            now,
        )


def load_state(state_data: str | bytes) -> SavedState:
    """A read-only, typed view of a saved state; ``StateError`` on bad input."""
    return SavedState.of(decode(state_data))


# --------------------------------------------------------------------------- journal records
# The two records written for every message (Accepted, Stepped) are binary: a tag byte and a
# fixed big-endian header, then the raw topic, payload and properties (no base64, no JSON).
# Every other record is one compact JSON array whose first element is its tag; JSON arrays of
# A / S (journal format 1) are still read. ``decode_record`` checks every field's type and
# range; whether the record fits the state is ``SessionState.apply``'s job.

_EVENTS: Final = {e.value: e for e in Event}
# the binary event codes: part of the file format, append only
_EVENT_CODES: Final = (Event.SEND, Event.PUBACK, Event.PUBREC, Event.PUBREC_FAILED,
                       Event.PUBCOMP, Event.SESSION_LOST, Event.TOO_LARGE)
_EVENT_CODE: Final = {e: i for i, e in enumerate(_EVENT_CODES)}
# tag, seq, packet id, qos, retain, topic / payload / properties lengths (then those bytes)
_ACCEPTED: Final = struct.Struct(">cQHBBHII")
# tag, seq, event code, packet id
_STEPPED: Final = struct.Struct(">cQBH")
BINARY_TAGS: Final = (b"a", b"s")  # first byte of a binary record; JSON ones start with "["


def encode_record(rec: Record) -> bytes:
    """A record as the bytes the journal frames (binary for Accepted and Stepped)."""
    arr: list[Any]
    if type(rec) is Accepted:
        m = rec.message
        topic = m.topic.encode("utf-8")
        return b"".join((
            _ACCEPTED.pack(b"a", m.seq, m.packet_id, m.qos, m.retain, len(topic),
                           len(m.payload), len(m.properties)),
            topic, m.payload, m.properties,
        ))
    if type(rec) is Stepped:
        return _STEPPED.pack(b"s", rec.seq, _EVENT_CODE[rec.event], rec.packet_id)
    if type(rec) is Activity:
        return f'["T",{rec.at!r}]'.encode("ascii")
    if isinstance(rec, Received):
        im = rec.message
        arr = ["R", im.packet_id, im.topic, _b64(im.payload), im.retain, im.dup,
               _b64(im.properties)]
    elif isinstance(rec, Released):
        arr = ["L", rec.packet_id]
    elif isinstance(rec, Subscribed):
        arr = ["U", rec.topic_filter, rec.qos]
    elif isinstance(rec, Unsubscribed):
        arr = ["X", rec.topic_filter]
    elif isinstance(rec, Connected):
        arr = ["C", rec.at, rec.broker, rec.session_present]
    elif isinstance(rec, SessionReset):
        arr = ["Z", list(rec.requeued), list(rec.dropped), list(rec.released)]
    elif isinstance(rec, Disconnected):
        arr = ["D", rec.at, rec.session_expiry_interval]
    elif isinstance(rec, Configured):
        arr = ["K", rec.client_id, rec.protocol_version, rec.clean_session,
               rec.session_expiry_interval]
    else:  # pragma: no cover - Record is a closed union
        raise TypeError(f"not a record: {rec!r}")
    return _dump(arr).encode("utf-8")


def _decode_binary(data: bytes) -> Record:
    """A binary Accepted / Stepped record; ``StateError`` names what is wrong."""
    if data[:1] == b"s":
        if len(data) != _STEPPED.size:
            raise StateError(f"journal record s: {len(data)} bytes, expected {_STEPPED.size}")
        _, seq, code, pid = _STEPPED.unpack(data)
        if not 1 <= seq <= _MAX_SEQ:
            raise StateError(f"journal record s: seq {seq} out of range")
        if code >= len(_EVENT_CODES):
            raise StateError(f"journal record s: unknown event code {code}")
        return Stepped(seq, _EVENT_CODES[code], pid)
    head = _ACCEPTED.size
    if len(data) < head:
        raise StateError(f"journal record a: {len(data)} bytes, shorter than its header")
    _, seq, pid, qos, retain, tlen, plen, xlen = _ACCEPTED.unpack_from(data)
    if len(data) != head + tlen + plen + xlen:
        raise StateError(f"journal record a: {len(data)} bytes, its lengths say "
                         f"{head + tlen + plen + xlen}")
    if not 1 <= seq <= _MAX_SEQ or qos not in (1, 2) or retain > 1:
        raise StateError(f"journal record a: seq {seq}, qos {qos}, retain {retain} out of range")
    try:
        topic = data[head:head + tlen].decode("utf-8")
    except UnicodeDecodeError:
        raise StateError("journal record a: topic is not UTF-8") from None
    if not topic or "\x00" in topic:
        raise StateError("journal record a: topic is empty or holds U+0000")
    end = head + tlen + plen
    return Accepted(OutgoingMessage(seq, pid, topic, data[head + tlen:end], qos, retain == 1,
                                    data[end:]))


_SHAPES: Final = {
    "A": ("seq", "packet_id", "topic", "payload", "qos", "retain", "properties"),
    "S": ("seq", "event", "packet_id"),
    "R": ("packet_id", "topic", "payload", "retain", "dup", "properties"),
    "L": ("packet_id",),
    "U": ("filter", "qos"),
    "X": ("filter",),
    "C": ("at", "broker", "session_present"),
    "Z": ("requeued", "dropped", "released"),
    "D": ("at", "session_expiry_interval"),
    "T": ("at",),
    "K": ("client_id", "protocol_version", "clean_session", "session_expiry_interval"),
}


def _int_list(f: _Fields, key: str, lo: int, hi: int) -> tuple[int, ...]:
    items = f.get_list(key)
    if not all(type(x) is int and lo <= x <= hi for x in items):
        raise f.fail(key, f"expected a list of integers {lo}..{hi}")
    return tuple(items)


def decode_record(data: bytes) -> Record:
    """Parse one journal record; ``StateError`` names what is wrong."""
    if data[:1] in BINARY_TAGS:
        return _decode_binary(data)
    try:
        arr = _parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateError(f"journal record is not UTF-8: {exc}") from None
    if not isinstance(arr, list) or not arr or not isinstance(arr[0], str):
        raise StateError("journal record must be a JSON array starting with its tag")
    tag = arr[0]
    shape = _SHAPES.get(tag)
    if shape is None:
        raise StateError(f"unknown journal record tag {tag!r:.20}")
    if len(arr) != len(shape) + 1:
        raise StateError(f"journal record {tag}: expected {len(shape)} fields, got {len(arr) - 1}")
    f = _Fields(dict(zip(shape, arr[1:])), f"record {tag}", frozenset(shape))
    if tag == "A":
        return Accepted(OutgoingMessage(
            f.get_int("seq", 1, _MAX_SEQ), f.get_int("packet_id", 0, MAX_PACKET_ID),
            f.get_str("topic", nonempty=True), f.get_bytes("payload"), f.get_int("qos", 1, 2),
            f.get_bool("retain"), f.get_bytes("properties"),
        ))
    if tag == "S":
        event = _EVENTS.get(f.obj["event"]) if isinstance(f.obj["event"], str) else None
        if event is None:
            raise f.fail("event", f"expected one of {sorted(_EVENTS)}")
        return Stepped(f.get_int("seq", 1, _MAX_SEQ), event, f.get_int("packet_id", 0, MAX_PACKET_ID))
    if tag == "R":
        return Received(IncomingMessage(
            f.get_int("packet_id", 1, MAX_PACKET_ID), f.get_str("topic", nonempty=True),
            f.get_bytes("payload"), 2, f.get_bool("retain"), f.get_bool("dup"),
            f.get_bytes("properties"),
        ))
    if tag == "L":
        return Released(f.get_int("packet_id", 1, MAX_PACKET_ID))
    if tag == "U":
        return Subscribed(f.get_str("filter", nonempty=True), f.get_int("qos", 0, 2))
    if tag == "X":
        return Unsubscribed(f.get_str("filter", nonempty=True))
    if tag == "C":
        at = f.get_opt_time("at")
        if at is None:
            raise f.fail("at", "expected a time")
        return Connected(at, f.get_opt_str("broker"), f.get_bool("session_present"))
    if tag == "Z":
        return SessionReset(_int_list(f, "requeued", 1, _MAX_SEQ),
                            _int_list(f, "dropped", 1, _MAX_SEQ),
                            _int_list(f, "released", 1, MAX_PACKET_ID))
    if tag == "D":
        at = f.get_opt_time("at")
        if at is None:
            raise f.fail("at", "expected a time")
        return Disconnected(at, f.get_opt_int("session_expiry_interval", 0, 0xFFFFFFFF))
    if tag == "T":
        at = f.get_opt_time("at")
        if at is None:
            raise f.fail("at", "expected a time")
        return Activity(at)
    return Configured(f.get_str("client_id"), f.get_int("protocol_version", 4, 5),
                      f.get_bool("clean_session"),
                      f.get_opt_int("session_expiry_interval", 0, 0xFFFFFFFF))
