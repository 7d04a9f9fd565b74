"""A full disk (ENOSPC) at the edges a sweep found (each test fails before its fix):

* the lock file's pid could not be written: a bare ``OSError``, and the file then stayed
  locked by this process ("in use by another process") until it exited;
* a gateway session whose restore failed could never be asked for again in that gateway
  (its view of the shared log stayed taken);
* ``restore_session`` whose own record could not be written raised after it had restored, and
  the retry it invited raised ``UsageError``;
* drop-oldest: a drop made for a publish whose journal record (the disk queue's read-back,
  before the drop's notice) failed stayed made but was never reported;
* a short write whose take-back also failed left a torn frame that recovery read as damage
  (``StateError`` at the restart), depending on its bytes: candidate frames inside it spent
  the search's budget.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import time as real_time
import types
from pathlib import Path
from typing import Any

import pytest

import mqttsession.client as client_mod
import mqttsession.journal as journal_mod
import mqttsession.statelock as statelock_mod
from mqttsession import Client
from mqttsession.errors import PersistenceError
from mqttsession.gateway import Gateway
from mqttsession.store import StateFile
from mqttsession.testing.faults import FakeOs, fd_name

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _full(*_args: Any, **_kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def _client(path: Path, sync: str = "always", **settings: object) -> Client:
    c = Client(client_id="full", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"SessionSync={sync}")
    for k, v in settings.items():
        c.config(f"{k}={v}")
    return c


def _held(path: Path, **settings: object) -> list[bytes]:
    return _powercut.kept(path, "full", **settings)


def test_a_full_disk_at_the_lock_file_locks_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pwrite(fd: int, data: Any, at: int) -> int:  # no block for the pid
        if fd_name(fd).endswith(".lock"):
            _full()
        return os.pwrite(fd, data, at)

    monkeypatch.setattr(statelock_mod, "os", FakeOs(pwrite=pwrite))
    c = _client(tmp_path / "s")
    try:
        c.restore_session("")  # before: a bare OSError, then "in use by another process"
        c.publish_data("t/x", 1, b"one")
    finally:
        c.close()
    monkeypatch.setattr(statelock_mod, "os", os)
    assert _held(tmp_path / "s") == [b"one"]


def test_a_gateway_session_whose_restore_failed_can_be_asked_for_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = StateFile.load

    def load(self: StateFile, client_id: str) -> Any:  # its restore fails once, after its
        monkeypatch.setattr(StateFile, "load", real)  # view of the shared log was taken
        real(self, client_id)
        raise PersistenceError(errno.ENOSPC, "No space left on device (injected)")

    with Gateway(tmp_path / "gw") as gw:
        monkeypatch.setattr(StateFile, "load", load)
        with pytest.raises(PersistenceError):
            gw.client("dev-1", clean_session=False)
        c = gw.client("dev-1", clean_session=False)  # before: StateLockedError, for good
        c.publish_data("t/x", 1, b"after")
        assert [m.message for m in c.outgoing_messages] == [b"after"]


def test_restore_session_on_a_full_disk_restores_and_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    a = _client(path)
    a.restore_session("")
    sent = [b"m%02d" % i for i in range(14)]
    for body in sent:
        a.publish_data("t/x", 1, body)
    a.close()

    def write(fd: int, data: Any) -> int:
        if fd_name(fd).startswith("s"):
            _full()
        return os.write(fd, data)

    def pwrite(fd: int, data: Any, at: int) -> int:  # (over what is there: room)
        if fd_name(fd).startswith("s") and at + len(data) > os.fstat(fd).st_size:
            _full()
        return os.pwrite(fd, data, at)

    b = _client(path)
    errors: list[str] = []
    b.on_error = lambda e: errors.append(e.description)
    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, pwrite=pwrite))
    try:
        b.restore_session("")  # before: PersistenceError, then UsageError when retried
        assert any("restore_session" in e for e in errors), errors
        assert [m.message for m in b.outgoing_messages] == sent
        monkeypatch.setattr(journal_mod, "os", os)  # space is back
        b.publish_data("t/x", 1, b"after")
    finally:
        b.close()
    assert _held(path) == [*sent, b"after"]


@pytest.mark.parametrize("sync", ["always", "none"])
def test_a_drop_made_for_a_publish_whose_journal_write_failed_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    path = tmp_path / "s"
    settings: dict[str, object] = {"QueueInMemory": 2, "QueueSegmentBytes": 4096,
                                   "MaxQueuedMessages": 5, "QueueFullPolicy": "drop-oldest"}
    c = _client(path, sync, **settings)
    dropped: list[int] = []
    c.on_message_dropped = lambda e: dropped.append(e.seq)
    c.restore_session("")
    returned = [b"m%02d" % i for i in range(8)]
    for body in returned:  # 5 held: 2 in memory, 3 in the disk queue; 3 dropped
        c.publish_data("t/x", 1, body)
    assert len(dropped) == 3

    def write(fd: int, data: Any) -> int:
        return _full() if fd_name(fd).startswith("s.journal") else os.write(fd, data)

    def pwrite(fd: int, data: Any, at: int) -> int:
        return _full() if fd_name(fd).startswith("s.journal") else os.pwrite(fd, data, at)

    monkeypatch.setattr(journal_mod.MappedTail, "put", lambda *a: False)  # (written, not mapped)
    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, pwrite=pwrite))
    with pytest.raises(PersistenceError):
        c.publish_data("t/x", 1, b"m08")  # the read-back record (before the drop's notice)
    monkeypatch.undo()  # space is back
    c.publish_data("t/x", 1, b"m08")
    returned.append(b"m08")
    c.close()
    kept = _held(path, **settings)
    lost = [r for r in returned if r not in kept]
    assert len(lost) == len(dropped), (lost, dropped)  # before: 4 gone, 3 reported


def test_a_short_write_not_taken_back_is_a_torn_tail_not_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = struct.unpack(">d", b"A\xda\xc4\xd7\xfflr>")[0]  # a wall clock reading that shows it
    monkeypatch.setattr(client_mod, "time", types.SimpleNamespace(  # (both clocks still: the
        time=lambda: now, monotonic=lambda: 0.0, sleep=real_time.sleep))  # records' bytes set)
    path = tmp_path / "d" / "s"
    path.parent.mkdir()
    c = _client(path)
    c.restore_session("")
    returned = []
    for i in range(12):
        body = b"m%03d-" % i + bytes([65 + i % 26]) * 150
        c.publish_data("t/x", 1 + i % 2, body)
        returned.append(body)
    short = [True]

    def write(fd: int, data: Any) -> int:  # the disk fills up in the middle of this write
        if fd_name(fd).startswith("s"):
            if short[0]:
                short[0] = False
                return os.write(fd, memoryview(data)[: len(data) // 2])
            _full()
        return os.write(fd, data)

    def open_(p: Any, flags: int, mode: int = 0o777) -> int:
        return _full() if flags & os.O_CREAT else os.open(p, flags, mode)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, ftruncate=_full, open=open_))
    with pytest.raises(PersistenceError):
        c.publish_data("t/x", 1, b"m012-" + b"M" * 150)
    monkeypatch.setattr(journal_mod, "os", os)
    killed = tmp_path / "killed"
    killed.mkdir()  # a kill -9 now
    for f in path.parent.iterdir():
        if not f.name.endswith(".lock"):
            shutil.copyfile(f, killed / f.name)
    c.close()
    d = _client(killed / "s")
    try:
        d.restore_session("")
        assert [m.message for m in d.outgoing_messages] == returned
    finally:
        d.close()


def test_a_gateway_that_cannot_make_or_open_its_files_raises_persistence_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mqttsession.recovery as recovery_mod  # noqa: PLC0415
    import mqttsession.sharedlog as sharedlog_mod  # noqa: PLC0415

    monkeypatch.setattr(recovery_mod, "os", FakeOs(mkdir=_full))  # (makedirs_durable)
    with pytest.raises(PersistenceError):  # before: a bare OSError
        Gateway(tmp_path / "gw")
    monkeypatch.setattr(recovery_mod, "os", os)
    Gateway(tmp_path / "gw").close()
    monkeypatch.setattr(sharedlog_mod, "os", FakeOs(fdatasync=_full))
    with pytest.raises(PersistenceError):  # its rewrite's sync when opened: a bare OSError
        Gateway(tmp_path / "gw")
    monkeypatch.setattr(sharedlog_mod, "os", os)
    Gateway(tmp_path / "gw").close()  # (nothing left locked)


def _killed(path: Path, into: Path) -> Path:
    """What a kill -9 now leaves (the page cache's view of the files, the locks left out)."""
    into.mkdir()
    for f in path.parent.iterdir():
        if f.is_dir():
            shutil.copytree(f, into / f.name)
        elif not f.name.endswith(".lock"):
            shutil.copyfile(f, into / f.name)
    return into / path.name


@pytest.mark.parametrize("where", ["journal", "disk queue"])
def test_a_publish_told_failed_is_not_restored_when_its_take_back_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Its record's fdatasync failed and so did the ``ftruncate`` that takes it back (the
    record written whole). Before: a kill -9 before the next write restored the message the
    publisher was told was not stored, and publishing it again made a duplicate."""
    import mqttsession.spool as spool_mod  # noqa: PLC0415

    path = tmp_path / "d" / "s"
    path.parent.mkdir()
    settings = {"QueueInMemory": 1} if where == "disk queue" else {}
    c = _client(path, **settings)
    c.restore_session("")
    for i in range(3):
        c.publish_data("t/x", 1 + i % 2, b"m%d" % i)
    mod = spool_mod if where == "disk queue" else journal_mod
    monkeypatch.setattr(mod, "os", FakeOs(fdatasync=_full, fsync=_full, ftruncate=_full))
    with pytest.raises(PersistenceError):
        c.publish_data("t/x", 2, b"failed")
    monkeypatch.setattr(mod, "os", os)
    killed = _killed(path, tmp_path / "killed")
    c.close()
    assert _held(killed, **settings) == [b"m0", b"m1", b"m2"]


def test_a_gateway_publish_told_failed_is_not_restored_when_its_take_back_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared log's version: its fdatasync failed and so did the ``ftruncate`` that cuts
    what was not synced; a kill -9 now must not restore the message the publisher was told
    was not stored. (This one held before: a guard beside the two fixed above.)"""
    import mqttsession.groupcommit as groupcommit_mod  # noqa: PLC0415
    import mqttsession.sharedlog as sharedlog_mod  # noqa: PLC0415

    gw = Gateway(tmp_path / "gw")
    c = gw.client("g", clean_session=False)
    c.config("SessionSync=always")
    for i in range(3):
        c.publish_data("t/x", 1 + i % 2, b"m%d" % i)
    failing = FakeOs(fdatasync=_full, fsync=_full, ftruncate=_full)
    monkeypatch.setattr(sharedlog_mod, "os", failing)
    monkeypatch.setattr(groupcommit_mod, "os", failing)  # (the log's fdatasync)
    with pytest.raises(PersistenceError):
        c.publish_data("t/x", 2, b"failed")
    monkeypatch.undo()
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "gw", killed, ignore=shutil.ignore_patterns("*.lock"))
    gw.close()
    assert _powercut.gateway_kept(killed, "g") == [b"m0", b"m1", b"m2"]
