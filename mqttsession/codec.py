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

import binascii
import gc
import hashlib
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Final, Iterator, Mapping

from ._fields import Fields as _Fields
from ._fields import b64 as _b64
from ._fields import b64decode as _b64decode
from ._fields import dump as _dump
from ._fields import parse_json as _parse_json
from .errors import NewerFormatError, StateError, UsageError
from .expiry import effective_interval, expired
from .state import (
    MAX_PACKET_ID,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    SessionState,
    validate_filter,
    validate_topic,
)

from .records import BINARY_TAGS as BINARY_TAGS
from .records import decode_record as decode_record
from .records import encode_record as encode_record

__all__ = [
    "FORMAT", "VERSION", "encode", "decode", "SavedState", "load_state", "encode_record",
    "decode_record",
]

FORMAT: Final = "mqttsession"
VERSION: Final = 3
_PREFIXES: Final = {v: f'{{"format":"mqttsession","version":{v},"sha256":"' for v in (1, 2, 3)}
_PREFIX: Final = _PREFIXES[VERSION]  # every prefix has the same length
OUTGOING_ROW: Final = ("seq", "packet_id", "topic", "payload", "qos", "retain", "properties",
                       "phase", "accepted_at")  # format 3: the fields of an outgoing message's
# array; format 2 had all but the last
_ROW_FIELDS: Final = {2: OUTGOING_ROW[:-1], 3: OUTGOING_ROW}
_ROW_TOPIC: Final = OUTGOING_ROW.index("topic")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_PHASES: Final = {p.value: p for p in Phase}


def state_to_obj(state: SessionState, version: int = VERSION) -> dict[str, Any]:
    """The JSON-ready object of one state (field order fixed) in format ``version``."""
    row: Callable[[OutgoingMessage], Any] = (
        outgoing_to_row if version >= 3 else _outgoing_to_row_2 if version == 2 else outgoing_to_obj)
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
        **({"spool_next": state.spool_next} if state.spool_next and version >= 3 else {}),
        **({"spool_last": state.spool_last}
           if state.spool_last >= max(state.spool_next, 1) and version >= 3 else {}),
        **({"orphans": [incoming_to_obj(m) for m in state.orphans]}
           if state.orphans and version >= 3 else {}),
        **({"reserved": [state.reserved_first, state.reserved_last]}
           if state.reserved_first and version >= 3 else {}),
        **({"clock_offset": state.clock_offset} if state.clock_offset and version >= 3 else {}),
        **({"unanswered": sorted(state.unanswered)} if state.unanswered and version >= 3 else {}),
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
            _b64(m.properties) if m.properties else "", m.phase.value, m.accepted_at]


def _outgoing_to_row_2(m: OutgoingMessage) -> list[Any]:
    return outgoing_to_row(m)[:-1]


def incoming_to_obj(m: IncomingMessage) -> dict[str, Any]:
    return {
        "packet_id": m.packet_id,
        "topic": m.topic,
        "payload": _b64(m.payload),
        "qos": m.qos,
        "retain": m.retain,
        "dup": m.dup,
        "properties": _b64(m.properties),
        **({"taken": True} if m.taken else {}),  # format 3, optional
    }


def encode(state: SessionState) -> str:
    """The text of ``state`` (what ``save_session()`` returns)."""
    body = _dump(state_to_obj(state))
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f'{_PREFIX}{digest}","state":{body}}}'


# --------------------------------------------------------------------------- decoding


_STATE_KEYS: Final = frozenset(
    "client_id protocol_version clean_session session_expiry_interval broker connected_at"
    " disconnected_at last_activity next_seq last_packet_id outgoing incoming subscriptions"
    .split()
)
_OPTIONAL_KEYS: Final = frozenset({"spool_next", "spool_last", "orphans", "reserved",
                                    "clock_offset", "unanswered"})
_OUT_KEYS: Final = frozenset("seq packet_id topic payload qos retain properties phase".split())
_OUT_KEYS_AT: Final = _OUT_KEYS | {"accepted_at"}
_IN_KEYS: Final = frozenset("packet_id topic payload qos retain dup properties".split())
_IN_KEYS_TAKEN: Final = _IN_KEYS | {"taken"}
_SUB_KEYS: Final = frozenset(("filter", "qos"))
_MAX_SEQ: Final = 2**63 - 1


def _outgoing(obj: object, where: str, keys: frozenset[str] = _OUT_KEYS) -> OutgoingMessage:
    f = _Fields(obj, where, keys)
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
        accepted_at=_accepted_at(f) if keys is _OUT_KEYS_AT else 0.0,
    )


def _accepted_at(f: _Fields) -> float:
    t = f.get_opt_time("accepted_at")
    if t is None or t < 0:
        raise f.fail("accepted_at", "expected a time in seconds")
    return t


def _incoming(obj: object, where: str) -> IncomingMessage:
    taken = isinstance(obj, dict) and "taken" in obj  # optional: delivered ahead of PUBREL
    f = _Fields(obj, where, _IN_KEYS_TAKEN if taken else _IN_KEYS)
    return IncomingMessage(
        packet_id=f.get_int("packet_id", 1, MAX_PACKET_ID),
        topic=f.get_str("topic", nonempty=True),
        payload=f.get_bytes("payload"),
        qos=f.get_int("qos", 2, 2),
        retain=f.get_bool("retain"),
        dup=f.get_bool("dup"),
        properties=f.get_bytes("properties"),
        taken=taken and f.get_bool("taken"),
    )


def _outgoing_quick(obj: object, topics: set[str]) -> OutgoingMessage | None:
    """``_row_quick`` for a format 1 object."""
    if type(obj) is not dict or obj.keys() != _OUT_KEYS:
        return None
    return _row_quick([obj[k] for k in _ROW_FIELDS[2]], topics)


def _row_quick(row: object, topics: set[str]) -> OutgoingMessage | None:
    """``_row`` for the usual, valid format 2 or 3 array (restoring 100k messages runs this
    100k times); None sends anything unusual to ``_row``, which names the fault."""
    if type(row) is not list:
        return None
    at = 0.0
    if len(row) == 9:
        seq, pid, topic, payload, qos, retain, props, phase, at = row
        if type(at) is not float or not 0.0 <= at < math.inf:
            return None
    elif len(row) == 8:
        seq, pid, topic, payload, qos, retain, props, phase = row
    else:
        return None
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
                               retain, _b64decode(props) if props else b"", phase, at)
    except (binascii.Error, ValueError):
        return None


def _row(row: object, where: str, version: int = VERSION) -> OutgoingMessage:
    """``_outgoing`` for a format 2 or 3 array: the same checks, the same messages."""
    if not isinstance(row, list):
        raise StateError(f"{where}: expected an array, got {type(row).__name__}")
    fields = _ROW_FIELDS[version]
    if len(row) != len(fields):
        raise StateError(f"{where}: expected {len(fields)} fields, got {len(row)}")
    return _outgoing(dict(zip(fields, row)), where, _OUT_KEYS_AT if version >= 3 else _OUT_KEYS)


def _good_topic(obj: object, topics: set[str]) -> None:
    """Remember the topic of an outgoing entry once it has passed every check."""
    topic: object = None
    if isinstance(obj, list) and len(obj) in (8, 9):
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
    keys = _STATE_KEYS
    if version >= 3 and isinstance(obj, dict):  # optional: the disk queue's read-back point,
        # orphaned incoming messages, the packet ids reserved (SessionSync=interval)
        keys = _STATE_KEYS | (obj.keys() & _OPTIONAL_KEYS)
    f = _Fields(obj, "state", keys)
    outgoing: dict[int, OutgoingMessage] = {}
    topics: set[str] = set()  # topic names that passed validate_topic
    width = len(_ROW_FIELDS[version]) if version >= 2 else 0

    def quick(item: object) -> OutgoingMessage | None:
        if not width:
            return _outgoing_quick(item, topics)
        return _row_quick(item, topics) if type(item) is list and len(item) == width else None

    for i, item in enumerate(f.get_list("outgoing")):
        m = quick(item)
        if m is None:
            _good_topic(item, topics)
            where = f"state.outgoing[{i}]"
            m = quick(item) or (_row(item, where, version) if width else _outgoing(item, where))
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
        spool_next=f.get_int("spool_next", 1, _MAX_SEQ) if "spool_next" in keys else 0,
        spool_last=f.get_int("spool_last", 1, _MAX_SEQ) if "spool_last" in keys else 0,
        orphans=[_incoming(item, f"state.orphans[{i}]")
                 for i, item in enumerate(f.get_list("orphans"))] if "orphans" in keys else [],
    )
    if "reserved" in keys:  # SessionSync=interval's reservation (absent: none)
        reserved = f.get_list("reserved")
        if len(reserved) != 2 or not all(type(x) is int and 1 <= x <= MAX_PACKET_ID
                                         for x in reserved):
            raise f.fail("reserved", f"expected two packet ids 1..{MAX_PACKET_ID}")
        state.reserved_first, state.reserved_last = reserved
    if "clock_offset" in keys:  # ``ClockOffset`` (absent: 0, the wall clock)
        offset = f.get_opt_time("clock_offset")
        if offset is None:
            raise f.fail("clock_offset", "expected a time in seconds")
        state.clock_offset = offset
    if "unanswered" in keys:  # filters whose SUBSCRIBE / UNSUBSCRIBE waits for its ack
        unanswered = f.get_list("unanswered")
        try:
            state.unanswered = {validate_filter(flt) for flt in unanswered}
        except UsageError as exc:
            raise f.fail("unanswered", str(exc)) from None
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


def _newer_or_damaged(doc: dict[str, Any], text: str, version: int) -> StateError:
    """A version above ours: ``NewerFormatError``, unless the text's checksum holds and its
    body reads as this version's (the version digit alone is damaged: the checksum does not
    cover it) or the checksum fails (damage)."""
    if _verified(text, f'{{"format":"mqttsession","version":{version},"sha256":"'):
        try:
            obj_to_state(doc.get("state"), VERSION)
        except (StateError, ValueError, TypeError):
            pass
        else:
            return StateError(f"state format version {version}, but the state is this version's"
                              f" ({VERSION}): the version field is damaged")
    return NewerFormatError(f"state format version {version} is newer than this mqttsession"
                            f" reads ({VERSION}); upgrade mqttsession")


def _doc_to_state(doc: object, text: str) -> SessionState:
    if not isinstance(doc, dict):
        raise StateError(f"state text must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise StateError(f"not an mqttsession state (format={doc.get('format')!r:.40})")
    version = doc.get("version")
    if type(version) is not int:
        raise StateError(f"state format version must be an integer, got {version!r:.40}")
    if version > VERSION:
        raise _newer_or_damaged(doc, text, version)
    if version < 1:
        raise StateError(f"unknown state format version {version}")
    if set(doc) != {"format", "version", "sha256", "state"}:
        raise StateError(f"state text has fields {sorted(doc)}, expected format, version, sha256, state")
    if not _verified(text, _PREFIXES[version]):
        raise StateError("state text layout was altered (it must be kept exactly as saved)")
    return obj_to_state(doc["state"], version)


def _verified(text: str, prefix: str) -> bool:
    """Whether ``text`` has the saved layout behind ``prefix``; ``StateError`` when its
    state's checksum fails (or it is not UTF-8)."""
    digest, rest = text[len(prefix):len(prefix) + 64], text[len(prefix) + 64:]
    if not (text.startswith(prefix) and _HEX64.fullmatch(digest) and rest.startswith('","state":')
            and rest.endswith("}")):
        return False
    try:
        raw = rest[len('","state":'):-1].encode("utf-8")
    except UnicodeEncodeError:
        raise StateError("state text holds a character that is not valid UTF-8") from None
    if hashlib.sha256(raw).hexdigest() != digest:
        raise StateError("state text checksum mismatch: the text was changed or damaged")
    return True


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
    on_disk: int = 0  # never-sent messages in the state file's disk queue (not in ``outgoing``)
    on_disk_bytes: int = 0

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
            state.spooled,
            state.spooled_bytes,
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


