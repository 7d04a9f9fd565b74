"""``store``: the ``Store`` protocol has two implementations (the journal and the in-memory
disk model), and the memory model keeps what a kill -9 and a power cut would."""

from __future__ import annotations

from pathlib import Path

from mqttsession.journal import Journal
from mqttsession.state import SessionState
from mqttsession.store import MemoryStore, Store


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
