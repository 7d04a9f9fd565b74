"""The state file under faults (issue 10, points 8-11): zero-filled tails, garbage tails,
symlinks planted at its paths, the file deleted while in use.

* a tail of zeros (a power cut on a file system that extends the size before the data) is a
  torn tail: cut with a warning, the session kept; zeros followed by good frames are damage;
* recovery from a garbage tail does work linear in the tail (bytes CRC'd are counted, never
  timed), and reads no file larger than ``MAX_STATE_BYTES``;
* a symlink at the lock, the snapshot, the journal or a temp name never has its target written:
  ``StateError`` where the symlink is one of the files, a fresh name for a temp file;
* a state file deleted or replaced while in use fails the next durable write with
  ``PersistenceError``; the write after that rewrites it from memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mqttsession.journal as journal_mod
import mqttsession.recovery as recovery_mod
from mqttsession import Client, codec
from mqttsession.errors import PersistenceError, StateError
from mqttsession.journal import JOURNAL_SUFFIX, LOCK_SUFFIX, Journal, frame, read_frames, read_state
from mqttsession.state import SessionState

from ._support import FAST

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")

CID = "gw-faults"
NAME = "session.state"
VICTIM = b"precious bytes of somebody else\n"


def jpath(p: Path) -> Path:
    return Path(str(p) + JOURNAL_SUFFIX)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def recorded(directory: Path, n: int = 3) -> tuple[Path, SessionState]:
    """A state file with a snapshot and ``n`` journal records; the state they hold."""
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / NAME
    state = SessionState(client_id=CID, clean_session=False)
    j = Journal(str(p), CID, sync=False)
    j.recover()
    j.compact(state)
    for i in range(n):
        j.append([state.accept(f"t/{i}", b"m%d" % i, 1)], state)
    j.close()
    return p, state


def recover(p: Path) -> SessionState:
    j = Journal(str(p), CID, sync=False)
    try:
        return j.recover()
    finally:
        j.close()


def kept_aside(p: Path) -> list[Path]:
    return sorted(p.parent.glob(p.name + "*.damaged-*"))


@contextlib.contextmanager
def warnings_of_journal() -> Iterator[list[str]]:
    """The journal logger's warnings (caplog does not mix with hypothesis)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING:
                messages.append(record.getMessage())

    lg, handler = logging.getLogger("mqttsession.journal"), Collect(logging.WARNING)
    lg.addHandler(handler)
    try:
        yield messages
    finally:
        lg.removeHandler(handler)


# =================================================================================================
# 8. a zero-filled tail is torn, not damage


@FAST
@given(zeros=st.integers(1, 3000))
def test_zero_tail_of_any_length_is_written_over_and_the_session_kept(
        tmp_path_factory: Any, zeros: int) -> None:
    """Zeros after the last frame (the space a journal allocates ahead, or what a file system
    left after a power cut) end the journal without a warning; the next record goes there."""
    p, state = recorded(tmp_path_factory.mktemp("z"))
    good = jpath(p).read_bytes()
    good = good[:read_frames(good)[1]]  # (its frames, without the zeros allocated ahead)
    jpath(p).write_bytes(good + bytes(zeros))
    assert read_frames(good + bytes(zeros))[1:] == (len(good), False)
    with warnings_of_journal() as warned:
        got = recover(p)
    assert codec.encode(got) == codec.encode(state)
    assert not warned
    assert kept_aside(p) == []
    # the next append goes where the frames end: zeros, if any, after it
    j = Journal(str(p), CID, sync=False)
    j.recover()
    j.append([got.accept("t/after", b"x", 1)], got)
    j.close()
    data = jpath(p).read_bytes()
    payloads, valid, damaged = read_frames(data)
    assert data.startswith(good) and not damaged and not any(data[valid:])
    assert valid > len(good) and len(data) >= max(valid, len(good) + zeros)  # (+ ahead)
    assert codec.encode(recover(p)) == codec.encode(got)


@FAST
@given(zeros=st.integers(1, 100))
def test_a_journal_of_only_zeros_is_a_torn_header(tmp_path_factory: Any, zeros: int) -> None:
    p, state = recorded(tmp_path_factory.mktemp("z"), n=0)
    jpath(p).write_bytes(bytes(zeros))
    assert read_frames(bytes(zeros)) == ([], 0, False)
    assert codec.encode(recover(p)) == codec.encode(state)
    assert kept_aside(p) == []


def test_zeros_followed_by_good_frames_are_still_damage(tmp_path: Path) -> None:
    p, _ = recorded(tmp_path)
    data = jpath(p).read_bytes()
    _, valid, _ = read_frames(data)
    first = len(read_frames(data)[0][0]) + 8  # header frame end
    bad = data[:first] + bytes(16) + data[first:]
    jpath(p).write_bytes(bad)
    with pytest.raises(StateError, match="kept aside"):
        recover(p)
    assert [x.read_bytes() for x in kept_aside(p) if x.name.startswith(NAME + ".journal")] == [bad]


def test_a_zero_length_frame_is_never_a_record() -> None:
    assert read_frames(frame(b"")) == ([], 0, False)
    assert read_frames(frame(b"[1]") + frame(b""))[1:] == (11, False)


# =================================================================================================
# 9. garbage tails: linear work, bounded reads


class CountingZlib:
    """``zlib`` for the journal module, counting the bytes CRC'd."""

    def __init__(self) -> None:
        self.hashed = 0

    def crc32(self, data: Any, value: int = 0) -> int:
        self.hashed += len(data)
        return zlib.crc32(data, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(zlib, name)


def near_misses(n: int) -> bytes:
    """Garbage whose every aligned word is a frame length reaching one byte short of the end
    (the old scan CRC'd all of them: quadratic)."""
    out = bytearray(n)
    for q in range(0, n - 8, 4):
        struct.pack_into(">I", out, q, n - q - 9)
    return bytes(out)


def exact_fakes(n: int) -> bytes:
    """Garbage that is all plausible record frames reaching the end, every CRC wrong."""
    out = bytearray(b"\xa5" * n)
    for q in range(0, n - 9, 12):
        struct.pack_into(">II", out, q, n - q - 8, 0)
        out[q + 8] = ord("{")
    return bytes(out)


GARBAGE = {
    "random": lambda n: os.urandom(n),
    "zeros": lambda n: bytes(n),
    "near-misses": near_misses,
    "exact-fakes": exact_fakes,
}


def every_offset(data: bytes, pos: int) -> bool:
    """The old scan, slow but plain: any valid record frame after ``pos`` ending at the end,
    or in the zeros that end the data (space allocated ahead: only zeros after the frame)."""
    zeros_at = max(pos, len(data.rstrip(b"\0")))
    if zeros_at == pos:  # only zeros after the valid frames
        return False
    for q in range(pos + 1, len(data) - 8 + 1):
        length, crc = struct.unpack_from(">II", data, q)
        end = q + 8 + length
        if (0 < length and zeros_at <= end <= len(data) and data[q + 8] in RECORD_STARTS
                and zlib.crc32(data[q + 8:end]) == crc):
            return True
    return False


# what a record frame's payload starts with: JSON, or a binary record's tag
RECORD_STARTS = b"[{" + b"".join(codec.BINARY_TAGS)

PIECES = st.one_of(
    st.binary(max_size=40),
    st.builds(frame, st.binary(min_size=1, max_size=30)),
    st.builds(lambda b: frame(b"[" + b), st.binary(max_size=20)),
    st.builds(lambda t, b: frame(t + b), st.sampled_from(codec.BINARY_TAGS), st.binary(max_size=20)),
    st.builds(lambda b: frame(b"a" + b)[:-1], st.binary(max_size=20)),  # torn
    st.integers(1, 20).map(bytes),  # zeros
)


@FAST
@given(parts=st.lists(PIECES, max_size=8))
def test_the_tail_scan_finds_what_a_scan_of_every_offset_finds(parts: list[bytes]) -> None:
    data = b"".join(parts)
    payloads, valid, damaged = read_frames(data)
    assert b"".join(frame(x) for x in payloads) == data[:valid]
    assert damaged == (valid < len(data) and every_offset(data, valid))


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_recovery_from_a_garbage_tail_crcs_linear_bytes(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = frame(b'["h"]') + frame(b"[1]") + frame(b"[2]")
    counter = CountingZlib()
    monkeypatch.setattr(recovery_mod, "zlib", counter)
    for n in (1 << 12, 1 << 14, 1 << 16):
        data = head + GARBAGE[kind](n)
        counter.hashed = 0
        payloads, valid, damaged = read_frames(data)
        assert payloads == [b'["h"]', b"[1]", b"[2]"] and valid == len(head)
        # every byte is CRC'd a bounded number of times, whatever the garbage
        assert counter.hashed <= 2 * len(data) + 64, (kind, n, counter.hashed)
        # plausible frames reaching the end that cannot be checked cheaply are damage: the
        # file is kept, never cut
        assert damaged == (kind == "exact-fakes")


def test_a_real_last_frame_after_garbage_is_still_found_cheaply(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingZlib()
    monkeypatch.setattr(recovery_mod, "zlib", counter)
    head = frame(b'["h"]') + frame(b"[1]")
    for garbage in (near_misses(1 << 16), exact_fakes(1 << 16)[:-1], bytes(1 << 16)):
        data = head + garbage + frame(b'{"a": 1}')
        counter.hashed = 0
        # (zeros then a frame: pages a power cut left unwritten, before one written back: a
        # torn tail, not damage; ``test_pages_never_written_back_make_a_torn_tail``)
        assert read_frames(data)[1:] == (len(head), garbage != bytes(1 << 16))
        assert counter.hashed <= 2 * len(data) + 64


def test_a_garbage_tail_is_scanned_without_copies(tmp_path: Path) -> None:
    p, state = recorded(tmp_path)
    good = jpath(p).read_bytes()
    n = 2 << 20
    tail = bytearray(os.urandom(n))
    struct.pack_into(">I", tail, 1, n - 10)  # a frame length reaching one byte short of the end
    jpath(p).write_bytes(good + tail)
    tracemalloc.start()
    try:
        got = read_state(str(p), CID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert codec.encode(got) == codec.encode(state)
    assert peak < n * 1.25, peak  # the file once, not a copy of its tail as well


@pytest.mark.parametrize("which", ["snapshot", "journal"])
def test_a_file_over_the_size_bound_is_state_error_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    p, state = recorded(tmp_path, n=0 if which == "snapshot" else 40)
    target = p if which == "snapshot" else jpath(p)
    bound = target.stat().st_size - 1
    assert max(p.stat().st_size, jpath(p).stat().st_size) == bound + 1
    monkeypatch.setattr(recovery_mod, "MAX_STATE_BYTES", bound, raising=False)
    before = (p.read_bytes(), jpath(p).read_bytes())
    with pytest.raises(StateError, match="larger than"):
        read_state(str(p), CID)
    with pytest.raises(StateError, match="larger than"):
        recover(p)
    assert (p.read_bytes(), jpath(p).read_bytes()) == before  # not kept aside: not damage
    monkeypatch.setattr(recovery_mod, "MAX_STATE_BYTES", bound + 1)
    assert codec.encode(recover(p)) == codec.encode(state)


# =================================================================================================
# 10. symlinks are never followed


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(VICTIM)
    v.chmod(0o644)
    return v


def untouched(v: Path) -> bool:
    return v.read_bytes() == VICTIM and mode(v) == 0o644


def test_symlinked_lock_is_state_error_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    p = tmp_path / NAME
    Path(str(p) + LOCK_SUFFIX).symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        Journal(str(p), CID)
    assert untouched(victim)


@pytest.mark.parametrize("which", ["snapshot", "journal"])
def test_symlinked_state_file_is_state_error_and_its_target_untouched(
    tmp_path: Path, victim: Path, which: str
) -> None:
    p, _ = recorded(tmp_path / "d")
    target = p if which == "snapshot" else jpath(p)
    victim.write_bytes(target.read_bytes())  # even a valid file is not read through a link
    victim.chmod(0o644)
    before = victim.read_bytes()
    target.unlink()
    target.symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        read_state(str(p), CID)
    j = Journal(str(p), CID)
    with pytest.raises(StateError, match="symbolic link"):
        j.recover()
    j.close()
    assert victim.read_bytes() == before and mode(victim) == 0o644
    assert target.is_symlink()  # left for the user to look at


def test_symlinks_at_the_old_predictable_temp_names_are_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    import threading

    p, state = recorded(tmp_path / "d")
    suffix = f".tmp-{os.getpid()}-{threading.get_ident()}"
    for base in (str(p), str(jpath(p))):
        Path(base + suffix).symlink_to(victim)
    j = Journal(str(p), CID)
    j.recover()
    j.compact(state)
    j.close()
    assert untouched(victim)
    assert codec.encode(recover(p)) == codec.encode(state)


def test_a_taken_temp_name_is_skipped_for_a_fresh_one(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, state = recorded(tmp_path / "d")
    names = iter(["taken", "taken", "fresh1", "taken", "fresh2"])
    monkeypatch.setattr(journal_mod, "_temp_suffix", lambda: next(names), raising=False)
    Path(f"{p}.tmp-taken").symlink_to(victim)
    Path(f"{jpath(p)}.tmp-taken").symlink_to(victim)
    j = Journal(str(p), CID)
    j.recover()
    j.compact(state)
    j.close()
    assert untouched(victim)
    assert Path(f"{p}.tmp-taken").is_symlink() and Path(f"{jpath(p)}.tmp-taken").is_symlink()
    assert codec.encode(recover(p)) == codec.encode(state)
    assert mode(p) == mode(jpath(p)) == 0o600


def test_an_existing_lock_or_journal_with_a_wider_mode_is_narrowed(tmp_path: Path) -> None:
    p, state = recorded(tmp_path)
    lock = Path(str(p) + LOCK_SUFFIX)
    lock.write_bytes(b"")
    lock.chmod(0o666)
    jpath(p).chmod(0o644)
    j = Journal(str(p), CID)
    assert mode(lock) == 0o600
    j.recover()
    assert mode(jpath(p)) == 0o600
    j.close()


def test_a_lock_file_with_another_name_is_state_error_and_untouched(
    tmp_path: Path, victim: Path
) -> None:
    p = tmp_path / NAME
    os.link(victim, str(p) + LOCK_SUFFIX)  # a hard link: O_NOFOLLOW does not see it
    with pytest.raises(StateError, match="link"):
        Journal(str(p), CID)
    assert untouched(victim)


def test_a_hard_linked_journal_is_replaced_not_appended_through(tmp_path: Path) -> None:
    p, _ = recorded(tmp_path / "d")
    other = tmp_path / "other-name"
    os.link(jpath(p), other)
    before = other.read_bytes()
    j = Journal(str(p), CID, sync=False)
    state = j.recover()
    j.append([state.accept("t/new", b"n", 1)], state)  # a compaction: a journal of its own
    j.close()
    assert other.read_bytes() == before
    assert codec.encode(recover(p)) == codec.encode(state)


# =================================================================================================
# 11. a state file deleted while in use


def open_journal(p: Path, state: SessionState) -> Journal:
    j = Journal(str(p), CID, sync=True)
    j.recover()
    j.compact(state)
    return j


@pytest.mark.parametrize("how", ["journal-deleted", "snapshot-deleted", "both-deleted",
                                 "journal-replaced", "snapshot-replaced"])
def test_a_durable_append_to_a_deleted_state_file_is_persistence_error(
    tmp_path: Path, how: str
) -> None:
    p = tmp_path / NAME
    state = SessionState(client_id=CID, clean_session=False)
    j = open_journal(p, state)
    first = state.accept("t/1", b"one", 1)
    j.append([first], state)
    if how in ("journal-deleted", "both-deleted"):
        jpath(p).unlink()
    if how in ("snapshot-deleted", "both-deleted"):
        p.unlink()
    if how.endswith("replaced"):
        target = p if how.startswith("snapshot") else jpath(p)
        copy = tmp_path / "copy"
        copy.write_bytes(target.read_bytes())
        os.replace(copy, target)
    second = state.accept("t/2", b"two", 1)
    with pytest.raises(PersistenceError, match="deleted or replaced"):
        j.append([second], state)
    state.retract(second)  # what the client does with a publish that raised
    third = state.accept("t/3", b"three", 1)
    j.append([third], state)  # rewrites the file from memory
    j.close()  # like a kill: no compaction
    got = recover(p)
    assert [m.topic for m in got.outgoing.values()] == ["t/1", "t/3"]


def test_sync_pending_on_a_deleted_journal_is_persistence_error(tmp_path: Path) -> None:
    p = tmp_path / NAME
    state = SessionState(client_id=CID, clean_session=False)
    j = open_journal(p, state)
    j.append([state.accept("t/1", b"one", 2)], state, sync=False)
    jpath(p).unlink()
    with pytest.raises(PersistenceError, match="deleted or replaced"):
        j.sync_pending()
    j.append([state.subscribe("a/#", 1)], state)  # rewrites everything
    j.close()
    assert [m.topic for m in recover(p).outgoing.values()] == ["t/1"]


def test_client_publish_into_a_deleted_state_file_raises_and_keeps_nothing(
    tmp_path: Path
) -> None:
    p = tmp_path / NAME
    c = Client(client_id=CID, clean_session=False)
    c.config(f"SessionStateFile={p}")
    c.restore_session("")
    c.publish_data("t/1", 1, b"one")
    jpath(p).unlink()
    with pytest.raises(PersistenceError, match="deleted or replaced"):
        c.publish_data("t/2", 1, b"two")
    assert [m.topic for m in c.outgoing_messages] == ["t/1"]
    c.publish_data("t/3", 1, b"three")
    with c._lock:  # the process is killed: no compaction
        assert c._file.journal is not None
        c._file.close()
    d = Client(client_id=CID)
    d.config(f"SessionStateFile={p}")
    d.restore_session("")
    assert [m.topic for m in d.outgoing_messages] == ["t/1", "t/3"]
    d.close()
    c.close()


def test_temporary_files_left_by_a_killed_owner_are_removed(tmp_path: Path) -> None:
    p = tmp_path / "s"
    left = [tmp_path / "s.tmp-0123456789abcdef", tmp_path / "s.journal.tmp-fedcba9876543210",
            tmp_path / "s.tmp-4242-139876"]  # the names format 1 used
    for f in left:
        f.write_bytes(b"half a snapshot")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "s.tmp-aaaaaaaaaaaaaaaa").symlink_to(victim)
    kept = [tmp_path / "s.tmp-notours", tmp_path / "other.tmp-0123456789abcdef", victim]
    for f in kept[:2]:
        f.write_bytes(b"not ours")
    j = Journal(str(p), "c")
    try:
        assert not any(f.exists() for f in left)
        assert not (tmp_path / "s.tmp-aaaaaaaaaaaaaaaa").is_symlink()
        assert all(f.exists() for f in kept) and victim.read_bytes() == b"keep"
    finally:
        j.close()


PAGE = 4096


def _pages_of_frames(sizes: list[int]) -> tuple[bytes, list[int]]:
    """Frames of the given payload sizes, one after the other; the bytes and where each ends."""
    data, ends = b"", []
    for i, n in enumerate(sizes):
        data += frame(b"[" + bytes([65 + i % 26]) * (n - 1))  # (a record's first byte)
        ends.append(len(data))
    return data, ends


@given(st.lists(st.integers(1, 1500), min_size=8, max_size=40), st.data())
@FAST
def test_pages_never_written_back_make_a_torn_tail(sizes: list[int], data: Any) -> None:
    """Unsynced records reach the disk page by page in no set order (SessionSync none,
    interval): a page still holding the zeros written ahead, or only the frames it held at an
    earlier write-back, before pages written back later. Recovery keeps the frames before
    it, cuts the rest as a torn tail: a prefix, never damage (before: StateError, nothing
    restored)."""
    good, ends = _pages_of_frames(sizes)
    whole = good + bytes(-len(good) % PAGE + PAGE)  # zeros allocated ahead
    pages = len(good) // PAGE
    if pages < 2:
        return
    hole = data.draw(st.integers(0, pages - 1), label="page not written back")
    keep = data.draw(st.integers(0, PAGE), label="bytes of it from an earlier write-back")
    start = hole * PAGE
    # an earlier write-back held only whole frames: up to a frame's end within the page
    held = max([e for e in ends if start <= e <= start + keep] or [start])
    disk = whole[:held] + bytes(start + PAGE - held) + whole[start + PAGE:]
    payloads, valid, damaged = read_frames(disk)
    assert not damaged
    assert disk[:valid] == good[:valid] and valid in [0, *ends] and valid <= held


def test_a_flipped_byte_before_good_frames_is_still_damage_not_a_torn_tail() -> None:
    good, ends = _pages_of_frames([1000] * 12)
    bad = bytearray(good + bytes(PAGE))
    bad[ends[2] + 20] ^= 0x01  # inside the fourth frame's payload
    assert read_frames(bytes(bad))[1:] == (ends[2], True)
