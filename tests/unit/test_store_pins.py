"""Rules of ``store`` and ``durability`` that a mutation hunt found no test pinned: the
in-memory disk model (``MemoryStore``) loses what a power cut and a kill -9 lose,
``StateFile`` never writes over a session in its file that the application has not restored
and checks the disk queue against its ``SpoolMark``, and the interval sync's select() wait."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

import mqttsession.journal as journal_mod
from mqttsession import Client
from mqttsession.durability import Durability, _NetTimer
from mqttsession.errors import PersistenceError, StateError
from mqttsession.journal import Journal, read_state
from mqttsession.recovery import _HEAD, read_frames
from mqttsession.spool import QUEUE_SUFFIX, Spool
from mqttsession.state import SessionState
from mqttsession.store import MemoryStore, StateFile
from mqttsession.testing.faults import FakeOs


def test_memory_store_keeps_a_held_record_in_memory_until_the_next_sync() -> None:
    """A group commit's ``held`` record is written by the next sync (as the journal's is):
    a kill -9 before it loses the record, as it loses a lazy one."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.accept("t/1", b"one", 1)], state, held=True)
    assert m.recover().outgoing == {}  # kill -9 before the sync: never written
    m.sync_pending()
    m.flush()
    assert [x.topic for x in m.recover().outgoing.values()] == ["t/1"]


def test_memory_store_power_cut_loses_the_disk_queues_unsynced_messages() -> None:
    """The disk queue's model: a power cut keeps the messages a sync covered, not those
    appended without one (a kill -9 keeps both)."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.spool_checked("t", b"a", 1, False, b"", 0.0)], state, sync=True)
    m.append([state.spool_checked("t", b"b", 1, False, b"", 0.0)], state)  # not synced
    cut = m.recover(power_cut=True)
    assert cut.spooled == 1
    assert [x.payload for x in m.read(10)] == [b"a"]


def _state_file(where: Path, segment_bytes: int = 4096) -> StateFile:
    f = StateFile()
    f.path, f.segment_bytes = str(where / "s"), segment_bytes
    return f


def test_a_lost_disk_queue_holding_only_its_first_message_is_state_error(
        tmp_path: Path) -> None:
    """SessionSync=always: the session's one queued message (seq 1, none read back) is
    named by the segment's ``SpoolMark``; a queue found without it refuses the restore,
    even at that edge (``spool_last >= max(spool_next, 1)``)."""
    f = _state_file(tmp_path)
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    f.append((state.spool_checked("t", b"one", 1, False, b"", 0.0),), state, sync=True)
    assert state.spool_last == 1
    f.close()
    for seg in Path(str(tmp_path / "s") + QUEUE_SUFFIX).iterdir():
        seg.unlink()
    again = _state_file(tmp_path)
    with pytest.raises(StateError, match="lacks the messages up to seq 1"):
        again.load("c")
    again.close()


def test_a_segment_begun_whose_first_message_was_lost_restores_the_rest(
        tmp_path: Path) -> None:
    """A segment's header is on disk when its ``SpoolMark`` is written; a power cut that
    then loses the message being written after it (a publish that never returned) leaves
    a queue ending before the mark: the header counts, so the restore is not refused and
    holds every message before it."""
    f = _state_file(tmp_path)
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    queue = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    for n in range(1000):  # until a second segment is begun
        f.append((state.spool_checked("t", b"x" * 100, 1, False, b"", 0.0),), state,
                 sync=True)
        if list(queue.glob("*.seg")):
            break
    assert f.spool is not None and f.spool.newest_first == n + 1 == state.spool_last
    f.close()
    (newest,) = queue.glob("*.open")
    frames, _, _ = read_frames(data := newest.read_bytes())
    assert len(frames) == 2  # its header and the one message
    newest.write_bytes(data[:_HEAD.size + len(frames[0])])  # the message lost
    again = _state_file(tmp_path)
    got = again.load("c")
    assert got.spooled == n
    again.close()


def test_a_session_holding_only_a_packet_id_reservation_is_never_written_over(
        tmp_path: Path) -> None:
    """SessionSync=interval: a file whose session holds no message but a packet-id
    reservation (the broker may hold flows for those ids, which only ``restore_session``
    releases) waits for the restore like one with messages: not compacted over on open."""
    old = SessionState(client_id="c", clean_session=False)
    j = Journal(str(tmp_path / "s"), "c")
    j.compact(old)
    j.append([old.reserve(0, 256)], old, sync=True)
    j.close()
    assert old.empty and old.reserved_first
    f = _state_file(tmp_path)
    f.set_sync(True, mapped=True, interval=True)
    f.open(SessionState(client_id="c", clean_session=False))
    assert f.unrestored is not None and f.unrestored.reserved_first == old.reserved_first
    f.close()
    assert read_state(str(tmp_path / "s"), "c").reserved_first == old.reserved_first


def _with_old_session(tmp_path: Path) -> SessionState:
    """A state file whose session holds one message (``b"old"``); a fresh state to open it."""
    old = SessionState(client_id="c", clean_session=False)
    j = Journal(str(tmp_path / "s"), "c")
    j.compact(old)
    j.append([old.accept("t", b"old", 1)], old, sync=True)
    j.close()
    return SessionState(client_id="c", clean_session=False)


def test_a_write_without_a_restore_keeps_the_old_session_aside_and_writes_the_new_once(
        tmp_path: Path) -> None:
    """The first record written without a restore: the file's session goes aside, and the
    compaction that follows holds the new state with that record, once (not again after it:
    replayed twice, it would make the file unreadable)."""
    state = _with_old_session(tmp_path)
    f = _state_file(tmp_path)
    f.open(state)
    assert f.unrestored is not None
    f.append([state.accept("t", b"new", 1)], state, sync=True)
    assert f.unrestored is None
    f.close()  # (no compaction of its own: what the append wrote is what a kill -9 leaves)
    got = read_state(str(tmp_path / "s"), "c")
    assert [m.payload for m in got.outgoing.values()] == [b"new"]
    assert [p for p in tmp_path.iterdir() if ".unrestored-" in p.name]


def test_a_write_while_on_connected_runs_leaves_the_unrestored_session_in_place(
        tmp_path: Path) -> None:
    """While ``on_connected`` runs (``deferring``) the application may still restore the
    file's session: a record written meanwhile neither keeps it aside nor writes over it."""
    state = _with_old_session(tmp_path)
    f = _state_file(tmp_path)
    f.open(state)
    f.deferring = True
    f.append([state.subscribe("t/#", 1)], state, sync=True)
    assert f.unrestored is not None
    assert not [p for p in tmp_path.iterdir() if ".unrestored-" in p.name]
    f.close()
    got = read_state(str(tmp_path / "s"), "c")
    assert [m.payload for m in got.outgoing.values()] == [b"old"]


def test_a_connected_sessions_select_waits_only_until_the_interval_sync_is_due() -> None:
    """SessionSync=interval on paho's network thread: ``_hook_wait`` shortens select()'s
    timeout to the armed sync's due time (else the sync waits for the next packet or the
    loop's own timeout), never below zero, and leaves it alone with no sync armed."""
    d = Durability.__new__(Durability)
    d._sync_timer = None  # noqa: SLF001
    assert d._hook_wait(60.0) == 60.0  # noqa: SLF001
    d._sync_timer = _NetTimer(time.monotonic() + 5.0)  # noqa: SLF001
    assert d._hook_wait(60.0) <= 5.0  # noqa: SLF001
    d._sync_timer = _NetTimer(time.monotonic() - 1.0)  # noqa: SLF001
    assert d._hook_wait(60.0) == 0.0  # noqa: SLF001


def test_publishes_while_the_files_session_may_still_be_restored_stay_in_memory(
        tmp_path: Path) -> None:
    """Publishes past ``QueueInMemory`` while the file's session may still be restored (its
    ``on_connected`` runs: ``deferring``) stay in memory, not in the disk queue (which is the
    old session's, and whose records are not written meanwhile); when the application goes on
    without restoring, the old session goes aside and a restart holds every new message (a
    mutation hunt: ``StateFile.ready`` without its unrestored check passed every test)."""
    def client() -> Client:
        c = Client(client_id="rq", clean_session=False)
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.config("QueueInMemory=1")
        return c

    a = client()
    a.restore_session("")
    a.publish_data("t/old", 1, b"old")
    a.close()
    b = client()
    b._file.open(b._engine.state)  # noqa: SLF001  (the file read: its session unrestored)
    b._file.deferring = True  # noqa: SLF001  (as while on_connected runs)
    for i in range(3):
        b.publish_data("t/new", 1, b"new%d" % i)
    b._file.deferring = False  # noqa: SLF001  (on_connected returned without a restore)
    b.publish_data("t/new", 1, b"new3")
    b.close()
    c = client()
    c.restore_session("")
    assert [m.message for m in c.outgoing_messages] == [b"new%d" % i for i in range(4)]
    c.close()
    assert [p for p in tmp_path.iterdir() if ".unrestored-" in p.name]


@pytest.mark.parametrize("write", ["compact", "rewrite", "compact_ahead"])
def test_no_whole_state_write_goes_over_a_session_not_restored(tmp_path: Path,
                                                               write: str) -> None:
    """A clean disconnect's ``compact``, a failed publish's ``rewrite`` and a loop's
    ``compact_ahead`` write the whole state: never while the file's session waits for
    ``restore_session`` (the new state holds none of its messages: they would be gone)."""
    state = _with_old_session(tmp_path)
    f = _state_file(tmp_path)
    f.open(state)
    assert f.unrestored is not None and not f.owned
    getattr(f, write)(state)
    assert f.unrestored is not None
    assert not f.compaction_near(1 << 30)  # (no compaction hinted over it either)
    f.close()
    got = read_state(str(tmp_path / "s"), "c")
    assert [m.payload for m in got.outgoing.values()] == [b"old"]


def test_a_queued_publish_taken_back_leaves_a_snapshot_that_restores(tmp_path: Path) -> None:
    """A publish into the disk queue whose message was written, then taken back (its call
    raised: a Ctrl-C, a fault): ``rewrite`` cuts it out of the queue and the snapshot names
    the queue's new last seq, so the restart neither finds it nor refuses the file as a
    queue lacking messages (SessionSync=always checks ``spool_last`` against the queue)."""
    f = _state_file(tmp_path)
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    f.append((state.spool_checked("t", b"one", 1, False, b"", 0.0),), state, sync=True)
    taken = state.spool_checked("t", b"two", 1, False, b"", 0.0)
    f.append((taken,), state, sync=True)
    assert state.spool_last == 2
    state.retract_spooled(taken)
    f.rewrite(state)
    assert state.spool_last == 1
    f.close()
    again = _state_file(tmp_path)
    got = again.load("c")
    assert got.spooled == 1 and [m.payload for m in again.read(10)] == [b"one"]
    again.close()


def test_a_failed_settle_leaves_the_session_to_restore_with_its_disk_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping an unrestored session aside fails at its disk queue (the journal put back):
    the session still waits for ``restore_session``, which reads the files again (the
    failed attempt closed them) and finds its queued message."""
    f = _state_file(tmp_path)
    old = SessionState(client_id="c", clean_session=False)
    f.open(old)
    f.append((old.spool_checked("t", b"queued", 1, False, b"", 0.0),), old, sync=True)
    f.close()
    f = _state_file(tmp_path)
    f.open(SessionState(client_id="c", clean_session=False))
    assert f.unrestored is not None

    def refuse(self: Spool, label: str, names: list[str]) -> str:
        raise OSError(5, "the disk queue cannot be renamed")  # (its files closed already)

    with monkeypatch.context() as m:
        m.setattr(Spool, "_move_aside", refuse)
        with pytest.raises(OSError):
            f.settle(SessionState(client_id="c", clean_session=False))
    assert f.unrestored is not None
    got = f.load("c")
    assert got.spooled == 1 and [x.payload for x in f.read(10)] == [b"queued"]
    f.append((got.spool_checked("t", b"more", 1, False, b"", 0.0),), got, sync=True)
    f.close()
    again = _state_file(tmp_path)
    st = again.load("c")
    assert st.spooled == 2, st.spooled
    assert [x.payload for x in again.read(10)] == [b"queued", b"more"]
    again.close()


def test_interval_syncs_a_clock_correction_before_the_next_queued_message(
        tmp_path: Path) -> None:
    """SessionSync=interval: the disk queue's messages are timed by the journal's clock
    offset, so a ``ClockOffset`` record, like a publish's, is synced before the next message
    goes into the queue (``queue_sync_due``; two files written back in no set order); a
    lazy record or an Activity does not ask for it."""
    f = _state_file(tmp_path)
    f.set_sync(True, mapped=True, interval=True)
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    f.append((state.spool_checked("t", b"p", 1, False, b"", 0.0),), state)  # (a segment begun)
    assert not f.queue_sync_due()
    f.append((state.activity(5.0),), state)
    assert not f.queue_sync_due()
    f.append((state.set_clock_offset(3600.0),), state)
    assert f.queue_sync_due()
    f.append((state.spool_checked("t", b"q", 1, False, b"", 0.0),), state)
    assert not f.queue_sync_due()  # (synced before the message went in)
    f.close()


def test_interval_rewrites_a_journal_a_failed_sync_left_broken_before_queueing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=interval: a journal whose sync failed (its page cache suspect, the
    journal marked broken) is rewritten before the next message goes into the disk queue,
    also when no publish's record waits for a sync (the records before the queue's
    message on disk first)."""
    def eio(*_a: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    f = _state_file(tmp_path)
    f.set_sync(True, mapped=True, interval=True)
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    f.append((state.accept("t", b"held", 1),), state)
    f.append((state.spool_checked("t", b"q1", 1, False, b"", 0.0),), state)
    f.append((state.activity(5.0),), state)
    with monkeypatch.context() as m, pytest.raises(PersistenceError):
        m.setattr(journal_mod, "os", FakeOs(fdatasync=eio))
        f.sync_pending()
    j = f.journal
    assert j is not None and j.broken
    f.append((state.spool_checked("t", b"q2", 1, False, b"", 0.0),), state)
    assert not j.broken
    f.close()
    got = read_state(str(tmp_path / "s"), "c")
    assert [m.payload for m in got.outgoing.values()] == [b"held"]
