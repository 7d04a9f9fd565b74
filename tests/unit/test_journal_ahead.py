"""A journal written over zeros allocated ahead (SessionSync=always / interval), and the name
check that asks ``/proc``, not ``fstat``: the two things that make an fdatasync a third cheaper.

Zeros after the last frame end the journal without a warning and are written over; bytes other
than zeros there are a torn tail, cut (on disk first) before anything is written over them; a
valid frame reaching the zeros after a bad one is damage, kept aside.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mqttsession.journal as journal_mod
from mqttsession import codec
from mqttsession.errors import StateError
from mqttsession.journal import AHEAD_BYTES, JOURNAL_SUFFIX, Journal, frame, read_frames, read_state
from mqttsession.records import OutgoingMessage, Phase, encode_message
from mqttsession.state import SessionState
from mqttsession.statelock import unlinked
from mqttsession.testing.faults import FakeOs

NAME = "ahead.state"
CID = "ahead"
LOGGER = "mqttsession.journal"


def jpath(p: Path) -> Path:
    return Path(str(p) + JOURNAL_SUFFIX)


def frames_end(p: Path) -> int:
    """Where P's journal frames end; only zeros may follow."""
    data = jpath(p).read_bytes()
    _payloads, valid, damaged = read_frames(data)
    assert not damaged and not any(data[valid:])
    return valid


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, Journal, SessionState]]:
    p = tmp_path / NAME
    j = Journal(str(p), CID, sync=True)
    state = j.recover()
    j.compact(state)
    try:
        yield p, j, state
    finally:
        j.close()


def recover(p: Path) -> SessionState:
    """What a restart reads (read-only: no lock, so also while a Journal has the file)."""
    return read_state(str(p), CID)


def test_a_synced_journal_is_written_over_zeros_allocated_ahead(
    journal: tuple[Path, Journal, SessionState], caplog: pytest.LogCaptureFixture
) -> None:
    p, j, state = journal
    assert jpath(p).stat().st_size == AHEAD_BYTES  # the compaction wrote the zeros with it
    payload = bytes(range(256)) * 2
    while j.position()[1] < AHEAD_BYTES + 1000:  # past the first allocation
        j.append([state.accept("t/ahead", payload, 1)], state, sync=True)
    size = jpath(p).stat().st_size
    assert size == 2 * AHEAD_BYTES and frames_end(p) == j.position()[1] < size
    j.close()
    j2 = Journal(str(p), CID)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        again = j2.recover()  # the whole file, zeros and all: no warning
    j2.close()
    assert codec.encode(again) == codec.encode(state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert jpath(p).stat().st_size == size


def test_a_journal_without_sync_is_written_over_zeros_too(tmp_path: Path) -> None:
    """SessionSync=none: the records are copied into a mapping of the zeros written ahead
    (``mapped``: no write() per record); the compaction itself writes none."""
    p = tmp_path / NAME
    j = Journal(str(p), CID, sync=False)
    try:
        state = j.recover()
        j.compact(state)
        assert jpath(p).stat().st_size == j.position()[1]
        j.append([state.accept("t/none", b"x", 1)], state)
        assert jpath(p).stat().st_size == AHEAD_BYTES > frames_end(p) == j.position()[1]
    finally:
        j.close()


def test_records_after_a_restart_go_where_the_frames_end(
    journal: tuple[Path, Journal, SessionState]
) -> None:
    p, j, state = journal
    j.append([state.accept("t/1", b"one", 2)], state, sync=True)
    j.close()
    j2 = Journal(str(p), CID, sync=True)
    try:
        state2 = j2.recover()
        end = frames_end(p)
        j2.append([state2.accept("t/2", b"two", 1)], state2, sync=True)
        assert frames_end(p) > end and jpath(p).stat().st_size == AHEAD_BYTES
        assert [m.topic for m in recover(p).outgoing.values()] == ["t/1", "t/2"]
    finally:
        j2.close()


def test_a_torn_tail_in_the_space_ahead_is_cut_before_it_is_written_over(
    journal: tuple[Path, Journal, SessionState], caplog: pytest.LogCaptureFixture
) -> None:
    """A crash left a torn frame, and after it (pages persisted out of order) the start of a
    frame that never completed: recovery cuts them on disk first, so that records written in
    their place are never followed by stale bytes that could read as frames."""
    p, j, state = journal
    j.append([state.accept("t/kept", b"kept", 1)], state, sync=True)
    j.close()
    end = frames_end(p)
    stale = frame(b"[\"T\", 1.5]")  # a whole frame, as a later write may have left it
    with open(jpath(p), "r+b") as f:
        f.seek(end)
        f.write(stale[:-3] + b"\xff" * 40 + stale[:5])  # torn: garbage, no frame reaching the end
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        j2 = Journal(str(p), CID, sync=True)
        state2 = j2.recover()
    try:
        assert any("torn tail" in r.getMessage() for r in caplog.records)
        j2.append([state2.accept("t/after", b"after", 2)], state2, sync=True)
        assert frames_end(p) == j2.position()[1]  # nothing of the torn bytes after it
        assert [m.topic for m in recover(p).outgoing.values()] == ["t/kept", "t/after"]
    finally:
        j2.close()


def test_a_bad_frame_before_good_ones_is_damage_also_with_zeros_after(
    journal: tuple[Path, Journal, SessionState]
) -> None:
    p, j, state = journal
    for i in range(3):
        j.append([state.accept(f"t/{i}", b"\x00" * 20, 1)], state, sync=True)  # zeros end them
    j.close()
    data = bytearray(jpath(p).read_bytes())
    _payloads, valid, _ = read_frames(bytes(data))
    first = read_frames(bytes(data))[0][0]
    data[len(first) + 8 + 12] ^= 0xFF  # inside the first record: good frames follow it
    jpath(p).write_bytes(bytes(data))
    assert read_frames(bytes(data))[2]  # damaged mid-file, though zeros end the file
    j2 = Journal(str(p), CID)
    try:
        with pytest.raises(StateError, match="kept aside"):
            j2.recover()
    finally:
        j2.close()
    assert not jpath(p).exists()


def test_no_room_for_the_zeros_ahead_still_writes_the_record(
    journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, j, state = journal

    def full(*_a: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_mod, "os", FakeOs(pwrite=full))
    big = bytes(AHEAD_BYTES)  # past what the compaction allocated
    j.append([state.accept("t/big", big, 1)], state, sync=True)
    assert jpath(p).stat().st_size == j.position()[1] > AHEAD_BYTES  # grown as written
    monkeypatch.setattr(journal_mod, "os", os)
    assert [m.topic for m in recover(p).outgoing.values()] == ["t/big"]


def test_a_durable_append_never_stats_the_journal(
    journal: tuple[Path, Journal, SessionState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fstat of the journal before its write makes the fdatasync after it commit the
    inode's times (Linux 6.13+): its name is checked through ``/proc`` instead."""
    p, j, state = journal
    jfd = j._fd
    stats: list[int] = []
    real = os.fstat

    def fstat(fd: int) -> os.stat_result:
        stats.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    for i in range(5):
        j.append([state.accept(f"t/{i}", b"x", 1)], state, sync=True)
    assert jfd not in stats


def test_unlinked_sees_a_delete_and_a_rename_over(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a (deleted)", tmp_path / "b"  # (such a name is checked with fstat)
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        assert not unlinked(fa) and not unlinked(fb)
        (tmp_path / "c").write_bytes(b"c")
        os.replace(tmp_path / "c", b)  # another file renamed over b
        a.unlink()
        assert unlinked(fa) and unlinked(fb)

        def no_proc(_path: str) -> str:
            raise OSError(errno.ENOENT, "no /proc")

        monkeypatch.setattr(os, "readlink", no_proc)  # elsewhere: fstat's link count
        assert unlinked(fa) and unlinked(fb)
    finally:
        os.close(fa)
        os.close(fb)


def test_a_long_run_of_record_start_bytes_before_the_zeros_is_searched_within_a_bound() -> None:
    """Every byte a candidate (a record's first byte): the search for a frame reaching the
    zeros checks each at most once; past ``_TAIL_SCAN`` bytes it stops and says damage (the
    file is kept, never cut)."""
    import mqttsession.recovery as recovery_mod

    head = frame(b'["h"]') + frame(b"[1]")
    tail = b"sablre[{" * 4096  # 32 KiB of candidates, none a frame
    assert read_frames(head + tail + bytes(100))[1:] == (len(head), False)
    big = b"s" * (recovery_mod._TAIL_SCAN + 1)
    assert read_frames(head + big + bytes(100))[1:] == (len(head), True)


def test_a_torn_last_frame_whose_bytes_look_like_a_frame_into_the_zeros_is_torn() -> None:
    """Found by the power-cut test: a record frame cut one byte short, zeros after it, holds a
    candidate (a record's first byte after eight bytes whose first four say 97) that reaches
    far into the zeros. Its CRC fails; the search must not run out of budget on it and call
    the tail damage (a restart would then refuse a file a crash mid-write left)."""
    torn = bytes.fromhex("0000002b0b19641f6200000000000000060007010100010000000a0000000100000000"
                         "0000000061a37beeec72fbf4068424b1")[:-1]
    head = frame(b'["h"]') + frame(b"[1]")
    assert read_frames(head + torn + bytes(700))[1:] == (len(head), False)


MESSAGES = st.builds(
    OutgoingMessage, st.integers(1, 2**40), st.integers(0, 65535),
    st.text("abc/", min_size=1, max_size=20), st.binary(max_size=300), st.sampled_from([1, 2]),
    st.booleans(), st.binary(max_size=12), st.just(Phase.QUEUED),
    st.floats(0, 2e9, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=4), st.data())
def test_a_last_frame_cut_anywhere_before_the_zeros_is_a_torn_tail(
        messages: list[OutgoingMessage], data: st.DataObject) -> None:
    """A short write not taken back (the disk filled up, then ``ftruncate`` failed): the last
    record's first bytes, then the zeros the journal allocated ahead. Whatever its bytes hold,
    it is a torn tail, never damage (before: two candidate frames inside a 98-byte half frame
    spent the search's budget, and the restart raised ``StateError``)."""
    head = frame(b'["h"]') + b"".join(frame(encode_message(m)) for m in messages[:-1])
    last = frame(encode_message(messages[-1]))
    cut = data.draw(st.integers(1, len(last) - 1))
    assume(any(last[cut:]))  # (a record ending in zeros, cut in them, is whole over the zeros)
    assert read_frames(head + last[:cut] + bytes(4096))[1:] == (len(head), False)
