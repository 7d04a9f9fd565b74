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
        j.append(state.accept(f"t/{i}", b"m%d" % i, 1), state)
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
def test_zero_tail_of_any_length_is_cut_and_the_session_kept(tmp_path_factory: Any,
                                                            zeros: int) -> None:
    p, state = recorded(tmp_path_factory.mktemp("z"))
    good = jpath(p).read_bytes()
    jpath(p).write_bytes(good + bytes(zeros))
    assert read_frames(good + bytes(zeros))[1:] == (len(good), False)
    with warnings_of_journal() as warned:
        got = recover(p)
    assert codec.encode(got) == codec.encode(state)
    assert warned and "torn" in warned[0]
    assert kept_aside(p) == []
    # the next append cuts the zeros: the file is whole again
    j = Journal(str(p), CID, sync=False)
    j.recover()
    j.append(got.accept("t/after", b"x", 1), got)
    j.close()
    assert jpath(p).read_bytes().startswith(good) and read_frames(jpath(p).read_bytes())[1:] == (
        jpath(p).stat().st_size, False)
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
