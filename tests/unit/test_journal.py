"""The durable state file (``mqttsession.journal``): power cuts, damage, compaction, the lock, faults.

What is proved here (see ARCHITECTURE.md, "journal.py" and "The persistence points"):

* power cut: a session is recorded by driving a ``SessionState`` through legal transitions while a
  ``Journal`` appends each record; every truncation of the journal (at every byte for small
  histories, hypothesis-chosen bytes for larger ones) recovers EXACTLY the longest complete prefix
  of that history, with a warning when a torn tail is cut; one damaged byte anywhere recovers the
  prefix before it (a torn last frame) or raises ``StateError`` with both files kept aside
  byte-identical; never another exception, never a state that was not recorded;
* a damaged snapshot, a journal without its snapshot, a journal record that does not fit, another
  client's journal header: ``StateError``, files kept aside; a stale journal header (a crash
  between the two renames of a compaction) is dropped; another client id: ``StateError``;
* compaction writes exactly the given text and a header-only journal, mode 0600;
* the lock: another process gets ``StateLockedError`` naming the owner's pid, a SIGKILLed owner
  does not block, ``close()`` removes the lock file;
* faults: ENOSPC / EIO on every write path of ``append`` and ``compact`` surface as
  ``PersistenceError`` (an ``MQTTSessionError`` and an ``OSError``), leave no temp file, leave
  files that recover to a state the caller holds, and the next write repairs everything.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqttsession.journal as journal_mod
from mqttsession.mapped import MappedTail
from mqttsession import codec
from mqttsession.errors import (
    MQTTSessionError,
    NewerFormatError,
    PersistenceError,
    StateError,
    StateLockedError,
)
from mqttsession.journal import JOURNAL_SUFFIX, LOCK_SUFFIX, Journal, frame, read_frames
from mqttsession.testing.faults import FakeOs, Fault, Injector, journal_faults
from mqttsession.state import (
    MAX_EXPIRY,
    Accepted,
    Event,
    Phase,
    Record,
    SessionState,
    Stepped,
    Subscribed,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

CID = "gw-journal"
NAME = "session.state"
LOGGER = "mqttsession.journal"

# The exhaustive loops recover thousands of copies: on tmpfs when there is one (ext4 flushes a
# truncated-then-rewritten file on close, which would make them slow, not different).
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def fast_tmp() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="mqs-journal-", dir=SHM)


@pytest.fixture
def shm_path() -> Iterator[Path]:
    with fast_tmp() as d:
        yield Path(d)


SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# =================================================================================================
# recording a history


@dataclass
class History:
    """A recorded session: the snapshot, the journal and every intermediate state."""

    snapshot: bytes  # P
    journal: bytes  # P.journal: header frame, then one frame per record
    states: list[str]  # codec.encode after 0, 1, 2 ... records (states[0] == the snapshot)
    ends: list[int]  # ends[k]: byte offset where frame k ends (frame 0 is the header)
    allocated: bytes = b""  # the whole file: ``journal`` and the zeros allocated ahead

    def prefix_at(self, n: int) -> int:
        """How many records a journal cut to ``n`` bytes still holds in full."""
        return max(0, bisect.bisect_right(self.ends, n) - 1)

    def frame_of(self, pos: int) -> int:
        """The index of the frame holding byte ``pos`` (0 = header)."""
        return bisect.bisect_right(self.ends, pos)


class Recorder:
    """Drives a state while a real Journal appends each returned record."""

    def __init__(self, directory: Path, state: SessionState) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / NAME
        self.jpath = Path(str(self.path) + JOURNAL_SUFFIX)
        self.state = state
        self.journal = Journal(str(self.path), CID, sync=True)
        fresh = self.journal.recover()  # no files yet: an empty session of this client
        assert fresh.client_id == CID and fresh.empty and not fresh.clean_session
        self.journal.compact(self.state)
        self.states = [codec.encode(self.state)]
        self.ends = [self.journal.position()[1]]  # (the file is allocated ahead: zeros after)

    def add(self, rec: Record | None) -> None:
        if rec is None:  # a transition that changes nothing (duplicate QoS 2 PUBLISH, ...)
            return
        self.journal.append([rec], self.state, sync=True)
        self.states.append(codec.encode(self.state))
        self.ends.append(self.journal.position()[1])
        assert self.ends[-1] > self.ends[-2]

    def finish(self) -> History:
        self.journal.close()
        whole = self.jpath.read_bytes()
        assert whole[self.ends[-1]:] == bytes(len(whole) - self.ends[-1])  # zeros after
        return History(self.path.read_bytes(), whole[:self.ends[-1]], self.states, self.ends,
                       whole)


def fresh_state() -> SessionState:
    return SessionState(client_id=CID, clean_session=False)


T0 = 1_700_000_000.25


def scripted(state: SessionState) -> Iterator[Record | None]:
    """A fixed history with every record type (K A S R L U X C Z D T) and every event."""
    yield state.configure(protocol_version=5, session_expiry_interval=3600)
    yield state.subscribe("cmd/#", 2)
    a = state.accept("t/1", b"one", 1)
    yield a
    b = state.accept("t/2", b"two", 2)
    yield b
    c = state.accept("t/€", b"\x00\xff", 2, retain=True, properties=b"\x01\x02")
    yield c
    yield state.connected(T0, "localhost:1883", True)
    yield state.send(a.message.seq)
    yield state.send(b.message.seq)
    yield state.send(c.message.seq)
    yield state.puback(a.message.packet_id)
    yield state.pubrec(b.message.packet_id)  # released: PUBREL, never PUBLISH again
    yield state.pubrec(c.message.packet_id, 0x80)  # failed PUBREC ends the flow
    yield state.receive(7, "in/x", b"payload", dup=True)
    yield state.receive(7, "in/x", b"payload", dup=True)  # duplicate: no record
    yield state.activity(T0 + 5)
    yield state.pubcomp(b.message.packet_id)
    yield state.release(7)[1]
    d = state.accept("t/4", b"four" * 10, 1)
    yield d
    yield state.send(d.message.seq)
    yield state.accept("t/5", b"", 2)
    yield state.receive(9, "in/y", b"nine", retain=True, properties=b"\x23\x00\x01")
    yield state.disconnected(T0 + 10.5)
    yield state.unsubscribe("cmd/#")
    yield state.subscribe("cfg/+/x", 1)
    yield state.connected(T0 + 20, "other:1883", False)
    yield state.on_connack(False)[0]  # SessionReset: d requeued, incoming 9 released
    yield state.send(d.message.seq)


def fixed_history(directory: Path) -> History:
    state = fresh_state()
    state.subscribe("pre/#", 1)  # held in the snapshot, not in the journal
    pre = state.accept("pre/1", b"before the snapshot", 2)
    state.send(pre.message.seq)
    rec = Recorder(directory, state)
    for r in scripted(rec.state):
        rec.add(r)
    return rec.finish()


# ------------------------------------------------------------------ random legal transitions

TOPICS = st.sampled_from(["a", "a/b", "ü/€/𝄞", "x/y/z", "t"])
PAYLOADS = st.binary(max_size=24)
TIMES = st.floats(1.6e9, 1.8e9, allow_nan=False, allow_infinity=False)
FILTERS = st.sampled_from(["a/#", "+/b", "#", "x/+/z", "t"])


def random_step(draw: Callable[[Any], Any], state: SessionState) -> Record | None:
    """One legal transition of ``state``, chosen by ``draw``; its record (None: no change)."""
    by_phase: dict[Phase, list[int]] = {p: [] for p in Phase}
    for m in state.outgoing.values():
        by_phase[m.phase].append(m.seq)
    ops = ["accept", "accept", "subscribe", "unsubscribe", "receive", "connected",
           "disconnected", "activity", "connack", "configure"]
    if by_phase[Phase.QUEUED]:
        ops += ["send", "send"]
    if by_phase[Phase.AWAIT_PUBACK]:
        ops += ["puback"]
    if by_phase[Phase.AWAIT_PUBREC]:
        ops += ["pubrec", "pubrec_failed"]
    if by_phase[Phase.AWAIT_PUBCOMP]:
        ops += ["pubcomp"]
    if state.incoming:
        ops += ["release"]
    op = draw(st.sampled_from(ops))
    pid_of = lambda seq: state.outgoing[seq].packet_id
    if op == "accept":
        return state.accept(draw(TOPICS), draw(PAYLOADS), draw(st.sampled_from([1, 2])),
                            draw(st.booleans()), draw(st.binary(max_size=4)))
    if op == "send":
        return state.send(draw(st.sampled_from(by_phase[Phase.QUEUED])))
    if op == "puback":
        return state.puback(pid_of(draw(st.sampled_from(by_phase[Phase.AWAIT_PUBACK]))))
    if op == "pubrec":
        return state.pubrec(pid_of(draw(st.sampled_from(by_phase[Phase.AWAIT_PUBREC]))))
    if op == "pubrec_failed":
        return state.pubrec(pid_of(draw(st.sampled_from(by_phase[Phase.AWAIT_PUBREC]))), 0x87)
    if op == "pubcomp":
        return state.pubcomp(pid_of(draw(st.sampled_from(by_phase[Phase.AWAIT_PUBCOMP]))))
    if op == "receive":
        return state.receive(draw(st.integers(1, 12)), draw(TOPICS), draw(PAYLOADS),
                             draw(st.booleans()), draw(st.booleans()), draw(st.binary(max_size=4)))
    if op == "release":
        return state.release(draw(st.sampled_from(sorted(state.incoming))))[1]
    if op == "subscribe":
        return state.subscribe(draw(FILTERS), draw(st.integers(0, 2)))
    if op == "unsubscribe":
        return state.unsubscribe(draw(FILTERS))
    if op == "connected":
        return state.connected(draw(TIMES), draw(st.sampled_from([None, "h:1883", "b€:1"])),
                               draw(st.booleans()))
    if op == "disconnected":
        return state.disconnected(draw(TIMES))
    if op == "activity":
        return state.activity(draw(TIMES))
    if op == "connack":
        return state.on_connack(draw(st.booleans()), republish=draw(st.booleans()))[0]
    assert op == "configure"
    return state.configure(
        protocol_version=draw(st.sampled_from([4, 5])),
        session_expiry_interval=draw(st.one_of(st.none(), st.integers(0, MAX_EXPIRY))),
    )


def random_history(data: st.DataObject, directory: Path, max_steps: int) -> History:
    state = fresh_state()
    for _ in range(data.draw(st.integers(0, 4), label="prelude")):
        random_step(data.draw, state)  # folded into the snapshot
    rec = Recorder(directory, state)
    for _ in range(data.draw(st.integers(1, max_steps), label="steps")):
        rec.add(random_step(data.draw, rec.state))
    return rec.finish()


# =================================================================================================
# recovering copies


def jpath(p: Path) -> Path:
    return Path(str(p) + JOURNAL_SUFFIX)


def place(directory: Path, snapshot: bytes | None, journal: bytes | None) -> Path:
    """Put a state file (and/or its journal) in ``directory``; returns P."""
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / NAME
    for target, content in ((p, snapshot), (jpath(p), journal)):
        if content is None:
            target.unlink(missing_ok=True)
        elif not target.exists() or target.read_bytes() != content:
            target.unlink(missing_ok=True)
            target.write_bytes(content)
    return p


def used(p: Path) -> int:
    """The bytes of P's journal that hold frames: zeros follow (allocated ahead)."""
    data = jpath(p).read_bytes()
    _payloads, valid, damaged = read_frames(data)
    assert not damaged and not any(data[valid:])
    return valid


def recover(p: Path, client_id: str = CID) -> SessionState:
    """A fresh Journal on ``p`` (as a restarted process would open it), recovered and closed."""
    j = Journal(str(p), client_id, sync=False)
    try:
        return j.recover()
    finally:
        j.close()


def damaged_copies(p: Path) -> tuple[list[Path], list[Path]]:
    snaps = sorted(p.parent.glob(p.name + ".damaged-*"))
    journals = sorted(p.parent.glob(p.name + JOURNAL_SUFFIX + ".damaged-*"))
    return snaps, journals


def assert_kept_aside(p: Path, snapshot: bytes | None, journal: bytes | None) -> None:
    """Both files moved to ``*.damaged-*`` unchanged; nothing left at P / P.journal."""
    assert not p.exists() and not jpath(p).exists()
    snaps, journals = damaged_copies(p)
    if snapshot is None:
        assert snaps == []
    else:
        assert len(snaps) == 1 and snaps[0].read_bytes() == snapshot
    if journal is None:
        assert journals == []
    else:
        assert len(journals) == 1 and journals[0].read_bytes() == journal


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def journal_warnings() -> Iterator[list[str]]:
    """The journal logger's warnings (caplog does not mix with hypothesis)."""
    lg = logging.getLogger(LOGGER)
    handler = _Collect()
    old = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old)


def check_truncation(h: History, work: Path, n: int, zeros: int = 0) -> None:
    """Cut the journal to ``n`` bytes (then ``zeros`` zero bytes: the space a journal
    allocates ahead, which a power cut leaves as it was): exactly the longest complete
    prefix, warned iff torn (bytes other than zeros after it: a frame begun in zeros is
    written over like the space ahead)."""
    journal = h.journal[:n] + bytes(zeros)
    p = place(work, h.snapshot, journal)
    with journal_warnings() as warned:
        got = recover(p)
    k = h.prefix_at(n)
    if zeros:  # the zeros stand in for the bytes cut that were zeros themselves: a frame
        m = n  # whose cut bytes were all zeros is whole again (as it was written)
        while m < min(len(h.journal), n + zeros) and h.journal[m] == 0:
            m += 1
        k = h.prefix_at(m)
    assert codec.encode(got) == h.states[k], f"cut at byte {n}"
    torn = n != 0 and (n < h.ends[0] or any(h.journal[h.ends[k]:n]))  # (a torn header: any)
    assert bool(warned) == torn, (n, warned)
    if torn:
        assert "torn" in warned[0]
    # recovery only reads: the files are as they were, nothing kept aside
    assert p.read_bytes() == h.snapshot and jpath(p).read_bytes() == journal
    assert damaged_copies(p) == ([], [])


def check_journal_damage(h: History, work: Path, pos: int, new_byte: int,
                         zeros: int = 0) -> None:
    """Replace journal byte ``pos``: the prefix before its frame (torn last frame) or StateError;
    the same with ``zeros`` zero bytes after the frames (the space allocated ahead)."""
    assert h.journal[pos] != new_byte
    bad = h.journal[:pos] + bytes([new_byte]) + h.journal[pos + 1:] + bytes(zeros)
    p = place(work, h.snapshot, bad)
    i, last = h.frame_of(pos), len(h.ends) - 1
    with journal_warnings() as warned:
        if i < last:  # good frames follow the bad one: not a torn write, real damage
            with pytest.raises(StateError) as ei:
                recover(p)
            assert "kept aside" in str(ei.value)
            assert type(ei.value) is StateError
            assert_kept_aside(p, h.snapshot, bad)
            return
        got = recover(p)
    assert codec.encode(got) == h.states[max(i - 1, 0)], f"byte {pos} -> {new_byte}"
    assert warned and "torn" in warned[0]
    assert damaged_copies(p) == ([], [])


def check_snapshot_damage(h: History, work: Path, pos: int, new_byte: int) -> None:
    assert h.snapshot[pos] != new_byte
    bad = h.snapshot[:pos] + bytes([new_byte]) + h.snapshot[pos + 1:]
    p = place(work, bad, h.journal)
    with pytest.raises(StateError) as ei:
        recover(p)
    assert type(ei.value) is StateError and "kept aside" in str(ei.value)
    assert_kept_aside(p, bad, h.journal)


# =================================================================================================
# 1. power cuts


def test_recorded_history_covers_every_record_type(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    payloads, valid, damaged = read_frames(h.journal)
    assert valid == len(h.journal) and not damaged
    assert len(payloads) == len(h.ends) == len(h.states)
    records = [codec.decode_record(pl) for pl in payloads[1:]]
    assert {type(r).__name__ for r in records} == {
        "Configured", "Accepted", "Stepped", "Received", "Released", "Subscribed", "Unsubscribed",
        "Connected", "SessionReset", "Disconnected", "Activity"}
    # the per-message records are binary ("b": Accepted with its time, "s": Stepped, "r" /
    # "e": an incoming QoS 2 message received / released), the others JSON arrays
    assert {pl[:1] for pl in payloads[1:]} == {b"b", b"s", b"r", b"e", b"["}
    events = {r.event.value for r in records if isinstance(r, Stepped)}
    assert events == {"send", "puback", "pubrec", "pubrec_failed", "pubcomp"}
    # the whole file recovers to the final state, the snapshot alone to the first
    assert codec.encode(recover(place(tmp_path / "w", h.snapshot, h.journal))) == h.states[-1]
    assert codec.encode(recover(place(tmp_path / "w", h.snapshot, None))) == h.states[0]
    assert len(set(h.states)) == len(h.states)  # every record changed the state


def test_every_truncation_recovers_the_longest_complete_prefix(
    shm_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = fixed_history(shm_path / "rec")
    work = shm_path / "work"
    for n in range(len(h.journal) + 1):
        check_truncation(h, work, n)
        if n:  # (zeros alone are a torn header, warned)
            check_truncation(h, work, n, zeros=1 + n % 97)
    # the whole file as written, with the space allocated ahead
    assert codec.encode(recover(place(work, h.snapshot, h.allocated))) == h.states[-1]
    # and the warning reaches ordinary logging (caplog) at WARNING level
    caplog.clear()
    assert any(h.journal[h.ends[4]:h.ends[4] + 7])  # (length and CRC: not zeros alone)
    p = place(work, h.snapshot, h.journal[: h.ends[4] + 7])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert codec.encode(recover(p)) == h.states[4]
    warned = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "torn tail of 7 bytes" in warned[0].getMessage()


def test_torn_tail_is_cut_and_the_files_stay_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = fixed_history(tmp_path / "rec")
    cut = h.ends[6] + 7
    p = place(tmp_path / "work", h.snapshot, h.journal[:cut])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        j = Journal(str(p), CID)
        try:
            first = j.recover()
            again = j.recover()  # the same Journal, the same files
        finally:
            j.close()
        third = recover(p)  # a fresh Journal (a second restart)
    assert codec.encode(first) == codec.encode(again) == codec.encode(third) == h.states[6]
    assert sum("torn tail" in r.getMessage() for r in caplog.records) == 3

    # writing after a torn recovery: the new record is not glued to the torn bytes
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        rec = state.accept("after/cut", b"new", 1)
        j.append([rec], state)
        expected = codec.encode(state)
    finally:
        j.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert codec.encode(recover(p)) == expected
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    _payloads, valid, damaged = read_frames(jpath(p).read_bytes())
    assert not damaged and not any(jpath(p).read_bytes()[valid:])  # zeros after: ahead


@pytest.mark.parametrize("sync", [True, False])
def test_the_cut_of_a_torn_tail_is_on_disk_before_a_record_goes_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool) -> None:
    """Recovery's cut of a torn journal tail is fsynced before the first record is written
    where the torn bytes were, under ``SessionSync=none`` too (no other fsync there): else a
    power cut could bring the old bytes back after the new record, and the next start would
    read "damaged mid-file" and set the session aside (a mutation hunt: dropping that fsync
    passed every test)."""
    h = fixed_history(tmp_path / "rec")
    p = place(tmp_path / "work", h.snapshot, h.journal[:h.ends[6] + 7])
    calls: list[str] = []
    real_ftruncate, real_fsync = os.ftruncate, os.fsync

    def ftruncate(fd: int, size: int) -> None:
        calls.append(f"ftruncate {size}")
        real_ftruncate(fd, size)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)
    j = Journal(str(p), CID, sync=sync)
    try:
        state = j.recover()
        monkeypatch.setattr(journal_mod.os, "ftruncate", ftruncate)
        monkeypatch.setattr(journal_mod.os, "fsync", fsync)
        j.append([state.accept("after/cut", b"new", 1)], state)
    finally:
        monkeypatch.undo()
        j.close()
    cut = calls.index(f"ftruncate {h.ends[6]}")
    assert "fsync" in calls[cut + 1:], calls


def test_every_damaged_journal_byte_gives_a_prefix_or_state_error(shm_path: Path) -> None:
    h = fixed_history(shm_path / "rec")
    for pos in range(len(h.journal)):
        work = shm_path / f"b{pos}"
        check_journal_damage(h, work, pos, h.journal[pos] ^ 0xFF)


def test_every_damaged_snapshot_byte_is_state_error_and_kept_aside(shm_path: Path) -> None:
    h = fixed_history(shm_path / "rec")
    for pos in range(len(h.snapshot)):
        check_snapshot_damage(h, shm_path / f"s{pos}", pos, h.snapshot[pos] ^ 0x01)


def test_mid_file_damage_keeps_both_files_aside_byte_identical(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    pos = h.ends[2] + 12  # inside frame 3, many good frames after it
    bad = bytearray(h.journal)
    bad[pos] ^= 0x20
    p = place(tmp_path / "work", h.snapshot, bytes(bad))
    with pytest.raises(StateError) as ei:
        recover(p)
    assert f"at byte {h.ends[2]}" in str(ei.value)
    assert_kept_aside(p, h.snapshot, bytes(bad))
    # the next owner starts empty; the damaged copies are never overwritten
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        assert state.empty and state.client_id == CID
        j.append([state.accept("new/life", b"x", 1)], state)
    finally:
        j.close()
    snaps, journals = damaged_copies(p)
    assert [c.read_bytes() for c in snaps] == [h.snapshot]
    assert [c.read_bytes() for c in journals] == [bytes(bad)]
    # a second damage in the same second gets its own name, the first copies stay
    p.write_bytes(b"garbage")
    with pytest.raises(StateError):
        recover(p)
    snaps, journals = damaged_copies(p)
    assert len(snaps) == 2 and len(journals) == 2
    assert h.snapshot in [s.read_bytes() for s in snaps]
    assert b"garbage" in [s.read_bytes() for s in snaps]


def test_damaged_snapshot_is_kept_aside_never_overwritten(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    bad = h.snapshot.replace(b'"pre/1"', b'"pre/X"')
    assert bad != h.snapshot
    p = place(tmp_path / "work", bad, h.journal)
    with pytest.raises(StateError) as ei:
        recover(p)
    assert "checksum" in str(ei.value)
    assert_kept_aside(p, bad, h.journal)
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        j.compact(state)  # a new snapshot at P; the damaged one is untouched
    finally:
        j.close()
    snaps, _journals = damaged_copies(p)
    assert [s.read_bytes() for s in snaps] == [bad]
    assert p.read_bytes() != bad


@pytest.mark.heavy
@settings(SETTINGS, max_examples=20)
@given(data=st.data())
def test_power_cut_at_every_byte_of_random_small_histories(data: st.DataObject) -> None:
    with fast_tmp() as d:
        h = random_history(data, Path(d) / "rec", max_steps=6)
        work = Path(d) / "work"
        zeros = data.draw(st.integers(1, 300), label="zeros ahead")
        for n in range(len(h.journal) + 1):
            check_truncation(h, work, n)
            if n:  # a power cut in a file written over zeros: they stay after what was synced
                check_truncation(h, work, n, zeros)
        for k in range(data.draw(st.integers(1, 6), label="damages")):
            pos = data.draw(st.integers(0, len(h.journal) - 1), label="pos")
            new = data.draw(st.integers(0, 255).filter(lambda b, pos=pos: b != h.journal[pos]))
            check_journal_damage(h, Path(d) / f"dmg{k}", pos, new)
            check_journal_damage(h, Path(d) / f"dmg{k}z", pos, new, zeros)


@pytest.mark.heavy
@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_power_cut_in_random_larger_histories(data: st.DataObject) -> None:
    with fast_tmp() as d:
        h = random_history(data, Path(d) / "rec", max_steps=40)
        work = Path(d) / "work"
        cuts = data.draw(st.lists(st.integers(0, len(h.journal)), min_size=1, max_size=25))
        for n in cuts + h.ends + [e - 1 for e in h.ends] + [e + 1 for e in h.ends]:
            check_truncation(h, work, min(n, len(h.journal)))
            if n:
                check_truncation(h, work, min(n, len(h.journal)), 1 + n % 4096)
        for k in range(data.draw(st.integers(1, 10), label="damages")):
            if data.draw(st.booleans(), label="snapshot?"):
                pos = data.draw(st.integers(0, len(h.snapshot) - 1))
                new = data.draw(st.integers(0, 255).filter(lambda b, pos=pos: b != h.snapshot[pos]))
                check_snapshot_damage(h, Path(d) / f"dmg{k}", pos, new)
            else:
                pos = data.draw(st.integers(0, len(h.journal) - 1))
                new = data.draw(st.integers(0, 255).filter(lambda b, pos=pos: b != h.journal[pos]))
                check_journal_damage(h, Path(d) / f"dmg{k}", pos, new)
                check_journal_damage(h, Path(d) / f"dmg{k}z", pos, new, 1 + pos % 4096)


# ------------------------------------------------------------------ other damage, stale headers


def header(digest_of: str | bytes, client_id: str = CID) -> bytes:
    raw = digest_of.encode("utf-8") if isinstance(digest_of, str) else digest_of
    digest = hashlib.sha256(raw.strip()).hexdigest()
    return frame(json.dumps(["mqttsession-journal", 1, digest, client_id]).encode("utf-8"))


def test_stale_journal_of_an_older_snapshot_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the two renames of a compaction: new snapshot, old journal."""
    h = fixed_history(tmp_path / "rec")
    final = h.states[-1].encode("utf-8")
    p = place(tmp_path / "a", final, h.journal)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        got = recover(p)
    assert codec.encode(got) == h.states[-1]  # the snapshot alone, not replayed twice
    assert any("older than its snapshot" in r.getMessage() for r in caplog.records)
    assert p.read_bytes() == final and damaged_copies(p) == ([], [])

    # records that WOULD fit the new snapshot are still not applied
    old = fresh_state()
    new = fresh_state()
    new.accept("only/in/new", b"n", 1)
    stale = header(codec.encode(old)) + frame(codec.encode_record(Subscribed("extra/#", 1)))
    p = place(tmp_path / "b", codec.encode(new).encode(), stale)
    got = recover(p)
    assert codec.encode(got) == codec.encode(new) and "extra/#" not in got.subscriptions


def test_crash_between_compaction_renames_recovers_the_new_snapshot(tmp_path: Path) -> None:
    """The real thing: the second rename of a compaction never happens."""
    d = tmp_path / "w"
    d.mkdir()
    p = d / NAME
    j = Journal(str(p), CID)
    state = j.recover()
    j.compact(state)
    for i in range(5):
        j.append([state.accept(f"t/{i}", b"%d" % i, 1 + i % 2)], state)
    old_journal = jpath(p).read_bytes()
    state.subscribe("late/#", 1)  # in the new snapshot only
    real_replace = os.replace

    def no_second_rename(src: Any, dst: Any) -> None:
        if str(dst).endswith(JOURNAL_SUFFIX):
            raise OSError(errno.EIO, "power cut")
        real_replace(src, dst)

    mp = pytest.MonkeyPatch()
    mp.setattr(journal_mod, "os", FakeOs(replace=no_second_rename))
    try:
        with pytest.raises(PersistenceError):
            j.compact(state)
    finally:
        mp.undo()
    assert jpath(p).read_bytes() == old_journal  # the old journal names the old snapshot
    j.close()
    assert codec.encode(recover(p)) == codec.encode(state)


def test_journal_without_its_snapshot_is_state_error(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    p = place(tmp_path / "w", None, h.journal)
    with pytest.raises(StateError, match="without its snapshot"):
        recover(p)
    assert_kept_aside(p, None, h.journal)


def test_journal_header_of_another_client_is_state_error(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    bad = header(h.snapshot, "intruder") + h.journal[h.ends[0]:]
    p = place(tmp_path / "w", h.snapshot, bad)
    with pytest.raises(StateError, match="intruder"):
        recover(p)
    assert_kept_aside(p, h.snapshot, bad)


def test_wrong_client_id_is_state_error_and_leaves_the_files(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    p = place(tmp_path / "w", h.snapshot, h.journal)
    with pytest.raises(StateError, match="belongs to client id") as ei:
        recover(p, client_id="someone-else")
    assert not isinstance(ei.value, StateLockedError)
    # not damage: the other client's files are left where they are, untouched
    assert p.read_bytes() == h.snapshot and jpath(p).read_bytes() == h.journal
    assert damaged_copies(p) == ([], [])
    assert codec.encode(recover(p)) == h.states[-1]
    assert codec.encode(recover(p, client_id="")) == h.states[-1]  # no id: any file


@pytest.mark.parametrize(
    "bad_record",
    [
        b'["S",999,"puback",1]',  # a step for a message nobody holds
        b'["L",4242]',  # a release of an id not held
        b'["A",1,1,"t",""]',  # wrong arity
        b'["Q"]',  # unknown tag
        b'["A",1,1,"t","!!",1,false,""]',  # bad base64
        b'["K","c",6,false,null]',  # bad protocol version
        b"[" + b"[" * 50_000 + b"]" * 50_001,  # absurd nesting
        b"\xff\xfe",  # not UTF-8
        b'{"not": "an array"}',
    ],
    ids=["unheld-step", "unheld-release", "arity", "tag", "base64", "protocol", "nesting",
         "utf8", "object"],
)
def test_a_record_that_does_not_fit_is_state_error(tmp_path: Path, bad_record: bytes) -> None:
    h = fixed_history(tmp_path / "rec")
    # a correctly framed (CRC-valid) record: not a torn write, a record that does not fit
    bad = h.journal[: h.ends[3]] + frame(bad_record) + h.journal[h.ends[3]:]
    p = place(tmp_path / "w", h.snapshot, bad)
    with pytest.raises(StateError, match="kept aside"):
        recover(p)
    assert_kept_aside(p, h.snapshot, bad)
    # even as the very last frame (CRC-valid, so not "torn")
    bad = h.journal + frame(bad_record)
    p = place(tmp_path / "w2", h.snapshot, bad)
    with pytest.raises(StateError, match="kept aside"):
        recover(p)
    assert_kept_aside(p, h.snapshot, bad)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,  # BUG: json.loads raised RecursionError in the journal header reader
        b"not json",
        b'["mqttsession-journal",0,"x","y"]',
        b'["mqttsession-journal",1,"x"]',
        b"\xc3\x28",
    ],
    ids=["deep-nesting", "text", "version", "arity", "utf8"],
)
def test_an_invalid_journal_header_is_state_error(tmp_path: Path, payload: bytes) -> None:
    h = fixed_history(tmp_path / "rec")
    for k, bad in enumerate([frame(payload), frame(payload) + h.journal[h.ends[0]:]]):
        p = place(tmp_path / f"w{k}", h.snapshot, bad)
        with pytest.raises(StateError, match="kept aside"):
            recover(p)
        assert_kept_aside(p, h.snapshot, bad)


def _newer(h: Any, how: str) -> tuple[bytes, bytes]:
    """The snapshot and journal of ``h`` as a newer mqttsession may have written them."""
    if how == "snapshot":
        text = h.snapshot.decode("utf-8")
        doc = json.loads(text)
        doc["version"] = 99
        return json.dumps(doc).encode("utf-8"), h.journal
    if how == "journal-header":
        digest = json.loads(read_frames(h.journal)[0][0])[2]
        head = frame(json.dumps(["mqttsession-journal", 9, digest, CID]).encode("utf-8"))
        return h.snapshot, head + h.journal[h.ends[0]:]
    record = b'["Y",1]' if how == "json-record" else b"y\x00\x01"
    return h.snapshot, h.journal + frame(record)


@pytest.mark.parametrize("how", ["snapshot", "journal-header", "json-record", "binary-record"])
def test_files_of_a_newer_version_are_refused_and_left_in_place(tmp_path: Path, how: str) -> None:
    """A downgrade: ``NewerFormatError`` (a ``StateError``) naming the upgrade, the files left
    where they are, unchanged, every time (the newer version finds them). Before (a hunt):
    kept aside as damaged, and the next start was an empty session."""
    h = fixed_history(tmp_path / "rec")
    snapshot, journal = _newer(h, how)
    p = place(tmp_path / "w", snapshot, journal)
    for _ in range(2):
        with pytest.raises(NewerFormatError, match="newer"):
            recover(p)
        assert p.read_bytes() == snapshot and jpath(p).read_bytes() == journal
        assert damaged_copies(p) == ([], [])


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def framed_records(draw: st.DrawFn) -> bytes:
    """A CRC-valid frame holding a record-shaped JSON array with random elements."""
    tag = draw(st.sampled_from(list("ASRLUXCZDTK") + ["", "AA"]))
    rest = draw(st.lists(JSONISH, max_size=9))
    return frame(json.dumps([tag, *rest]).encode("utf-8"))


@pytest.mark.heavy
@settings(SETTINGS, max_examples=300)
@given(
    kind=st.sampled_from(["snapshot", "journal", "both", "frames"]),
    blob=st.binary(max_size=300),
    frames=st.lists(framed_records(), min_size=1, max_size=4),
)
def test_random_bytes_recover_or_state_error(kind: str, blob: bytes, frames: list[bytes]) -> None:
    base = fresh_state()
    base.accept("t", b"held", 2)
    text = codec.encode(base).encode("utf-8")
    snapshot, journal = {
        "snapshot": (blob, None),
        "journal": (text, blob),
        "both": (blob, blob),
        "frames": (text, header(text) + b"".join(frames)),
    }[kind]
    with fast_tmp() as d:
        p = place(Path(d), snapshot, journal)
        try:
            got = recover(p)
        except NewerFormatError:  # a record kind of a newer version: refused, left in place
            assert p.exists()
            return
        except StateError as exc:
            # damage: whatever was there is kept aside, nothing is left at P / P.journal
            assert "kept aside" in str(exc)
            assert not p.exists() and not jpath(p).exists()
            return
        # accepted: a valid state, and one the codec can write and read back unchanged
        got.check_invariants()
        assert codec.encode(codec.decode(codec.encode(got))) == codec.encode(got)
        if kind == "journal":  # the snapshot is valid: a bad journal can only be a torn one
            assert codec.encode(got) == text.decode("utf-8")


# =================================================================================================
# 2. compaction


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_compact_writes_exactly_the_text_and_a_header_only_journal(tmp_path: Path) -> None:
    h = fixed_history(tmp_path / "rec")
    p = place(tmp_path / "w", h.snapshot, h.journal)
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        text = codec.encode(state)
        j.compact(state, text)
        assert p.read_bytes() == text.encode("utf-8")
        payloads, valid, damaged = read_frames(jpath(p).read_bytes())
        assert len(payloads) == 1 and valid == used(p) and not damaged
        # format 2 names the snapshot by its own checked sha256 field (not a second hash)
        body = text[text.index('"state":') + len('"state":'):-1]
        assert json.loads(payloads[0]) == [
            "mqttsession-journal", 2, hashlib.sha256(body.encode()).hexdigest(), CID,
        ]
        for f in (p, jpath(p), Path(str(p) + LOCK_SUFFIX)):
            assert mode(f) == 0o600, f
        assert not j.needs_compaction
        # compact without text: the codec's text of the state
        state.subscribe("z/#", 0)
        j.compact(state)
        assert p.read_text(encoding="utf-8") == codec.encode(state)
        assert len(read_frames(jpath(p).read_bytes())[0]) == 1
    finally:
        j.close()
    assert codec.encode(recover(p)) == codec.encode(state)
    assert sorted(x.name for x in p.parent.iterdir()) == [NAME, NAME + JOURNAL_SUFFIX]


def test_files_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        j = Journal(str(tmp_path / NAME), CID)
        state = j.recover()
        j.compact(state)
        j.append([state.accept("t", b"x", 1)], state)
        p = tmp_path / NAME
        for f in (p, jpath(p), Path(str(p) + LOCK_SUFFIX)):
            assert mode(f) == 0o600, f
        j.close()
    finally:
        os.umask(old)


def test_journal_passing_its_bound_asks_for_compaction(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / NAME), CID, max_journal_bytes=600)
    try:
        state = j.recover()
        j.compact(state)
        sizes = []
        for i in range(40):
            j.append([state.accept("bound/t", b"p" * 20, 1)], state)
            if j.needs_compaction:
                assert used(tmp_path / NAME) > 600
                j.compact(state)
            sizes.append(used(tmp_path / NAME))
            assert sizes[-1] <= 600
        assert sizes != sorted(sizes)  # it was compacted on the way
    finally:
        j.close()
    assert codec.encode(recover(tmp_path / NAME)) == codec.encode(state)
    assert len(state.outgoing) == 40


# =================================================================================================
# 3. the lock

_HOLD = textwrap.dedent(
    """
    import sys, time
    from mqttsession.journal import Journal
    j = Journal(sys.argv[1], "gw-journal")
    print("locked", flush=True)
    time.sleep(60)
    """
)

_TRY = textwrap.dedent(
    """
    import sys
    from mqttsession.errors import StateError, StateLockedError
    from mqttsession.journal import Journal
    try:
        j = Journal(sys.argv[1], "gw-journal")
    except StateLockedError as exc:
        print("StateLockedError", isinstance(exc, StateError), exc)
    else:
        j.recover()
        j.close()
        print("acquired")
    """
)


def _try_in_child(p: Path) -> str:
    out = subprocess.run([sys.executable, "-c", _TRY, str(p)], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.strip()


def test_second_owner_in_another_process_gets_state_locked_error(tmp_path: Path) -> None:
    p = tmp_path / NAME
    j = Journal(str(p), CID)
    try:
        j.compact(j.recover())
        said = _try_in_child(p)
        assert said.startswith("StateLockedError True "), said
        assert f"pid {os.getpid()}" in said
        # the same process, a second Journal: refused too (flock is per open file)
        with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
            Journal(str(p), CID)
    finally:
        j.close()
    assert not Path(str(p) + LOCK_SUFFIX).exists()  # close() removes the lock file
    assert _try_in_child(p) == "acquired"
    assert not Path(str(p) + LOCK_SUFFIX).exists()


def test_an_owner_killed_with_sigkill_does_not_block_the_next(tmp_path: Path) -> None:
    p = tmp_path / NAME
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(p)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StateLockedError, match=f"pid {child.pid}\\b") as ei:
            Journal(str(p), CID)
        assert isinstance(ei.value, StateError)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert Path(str(p) + LOCK_SUFFIX).exists()  # left behind by the dead owner...
    j = Journal(str(p), CID)  # ...and no obstacle
    try:
        assert j.recover().empty
        assert Path(str(p) + LOCK_SUFFIX).read_text().strip() == str(os.getpid())
    finally:
        j.close()
    assert not Path(str(p) + LOCK_SUFFIX).exists()


# =================================================================================================
# 4. faults on every write path


FAULTS = journal_faults(NAME)


def held(state: SessionState) -> tuple[object, ...]:
    """Every persistent field but ``last_packet_id`` (``retract`` does not wind that back)."""
    fields = state.snapshot_fields()
    return fields[:9] + fields[10:]


def tmp_files(d: Path) -> list[str]:
    return sorted(x.name for x in d.iterdir() if ".tmp-" in x.name)


def copy_and_recover(p: Path, into: Path) -> SessionState:
    """What a process restarted right now would recover (the live owner keeps its lock)."""
    return recover(place(into, p.read_bytes() if p.exists() else None,
                         jpath(p).read_bytes() if jpath(p).exists() else None))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_every_write_path_fault_is_persistence_error_and_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    d = tmp_path / "live"
    d.mkdir()
    p = d / NAME
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        j.compact(state)
        for i in range(3):
            j.append([state.accept(f"ok/{i}", b"before %d" % i, 1 + i % 2)], state)
        j.append([state.subscribe("s/#", 1)], state)
        before = codec.encode(state)
        inj = Injector(monkeypatch, fault)
        if fault.op == "append":
            rec = state.accept("doomed", b"not durable", 1)
            with pytest.raises(PersistenceError) as ei:
                j.append([rec], state)
            state.retract(rec)  # what the Client does
        else:
            with pytest.raises(PersistenceError) as ei:
                j.compact(state)
        assert inj.hits == 1, "the fault was never reached"
        inj.disarm()
        err = ei.value
        assert isinstance(err, MQTTSessionError) and isinstance(err, OSError)
        assert err.errno == fault.err
        assert NAME in str(err)
        assert tmp_files(d) == []
        assert held(state) == held(codec.decode(before))

        # a crash right now: the files hold the caller's state (for append, a record the
        # caller gave up on may still be there -- see the Client test -- but nothing else)
        now = copy_and_recover(p, tmp_path / "crash-now")
        if fault.op == "compact" or fault.func == "write":
            assert codec.encode(now) == before
        else:
            assert codec.encode(now) == before or [m.topic for m in now.outgoing.values()] == [
                "ok/0", "ok/1", "ok/2", "doomed"]

        # the fault is gone: the next write succeeds and repairs everything
        j.append([state.accept("after", b"fault gone", 2)], state)
        j.append([state.accept("after2", b"and again", 1)], state)
        assert tmp_files(d) == []
        after = codec.encode(state)
        assert codec.encode(copy_and_recover(p, tmp_path / "repaired")) == after
        topics = [m.topic for m in codec.decode(after).outgoing.values()]
        assert topics == ["ok/0", "ok/1", "ok/2", "after", "after2"]
    finally:
        j.close()
    assert codec.encode(recover(p)) == after
    for f in (p, jpath(p)):
        assert mode(f) == 0o600


def test_injector_only_touches_the_journal_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sanity of the harness: the real ``os`` is never patched."""
    real_write = os.write
    Injector(monkeypatch, FAULTS[0])
    assert os.write is real_write and journal_mod.os is not os
    monkeypatch.undo()
    assert journal_mod.os is os


def test_append_after_failure_never_glues_onto_a_torn_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial write (ENOSPC half-way) leaves a torn frame; the next append must not build on it."""
    p = tmp_path / NAME
    j = Journal(str(p), CID)
    try:
        state = j.recover()
        j.compact(state)
        j.append([state.accept("a", b"1", 1)], state)
        inj = Injector(monkeypatch, FAULTS[1])  # append-short-write
        rec = state.accept("b", b"2" * 40, 1)
        with pytest.raises(PersistenceError):
            j.append([rec], state)
        inj.disarm()
        # the Journal contract: state already holds the record; the next call rewrites all
        j.append([state.accept("c", b"3", 2)], state)
        expected = codec.encode(state)
    finally:
        j.close()
    used(p)  # whole frames, then only zeros: nothing torn left behind them
    assert codec.encode(recover(p)) == expected
    assert [m.topic for m in codec.decode(expected).outgoing.values()] == ["a", "b", "c"]


def test_out_of_order_journal_is_refused_not_guessed(tmp_path: Path) -> None:
    """Replay runs the real transition code: an out-of-order journal is refused, not guessed."""
    state = fresh_state()
    a = state.accept("t", b"x", 1)
    p = place(tmp_path, codec.encode(fresh_state()).encode(), None)
    bad = header(p.read_bytes()) + frame(codec.encode_record(
        Stepped(a.message.seq, Event.SEND, a.message.packet_id))) + frame(
        codec.encode_record(Accepted(a.message)))
    jpath(p).write_bytes(bad)
    with pytest.raises(StateError, match="record 1"):
        recover(p)
    assert_kept_aside(p, codec.encode(fresh_state()).encode(), bad)


# =================================================================================================
# 5. deferred syncs: records written with sync=False and made durable together (the network
# thread's read batch), under SessionSync=always


def _counting(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    calls: list[int] = []

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        if fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fdatasync(fd)

    monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=fdatasync))
    return calls


@contextlib.contextmanager
def _compacted(p: Path, sync: bool) -> Iterator[tuple[Journal, SessionState]]:
    """A journal on ``p`` that holds an empty session, closed at the end."""
    j = Journal(str(p), CID, sync=sync)
    try:
        st = fresh_state()
        j.compact(st)
        yield j, st
    finally:
        j.close()


def _counting_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """The journal module's ``write`` calls (their sizes) and fdatasyncs, from now on."""
    writes: list[int] = []
    syncs: list[int] = []

    def write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return os.write(fd, data)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, fdatasync=syncs.append))
    return writes, syncs


def test_sync_pending_makes_deferred_records_durable_with_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        calls = _counting(monkeypatch)
        j.sync_pending()
        assert calls == []  # nothing written since the compaction's fsyncs
        for i in range(3):
            rec = st.accept(f"t/{i}", b"x", 2)
            j.append([rec], st, sync=False)
        assert calls == []
        j.sync_pending()
        assert len(calls) == 1  # one fsync for the three records
        j.sync_pending()
        assert len(calls) == 1  # nothing new: no second fsync
        j.append([st.accept("t/3", b"x", 1)], st, sync=False)
        j.append([st.accept("t/4", b"x", 1)], st, sync=True)  # covers the deferred one too
        assert len(calls) == 2
        j.sync_pending()
        assert len(calls) == 2
        assert len(copy_and_recover(p, tmp_path / "copy").outgoing) == 5


def test_sync_pending_is_a_no_op_with_sync_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _compacted(tmp_path / NAME, sync=False) as (j, st):
        calls = _counting(monkeypatch)
        j.append([st.accept("t", b"x", 2)], st, sync=False)
        j.sync_pending()
        assert calls == []


def test_a_failed_deferred_sync_raises_and_the_next_record_rewrites_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        j.append([st.accept("t/1", b"x", 2)], st, sync=False)
        _counting(monkeypatch, fail=True)
        with pytest.raises(PersistenceError):
            j.sync_pending()
        with pytest.raises(PersistenceError):  # still owed: no ack may go out yet
            j.sync_pending()
        monkeypatch.setattr(journal_mod, "os", os)
        j.append([st.accept("t/2", b"y", 2)], st, sync=True)  # a full rewrite (compaction)
        j.sync_pending()
        assert [m.topic for m in copy_and_recover(p, tmp_path / "copy").outgoing.values()] == [
            "t/1", "t/2"]


def test_a_group_commit_writes_the_records_waiting_in_memory_with_one_write_and_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: publishes append their records ``held`` (no syscall); ``position`` counts
    them, and the ``sync_to`` that covers any of them writes them all in one write, then
    syncs; not a droppable lazy record after them (it waits for the next record)."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        size = used(p)
        writes, syncs = _counting_writes(monkeypatch)
        real_put = MappedTail.put

        def put(tail: MappedTail, fd: int, alloc: int, at: int, data: bytes) -> bool:
            done = real_put(tail, fd, alloc, at, data)
            if done:  # copied into the mapping: one write all the same
                writes.append(len(data))
            return done

        monkeypatch.setattr(MappedTail, "put", put)
        marks = []
        for i in range(3):
            j.append([st.accept(f"t/{i}", b"x", 1)], st, sync=False, held=True)
            marks.append(j.position())
        sent = st.send(min(st.outgoing))
        j.append([sent], st, sync=False, lazy=True)  # droppable: a SEND step
        assert writes == [] and used(p) == size  # nothing written yet
        assert marks[0][1] > size and marks[0][1] < marks[1][1] < marks[2][1]
        assert j.position()[1] == marks[2][1]  # (where the held records end)
        assert not j.is_synced(*marks[0])
        assert j.sync_to(*marks[0]) is True  # the first one's sync writes all three
        assert len(writes) == 1 and len(syncs) == 1
        assert used(p) == marks[2][1]  # not the SEND step
        assert all(j.is_synced(*m) for m in marks)
        assert j.sync_to(*marks[2]) is False  # covered: no second write or sync
        assert len(writes) == 1 and len(syncs) == 1
        assert copy_and_recover(p, tmp_path / "copy0").outgoing[sent.seq].phase.name == "QUEUED"
        j.flush()
        assert used(p) == j.position()[1] > marks[2][1]
    assert [m.topic for m in copy_and_recover(p, tmp_path / "copy").outgoing.values()] == [
        "t/0", "t/1", "t/2"]



def test_sync_pending_writes_a_batchs_held_records_with_one_write_and_syncs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read batch's records that only its acks wait for are appended ``held`` (no syscall);
    the batch's ``sync_pending`` writes them in one write and syncs them, before the acks
    leave. Nothing else written since the last sync: it still has them to write."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        size = used(p)
        writes, syncs = _counting_writes(monkeypatch)
        for pid in (1, 2, 3):  # QoS 2 PUBLISHes received (persistence point 3)
            rec = st.receive(pid, f"in/{pid}", b"x", False, False, b"")
            assert rec is not None
            j.append([rec], st, sync=False, held=True)
        assert writes == [] and used(p) == size
        j.sync_pending()
        assert len(writes) == 1 and len(syncs) == 1  # all three, then one fdatasync
        assert j.is_synced(*j.position())
        j.sync_pending()
        assert len(writes) == 1 and len(syncs) == 1  # nothing left
    assert sorted(copy_and_recover(p, tmp_path / "copy").incoming) == [1, 2, 3]


def test_held_records_a_flush_wrote_are_still_synced_by_sync_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a read batch an empty record (a repeated PUBLISH or PUBREC) flushes what waits,
    held records with it: the batch's ``sync_pending`` still fdatasyncs them."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        syncs: list[int] = []
        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=syncs.append))
        rec = st.receive(1, "in/1", b"x", False, False, b"")
        assert rec is not None
        j.append([rec], st, sync=False, held=True)
        j.flush()
        assert syncs == []
        j.sync_pending()
        assert len(syncs) == 1 and j.is_synced(*j.appended_at)


@pytest.mark.parametrize("where", ["group commit", "flush"])
def test_held_records_lost_to_a_failed_write_make_sync_pending_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Another thread's group commit (or a flush) takes the batch's held records and its write
    fails: the batch's ``sync_pending`` raises (its acks must not leave), and the next record
    rewrites the file from memory, the lost one in it."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        rec = st.receive(1, "in/1", b"x", False, False, b"")
        assert rec is not None
        j.append([rec], st, sync=False, held=True)

        def enospc(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "no space left on device")

        monkeypatch.setattr(journal_mod, "os", FakeOs(write=enospc))
        monkeypatch.setattr(j, "mapped", False)  # (a flush would copy into a mapping)
        if where == "flush":
            j.flush()
        else:
            with pytest.raises(PersistenceError):
                j.sync_to(*j.position())
        monkeypatch.setattr(journal_mod, "os", os)
        with pytest.raises(PersistenceError):
            j.sync_pending()
        j.append([st.accept("t/after", b"y", 1)], st, sync=True)  # rewritten whole
        j.sync_pending()
    assert 1 in copy_and_recover(p, tmp_path / "copy").incoming


class _CutJournal(Journal):
    """A journal whose ``position()`` (read by ``append`` after its write) waits, once armed,
    for another thread's failed group commit to cut the file: the cut lands in between."""

    arm: threading.Event | None = None
    cut: threading.Event | None = None

    def position(self) -> tuple[int, int]:
        if self.arm is not None and self.cut is not None and self.arm.is_set():
            self.arm.clear()
            self.cut.wait(5)
        return super().position()


def _failing_group_sync(j: Journal, start: threading.Event, done: threading.Event,
                        monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    """A thread whose group-commit fdatasync waits for ``start``, then fails (EIO): the
    journal is cut back to what was synced; ``done`` then. Returned once it is in there."""
    plain, inside = os.fdatasync, threading.Event()

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "failing-sync":
            inside.set()
            start.wait(5)
            raise OSError(errno.EIO, "injected EIO")
        plain(fd)

    monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=fdatasync))

    def run() -> None:
        try:
            with contextlib.suppress(PersistenceError):
                j.sync_to(*j.position())
        finally:
            done.set()
    t = threading.Thread(target=run, name="failing-sync")
    t.start()
    assert inside.wait(5)
    return t


def test_a_cut_between_an_append_and_its_position_makes_sync_pending_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's failed group sync cuts the journal right after a read batch's record
    was written, before ``append`` read where it ended: the batch's ``sync_pending`` raises
    (its ack must not leave), and the next record rewrites the file with that one in it."""
    p = tmp_path / NAME
    j = _CutJournal(str(p), CID, sync=True, mapped=False)
    try:
        st = fresh_state()
        j.compact(st)
        j.append([st.accept("t/a", b"A" * 10, 2)], st, sync=False)  # written, not synced
        j.arm, j.cut = threading.Event(), threading.Event()
        t = _failing_group_sync(j, j.arm, j.cut, monkeypatch)  # (it waits in its fdatasync)
        rec = st.receive(7, "in/7", b"R" * 10, False, False, b"")
        assert rec is not None
        j.arm.set()
        j.append([rec], st, sync=False)  # the cut lands before its position is read
        t.join(5)
        assert b"R" * 10 not in p.with_name(NAME + JOURNAL_SUFFIX).read_bytes()
        with pytest.raises(PersistenceError):
            j.sync_pending()
        j.append([st.accept("t/b", b"B", 1)], st, sync=True)  # rewritten whole
        j.sync_pending()
    finally:
        j.close()
    assert 7 in copy_and_recover(p, tmp_path / "copy").incoming


def test_a_synced_append_cut_before_its_own_fdatasync_is_rewritten_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish's record synced at once: another thread's failed group sync cuts it between
    its write and its fdatasync. The append must not report it durable while it is gone: the
    file is rewritten from memory, that record in it, before the append returns."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        j.mapped = False
        j.append([st.accept("t/a", b"A" * 10, 2)], st, sync=False)
        start, done = threading.Event(), threading.Event()
        plain = os.fdatasync
        t = _failing_group_sync(j, start, done, monkeypatch)

        def own_sync(fd: int) -> None:
            if threading.current_thread().name == "failing-sync":
                start.wait(5)
                raise OSError(errno.EIO, "injected EIO")
            start.set()  # the other one fails and cuts now, before this fdatasync
            done.wait(5)
            plain(fd)

        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=own_sync))
        rec = st.accept("t/b", b"B" * 10, 2)
        j.append([rec], st, sync=True)
        t.join(5)
        assert j.is_synced(*j.appended_at)
        assert rec.message.seq in copy_and_recover(p, tmp_path / "copy0").outgoing  # (kill -9)
    assert rec.message.seq in copy_and_recover(p, tmp_path / "copy").outgoing


def test_a_deferred_sync_leaves_droppable_records_for_the_next_append(tmp_path: Path) -> None:
    """``sync_pending`` runs on the network thread outside the session lock, where no
    compaction can follow it: the lazy records it does not need (SEND steps, removals:
    persistence point 5) wait for the next append, so a journal with ``max_journal_bytes``
    never sits past its bound; that append compacts when due and loses none of them."""
    p = tmp_path / NAME
    j = Journal(str(p), CID, max_journal_bytes=1024)
    try:
        st = j.recover()
        j.compact(st)
        size = used(p)
        rounds = 0
        while size + 100 < 1024:  # QoS 2 records, each synced at the "batch's end"
            j.append([st.accept(f"b/{rounds}", b"x", 2)], st, sync=False)
            j.sync_pending()
            size, rounds = used(p), rounds + 1
        j.append([st.accept("b/unsynced", b"x", 2)], st, sync=False)  # its sync waits
        assert not j.needs_compaction
        for seq in sorted(st.outgoing):  # sent: lazy records, more bytes than are left
            j.append([st.send(seq)], st, sync=False, lazy=True)
        assert j.position()[1] > 1024
        j.sync_pending()
        assert used(p) <= 1024
        j.append([st.accept("b/last", b"y", 1)], st, sync=True)
        if j.needs_compaction:
            j.compact(st)
        assert used(p) <= 1024
    finally:
        j.close()
    assert codec.encode(recover(p)) == codec.encode(st)


@pytest.mark.parametrize("fails", ["write", "fdatasync"])
def test_a_failed_group_commit_write_cuts_what_is_not_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """The write (ENOSPC) or the sync (EIO) of records that waited in memory fails: every
    waiter gets PersistenceError, the file holds only what was synced before (a publisher told
    "failed" is not found after a restart), and the next record rewrites everything."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        j.append([st.accept("t/kept", b"x", 1)], st, sync=True)
        synced = used(p)
        recs = []
        for i in range(3):
            recs.append(st.accept(f"t/{i}", b"x", 1))
            j.append([recs[-1]], st, sync=False, held=True)
        mark = j.position()
        err = errno.ENOSPC if fails == "write" else errno.EIO

        def failing(*_a: Any) -> Any:
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(journal_mod, "os", FakeOs(**{fails: failing}))
        if fails == "write":  # (where the file cannot be mapped: a write() it is)
            monkeypatch.setattr(MappedTail, "put", lambda *_a: False)
        with pytest.raises(PersistenceError) as info:
            j.sync_to(*mark)
        assert info.value.errno == err
        with pytest.raises(PersistenceError):  # still owed: the file failed
            j.sync_to(*mark)
        monkeypatch.setattr(journal_mod, "os", os)
        assert not j.is_synced(*mark)
        assert used(p) == synced
        assert [m.topic for m in copy_and_recover(p, tmp_path / "copy").outgoing.values()] == [
            "t/kept"]
        for rec in reversed(recs):  # the publishers take theirs back (``Engine.withdraw``)
            st.withdraw(rec.message.seq)
        j.append([st.accept("t/after", b"y", 1)], st, sync=True)  # a full rewrite
    assert [m.topic for m in copy_and_recover(p, tmp_path / "copy2").outgoing.values()] == [
        "t/kept", "t/after"]


def test_a_lingering_group_commit_takes_in_the_records_of_writers_that_come_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer that runs the next fdatasync may wait first (``linger``, as a gateway's
    shared log does with several writers under way): records appended by other writers while
    it waits join its fdatasync (one for the three; without the wait, two)."""
    import threading

    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        syncs = _counting(monkeypatch)
        lock = threading.Lock()
        done: list[str] = []
        appended: list[str] = []
        all_in = threading.Event()
        real_sleep = time.sleep

        def linger(seconds: float) -> None:  # (the linger lasts until b and c appended: a
            if seconds == 0.5:  # loaded machine once started them after a real 0.5 s)
                assert all_in.wait(20)
            else:
                real_sleep(seconds)
        monkeypatch.setattr(time, "sleep", linger)

        def publish(name: str, linger: float) -> None:
            with lock:  # the client's lock, around the record
                j.append([st.accept(f"t/{name}", b"x", 1)], st, sync=False, held=True)
                mark = j.position()
                appended.append(name)
                if len(appended) == 3:
                    all_in.set()
            j.sync_to(*mark, linger=linger)
            done.append(name)

        first = threading.Thread(target=publish, args=("a", 0.5), daemon=True)
        first.start()
        deadline = time.monotonic() + 20
        while not j._lingering and time.monotonic() < deadline:
            time.sleep(0.001)
        assert j._lingering  # "a" waits before its fdatasync
        others = [threading.Thread(target=publish, args=(n, 0.0), daemon=True) for n in "bc"]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(max(0.0, deadline - time.monotonic()))
        assert sorted(done) == ["a", "b", "c"]
        assert len(syncs) == 1  # one fdatasync for the three
    assert len(copy_and_recover(p, tmp_path / "copy").outgoing) == 3


def test_a_group_sync_overlapped_by_a_failed_sync_of_the_same_file_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a write-back error to one fsync caller only: a group commit's fdatasync
    that returns while another thread's fdatasync of the same file failed proves nothing, so
    the records it was to cover are not reported durable (before: they were)."""
    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        j.mapped = False
        j.append([st.accept("t/a", b"A" * 10, 2)], st, sync=False)  # written, not synced
        gen, pos = j.position()
        plain, inside, go = os.fdatasync, threading.Event(), threading.Event()

        def fdatasync(fd: int) -> None:
            if threading.current_thread().name == "group-sync":
                inside.set()
                go.wait(5)
                plain(fd)  # returns 0: the error went to the other caller
            else:
                raise OSError(errno.EIO, "injected EIO")

        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=fdatasync))
        outcome: list[BaseException | bool] = []

        def group() -> None:
            try:
                outcome.append(j.sync_to(gen, pos))
            except PersistenceError as exc:
                outcome.append(exc)
        t = threading.Thread(target=group, name="group-sync")
        t.start()
        assert inside.wait(5)
        with pytest.raises(PersistenceError):
            j.append([st.accept("t/b", b"B" * 10, 2)], st, sync=True)  # its fdatasync fails
        go.set()
        t.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], PersistenceError), outcome
        assert not j.is_synced(gen, pos)


class _InterruptedLock:
    """A turn lock whose wait is interrupted (KeyboardInterrupt), as Ctrl-C would."""

    def __init__(self) -> None:
        self.calls = 0

    def acquire(self) -> bool:
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt
        return True

    def release(self) -> None:
        pass


def test_a_waiter_interrupted_in_a_group_commit_leaves_no_turn_to_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread interrupted while it waits for a group commit's fdatasync leaves the waiters'
    list: the sync that follows is handed to a live waiter (before: to the interrupted one's
    entry, and the others waited for good)."""
    import mqttsession.groupcommit as groupcommit_mod  # noqa: PLC0415
    from mqttsession.testing.fsyncs import StuckFdatasync  # noqa: PLC0415

    class _Threading:
        def __getattr__(self, name: str) -> Any:
            return getattr(threading, name)

        @staticmethod
        def Lock() -> Any:  # noqa: N802 - stands for threading.Lock
            if threading.current_thread().name == "interrupted":
                return _InterruptedLock()
            return threading.Lock()

    p = tmp_path / NAME
    with _compacted(p, sync=True) as (j, st):
        monkeypatch.setattr(groupcommit_mod, "threading", _Threading())
        stuck = StuckFdatasync(monkeypatch.setattr)
        stuck.armed = True
        j.append([st.accept("t/a", b"a", 1)], st, sync=False)
        first = threading.Thread(target=j.sync_to, args=j.position())
        first.start()
        assert stuck.entered.wait(5)  # its fdatasync runs (stuck)
        j.append([st.accept("t/b", b"b", 1)], st, sync=False)
        interrupted: list[BaseException] = []

        def wait_then_interrupt() -> None:
            try:
                j.sync_to(*j.position())
            except BaseException as exc:  # noqa: BLE001 - the interrupt, recorded
                interrupted.append(exc)

        t = threading.Thread(target=wait_then_interrupt, name="interrupted")
        t.start()
        t.join(5)
        assert interrupted and isinstance(interrupted[0], KeyboardInterrupt)
        j.append([st.accept("t/c", b"c", 1)], st, sync=False)
        last = threading.Thread(target=j.sync_to, args=j.position(), daemon=True)
        last.start()
        deadline = time.monotonic() + 5
        while len(j._waiters) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        stuck.gate.set()
        first.join(5)
        last.join(5)
        assert not last.is_alive()  # before: it waited for a turn handed to no one
        assert not j._waiters


def test_a_zero_head_in_the_last_bytes_of_a_page_is_a_torn_tail() -> None:
    """A frame whose 8-byte head is the last 8 bytes of a page that was written back before it
    was appended (zeros there), its payload and later frames on the next page: a torn tail
    (a power cut before the first page's write-back), cut, not damage (a hunt: one frame
    position in 512)."""
    first = frame(b"[" + b"a" * 4079)
    assert len(first) == 4088
    second, third = frame(b"[" + b"b" * 50), frame(b"[" + b"c" * 50)
    data = first + bytes(8) + second[8:] + third + bytes(4096)
    assert read_frames(data)[1:] == (4088, False)
