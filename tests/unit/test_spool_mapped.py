"""The disk queue's open segment is written through a mapping of its file (zeros written
ahead, then frames copied over them): no system call per append, so a publishing thread keeps
the GIL. What it must keep: every frame in the OS once ``append`` returns (a SIGKILL right
after loses nothing), the ``write`` path where the file cannot be mapped or the zeros ran out
of room (a full disk is still a ``PersistenceError`` that stores nothing), and sealed segments
that hold their frames only."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
import mqttsession.mapped as mapped_mod
from mqttsession.errors import PersistenceError
from mqttsession.journal import AHEAD_BYTES
from mqttsession.spool import Spool
from mqttsession.testing.faults import FakeOs


from .test_spool_ahead import frames_end, msg, open_segment, queue_dir
from .test_spool_ahead import spool as _spool


def spool(tmp: Path, segment_bytes: int = 1 << 20, sync: bool = False) -> Spool:
    return _spool(tmp, segment_bytes, sync)


def in_place(tmp: Path) -> None:
    """Skip unless ``tmp`` is on a file system the queue maps (``mapped.IN_PLACE``)."""
    kind = mapped_mod.fs_type(os.stat(tmp).st_dev)
    if kind not in mapped_mod.IN_PLACE:
        pytest.skip(f"{tmp} is on {kind}: written, never mapped there")


def counted_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the ``write`` calls the journal module (and the queue through it) makes."""
    writes: list[int] = []

    def write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return os.write(fd, data)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write))
    return writes


def test_appends_are_copied_into_the_mapping_with_no_write_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_place(tmp_path)
    sp = spool(tmp_path)
    sp.append([msg(1)], sync=False)  # the segment, its header and the first zeros
    writes = counted_writes(monkeypatch)
    for seq in range(2, 200):
        sp.append([msg(seq)], sync=False)
    assert writes == [] and sp._map.active
    monkeypatch.setattr(journal_mod, "os", os)
    seg = open_segment(tmp_path)
    assert seg.stat().st_size == AHEAD_BYTES > frames_end(seg)  # zeros ahead under `none` too
    assert [m.seq for m in sp.read(500)] == list(range(1, 200))
    sp.close()
    again = spool(tmp_path)
    assert again.count == 199
    again.close()


def test_the_mapping_grows_with_the_zeros_and_sealed_segments_hold_their_frames_only(
        tmp_path: Path) -> None:
    sp = spool(tmp_path, segment_bytes=3 * AHEAD_BYTES)
    n = 4 * AHEAD_BYTES // 100  # past several zero steps, and past one segment
    for seq in range(1, n + 1):
        sp.append([msg(seq, 40)], sync=False)
    sp.close()
    sealed = [p for p in queue_dir(tmp_path).iterdir() if p.name.endswith(".seg")]
    assert sealed
    for p in sealed:
        assert p.stat().st_size == int(p.name[:-4].split("-")[5]) == frames_end(p)
    again = spool(tmp_path, segment_bytes=3 * AHEAD_BYTES)
    assert [m.seq for m in again.read(n + 10)] == list(range(1, n + 1))
    again.close()


def test_a_file_that_cannot_be_mapped_is_written(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mmap(*_a: Any, **_k: Any) -> mmap.mmap:
        raise OSError(errno.ENODEV, "no mmap here")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    sp = spool(tmp_path)
    for seq in range(1, 50):
        sp.append([msg(seq)], sync=False)
    assert not sp._map.active and not sp._map.mappable
    assert [m.seq for m in sp.read(100)] == list(range(1, 50))
    sp.close()


def test_no_room_for_the_zeros_is_the_write_paths_error_and_stores_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = spool(tmp_path)
    sp.append([msg(1)], sync=False)
    size = open_segment(tmp_path).stat().st_size
    big = msg(2, size)  # past the zeros written so far: more are needed

    def full(*_a: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod, "os", FakeOs(pwrite=full, write=full))
    with pytest.raises(PersistenceError):
        sp.append([big], sync=False)
    monkeypatch.setattr(journal_mod, "os", os)
    assert sp.count == 1
    sp.append([msg(3)], sync=False)  # room again: written where the failed one would be
    assert [m.seq for m in sp.read(10)] == [1, 3]
    sp.close()
    again = spool(tmp_path)
    assert [m.seq for m in again.read(10)] == [1, 3]
    again.close()


_CHILD = """
import os, signal, sys
from mqttsession.records import OutgoingMessage
from mqttsession.spool import Spool
sp = Spool(sys.argv[1], "c", sync=False)
sp.recover(0)
for seq in range(1, 1001):
    sp.append([OutgoingMessage(seq, 0, "t", bytes([seq % 251]) * 60, 1, False, b"",
                               accepted_at=1.0)], sync=False)
print("appended", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no unmap: what the page cache holds
"""


def test_a_sigkill_after_append_returns_loses_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "appended" in proc.stdout, proc.stderr
    again = spool(tmp_path)
    got = again.read(2000)
    assert [m.seq for m in got] == list(range(1, 1001))
    assert all(m.payload == bytes([m.seq % 251]) * 60 for m in got)
    again.append([msg(1001)], sync=False)  # over the zeros after the last frame
    assert [m.seq for m in again.read(10)] == [1001]
    again.close()


def test_an_append_synced_at_once_is_written(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=always: each append is fdatasync'd at once; a ``write`` is cheaper then
    than a write fault on a page the last fdatasync cleaned (``Journal._put``)."""
    sp = spool(tmp_path, sync=True)
    writes = counted_writes(monkeypatch)
    for seq in range(1, 11):
        sp.append([msg(seq)], sync=True)
    monkeypatch.setattr(journal_mod, "os", os)
    assert len(writes) == 1 + 10 and not sp._map.active  # (the new segment's header first)
    assert [m.seq for m in sp.read(20)] == list(range(1, 11))
    sp.close()


def test_a_copy_on_write_file_system_is_written(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On btrfs or zfs a mapped page written back needs a new block: out of room, the fault
    would be SIGBUS, not ENOSPC. Such a queue is written."""
    monkeypatch.setattr(mapped_mod, "fs_type", lambda _dev: "btrfs")
    sp = spool(tmp_path)
    sp.append([msg(1)], sync=False)
    writes = counted_writes(monkeypatch)
    for seq in range(2, 12):
        sp.append([msg(seq)], sync=False)
    assert len(writes) == 10 and not sp._map.active and sp._map.mappable is False
    assert [m.seq for m in sp.read(20)] == list(range(1, 12))
    sp.close()


def test_the_file_system_type_of_a_directory_is_known(tmp_path: Path) -> None:
    kind = mapped_mod.fs_type(os.stat(tmp_path).st_dev)
    assert kind and " " not in kind
