"""The names a user gives become file names (a names hunt; each case failed before its fix):

* a ``SessionStateFile`` name of 227-250 bytes was taken, then every write failed ("File name
  too long" of the journal's temp file) and a snapshot without journal stayed; at 221-226 bytes
  an unrestored session's journal could not go aside after its disk queue had (its messages
  lost); a path near PATH_MAX failed a publish at each disk-queue segment: ``UsageError`` at
  ``config()`` now, nothing written;
* a relative ``SessionStateFile`` or gateway directory followed a later ``chdir()`` (the disk
  queue in the new directory, the snapshot in the old: messages lost at the restart, another
  gateway's queue written into): resolved when given;
* ``#`` in a plain client's file name made two spellings of it different files;
* a gateway client id with ``#`` was told to ``gw.forget`` the part after its last ``#``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mqttsession import Client, StateError, UsageError
from mqttsession.gateway import Gateway

pytestmark = pytest.mark.integration


def _client(path: str | Path, cid: str = "names") -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=2")
    return c


@pytest.mark.parametrize("size", [221, 226, 230, 250])
def test_a_name_too_long_for_what_is_made_beside_it_is_refused_at_config(
        tmp_path: Path, size: int) -> None:
    c = Client(client_id="long", clean_session=False)
    try:
        with pytest.raises(UsageError, match=f"its name is {size} bytes"):
            c.config(f"SessionStateFile={tmp_path / ('s' * size)}")
        assert c.config("SessionStateFile") == ""
    finally:
        c.close()
    assert list(tmp_path.iterdir()) == []


def test_a_name_that_leaves_room_works(tmp_path: Path) -> None:
    path = tmp_path / ("s" * 220)
    c = _client(path)
    c.restore_session("")
    for i in range(5):
        c.publish_message("t/x", 1, f"m{i}")  # (three in the disk queue)
    c.close()
    again = _client(path)
    again.restore_session("")
    assert again.queue_stats().messages == 5
    again.close()


def test_a_path_near_path_max_is_refused_at_config(tmp_path: Path) -> None:
    deep = tmp_path
    while len(os.fsencode(str(deep))) < 3900:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    c = Client(client_id="deep", clean_session=False)
    try:
        with pytest.raises(UsageError, match="the path is"):
            c.config(f"SessionStateFile={deep / 's'}")
    finally:
        c.close()


def test_a_relative_state_file_stays_where_it_was_given(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "state").mkdir(parents=True)
    (tmp_path / "b" / "state").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    c = _client("state/session")
    c.restore_session("")
    c.publish_message("t/x", 1, "m0")
    monkeypatch.chdir(tmp_path / "b")  # (a daemon's chdir, a library's)
    for i in range(1, 5):
        c.publish_message("t/x", 1, f"m{i}")
    c.close()
    assert list((tmp_path / "b" / "state").iterdir()) == []
    again = _client(tmp_path / "a" / "state" / "session")
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [f"m{i}".encode() for i in range(5)]
    again.close()


def test_a_relative_gateway_directory_stays_where_it_was_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    with Gateway("gw") as gw:
        c = gw.client("dev")
        c.config("QueueInMemory=2")
        monkeypatch.chdir(tmp_path / "b")
        for i in range(5):
            c.publish_message("t/x", 1, f"m{i}")  # (three in the disk queue)
    assert not (tmp_path / "b" / "gw").exists()
    with Gateway(tmp_path / "a" / "gw") as gw:
        assert gw.client("dev").queue_stats().messages == 5


def test_a_hash_in_a_plain_state_file_name_is_an_ordinary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = _client("data#1")
    c.restore_session("")
    c.publish_message("t/x", 1, "held")
    c.config(f"SessionStateFile={tmp_path / 'data#1'}")  # the same file: a no-op
    c.close()
    assert (tmp_path / "data#1").exists()


def test_a_gateway_id_with_a_hash_is_advised_by_its_whole_name(tmp_path: Path) -> None:
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("site#7")
        c.config("QueueInMemory=2")
        for i in range(5):
            c.publish_message("t/x", 1, f"m{i}")
    queues = tmp_path / "gw" / "queues"
    for seg in queues.rglob("*"):
        if seg.is_file():
            seg.unlink()  # (its segments lost)
    with Gateway(tmp_path / "gw") as gw:
        with pytest.raises(StateError, match=r"gw\.forget\('site#7'\)"):
            gw.client("site#7")
        assert gw.forget("site#7") is True


def test_relative_names_are_read_back_absolute_and_keep_the_kernels_meaning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(reviews) ``config("SessionStateFile")`` reads back the file in use (it gave the text
    as given, another file after a chdir); ``link/../s`` is where the kernel goes (``real/s``
    for ``link -> real/sub``; ``abspath`` made it ``./s``: a stored session not found; left
    unnormalized, the disk queue and directory syncs went to ``./``): its directory resolved;
    a name ending in a slash names a directory."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "real" / "sub", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    c = _client("link/../s")
    c.config("QueueInMemory=1")
    c.restore_session("")
    c.publish_message("t/x", 1, "held")
    assert c.config("SessionStateFile") == str(tmp_path.resolve() / "real" / "s")
    for i in range(4):  # (the disk queue too: review, it was made at the lexical "./s.queue")
        c.publish_message("t/x", 1, f"more {i}")
    c.close()
    assert (tmp_path / "real" / "s").exists() and not (tmp_path / "s").exists()
    with pytest.raises(UsageError, match="names a directory"):
        Client(client_id="slash").config("SessionStateFile=nodir/")


def test_an_async_sessions_relative_state_file_is_resolved_when_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from mqttsession import AsyncSession

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    s = AsyncSession(client_id="rel", state_file="s")
    monkeypatch.chdir(tmp_path / "b")

    async def main() -> None:
        await s.start(connect=False)
        await s.publish("t/x", b"m", 1)
        await s.close()

    asyncio.run(main())
    assert (tmp_path / "a" / "s").exists() and list((tmp_path / "b").iterdir()) == []


def test_a_gateway_directory_through_a_symlink_and_dotdot(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``Gateway("link/../gw")`` with ``link -> real/sub``: ``real/gw``, as the kernel goes,
    its log and queues together (review: the unnormalized form failed, "No such file")."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "real" / "sub", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    with Gateway("link/../gw") as gw:
        c = gw.client("dev")
        c.config("QueueInMemory=1")
        for i in range(4):
            c.publish_message("t/x", 1, f"m{i}")
    with Gateway(tmp_path / "real" / "gw") as gw:
        assert gw.client("dev").queue_stats().messages == 4
