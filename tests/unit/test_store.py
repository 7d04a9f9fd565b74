"""``store``: the ``Store`` protocol has two implementations (the journal and the in-memory
disk model), and the memory model keeps what a kill -9 and a power cut would."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mqttsession import Client
from mqttsession.errors import StateError
from mqttsession.journal import Journal, read_state
from mqttsession.recovery import read_frames
from mqttsession.spool import QUEUE_SUFFIX
from mqttsession.state import SessionState
from mqttsession.store import MemoryStore, StateFile, Store


def _stores(tmp_path: Path) -> list[Store]:
    return [Journal(str(tmp_path / "s"), "c"), MemoryStore()]  # both type-check as a Store


def test_both_stores_recover_what_was_appended(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        state = SessionState(client_id="c", clean_session=False)
        store.compact(state)
        store.append([state.accept("t/1", b"one", 1)], state, sync=True)
        store.append([state.subscribe("t/#", 2)], state)
        store.append([state.send(1)], state, lazy=True)
        store.flush()
        got = store.recover()
        assert got == state, type(store).__name__
        store.close()


def test_memory_store_models_kill_and_power_cut() -> None:
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.accept("t/1", b"one", 1)], state, sync=True)  # durable
    m.append([state.accept("t/2", b"two", 2)], state)  # written, not synced
    m.append([state.send(1)], state, lazy=True)  # in memory only
    assert [x.topic for x in m.recover().outgoing.values()] == ["t/1", "t/2"]  # kill -9
    assert [x.topic for x in m.recover(power_cut=True).outgoing.values()] == ["t/1"]
    assert m.recover().outgoing[1].sent is False  # the lazy SEND was lost
    m.sync_pending()
    assert [x.topic for x in m.recover(power_cut=True).outgoing.values()] == ["t/1", "t/2"]
    assert m.syncs == 2


def test_no_segment_goes_while_its_read_back_was_cut(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk queue's segments read back are deleted only once the ``Loaded`` record that
    holds their messages is on disk; another thread's failed fdatasync can cut that record
    between its write and the fsync before the deletion (the journal is then rewritten from
    memory by its next write): the segments stay."""
    f = StateFile()
    f.path, f.segment_bytes = str(tmp_path / "s"), 4096
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    for _ in range(100):
        f.append((state.spool_checked("t", b"x" * 100, 1, False, b"", 0.0),), state)
    loaded = state.load(msgs := f.read(60), msgs[-1].seq + 1)
    j = f.journal
    assert isinstance(j, Journal) and f.spool is not None
    assert f.spool.retirable(loaded.spool_next)
    fsync = j.fsync

    def cut_then_fsync() -> None:  # another thread's group commit failed meanwhile
        j._sync_failed(j._fd, OSError(errno.EIO, "injected"))  # type: ignore[arg-type]  # noqa: SLF001
        fsync()

    monkeypatch.setattr(j, "fsync", cut_then_fsync)
    queue = f.path + QUEUE_SUFFIX
    before = sorted(os.listdir(queue))
    f.append((loaded,), state)
    assert sorted(os.listdir(queue)) == before  # kept: the journal lost the read-back
    monkeypatch.setattr(j, "fsync", fsync)
    f.append((state.subscribe("t/#", 1),), state)  # the rewrite from memory holds it now
    f.close()
    assert len(read_state(str(tmp_path / "s"), "c").outgoing) == 60


def _queue_client(where: Path, **settings: int) -> Client:
    c = Client(client_id="q", clean_session=False)
    c.config(f"SessionStateFile={where / 's'}")
    c.config("QueueInMemory=1")
    for name, value in settings.items():
        c.config(f"{name}={value}")
    return c


def test_a_message_in_the_disk_queue_at_the_journals_next_seq_is_never_numbered_again(
        tmp_path: Path) -> None:
    """Killed with exactly one message in the disk queue past what the journal counted (its
    next seq): the restart numbers the next message after it, never with its seq again (the
    next restart found the queue out of order) (a hunt)."""
    c = _queue_client(tmp_path)
    c.restore_session("")
    c.publish_data("t", 1, b"one")  # in memory: the journal counts it
    c.publish_data("t", 1, b"two")  # in the disk queue only
    del c  # killed: nothing saved or compacted
    again = _queue_client(tmp_path)
    again.restore_session("")
    again.publish_data("t", 1, b"three")  # into the disk queue, after "two"
    del again
    last = _queue_client(tmp_path)
    last.restore_session("")
    assert [m.message for m in last.outgoing_messages] == [b"one", b"two", b"three"]
    held = list(last._engine.state.outgoing)  # noqa: SLF001
    assert last._file.spool is not None  # noqa: SLF001
    seqs = held + [m.seq for m in last._file.spool.read_all()]  # noqa: SLF001
    assert len(set(seqs)) == 3 and seqs == sorted(seqs)
    last.close()


def test_a_deleted_open_segment_holding_one_message_is_state_error(tmp_path: Path) -> None:
    """The disk queue's open segment, begun with one message, deleted (a volume not mounted,
    files deleted): the session says its messages reach that seq, the queue ends one before,
    so the restore is refused, even one message short (a hunt)."""
    c = _queue_client(tmp_path, QueueSegmentBytes=4096)
    c.restore_session("")
    queue = Path(str(tmp_path / "s") + QUEUE_SUFFIX)
    for _ in range(1000):  # until the first segment is sealed and the next begun
        c.publish_data("t", 1, b"x" * 100)
        if list(queue.glob("*.seg")):
            break
    (first,) = queue.glob("*.open")
    assert len(read_frames(first.read_bytes())[0]) == 2  # its header and one message
    c.close()
    assert first.exists()
    first.unlink()
    again = _queue_client(tmp_path, QueueSegmentBytes=4096)
    with pytest.raises(StateError, match="lacks the messages up to seq"):
        again.restore_session("")
    again.close()


def test_both_disk_queues_give_again_what_was_read_since_a_mark(tmp_path: Path) -> None:
    """The engine's ``QueueSource`` ``mark`` / ``reset`` on the memory model and on a state
    file's disk queue: the messages read since the mark are read again, in order."""
    c = Client(client_id="c", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("QueueInMemory=1")
    c.restore_session("")
    for i in range(6):
        c.publish_data("t/q", 1, b"%d" % i)  # one in memory, five in the disk queue
    mem = MemoryStore()
    state = SessionState(client_id="c", clean_session=False)
    mem.append([state.spool_checked("t/q", b"%d" % i, 1, False, b"", 1.0) for i in range(5)],
               state)
    for queue in (c._file, mem):  # noqa: SLF001
        first = queue.read(1)
        mark = queue.mark()
        again = queue.read(2)
        queue.reset(mark)
        assert queue.read(2) == again and again[0].seq == first[0].seq + 1, type(queue).__name__
    c.close()
