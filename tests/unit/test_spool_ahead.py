"""The disk queue's open segment under SessionSync=always / interval: written over zeros
written ahead (as the journal is, ``test_journal_ahead.py``), cut to its frames when sealed
(its name says its size), a torn tail in the zeros cut before it is written over, and read back
without an ``fstat`` of the segment being written."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

import mqttsession.spool as spool_mod
from mqttsession.journal import AHEAD_BYTES
from mqttsession.records import OutgoingMessage
from mqttsession.recovery import read_frames
from mqttsession.spool import QUEUE_SUFFIX, Spool
from mqttsession.testing.faults import FakeOs

LOGGER = "mqttsession"


def msg(seq: int, size: int = 40) -> OutgoingMessage:
    return OutgoingMessage(seq, 0, f"t/{seq % 5}", bytes([seq % 251]) * size, 1 + seq % 2,
                           False, b"", accepted_at=1000.0 + seq)


def spool(tmp: Path, segment_bytes: int, sync: bool = True) -> Spool:
    sp = Spool(str(tmp / "s"), "c", sync=sync, segment_bytes=segment_bytes)
    sp.recover(0)
    return sp


def queue_dir(tmp: Path) -> Path:
    return Path(str(tmp / "s") + QUEUE_SUFFIX)


def open_segment(tmp: Path) -> Path:
    return next(p for p in queue_dir(tmp).iterdir() if p.name.endswith(".open"))


def frames_end(path: Path) -> int:
    data = path.read_bytes()
    _payloads, valid, damaged = read_frames(data)
    assert not damaged and not any(data[valid:])
    return valid


def test_the_open_segment_is_written_over_zeros_and_read_back_after_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sp = spool(tmp_path, 1 << 20)
    for seq in range(1, 11):
        sp.append([msg(seq)], sync=True)
    seg = open_segment(tmp_path)
    assert seg.stat().st_size == AHEAD_BYTES > frames_end(seg)
    sp.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = spool(tmp_path, 1 << 20)
        again.append([msg(11)], sync=True)  # where the frames end, over the zeros
    assert not caplog.records
    assert [m.seq for m in again.read(100)] == list(range(1, 12))
    again.close()


def test_a_sealed_segment_holds_its_frames_only_and_the_zeros_stay_within_the_bound(
        tmp_path: Path) -> None:
    sp = spool(tmp_path, 600)
    for seq in range(1, 40):
        sp.append([msg(seq)], sync=True)
        assert open_segment(tmp_path).stat().st_size <= 600 + 200  # (one frame past it)
    sp.close()
    sealed = [p for p in queue_dir(tmp_path).iterdir() if p.name.endswith(".seg")]
    assert len(sealed) > 3
    for p in sealed:
        assert p.stat().st_size == int(p.name[:-4].split("-")[5]) == frames_end(p)
    again = spool(tmp_path, 600, sync=False)  # (a sealed segment of another size: StateError)
    assert [m.seq for m in again.read(100)] == list(range(1, 40))
    again.close()


def test_a_segment_sealed_under_a_smaller_bound_after_a_restart_drops_its_zeros(
        tmp_path: Path) -> None:
    sp = spool(tmp_path, 1 << 20)
    sp.append([msg(1)], sync=True)
    sp.close()
    assert open_segment(tmp_path).stat().st_size == AHEAD_BYTES
    smaller = spool(tmp_path, 600)  # QueueSegmentBytes lowered: the segment is full now
    for seq in range(2, 30):
        smaller.append([msg(seq)], sync=True)
    smaller.close()
    sealed = sorted(p for p in queue_dir(tmp_path).iterdir() if p.name.endswith(".seg"))
    assert sealed and all(p.stat().st_size == frames_end(p) for p in sealed)
    again = spool(tmp_path, 600, sync=False)
    assert [m.seq for m in again.read(100)] == list(range(1, 30))
    again.close()


def test_a_torn_tail_in_the_zeros_is_cut_before_it_is_written_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sp = spool(tmp_path, 1 << 20)
    for seq in range(1, 4):
        sp.append([msg(seq)], sync=True)
    sp.close()
    seg = open_segment(tmp_path)
    end = frames_end(seg)
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(b"\x00\x00\x00\x30" + b"\xaa" * 30)  # a frame begun, never finished
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = spool(tmp_path, 1 << 20)
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    again.append([msg(4)], sync=True)
    assert frames_end(seg) > end  # nothing of the torn bytes after the new frame
    assert [m.seq for m in again.read(100)] == [1, 2, 3, 4]
    again.close()


def test_reading_back_never_stats_the_segment_being_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fstat of the open segment would make the publisher's next fdatasync commit its
    times (Linux 6.13+, ``statelock.unlinked``): its frames end is known, no stat needed."""
    sp = spool(tmp_path, 1 << 20)
    for seq in range(1, 6):
        sp.append([msg(seq)], sync=True)
    stats: list[Any] = []

    def fstat(fd: int) -> os.stat_result:
        stats.append(fd)
        return os.fstat(fd)

    monkeypatch.setattr(spool_mod, "os", FakeOs(fstat=fstat))
    got = [m.seq for m in sp.read(3)]
    sp.append([msg(6)], sync=True)
    got += [m.seq for m in sp.read(10)]
    assert got == [1, 2, 3, 4, 5, 6] and stats == []
    monkeypatch.setattr(spool_mod, "os", os)
    sp.close()
