"""``store``: the ``Store`` protocol has two implementations (the journal and the in-memory
disk model), and the memory model keeps what a kill -9 and a power cut would."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mqttsession.journal import Journal, read_state
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
