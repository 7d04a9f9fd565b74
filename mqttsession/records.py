"""The session's records: the vocabulary of every transition, and their one encoding.

A record (a small frozen dataclass) is one transition of a ``state.SessionState``: what
``SessionState.apply`` replays and what the journal stores. ``KINDS`` is the one registry of
them: each record type with its journal tag, its fields, and how it is written and read. The
two records written for every message (``Accepted``, ``Stepped``) are binary: a tag byte and a
fixed big-endian header, then the raw topic, payload and properties (no base64, no JSON). Every
other record is one compact JSON array whose first element is its tag; JSON arrays of A / S
(journal format 1) are still read. ``decode_record`` checks every field's type and range;
whether the record fits the state is ``SessionState.apply``'s job.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Final, TypeVar, Union

from ._fields import Fields, dump, parse_json
from .errors import NewerFormatError, StateError

__all__ = [
    "Phase", "Event", "OutgoingMessage", "IncomingMessage", "Record", "Configured", "Accepted",
    "Stepped", "Received", "Released", "Taken", "Subscribed", "Unsubscribed", "Connected",
    "SessionReset", "Disconnected", "Activity", "ClockOffset", "Spooled", "Loaded", "SpoolMark",
    "Orphaned",
    "OrphansReleased", "OrphanReleased", "Reserved", "Answered", "SessionLost", "ResumePlan",
    "KINDS", "BINARY_TAGS", "encode_record", "encode_message",
    "decode_record", "decode_queued", "quick_init", "MAX_SEQ",
]

MAX_PACKET_ID: Final = 65535
MAX_SEQ: Final = 2**63 - 1
MAX_EXPIRY: Final = 0xFFFFFFFF  # [MQTT 5 3.1.2.11.2] never expires


class Phase(str, enum.Enum):
    """Where an outgoing QoS>0 message stands."""

    QUEUED = "queued"  # accepted, never written to a connection (or re-queued after SESSION_LOST)
    AWAIT_PUBACK = "await_puback"  # QoS 1 PUBLISH sent
    AWAIT_PUBREC = "await_pubrec"  # QoS 2 PUBLISH sent
    AWAIT_PUBCOMP = "await_pubcomp"  # QoS 2 PUBREL sent (released)


class Event(str, enum.Enum):
    """What can happen to an outgoing message."""

    SEND = "send"
    PUBACK = "puback"
    PUBREC = "pubrec"
    PUBREC_FAILED = "pubrec_failed"
    PUBCOMP = "pubcomp"
    SESSION_LOST = "session_lost"
    TOO_LARGE = "too_large"  # the broker's Maximum Packet Size shrank below it: taken out
    DROPPED = "dropped"  # QueueFullPolicy=drop-oldest made room with it (never sent)
    EXPIRED = "expired"  # its MQTT 5 Message Expiry Interval passed before it was sent


_T = TypeVar("_T")


def quick_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets its slots directly.

    The generated one calls ``object.__setattr__`` per field, which costs twice as much, and
    these objects are built several times per message on the publish and restore paths.
    Everything else (frozen, eq, hash, repr, ``replace``) is the dataclass's own.
    """
    ns: dict[str, Any] = {}
    params, body = [], []
    for f in fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not MISSING or not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain fields are supported")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__  # exec gives it none: pydoc (3.13) needs one
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@quick_init
@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A QoS>0 message the application handed over and the broker has not fully acknowledged.

    ``seq`` orders messages for good (never reused); ``packet_id`` is 0 only while the message
    is QUEUED and every packet id was taken when it was accepted.
    """

    seq: int
    packet_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    properties: bytes = b""  # MQTT 5 properties, packed as on the wire (opaque here)
    phase: Phase = Phase.QUEUED
    accepted_at: float = 0.0  # wall time publish_* took it (0: unknown, an older file)

    @property
    def sent(self) -> bool:
        """True once a PUBLISH (or PUBREL) for it may have reached the broker."""
        return self.phase is not Phase.QUEUED


@quick_init
@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A QoS 2 message received and answered with PUBREC, awaiting PUBREL. ``taken``: the
    application took it ahead of its PUBREL (delivered at a move to another server,
    ``Engine._deliver_unreleased``); it stays only to hold its packet id until that PUBREL."""

    packet_id: int
    topic: str
    payload: bytes
    qos: int = 2
    retain: bool = False
    dup: bool = False
    properties: bytes = b""
    taken: bool = False


# --------------------------------------------------------------------------- records


@quick_init
@dataclass(frozen=True, slots=True)
class Configured:
    """Session identity and options changed."""

    client_id: str
    protocol_version: int
    clean_session: bool
    session_expiry_interval: int | None


@quick_init
@dataclass(frozen=True, slots=True)
class Accepted:
    """publish_* accepted a QoS>0 message (persistence point 1)."""

    message: OutgoingMessage


@quick_init
@dataclass(frozen=True, slots=True)
class Stepped:
    """An outgoing message moved along ``OUTGOING_TRANSITIONS``.

    ``packet_id`` is the id the message holds after the step (SEND may assign one).
    """

    seq: int
    event: Event
    packet_id: int


@quick_init
@dataclass(frozen=True, slots=True)
class Received:
    """An incoming QoS 2 PUBLISH was stored before PUBREC (persistence point 3)."""

    message: IncomingMessage


@quick_init
@dataclass(frozen=True, slots=True)
class Released:
    """An incoming QoS 2 message was delivered on PUBREL and leaves the session (point 4)."""

    packet_id: int


@quick_init
@dataclass(frozen=True, slots=True)
class Taken:
    """An incoming QoS 2 message delivered ahead of its PUBREL was taken by the application:
    not delivered again; its packet id stays held until the PUBREL (point 4)."""

    packet_id: int


@quick_init
@dataclass(frozen=True, slots=True)
class Subscribed:
    topic_filter: str
    qos: int


@quick_init
@dataclass(frozen=True, slots=True)
class Unsubscribed:
    topic_filter: str


@quick_init
@dataclass(frozen=True, slots=True)
class Connected:
    """A CONNACK accepted the connection."""

    at: float
    broker: str | None
    session_present: bool


@quick_init
@dataclass(frozen=True, slots=True)
class SessionReset:
    """CONNACK said SessionPresent=0 while state was held (MQTT 5 [MQTT-3.2.2-5]).

    ``requeued``: seqs of sent messages published anew; ``dropped``: seqs of messages the broker
    had accepted (past PUBREC) or, with republish off, gave up; ``released``: incoming QoS 2
    packet ids handed to the application and removed.
    """

    requeued: tuple[int, ...]
    dropped: tuple[int, ...]
    released: tuple[int, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class Disconnected:
    at: float
    session_expiry_interval: int | None


@quick_init
@dataclass(frozen=True, slots=True)
class Activity:
    """The connection was seen alive at ``at`` (bounds the disconnect time after a crash)."""

    at: float


@quick_init
@dataclass(frozen=True, slots=True)
class ClockOffset:
    """The wall clock jumped: held messages' times (``accepted_at``) are counted on the wall
    clock plus ``offset`` seconds (0: the wall clock), so the jump neither ages them nor
    makes them young (``expiry.MessageClock``)."""

    offset: float


@quick_init
@dataclass(frozen=True, slots=True)
class Spooled:
    """publish_* accepted a QoS>0 message into the disk queue (persistence point 1): it is
    written to the queue's segment files (``spool``), never to the journal; packet id 0."""

    message: OutgoingMessage


@quick_init
@dataclass(frozen=True, slots=True)
class Loaded:
    """Messages read back from the disk queue joined the in-memory session, with the packet
    ids they now hold; every queued message below ``spool_next`` has been read."""

    messages: tuple[OutgoingMessage, ...]
    spool_next: int


@quick_init
@dataclass(frozen=True, slots=True)
class SpoolMark:
    """The disk queue holds messages up to ``seq`` (durable there first): a restart that finds
    it without them is ``StateError`` (written as a segment begins, under ``always``)."""

    seq: int


@quick_init
@dataclass(frozen=True, slots=True)
class Orphaned:
    """CONNACK said SessionPresent=0: the incoming QoS 2 messages awaiting PUBREL (these
    packet ids) will never be released by the broker; they leave packet-id space for the
    orphans list (durable with the CONNACK's record), to be delivered from there."""

    packet_ids: tuple[int, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class OrphansReleased:
    """The first orphans (these packet ids, in order) were handed to the application and
    leave the session."""

    packet_ids: tuple[int, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class OrphanReleased:
    """One orphan (the ``index``-th of the list, with this packet id) was taken by the
    application (its ``on_message_in`` returned, or ``ack()`` under ManualAck) and leaves the
    session: the others stay, to be delivered again after a restart."""

    index: int
    packet_id: int


@quick_init
@dataclass(frozen=True, slots=True)
class Reserved:
    """SessionSync=interval: outgoing packet ids ``first`` to ``last`` (cyclically, 65535 is
    followed by 1) may be handed out by records not yet synced, whose PUBLISHes leave at once.
    Synced before any of them is written, so that after a power cut the session knows which
    ids the broker may still hold flows for [MQTT-4.3.3-10]; (0, 0): no reservation."""

    first: int
    last: int


@quick_init
@dataclass(frozen=True, slots=True)
class Answered:
    """The broker answered the SUBSCRIBE / UNSUBSCRIBE of these filters (SUBACK, UNSUBACK, or
    taken as refused): a restored session sends them no more. ``Subscribed`` and
    ``Unsubscribed`` leave a filter unanswered until then."""

    filters: tuple[str, ...]


Record = Union[
    Configured,
    Accepted,
    Stepped,
    Received,
    Released,
    Taken,
    Subscribed,
    Unsubscribed,
    Connected,
    SessionReset,
    Disconnected,
    Activity,
    ClockOffset,
    Spooled,
    Loaded,
    SpoolMark,
    Orphaned,
    OrphansReleased,
    OrphanReleased,
    Reserved,
    Answered,
]


@quick_init
@dataclass(frozen=True, slots=True)
class SessionLost:
    """What was held when the broker answered SessionPresent=0, and what was done with it."""

    republished: tuple[OutgoingMessage, ...]  # sent but unconfirmed: published again as new
    dropped: tuple[OutgoingMessage, ...]  # given up (republishing off for their phase)
    queued: tuple[OutgoingMessage, ...]  # never sent: sent as usual
    delivered_incoming: tuple[IncomingMessage, ...]  # QoS 2 awaiting PUBREL: handed to the app
    resubscribed: tuple[tuple[str, int], ...]
    possible_duplicates: tuple[OutgoingMessage, ...] = ()  # republished though past PUBREC


@quick_init
@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What the client sends after a CONNACK, in this order [MQTT-4.6.0-1].

    ``outgoing``: every held message by seq; its phase says what goes out: PUBLISH with DUP=1 and
    the original id for AWAIT_PUBACK / AWAIT_PUBREC [MQTT-4.4.0-1] [MQTT-3.3.1-1], PUBREL for
    AWAIT_PUBCOMP, a fresh PUBLISH (SEND) for QUEUED.
    """

    session_present: bool
    outgoing: tuple[OutgoingMessage, ...]
    resubscribe: tuple[tuple[str, int], ...]
    lost: SessionLost | None


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Kind:
    """One record type: its tag, its fields (in the journal's order) and its JSON form."""

    tag: str
    fields: tuple[str, ...]
    to_json: Callable[[Any], list[Any]]
    from_json: Callable[[Fields], Record]


def _int_list(f: Fields, key: str, lo: int, hi: int) -> tuple[int, ...]:
    items = f.get_list(key)
    if not all(type(x) is int and lo <= x <= hi for x in items):
        raise f.fail(key, f"expected a list of integers {lo}..{hi}")
    return tuple(items)


def _str_list(f: Fields, key: str) -> tuple[str, ...]:
    items = f.get_list(key)
    if not all(isinstance(x, str) and x for x in items):
        raise f.fail(key, "expected a list of non-empty strings")
    return tuple(items)


def _time(f: Fields, key: str) -> float:
    at = f.get_opt_time(key)
    if at is None:
        raise f.fail(key, "expected a time")
    return at


def _accepted_json(f: Fields) -> Record:
    return Accepted(OutgoingMessage(
        f.get_int("seq", 1, MAX_SEQ), f.get_int("packet_id", 0, MAX_PACKET_ID),
        f.get_str("topic", nonempty=True), f.get_bytes("payload"), f.get_int("qos", 1, 2),
        f.get_bool("retain"), f.get_bytes("properties"),
    ))


def _stepped_json(f: Fields) -> Record:
    event = _EVENTS.get(f.obj["event"]) if isinstance(f.obj["event"], str) else None
    if event is None:
        raise f.fail("event", f"expected one of {sorted(_EVENTS)}")
    return Stepped(f.get_int("seq", 1, MAX_SEQ), event, f.get_int("packet_id", 0, MAX_PACKET_ID))


def _no_json(rec: Any) -> list[Any]:  # pragma: no cover - written binary
    raise TypeError(f"{type(rec).__name__} is written in binary")


KINDS: Final[dict[type, Kind]] = {
    Accepted: Kind("A", ("seq", "packet_id", "topic", "payload", "qos", "retain", "properties"),
                   _no_json, _accepted_json),
    Stepped: Kind("S", ("seq", "event", "packet_id"), _no_json, _stepped_json),
    Received: Kind(
        "R", ("packet_id", "topic", "payload", "retain", "dup", "properties"), _no_json,
        lambda f: Received(IncomingMessage(
            f.get_int("packet_id", 1, MAX_PACKET_ID), f.get_str("topic", nonempty=True),
            f.get_bytes("payload"), 2, f.get_bool("retain"), f.get_bool("dup"),
            f.get_bytes("properties")))),
    Released: Kind("L", ("packet_id",), _no_json,
                   lambda f: Released(f.get_int("packet_id", 1, MAX_PACKET_ID))),
    Taken: Kind("H", ("packet_id",), lambda r: [r.packet_id],
                lambda f: Taken(f.get_int("packet_id", 1, MAX_PACKET_ID))),
    Subscribed: Kind("U", ("filter", "qos"), lambda r: [r.topic_filter, r.qos],
                     lambda f: Subscribed(f.get_str("filter", nonempty=True), f.get_int("qos", 0, 2))),
    Unsubscribed: Kind("X", ("filter",), lambda r: [r.topic_filter],
                       lambda f: Unsubscribed(f.get_str("filter", nonempty=True))),
    Connected: Kind("C", ("at", "broker", "session_present"),
                    lambda r: [r.at, r.broker, r.session_present],
                    lambda f: Connected(_time(f, "at"), f.get_opt_str("broker"),
                                        f.get_bool("session_present"))),
    SessionReset: Kind("Z", ("requeued", "dropped", "released"),
                       lambda r: [list(r.requeued), list(r.dropped), list(r.released)],
                       lambda f: SessionReset(_int_list(f, "requeued", 1, MAX_SEQ),
                                              _int_list(f, "dropped", 1, MAX_SEQ),
                                              _int_list(f, "released", 1, MAX_PACKET_ID))),
    Disconnected: Kind("D", ("at", "session_expiry_interval"),
                       lambda r: [r.at, r.session_expiry_interval],
                       lambda f: Disconnected(_time(f, "at"), f.get_opt_int(
                           "session_expiry_interval", 0, MAX_EXPIRY))),
    Activity: Kind("T", ("at",), lambda r: [r.at], lambda f: Activity(_time(f, "at"))),
    ClockOffset: Kind("W", ("offset",), lambda r: [r.offset],
                      lambda f: ClockOffset(_time(f, "offset"))),
    SpoolMark: Kind("M", ("seq",), lambda r: [r.seq],
                    lambda f: SpoolMark(f.get_int("seq", 1, MAX_SEQ))),
    Orphaned: Kind("O", ("packet_ids",), lambda r: [list(r.packet_ids)],
                   lambda f: Orphaned(_int_list(f, "packet_ids", 1, MAX_PACKET_ID))),
    OrphansReleased: Kind("P", ("packet_ids",), lambda r: [list(r.packet_ids)],
                          lambda f: OrphansReleased(_int_list(f, "packet_ids", 1, MAX_PACKET_ID))),
    OrphanReleased: Kind("Q", ("index", "packet_id"), lambda r: [r.index, r.packet_id],
                         lambda f: OrphanReleased(f.get_int("index", 0, 2**31),
                                                  f.get_int("packet_id", 1, MAX_PACKET_ID))),
    Answered: Kind("N", ("filters",), lambda r: [list(r.filters)],
                   lambda f: Answered(_str_list(f, "filters"))),
    Reserved: Kind("V", ("first", "last"), lambda r: [r.first, r.last],
                   lambda f: Reserved(f.get_int("first", 0, MAX_PACKET_ID),
                                      f.get_int("last", 0, MAX_PACKET_ID))),
    Configured: Kind("K", ("client_id", "protocol_version", "clean_session",
                           "session_expiry_interval"),
                     lambda r: [r.client_id, r.protocol_version, r.clean_session,
                                r.session_expiry_interval],
                     lambda f: Configured(f.get_str("client_id"), f.get_int("protocol_version", 4, 5),
                                          f.get_bool("clean_session"),
                                          f.get_opt_int("session_expiry_interval", 0, MAX_EXPIRY))),
}
_BY_TAG: Final = {k.tag: (k, frozenset(k.fields)) for k in KINDS.values()}

_EVENTS: Final = {e.value: e for e in Event}
# the binary event codes: part of the file format, append only
_EVENT_CODES: Final = (Event.SEND, Event.PUBACK, Event.PUBREC, Event.PUBREC_FAILED,
                       Event.PUBCOMP, Event.SESSION_LOST, Event.TOO_LARGE, Event.DROPPED,
                       Event.EXPIRED)
_EVENT_CODE: Final = {e: i for i, e in enumerate(_EVENT_CODES)}
# tag, seq, packet id, qos, retain, topic / payload / properties lengths (then those bytes);
# "b" adds the time it was accepted (8-byte float) after the lengths; "a" (older) has none
_ACCEPTED: Final = struct.Struct(">cQHBBHII")
_ACCEPTED_AT: Final = struct.Struct(">cQHBBHIId")
# tag, seq, event code, packet id
_STEPPED: Final = struct.Struct(">cQBH")
# tag, spool_next, how many messages (then each: its length, 4 bytes, and its "b" record)
_LOADED: Final = struct.Struct(">cQI")
_LENGTH: Final = struct.Struct(">I")
# tag, packet id, retain, dup, topic/payload/properties lengths (then the three)
_RECEIVED: Final = struct.Struct(">cHBBHII")
_RELEASED: Final = struct.Struct(">cH")  # tag, packet id
# first byte of a binary record; JSON ones: "["
BINARY_TAGS: Final = (b"a", b"s", b"b", b"l", b"r", b"e")


def encode_message(m: OutgoingMessage) -> bytes:
    """The binary ``Accepted`` record of ``m`` (also a disk-queue frame's, and each message's
    in a ``Loaded`` record), without a record value made for it."""
    topic = m.topic.encode("utf-8")
    return b"".join((
        _ACCEPTED_AT.pack(b"b", m.seq, m.packet_id, m.qos, m.retain, len(topic),
                          len(m.payload), len(m.properties), m.accepted_at),
        topic, m.payload, m.properties,
    ))


def encode_record(rec: Record) -> bytes:
    """A record as the bytes the journal frames (binary for Accepted and Stepped)."""
    if type(rec) is Accepted:
        return encode_message(rec.message)
    if type(rec) is Stepped:
        return _STEPPED.pack(b"s", rec.seq, _EVENT_CODE[rec.event], rec.packet_id)
    if type(rec) is Received:  # the incoming QoS 2 path writes two records per message
        im = rec.message
        topic = im.topic.encode("utf-8")
        return b"".join((_RECEIVED.pack(b"r", im.packet_id, im.retain, im.dup, len(topic),
                                        len(im.payload), len(im.properties)),
                         topic, im.payload, im.properties))
    if type(rec) is Released:
        return _RELEASED.pack(b"e", rec.packet_id)
    if type(rec) is Spooled:  # the disk queue's own frames: an Accepted record
        return encode_message(rec.message)
    if type(rec) is Loaded:
        parts = [_LOADED.pack(b"l", rec.spool_next, len(rec.messages))]
        for m in rec.messages:
            data = encode_message(m)
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    if type(rec) is Activity:
        return f'["T",{rec.at!r}]'.encode("ascii")
    kind = KINDS.get(type(rec))
    if kind is None:  # pragma: no cover - Record is a closed union
        raise TypeError(f"not a record: {rec!r}")
    return dump([kind.tag, *kind.to_json(rec)]).encode("utf-8")


def _decode_loaded(data: bytes) -> Loaded:
    if len(data) < _LOADED.size:
        raise StateError(f"journal record l: {len(data)} bytes, shorter than its header")
    _, spool_next, n = _LOADED.unpack_from(data)
    if not 1 <= spool_next <= MAX_SEQ:
        raise StateError(f"journal record l: spool_next {spool_next} out of range")
    pos, messages = _LOADED.size, list[OutgoingMessage]()
    for _ in range(n):
        if pos + _LENGTH.size > len(data):
            raise StateError("journal record l: shorter than its messages")
        (size,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        part = data[pos:pos + size]
        if len(part) != size or part[:1] != b"b":
            raise StateError("journal record l: a message is cut short or not a 'b' record")
        rec = _decode_binary(part)
        assert type(rec) is Accepted
        messages.append(rec.message)
        pos += size
    if pos != len(data):
        raise StateError(f"journal record l: {len(data) - pos} bytes after its messages")
    return Loaded(tuple(messages), spool_next)


def _decode_received(data: bytes) -> Received:
    head = _RECEIVED.size
    if len(data) < head:
        raise StateError(f"journal record r: {len(data)} bytes, shorter than its header")
    _, pid, retain, dup, tlen, plen, xlen = _RECEIVED.unpack_from(data)
    if len(data) != head + tlen + plen + xlen:
        raise StateError(f"journal record r: {len(data)} bytes, its lengths say "
                         f"{head + tlen + plen + xlen}")
    if not 1 <= pid <= MAX_PACKET_ID or retain > 1 or dup > 1:
        raise StateError(f"journal record r: packet id {pid}, retain {retain}, dup {dup}"
                         " out of range")
    try:
        topic = data[head:head + tlen].decode("utf-8")
    except UnicodeDecodeError:
        raise StateError("journal record r: topic is not UTF-8") from None
    if not topic or "\x00" in topic:
        raise StateError("journal record r: topic is empty or holds U+0000")
    end = head + tlen + plen
    return Received(IncomingMessage(pid, topic, data[head + tlen:end], 2, retain == 1,
                                    dup == 1, data[end:]))


def _decode_binary(data: bytes) -> Record:
    """A binary Accepted / Stepped / Loaded / Received / Released record; ``StateError``
    names what is wrong."""
    if data[:1] == b"l":
        return _decode_loaded(data)
    if data[:1] == b"r":
        return _decode_received(data)
    if data[:1] == b"e":
        if len(data) != _RELEASED.size:
            raise StateError(f"journal record e: {len(data)} bytes, expected {_RELEASED.size}")
        pid = _RELEASED.unpack(data)[1]
        if not 1 <= pid <= MAX_PACKET_ID:
            raise StateError(f"journal record e: packet id {pid} out of range")
        return Released(pid)
    if data[:1] == b"s":
        if len(data) != _STEPPED.size:
            raise StateError(f"journal record s: {len(data)} bytes, expected {_STEPPED.size}")
        _, seq, code, pid = _STEPPED.unpack(data)
        if not 1 <= seq <= MAX_SEQ:
            raise StateError(f"journal record s: seq {seq} out of range")
        if code >= len(_EVENT_CODES):
            raise StateError(f"journal record s: unknown event code {code}")
        return Stepped(seq, _EVENT_CODES[code], pid)
    tag = "b" if data[:1] == b"b" else "a"
    found = _accepted(data, _ACCEPTED_AT if tag == "b" else _ACCEPTED)
    if isinstance(found, str):
        raise StateError(f"journal record {tag}: {found}")
    return Accepted(found[0])


def _accepted(data: bytes, layout: struct.Struct) -> tuple[OutgoingMessage, int] | str:
    """A binary ``Accepted`` record's message and what it counts against MaxQueuedBytes; what
    is wrong with it otherwise."""
    head = layout.size
    if len(data) < head:
        return f"{len(data)} bytes, shorter than its header"
    _, seq, pid, qos, retain, tlen, plen, xlen, *at = layout.unpack_from(data)
    size = tlen + plen + xlen
    if len(data) != head + size:
        return f"{len(data)} bytes, its lengths say {head + size}"
    if not 1 <= seq <= MAX_SEQ or qos not in (1, 2) or retain > 1:
        return f"seq {seq}, qos {qos}, retain {retain} out of range"
    accepted_at = at[0] if at else 0.0
    if not math.isfinite(accepted_at) or accepted_at < 0:
        return f"accepted at {accepted_at}, not a time"
    try:
        topic = data[head:head + tlen].decode("utf-8")
    except UnicodeDecodeError:
        return "topic is not UTF-8"
    if not topic or "\x00" in topic:
        return "topic is empty or holds U+0000"
    end = head + tlen + plen
    return OutgoingMessage(seq, pid, topic, data[head + tlen:end], qos, retain == 1,
                           data[end:], Phase.QUEUED, accepted_at), size


def decode_queued(data: bytes) -> tuple[OutgoingMessage, int] | None:
    """A disk-queue frame's never-sent message and what it counts against MaxQueuedBytes (the
    read-back path: no record made); None unless the frame holds a valid binary ``Accepted``
    record with no packet id (``decode_record`` then says what is wrong)."""
    found = _accepted(data, _ACCEPTED_AT) if data[:1] == b"b" else None
    return found if isinstance(found, tuple) and not found[0].packet_id else None


def decode_record(data: bytes) -> Record:
    """Parse one journal record; ``StateError`` names what is wrong."""
    if data[:1] in BINARY_TAGS:
        return _decode_binary(data)
    if data[:1].islower() and data[:1].isascii():  # a binary tag (CRC-checked) we lack
        raise NewerFormatError(f"journal record of a kind unknown to this mqttsession (tag"
                               f" {data[:1].decode()!r}): written by a newer one?")
    try:
        arr = parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateError(f"journal record is not UTF-8: {exc}") from None
    if not isinstance(arr, list) or not arr or not isinstance(arr[0], str):
        raise StateError("journal record must be a JSON array starting with its tag")
    tag = arr[0]
    found = _BY_TAG.get(tag)
    if found is None:  # one letter, in a CRC-checked frame: a newer version's kind of record
        if len(tag) == 1 and tag.isascii() and tag.isalpha():
            raise NewerFormatError(f"unknown journal record tag {tag!r}: written by a newer"
                                   " mqttsession?")
        raise StateError(f"unknown journal record tag {tag!r:.20}")
    kind, keys = found
    if len(arr) != len(kind.fields) + 1:
        raise StateError(f"journal record {tag}: expected {len(kind.fields)} fields, got {len(arr) - 1}")
    return kind.from_json(Fields(dict(zip(kind.fields, arr[1:])), f"record {tag}", keys))
