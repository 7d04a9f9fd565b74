"""Shared helpers and hypothesis strategies for the unit tests (no network, no I/O)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mqttsession.state import (
    MAX_EXPIRY,
    MAX_PACKET_ID,
    PHASES_FOR_QOS,
    IncomingMessage,
    OutgoingMessage,
    Phase,
    SessionState,
)

# database=None: the unit run writes nothing outside tests/unit (no .hypothesis example db).
FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PREFIX = '{"format":"mqttsession","version":1,"sha256":"'  # hand-built texts (format 1)
PREFIX2 = '{"format":"mqttsession","version":2,"sha256":"'  # format 2 (still read)
PREFIX3 = '{"format":"mqttsession","version":3,"sha256":"'  # what encode writes
_PREFIXES = {1: PREFIX, 2: PREFIX2, 3: PREFIX3}


def snap(state: SessionState) -> tuple[object, ...]:
    """Every persistent field plus the packet-id index, to prove 'nothing changed'."""
    return (state.snapshot_fields(), dict(state._by_packet_id))


def index_consistent(state: SessionState) -> None:
    expected = {m.packet_id: s for s, m in state.outgoing.items() if m.packet_id}
    assert state._by_packet_id == expected


def wrap(body: str, version: int = 1) -> str:
    """A state text around ``body`` with a VALID checksum (exercises the field validator)."""
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f'{_PREFIXES[version]}{digest}","state":{body}}}'


def dump(obj: Any, allow_nan: bool = False) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)


def text_from_obj(obj: Any, allow_nan: bool = False, version: int = 1) -> str:
    return wrap(dump(obj, allow_nan), version)


# --------------------------------------------------------------------------- strategies

# utf-8 codec: no lone surrogates; U+0000 is never allowed [MQTT-1.5.3-2]
_TOPIC_CHARS = st.characters(codec="utf-8", exclude_characters="+#\x00")
_LEVEL_CHARS = st.characters(codec="utf-8", exclude_characters="+#/\x00")
_TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")

topics = st.one_of(
    st.sampled_from(["a", "a/b", "/", "//", "a//b", "$SYS/x", "ü/€/𝄞", "\x01\x1f\x7f", "t\n\tab"]),
    st.text(_TOPIC_CHARS, min_size=1, max_size=30),
)
free_text = st.text(_TEXT_CHARS, max_size=30)  # client ids, broker names (may be empty)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(
        st.lists(st.one_of(st.just("+"), st.text(_LEVEL_CHARS, max_size=6)), min_size=1, max_size=5)
    )
    if draw(st.booleans()):
        levels.append("#")
    flt = "/".join(levels)
    return flt or "#"


times = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def outgoing_dicts(draw: st.DrawFn, max_size: int = 6) -> tuple[dict[int, OutgoingMessage], int]:
    seqs = sorted(draw(st.sets(st.integers(1, 2**40), max_size=max_size)))
    pids = draw(st.lists(st.integers(1, MAX_PACKET_ID), min_size=len(seqs), max_size=len(seqs),
                         unique=True))
    out: dict[int, OutgoingMessage] = {}
    for seq, pid in zip(seqs, pids):
        qos = draw(st.sampled_from([1, 2]))
        phase = draw(st.sampled_from(sorted(PHASES_FOR_QOS[qos], key=lambda p: p.value)))
        if phase is Phase.QUEUED and draw(st.booleans()):
            pid = 0  # accepted while every id was taken
        out[seq] = OutgoingMessage(
            seq=seq,
            packet_id=pid,
            topic=draw(topics),
            payload=draw(st.binary(max_size=40)),
            qos=qos,
            retain=draw(st.booleans()),
            properties=draw(st.binary(max_size=12)),
            phase=phase,
        )
    next_seq = (seqs[-1] if seqs else 0) + 1 + draw(st.integers(0, 2**62))
    return out, next_seq


@st.composite
def incoming_dicts(draw: st.DrawFn, max_size: int = 4) -> dict[int, IncomingMessage]:
    pids = draw(st.sets(st.integers(1, MAX_PACKET_ID), max_size=max_size))
    return {
        pid: IncomingMessage(
            packet_id=pid,
            topic=draw(topics),
            payload=draw(st.binary(max_size=40)),
            qos=2,
            retain=draw(st.booleans()),
            dup=draw(st.booleans()),
            properties=draw(st.binary(max_size=12)),
            taken=draw(st.booleans()),
        )
        for pid in sorted(pids)
    }


@st.composite
def valid_states(draw: st.DrawFn) -> SessionState:
    outgoing, next_seq = draw(outgoing_dicts())
    state = SessionState(
        client_id=draw(free_text),
        protocol_version=draw(st.sampled_from([4, 5])),
        clean_session=draw(st.booleans()),
        session_expiry_interval=draw(st.one_of(
            st.none(), st.sampled_from([0, 1, 2, MAX_EXPIRY]), st.integers(0, MAX_EXPIRY))),
        broker=draw(st.one_of(st.none(), free_text)),
        connected_at=draw(times),
        disconnected_at=draw(times),
        last_activity=draw(times),
        next_seq=next_seq,
        last_packet_id=draw(st.integers(0, MAX_PACKET_ID)),
        outgoing=outgoing,
        incoming=draw(incoming_dicts()),
        subscriptions=draw(st.dictionaries(filters(), st.integers(0, 2), max_size=4)),
    )
    state.check_invariants()  # the strategy itself only builds valid states
    return state


def sample_state() -> SessionState:
    """A small, fixed, valid state holding one of everything."""
    return SessionState(
        client_id="gw-1",
        protocol_version=5,
        clean_session=False,
        session_expiry_interval=3600,
        broker="localhost:1883",
        connected_at=1000.0,
        disconnected_at=1010.5,
        last_activity=1010.5,
        next_seq=3,
        last_packet_id=6,
        outgoing={
            1: OutgoingMessage(1, 5, "a/b", b"hi", 1, phase=Phase.AWAIT_PUBACK),
            2: OutgoingMessage(2, 6, "c", b"\x00\xff", 2, True, b"\x01", Phase.AWAIT_PUBCOMP),
        },
        incoming={9: IncomingMessage(9, "in/x", b"yo", dup=True)},
        subscriptions={"a/#": 1},
    )


@contextmanager
def at_line(fn: Any, line: int, action: Callable[[], None],
            only_self: object = None) -> Iterator[list[int]]:
    """``action()`` once, when this thread is about to run line ``line`` of ``fn`` (in a call
    on ``only_self`` if given; an exception it raises comes out of that line); the list
    yielded gets an item once it ran."""
    code, fired = fn.__code__, []

    def tracer(frame: FrameType, _event: str, _arg: object) -> Any:
        if frame.f_code is not code or fired or (
                only_self is not None and frame.f_locals.get("self") is not only_self):
            return None

        def local(frame: FrameType, event: str, _arg: object) -> Any:
            if event == "line" and frame.f_lineno == line and not fired:
                fired.append(1)
                sys.settrace(None)
                frame.f_trace = None
                action()
            return local
        return local

    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(None)
