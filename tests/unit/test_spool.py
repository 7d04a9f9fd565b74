"""The disk queue's files (``spool.Spool``): round trips, reading back, retiring whole segments,
and what a crash or a power cut leaves (every truncation and zero-filled tail of the open
segment, a cut sealed segment, random damage): a prefix of what was appended, or a clear
``StateError``, or a reported loss; never an invented or reordered message."""

from __future__ import annotations

import inspect
import logging
import os
import struct
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttsession.errors import PersistenceError, StateError
from mqttsession.records import OutgoingMessage, encode_message
from mqttsession.recovery import frame, read_frames
from mqttsession.segments import Segment, gap, read_header
from mqttsession.spool import QUEUE_SUFFIX, Spool
from mqttsession.state import message_bytes

SEG = 600  # bytes: a few messages a segment


def msg(seq: int, size: int = 20, at: float = 1000.0) -> OutgoingMessage:
    return OutgoingMessage(seq, 0, f"t/{seq % 7}", bytes([seq % 251]) * size, 1 + seq % 2,
                           seq % 3 == 0, b"", accepted_at=at + seq)


def filled(tmp: Path, seqs: list[int], sync: bool = False, size: int = 20) -> Spool:
    sp = Spool(str(tmp / "s"), "c", sync=sync, segment_bytes=SEG)
    sp.recover(0)
    for seq in seqs:
        sp.append([msg(seq, size)], sync=sync)
    return sp


def reopened(tmp: Path, spool_next: int = 0) -> Spool:
    sp = Spool(str(tmp / "s"), "c", sync=False, segment_bytes=SEG)
    sp.recover(spool_next)
    return sp


def files(tmp: Path) -> list[str]:
    d = str(tmp / "s") + QUEUE_SUFFIX
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_round_trip_across_segments(tmp_path: Path) -> None:
    seqs = list(range(1, 101))
    sp = filled(tmp_path, seqs, sync=True)
    assert sp.count == 100 and sp.bytes == sum(message_bytes(msg(s)) for s in seqs)
    names = files(tmp_path)
    assert sum(n.endswith(".seg") for n in names) > 5 and sum(n.endswith(".open") for n in names) == 1
    sp.close()
    again = reopened(tmp_path)
    assert (again.count, again.bytes, again.last_seq) == (sp.count, sp.bytes, 100)
    assert again.head_time() == msg(1).accepted_at
    assert again.read(1000) == [msg(s) for s in seqs]
    assert again.count == 0 and again.bytes == 0


def test_reading_back_resumes_where_the_journal_says(tmp_path: Path) -> None:
    seqs = list(range(5, 90, 2))  # gaps: seqs the journal took
    sp = filled(tmp_path, seqs)
    got = sp.read(17)
    assert got == [msg(s) for s in seqs[:17]]
    nxt = got[-1].seq + 1
    assert sp.retirable(nxt)
    sp.retire(nxt)
    sp.close()
    again = reopened(tmp_path, nxt)
    assert again.count == len(seqs) - 17
    assert again.read(1000) == [msg(s) for s in seqs[17:]]


def test_whole_segments_are_deleted_never_rewritten(tmp_path: Path) -> None:
    seqs = list(range(1, 61))
    sp = filled(tmp_path, seqs)
    before = files(tmp_path)
    sizes = {n: os.path.getsize(str(tmp_path / "s") + QUEUE_SUFFIX + "/" + n) for n in before}
    sp.read(30)
    assert sp.retire(31) >= 1
    after = files(tmp_path)
    assert set(after) < set(before)
    for n in after:  # untouched
        assert os.path.getsize(str(tmp_path / "s") + QUEUE_SUFFIX + "/" + n) == sizes[n]
    sp.read(1000)
    sp.retire(61)
    assert files(tmp_path) == []  # all read back: nothing left, the next append starts anew
    sp.append([msg(61)], sync=False)
    assert sp.read(5) == [msg(61)]


def test_a_crash_before_a_retired_segment_was_deleted(tmp_path: Path) -> None:
    sp = filled(tmp_path, list(range(1, 41)))
    sp.read(25)  # read back, durable in the journal, but the process died before retire
    sp.close()
    again = reopened(tmp_path, 26)
    assert again.read(100) == [msg(s) for s in range(26, 41)]


def test_a_sealed_segment_renamed_to_claim_it_was_read_back_is_kept(tmp_path: Path) -> None:
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    first = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[0]
    f, last, count, nbytes, size, prev = first[2:-4].split("-")
    lie = f"q-{f}-{int(f):020d}-1-{nbytes}-{size}-{prev}.seg"  # by hand: "its first only"
    os.rename(d / first, d / lie)
    with pytest.raises(StateError, match="not yet read back"):
        reopened(tmp_path, int(f) + 1)  # the journal read back the first message only
    assert lie in os.listdir(d)  # kept, not deleted unread
    os.rename(d / lie, d / first)  # the true name: the messages after the first are read
    assert [m.seq for m in reopened(tmp_path, int(f) + 1).read(3)] == [int(f) + 1, int(f) + 2,
                                                                        int(f) + 3]


def test_a_segment_named_to_end_one_before_its_last_message_is_kept(tmp_path: Path) -> None:
    """The edge of the check above: a sealed segment holding messages up to L whose name says
    it ends at L - 1, the journal having read back to L - 1: message L is still to send, so
    the file is kept (``StateError``), never deleted with it (a mutation hunt: ``>`` for
    ``>=`` passed every test)."""
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    first = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[0]
    f, last, count, nbytes, size, prev = first[2:-4].split("-")
    lie = f"q-{f}-{int(last) - 1:020d}-{int(count) - 1}-{nbytes}-{size}-{prev}.seg"
    os.rename(d / first, d / lie)
    with pytest.raises(StateError, match=f"holds message {int(last)}, not yet read back"):
        reopened(tmp_path, int(last))
    assert lie in os.listdir(d)


@pytest.mark.parametrize("seqs", [[5, 6, 6], [5, 7, 6]])
def test_a_message_number_twice_or_back_in_the_open_segment_is_state_error(
        tmp_path: Path, seqs: list[int]) -> None:
    """A segment whose messages do not rise (one number twice: a message sent twice; one
    going back): ``StateError``, the file kept (a mutation hunt: ``<`` for ``<=`` passed)."""
    filled(tmp_path, seqs).close()
    seg = _open_segment(tmp_path)
    raw = seg.read_bytes()
    with pytest.raises(StateError, match="out of order"):
        reopened(tmp_path)
    assert seg.read_bytes() == raw


def test_two_segments_sharing_a_message_number_are_state_error(tmp_path: Path) -> None:
    """A sealed segment that starts at the number the one before ends at (a bad copy, a
    merge): that message would be queued twice; ``StateError``, both files kept."""
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    one, two = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[:2]
    last_one = int(one[2:-4].split("-")[1])
    f, last, count, nbytes, size, prev = two[2:-4].split("-")
    assert int(f) == last_one + 1
    shared = f"q-{last_one:020d}-{last}-{count}-{nbytes}-{size}-{prev}.seg"
    os.rename(d / two, d / shared)
    with pytest.raises(StateError, match="out of order"):
        reopened(tmp_path)
    assert {one, shared} <= set(os.listdir(d))


def test_a_segment_missing_before_others_is_a_gap(tmp_path: Path) -> None:
    """Each segment records the newest seq queued before it (in its header, and in its name
    once sealed): a restart finds one deleted before it (``gap``), unless its messages were
    read back, or it was kept aside as damaged (that loss was reported when found)."""
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    sealed = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
    assert len(sealed) >= 3 and all("-p" in n for n in sealed)
    lasts = [int(n[2:-4].split("-")[1]) for n in sealed]
    assert reopened(tmp_path).gap is None
    os.rename(d / sealed[1], tmp_path / "away")
    assert reopened(tmp_path).gap == lasts[1]
    aside = d / f"{sealed[1]}.damaged-20261205T120000"
    os.rename(tmp_path / "away", aside)
    assert reopened(tmp_path).gap is None
    os.rename(aside, tmp_path / "away")
    for n in sealed[2:]:  # segments named before the record: no check, as before
        os.rename(d / n, d / (n.rsplit("-p", 1)[0] + ".seg"))
    assert reopened(tmp_path).gap is None
    os.remove(d / (sealed[-1].rsplit("-p", 1)[0] + ".seg"))  # the open one's header knows
    assert reopened(tmp_path).gap == lasts[-1]
    assert reopened(tmp_path, lasts[-1] + 1).gap is None  # all read back before it: no loss


def test_a_read_back_sealed_segment_of_zeros_is_still_deleted(tmp_path: Path) -> None:
    filled(tmp_path, list(range(1, 41))).close()  # (a power cut under none: its pages lost)
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    first = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[0]
    last = int(first[2:-4].split("-")[1])
    (d / first).write_bytes(bytes((d / first).stat().st_size))
    sp = reopened(tmp_path, last + 1)
    assert first not in os.listdir(d) and sp.read(1)[0].seq == last + 1


def _open_segment(tmp: Path) -> Path:
    d = Path(str(tmp / "s") + QUEUE_SUFFIX)
    return next(d / n for n in os.listdir(d) if n.endswith(".open"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zeros=st.integers(0, 300), data=st.data())
def test_every_truncation_of_the_open_segment_is_a_prefix(tmp_path_factory: pytest.TempPathFactory,
                                                           zeros: int, data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("cut")
    seqs = list(range(1, 31))
    filled(tmp, seqs).close()
    seg = _open_segment(tmp)
    raw = seg.read_bytes()
    cut = data.draw(st.integers(0, len(raw)))
    seg.write_bytes(raw[:cut] + b"\0" * zeros)  # a crash mid-write, a power cut's zeros
    sp = reopened(tmp)
    got = [m.seq for m in sp.read(1000)]
    assert got == seqs[:len(got)]  # a prefix: never invented, never reordered
    sp.append([msg(100)], sync=False)  # and appending goes on after the cut
    sp.close()
    assert reopened(tmp).read(1000)[-1] == msg(100)


def test_a_cut_sealed_segment_is_state_error_and_kept(tmp_path: Path) -> None:
    filled(tmp_path, list(range(1, 60))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    sealed = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[1]
    raw = (d / sealed).read_bytes()
    (d / sealed).write_bytes(raw[:-5])
    with pytest.raises(StateError, match="cut short"):
        reopened(tmp_path)
    assert (d / sealed).read_bytes() == raw[:-5]  # kept as it was


def test_good_frames_after_a_bad_one_in_the_open_segment_is_state_error(tmp_path: Path) -> None:
    filled(tmp_path, list(range(1, 4))).close()
    seg = _open_segment(tmp_path)
    raw = bytearray(seg.read_bytes())
    raw[60] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with pytest.raises(StateError):
        reopened(tmp_path)
    assert seg.read_bytes() == bytes(raw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_is_an_error_or_a_reported_loss_never_a_wrong_message(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("dmg")
    seqs = list(range(1, 50))
    filled(tmp, seqs).close()
    d = Path(str(tmp / "s") + QUEUE_SUFFIX)
    victim = d / data.draw(st.sampled_from(sorted(os.listdir(d))))
    raw = bytearray(victim.read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    victim.write_bytes(bytes(raw))
    try:
        sp = reopened(tmp)
    except StateError:
        return  # clear, and the files kept
    got = sp.read(1000)
    for m in got:
        assert m == msg(m.seq)  # never invented
    order = [m.seq for m in got]
    assert order == sorted(set(order))  # never reordered or twice
    if len(got) < len(seqs):
        assert sp.take_errors() or order == seqs[:len(order)]  # a loss is reported (or a cut tail)


def test_another_clients_queue_is_state_error(tmp_path: Path) -> None:
    filled(tmp_path, [1, 2, 3]).close()
    other = Spool(str(tmp_path / "s"), "someone-else", sync=False)
    with pytest.raises(StateError, match="client id"):
        other.recover(0)


def test_read_only_recovery_changes_nothing(tmp_path: Path) -> None:
    filled(tmp_path, list(range(1, 30))).close()
    seg = _open_segment(tmp_path)
    seg.write_bytes(seg.read_bytes() + b"\0" * 10)
    before = {n: (Path(str(tmp_path / "s") + QUEUE_SUFFIX) / n).read_bytes() for n in files(tmp_path)}
    sp = Spool(str(tmp_path / "s"), "c", read_only=True)
    sp.recover(10)
    assert sp.count == 29 - 9
    after = {n: (Path(str(tmp_path / "s") + QUEUE_SUFFIX) / n).read_bytes() for n in files(tmp_path)}
    assert after == before


def test_the_newest_publish_time_is_found_behind_an_empty_open_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tail_time`` (a new process's clock is never set before it): a new segment whose first
    append failed (a full disk) holds only its header. Before: after a restart it answered
    None, the messages in the sealed segment before it not looked at."""
    import errno  # noqa: PLC0415

    path = str(tmp_path / "state")
    t = 1_700_000_000.0
    sp = Spool(path, "c", sync=False, segment_bytes=200, mapped=False)
    sp.recover(0)
    for i in range(1, 5):
        sp.append([OutgoingMessage(i, 0, "t", b"x" * 100, 1, accepted_at=t + i)], False)

    def full(*_a: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(Spool, "_put", full)
    with pytest.raises(PersistenceError):
        sp.append([OutgoingMessage(5, 0, "t", b"x" * 100, 1, accepted_at=t + 5)], False)
    monkeypatch.undo()
    assert sp.tail_time() == t + 4
    sp.close()
    again = Spool(path, "c", sync=False, segment_bytes=200, mapped=False)
    again.recover(0)
    assert (again.count, again.tail_time()) == (4, t + 4)
    again.close()


_STEPS = st.lists(st.tuples(st.sampled_from(["append", "skip", "ahead", "reopen", "read"]),
                            st.integers(1, 12)), max_size=50)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS)
def test_segments_rolled_ahead_hold_exactly_what_was_appended(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]) -> None:
    """``roll_ahead`` (under ``SessionSync=interval`` a loop's publish has a full segment sealed
    and the next begun in the executor, from the next seq, which may then go to memory
    instead): appends, seqs kept in memory, rolls, restarts and reads back in any order read
    back exactly what was appended, in order; a roll leaves no sync due."""
    tmp = tmp_path_factory.mktemp("ahead")
    sp = Spool(str(tmp / "s"), "c", sync=True, segment_bytes=SEG)
    sp.recover(0)
    nxt, appended, got = 1, [], []
    try:
        for op, k in steps:
            if op == "append":
                for _ in range(k):
                    sp.append([msg(nxt)], sync=False)
                    appended.append(msg(nxt))
                    nxt += 1
            elif op == "skip":  # (published into memory: the queue never sees these seqs)
                nxt += k
            elif op == "ahead":
                sp.roll_ahead(nxt)
                assert not sp.roll_due()
            elif op == "reopen":
                sp.close()
                sp = Spool(str(tmp / "s"), "c", sync=True, segment_bytes=SEG)
                sp.recover(got[-1].seq + 1 if got else 0)
            else:
                got += sp.read(k)
                sp.retire(sp.read_to)
        got += sp.read(10 ** 6)
    finally:
        sp.close()
    assert got == appended


def _sealed_lasts(tmp: Path) -> list[int]:
    d = Path(str(tmp / "s") + QUEUE_SUFFIX)
    return [int(n[2:-4].split("-")[1]) for n in sorted(os.listdir(d)) if n.endswith(".seg")]


def test_a_restart_resuming_at_the_last_message_of_the_oldest_segment_keeps_it(
        tmp_path: Path) -> None:
    """The journal's next message to send is the last one of the oldest sealed segment: that
    segment is not yet read back, so it is kept and reading resumes at its last message
    (a hunt)."""
    filled(tmp_path, list(range(1, 41))).close()
    last = _sealed_lasts(tmp_path)[0]
    sp = reopened(tmp_path, last)
    assert sp.read(3) == [msg(last), msg(last + 1), msg(last + 2)]


def test_retire_keeps_a_segment_whose_last_message_is_still_to_send(tmp_path: Path) -> None:
    """``retire(L)``, reading past the first segment but the journal's next message still its
    last one, L: the segment is kept, a restart from L reads L again (a hunt)."""
    sp = filled(tmp_path, list(range(1, 41)))
    first = files(tmp_path)[0]
    last = _sealed_lasts(tmp_path)[0]
    sp.read(last + 2)  # into the second segment
    assert not sp.retirable(last)
    assert sp.retire(last) == 0
    assert first in files(tmp_path)
    sp.close()
    assert reopened(tmp_path, last).read(1) == [msg(last)]


def test_retire_keeps_the_open_segment_whose_last_message_is_still_to_send(
        tmp_path: Path) -> None:
    """The open segment all read back, the journal's next message still its last one:
    ``retire`` keeps it, a restart from there reads that message again (a hunt)."""
    sp = filled(tmp_path, [1, 2, 3])
    assert sp.read(3) == [msg(1), msg(2), msg(3)]
    assert sp.retire(3) == 0
    sp.close()
    assert reopened(tmp_path, 3).read(5) == [msg(3)]


def test_a_torn_tail_cut_at_recovery_is_not_found_again_after_an_append(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A torn tail of the open segment is cut on disk (its file truncated) before a short
    message is appended over its start: the tail's end is not left behind it, to be found
    torn again by the next restart (a hunt)."""
    import struct  # noqa: PLC0415

    from mqttsession.recovery import read_frames  # noqa: PLC0415

    filled(tmp_path, [1, 2, 3]).close()
    seg = _open_segment(tmp_path)
    raw = seg.read_bytes()
    valid = read_frames(raw)[1]
    assert raw[valid:] == bytes(len(raw) - valid)  # (zeros written ahead)
    seg.write_bytes(raw[:valid] + struct.pack(">I", 1000) + b"\xaa" * 250)  # cut mid-write
    caplog.set_level(logging.WARNING, logger="mqttsession")
    sp = reopened(tmp_path)
    assert "torn tail" in caplog.text
    sp.append([msg(4, size=2)], sync=False)
    sp.close()
    caplog.clear()
    again = reopened(tmp_path)
    assert "torn tail" not in caplog.text
    assert again.read(10) == [msg(1), msg(2), msg(3), msg(4, size=2)]
    data = _open_segment(tmp_path).read_bytes()
    valid = read_frames(data)[1]
    assert data[valid:] == bytes(len(data) - valid)


def test_a_segment_header_without_prev_is_read(tmp_path: Path) -> None:
    """A segment header of four elements (no ``prev``: written by versions before segments
    recorded it) is valid, its ``prev`` unknown; a queue whose open segment has one is read
    back whole (a hunt)."""
    assert read_header(b'["mqttsession-queue", 1, "c", 7]', 7) == ("c", None)
    assert read_header(b'["mqttsession-queue", 1, "c", 7, 6]', 7) == ("c", 6)
    filled(tmp_path, [1, 2, 3]).close()
    seg = _open_segment(tmp_path)
    raw = seg.read_bytes()
    payloads = read_frames(raw)[0]
    head = frame(payloads[0])
    assert raw.startswith(head) and payloads[0].endswith(b", 0]")  # [..., first 1, prev 0]
    old = frame(payloads[0][:-len(b", 0]")] + b"]")
    seg.write_bytes(old + raw[len(head):])
    again = reopened(tmp_path)
    assert again.gap is None
    assert again.read(10) == [msg(1), msg(2), msg(3)]


def test_a_deleted_segment_holding_the_next_message_to_read_back_is_a_gap() -> None:
    """Messages up to ``spool_next - 1`` were read back: a segment whose ``prev`` is
    ``spool_next`` itself follows a deleted one holding that message, not yet read back: a gap
    (a hunt)."""
    seg = Segment(first=6, path="x", sealed=True, last=9, count=4, prev=5)
    assert gap([seg], 5, []) == 5
    assert gap([seg], 6, []) is None  # message 5 was read back: nothing lost


def _rewrite_frames(path: Path, change: dict[int, bytes]) -> None:
    """Replace message frames of a segment file (index after the header: new payload), the
    bytes after its valid frames (zeros ahead) kept in length."""
    raw = path.read_bytes()
    payloads, valid, _ = read_frames(raw)
    body = frame(payloads[0]) + b"".join(frame(change.get(i, p)) for i, p in
                                         enumerate(payloads[1:]))
    path.write_bytes(body + bytes(max(0, len(raw) - len(body))))


def _older_a_record(m: OutgoingMessage) -> bytes:
    """``m``'s frame as a journal of format 1's ``a`` record wrote it (no publish time)."""
    topic = m.topic.encode()
    return struct.pack(">cQHBBHII", b"a", m.seq, 0, m.qos, m.retain, len(topic),
                       len(m.payload), len(m.properties)) + topic + m.payload + m.properties


def test_older_a_frames_among_b_frames_are_read_back_in_order_and_counted(
        tmp_path: Path) -> None:
    """Frames the read-back fast path leaves to ``decode_record`` (``a`` records) come back in
    their place, between the ``b`` ones a batch takes, and the queue's counts reach zero."""
    seqs = [1, 2, 3, 4, 5]
    filled(tmp_path, seqs).close()
    _rewrite_frames(_open_segment(tmp_path), {1: _older_a_record(msg(2)),
                                              2: _older_a_record(msg(3))})
    sp = reopened(tmp_path)
    assert (sp.count, sp.bytes) == (5, sum(message_bytes(msg(s)) for s in seqs))
    old = {2, 3}
    assert sp.read(100) == [replace(msg(s), accepted_at=0.0) if s in old else msg(s)
                            for s in seqs]
    assert (sp.count, sp.bytes, sp.read_to) == (0, 0, 6)


def test_a_bad_frame_after_good_ones_in_one_read_counts_only_what_follows_it(
        tmp_path: Path) -> None:
    """A sealed segment's frame that holds no queued message (here a packet id) after good ones
    read in the same batch: those come back, the loss reported is the messages from the bad
    frame to the segment's end, and the counts stay exact (the next segment is read on)."""
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    first = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[0]
    f, last = (int(x) for x in first[2:-4].split("-")[:2])
    assert last - f >= 3
    _rewrite_frames(d / first, {2: encode_message(replace(msg(f + 2), packet_id=7))})
    sp = reopened(tmp_path)
    got = [m.seq for m in sp.read(100)]
    assert got == [f, f + 1, *range(last + 1, 41)]
    lost = last - f - 1
    [(_, text)] = sp.take_errors()
    assert f"{lost} queued messages in it after the damage are lost" in text
    assert (sp.count, sp.bytes) == (0, 0)


def test_one_append_of_several_messages_counts_each_ones_bytes(tmp_path: Path) -> None:
    """``append`` of a batch (``publish_many``'s) counts every message's MaxQueuedBytes, in
    the queue and in its segment (what a sealed segment's name says, read at a restart)."""
    sp = Spool(str(tmp_path / "s"), "c", sync=False, segment_bytes=SEG)
    sp.recover(0)
    batch = [msg(1, 5), msg(2, 30), msg(3, 7)]
    sp.append(batch, sync=False)
    total = sum(map(message_bytes, batch))
    assert (sp.count, sp.bytes) == (3, total)
    sp.close()
    again = reopened(tmp_path)
    assert (again.count, again.bytes) == (3, total)
    assert again.read(10) == batch


def test_an_interrupt_while_a_batch_is_taken_skips_no_message(tmp_path: Path) -> None:
    """Ctrl-C in the middle of taking a batch of frames (after two of them, at the third):
    the read raises and the queue is where it was; the next read gives every message. Before,
    the frames taken were gone while the read position and counts stayed: two messages were
    skipped for good."""
    sp = filled(tmp_path, list(range(1, 11)))
    src, first = inspect.getsourcelines(Spool._take)
    line = first + next(i for i, s in enumerate(src) if "out.append(found[0])" in s)
    hits: list[int] = []

    def tracer(frame: FrameType, _event: str, _arg: object) -> Any:
        if frame.f_code is not Spool._take.__code__:
            return None

        def local(frame: FrameType, event: str, _arg: object) -> Any:
            if event == "line" and frame.f_lineno == line:
                hits.append(1)
                if len(hits) == 3:
                    raise KeyboardInterrupt
            return local
        return local

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            sp.read(100)
    finally:
        sys.settrace(None)
    assert len(hits) == 3
    assert sp.read(100) == [msg(s) for s in range(1, 11)]
    assert (sp.count, sp.bytes, sp.read_to) == (0, 0, 11)


def test_reset_gives_again_what_was_read_since_the_mark(tmp_path: Path) -> None:
    """``mark`` / ``reset`` (what the engine does when an interrupt comes before the messages
    read back joined the session): the reads since the mark, across a segment's end too, are
    given again, and the counts are the mark's."""
    seqs = list(range(1, 31))
    sp = filled(tmp_path, seqs)
    assert [m.seq for m in sp.read(3)] == [1, 2, 3]
    mark, at = sp.mark(), (sp.count, sp.bytes, sp.read_to)
    assert [m.seq for m in sp.read(12)] == list(range(4, 16))  # (SEG: several segments)
    sp.reset(mark)
    assert (sp.count, sp.bytes, sp.read_to) == at
    assert sp.read(100) == [msg(s) for s in range(4, 31)]
    assert (sp.count, sp.bytes) == (0, 0)


def test_a_reset_after_a_retire_changes_nothing(tmp_path: Path) -> None:
    """Segments deleted since the mark (read back and retired): ``reset`` leaves the read where
    it is, never pointing at files that are gone."""
    sp = filled(tmp_path, list(range(1, 31)))
    mark = sp.mark()
    got = sp.read(100)
    assert sp.retire(got[-1].seq + 1)
    sp.reset(mark)
    assert sp.read(100) == [] and (sp.count, sp.bytes) == (0, 0)


def test_a_reset_after_damage_was_found_changes_nothing(tmp_path: Path) -> None:
    """Damage found since the mark (the segment kept aside, its loss counted and reported):
    ``reset`` leaves the read where it is (the mark's counts would bring the lost messages
    back into them, and its position points into a file renamed)."""
    filled(tmp_path, list(range(1, 41))).close()
    d = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    first = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[0]
    f = int(first[2:-4].split("-")[0])
    _rewrite_frames(d / first, {2: encode_message(replace(msg(f + 2), packet_id=7))})
    sp = reopened(tmp_path)
    mark = sp.mark()
    assert sp.read(100)[:2] == [msg(f), msg(f + 1)]
    assert sp.take_errors()
    sp.reset(mark)
    assert sp.read(100) == [] and (sp.count, sp.bytes) == (0, 0)
