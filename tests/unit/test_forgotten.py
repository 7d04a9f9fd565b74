"""``forgotten.Forgotten``: the client ids a gateway forgot, kept until a clean start of each
is accepted; a damaged file is kept aside, a symlink refused."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from mqttsession.errors import StateError
from mqttsession.forgotten import FORGOTTEN_NAME, Forgotten


def test_ids_are_kept_across_opens_until_discarded(tmp_path: Path) -> None:
    f = Forgotten(str(tmp_path))
    assert f.ids == frozenset() and not (tmp_path / FORGOTTEN_NAME).exists()
    f.add("a")
    f.add("b/ü")
    f.add("a")
    assert Forgotten(str(tmp_path)).ids == {"a", "b/ü"}
    f.discard("a")
    f.discard("never")
    again = Forgotten(str(tmp_path))
    assert again.ids == {"b/ü"}
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == ["b/ü"]
    assert oct(os.stat(tmp_path / FORGOTTEN_NAME).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("junk", [b"", b"{", b'{"a": 1}', b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_damaged_file_is_kept_aside_never_read_as_ids(tmp_path: Path, junk: bytes) -> None:
    (tmp_path / FORGOTTEN_NAME).write_bytes(junk)
    f = Forgotten(str(tmp_path))
    assert f.ids == frozenset()
    aside = list(tmp_path.glob(f"{FORGOTTEN_NAME}.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    f.add("x")
    assert Forgotten(str(tmp_path)).ids == {"x"}


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text('["a"]')
    os.symlink(tmp_path / "elsewhere", tmp_path / FORGOTTEN_NAME)
    with pytest.raises(StateError):
        Forgotten(str(tmp_path))
    assert (tmp_path / "elsewhere").read_text() == '["a"]'


def test_close_waits_for_a_discard_made_in_a_thread(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``discard_later`` (a CONNACK accepted a clean start) writes in a thread; ``close``
    (the gateway's, before its directory lock goes) waits for it. Before: a process that
    closed its gateway and ended at once kept the id (a review: the next start was clean
    again, and the broker's session, with the messages queued for it, went)."""
    import mqttsession.forgotten as forgotten_mod  # noqa: PLC0415

    f = Forgotten(str(tmp_path))
    f.add("a")
    real = forgotten_mod.write_atomic

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(forgotten_mod, "write_atomic", slow)
    f.discard_later("a")
    f.close()
    assert Forgotten(str(tmp_path)).ids == frozenset()


def test_at_most_max_ids_wait_the_oldest_let_go(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mqttsession.forgotten as forgotten_mod  # noqa: PLC0415

    monkeypatch.setattr(forgotten_mod, "MAX_IDS", 3)
    f = Forgotten(str(tmp_path))
    for i in range(5):
        f.add(f"d{i}")
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == ["d2", "d3", "d4"]
    assert Forgotten(str(tmp_path)).ids == {"d2", "d3", "d4"}


def test_a_write_a_kill_cut_short_leaves_no_temp_behind(tmp_path: Path) -> None:
    (tmp_path / f"{FORGOTTEN_NAME}.tmp-0123456789abcdef").write_text('["x"]')
    Forgotten(str(tmp_path)).add("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [FORGOTTEN_NAME]


def test_every_change_is_written_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The note is written atomically and synced at each change (a mutation hunt: unsynced,
    a power cut after ``forget()`` could lose the note while the store's deletion is on
    disk, and the id's next session would resume the broker's old session)."""
    from mqttsession import forgotten  # noqa: PLC0415

    syncs: list[bool] = []
    real = forgotten.write_atomic

    def spy(path: str, data: str, sync: bool = True) -> None:
        syncs.append(sync)
        real(path, data, sync=sync)

    monkeypatch.setattr(forgotten, "write_atomic", spy)
    f = Forgotten(str(tmp_path))
    f.add("a")
    f.add("b")
    f.discard("a")
    f.discard_later("b")
    f.close()
    assert syncs == [True] * 4 and Forgotten(str(tmp_path)).ids == frozenset()


def test_close_waits_for_the_discards_under_way(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``close()`` returns once every ``discard_later`` write ended, also one whose thread
    has not taken the lock yet (the gateway lets the directory's lock go after it: a write
    after that could race the next gateway's)."""
    real = Forgotten.discard

    def late(self: Forgotten, client_id: str) -> None:
        time.sleep(0.3 if client_id == "a" else 0.05)  # (started, the lock not taken yet;
        real(self, client_id)  # the first ends last)

    f = Forgotten(str(tmp_path))
    f.add("a")
    f.add("b")
    monkeypatch.setattr(Forgotten, "discard", late)
    f.discard_later("a")
    f.discard_later("b")
    f.close()
    assert not [t for t in threading.enumerate() if t.name == "mqttsession-forgotten"]
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == []


def test_an_id_added_again_keeps_its_place_and_is_written_once(tmp_path: Path) -> None:
    """``add`` of an id already waiting writes nothing: the file keeps each id once, oldest
    first (a duplicate would outlive its ``discard`` in the order ``MAX_IDS`` trims)."""
    f = Forgotten(str(tmp_path))
    f.add("a")
    f.add("b")
    before = os.stat(tmp_path / FORGOTTEN_NAME).st_ino
    f.add("a")
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == ["a", "b"]
    assert os.stat(tmp_path / FORGOTTEN_NAME).st_ino == before  # not rewritten


def test_ids_read_twice_are_kept_once_in_their_first_place(tmp_path: Path) -> None:
    """A file listing an id twice (written by hand) is read as each id once, at its first
    place: the next write lists it once."""
    (tmp_path / FORGOTTEN_NAME).write_text('["a", "b", "a", "c", "b"]')
    f = Forgotten(str(tmp_path))
    assert f.ids == {"a", "b", "c"}
    f.add("d")
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == ["a", "b", "c", "d"]


def test_ten_thousand_ids_wait_at_most(tmp_path: Path) -> None:
    """``MAX_IDS`` is 10,000: a full list gives up its oldest for a new id, and keeps every
    one of them up to that count."""
    from mqttsession.forgotten import MAX_IDS  # noqa: PLC0415

    ids = [f"d{i}" for i in range(10_000)]
    (tmp_path / FORGOTTEN_NAME).write_text(json.dumps(ids[1:]))
    f = Forgotten(str(tmp_path))
    f.add("d0")  # 9,999 + 1: none let go
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == [*ids[1:], "d0"]
    f.add("new")
    assert json.loads((tmp_path / FORGOTTEN_NAME).read_text()) == [*ids[2:], "d0", "new"]
    assert MAX_IDS == 10_000


def test_discarding_an_id_not_waiting_writes_nothing(tmp_path: Path) -> None:
    """``discard`` of an id that is not waiting leaves the directory as it is (no file made,
    none rewritten)."""
    f = Forgotten(str(tmp_path))
    f.discard("never")
    assert not (tmp_path / FORGOTTEN_NAME).exists()
    f.add("a")
    before = os.stat(tmp_path / FORGOTTEN_NAME).st_ino
    f.discard("never")
    assert os.stat(tmp_path / FORGOTTEN_NAME).st_ino == before
