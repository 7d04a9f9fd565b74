"""Fixed entries of CHANGELOG.rst ("Unreleased", "Fixed", lines 1498-1930) that no test held:
each test here fails with the fix taken back (the mutation each docstring names), without a
broker."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import mqttsession.journal as journal_mod
from mqttsession import Client, PersistenceError
from mqttsession.journal import Journal, read_state
from mqttsession.spool import QUEUE_SUFFIX
from mqttsession.state import SessionState
from mqttsession.store import StateFile
from mqttsession.testing.faults import FakeOs


def _eio(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error (injected)")


def test_a_withdrawn_publish_releases_the_durable_ones_behind_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"Under ``SessionSync=always``, a publish whose record waits for a group commit ...": "A
    message taken back after a failed sync no longer leaves the durable messages behind it
    held until the next publish". Two group-commit publishes; the first one's fdatasync
    fails, its release takes it back and rewrites the file from memory (the second in it,
    durable): the second is released at once. Mutation: ``Durability.release`` writes the
    durable ones only when ``err is None`` (``rest = self._write_durable() if err is None
    else []``, the code before)."""
    c = Client(client_id="withdrawn", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    try:
        c.publish_data("t", 1, b"first")  # the journal open: the group commit applies
        _, first = c._publish_begin("t", 1, b"a", None, None, True)  # noqa: SLF001
        _, second = c._publish_begin("t", 1, b"b", None, None, True)  # noqa: SLF001
        assert first is not None and second is not None  # (both held for their sync)
        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=_eio))
        err = c._driver.wait_durable(first)  # noqa: SLF001
        monkeypatch.setattr(journal_mod, "os", os)
        assert isinstance(err, PersistenceError)
        with pytest.raises(PersistenceError):
            c._driver.release(first, err)  # noqa: SLF001  (taken back, the file rewritten)
        assert [m.message for m in c.outgoing_messages] == [b"first", b"b"]
        assert not c._driver.holds(), "the durable message behind it is still held"  # noqa: SLF001
    finally:
        c.close()
    assert [m.payload for m in read_state(str(tmp_path / "s"), "withdrawn").outgoing.values()] \
        == [b"first", b"b"]


@pytest.mark.parametrize("sync_fails", [False, True], ids=["synced", "sync-failed"])
def test_an_off_loop_retire_keeps_the_segments_when_its_sync_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_fails: bool) -> None:
    """"A session driven by an event loop ... draining its disk queue ...": the segments read
    back go in the executor (``StateFile.off_loop``) after the ``Loaded`` record's sync, and
    "a failed sync keeps the segment (a restart deletes it)". The executor job is run here
    by hand, its fdatasync failing (EIO): every segment stays, and the messages they hold are
    still restored (the ``synced`` case shows the job does delete otherwise). Mutation:
    ``store._retire`` retires after a failed ``sync_to`` (no ``return`` in its ``except``
    and ``if True:`` for its ``is_synced`` check: either guard alone keeps them)."""
    f = StateFile()
    f.path, f.segment_bytes = str(tmp_path / "s"), 4096
    jobs: list[Callable[[], None]] = []
    f.off_loop = jobs.append  # what connecting.py sets for a loop's session
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    for _ in range(100):
        f.append((state.spool_checked("t", b"x" * 100, 1, False, b"", 0.0),), state)
    loaded = state.load(msgs := f.read(60), msgs[-1].seq + 1)
    assert isinstance(f.journal, Journal) and f.spool is not None
    queue = f.path + QUEUE_SUFFIX
    before = sorted(os.listdir(queue))
    f.append((loaded,), state)
    assert sorted(os.listdir(queue)) == before and len(jobs) == 1  # (left to the job)
    if sync_fails:
        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=_eio))
    jobs[0]()
    monkeypatch.setattr(journal_mod, "os", os)
    after = sorted(os.listdir(queue))
    if sync_fails:
        assert after == before  # kept: the read-back is not on disk
    else:
        assert len(after) < len(before)
    f.append((state.subscribe("t/#", 1),), state)  # the next write makes the journal good
    f.close()
    assert len(read_state(str(tmp_path / "s"), "c").outgoing) == 60


def test_a_failed_group_sync_keeps_what_an_fsync_made_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"A disk queue's segments read back could be deleted while the ``Loaded`` record ...":
    "a journal's ``fsync()`` advances the point a later failed group sync cuts back to, so it
    no longer cuts bytes that fsync made durable". A record made durable by ``fsync()``, then
    one whose group fdatasync fails: the cut keeps the first (what a kill -9 now leaves).
    Mutation: ``Journal.fsync`` returns ``not self._was_cut()`` instead of
    ``self._mark_synced(end)`` (``_synced`` not advanced)."""
    p = tmp_path / "s"
    j = Journal(str(p), "c")
    st = SessionState(client_id="c", clean_session=False)
    j.compact(st)
    j.append([st.accept("t/a", b"durable", 1)], st, sync=False)
    assert j.fsync()
    j.append([st.accept("t/b", b"cut", 1)], st, sync=False)
    monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=_eio))
    with pytest.raises(PersistenceError):
        j.sync_to(*j.appended_at)
    monkeypatch.setattr(journal_mod, "os", os)
    assert [m.payload for m in read_state(str(p), "c").outgoing.values()] == [b"durable"]
    j.close()
