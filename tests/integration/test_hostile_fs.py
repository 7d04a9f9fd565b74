"""State files on a hostile filesystem (a defect hunt; each case failed before its fix):

* a dangling symlink (or a loop) at ``FILE`` was replaced by a regular file by a publish or a
  ``save_session`` without a restore (a fresh session on the wrong disk);
* a FIFO, a symlink or a directory at the disk queue's open segment hung the restore (and an
  ``AsyncSession``'s loop) or raised a raw ``OSError``;
* the copy recovery keeps before cutting valid records (``FILE.cut-<time>``) on a full disk
  raised a raw ``OSError`` and left an empty copy at every try;
* a damaged or unrestored state file in a directory that refuses renames raised a raw
  ``PermissionError`` (the unrestored one's session was then written over by ``close()``);
* a disk queue directory that is a mount point (cannot be renamed): a session not restored
  could not be kept aside (raw ``EBUSY``), and its queued messages became the new session's.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession
import mqttsession.recovery as recovery_mod
from mqttsession import Client
from mqttsession.errors import PersistenceError, StateError
from mqttsession.testing.faults import FakeOs, fd_name

pytestmark = pytest.mark.integration


def _client(path: Path, **settings: object) -> Client:
    c = Client(client_id="fs", clean_session=False)
    c.config(f"SessionStateFile={path}")
    for k, v in settings.items():
        c.config(f"{k}={v}")
    return c


@pytest.mark.parametrize("link", ["dangling", "loop"])
@pytest.mark.parametrize("op", ["publish", "save"])
def test_a_dangling_link_at_the_state_file_is_refused_not_replaced(tmp_path: Path, link: str,
                                                                    op: str) -> None:
    path = tmp_path / "s"
    os.symlink(tmp_path / "not-mounted" / "s" if link == "dangling" else path, path)
    c = _client(path)
    with pytest.raises(StateError, match="symbolic link"):
        if op == "publish":
            c.publish_data("t", 1, b"x")
        else:
            c.save_session()
    assert path.is_symlink()  # kept, nothing written in its place
    c.close()
    assert path.is_symlink()


def _queued(path: Path) -> None:
    """A session with messages in its disk queue's open segment (``QueueInMemory=1``)."""
    c = _client(path, QueueInMemory=1)
    c.restore_session("")
    for i in range(4):
        c.publish_data("t", 1, f"m{i}".encode())
    c.close()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_special_file_at_the_open_segment_is_state_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s"
    _queued(path)
    (seg,) = (path.parent / "s.queue").glob("*.open")
    moved = tmp_path / "segment"
    seg.rename(moved)
    if kind == "fifo":
        os.mkfifo(seg)
    elif kind == "symlink":
        os.symlink(moved, seg)
    else:
        seg.mkdir()
    c = _client(path)
    with pytest.raises(StateError, match="not a regular file"):
        c.restore_session("")  # before: a hang (FIFO) or a raw OSError
    c.close()
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
    run = subprocess.run([sys.executable, "-m", "mqttsession", "inspect", str(path)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "not a regular file" in run.stderr, run


def _cut_case(path: Path) -> bytes:
    """A journal whose bad record (a byte of its page of zeros flipped) is followed by valid
    ones: recovery keeps a copy before it cuts them."""
    c = _client(path, SessionSync="always")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    c.publish_data("t", 1, b"Z" + bytes(20000) + b"Z")
    for i in range(5):
        c.publish_data("t", 1, f"m{i}".encode())
    del c  # as a kill: nothing compacted
    journal = Path(str(path) + ".journal")
    data = bytearray(journal.read_bytes())
    data[data.find(bytes(20000)) + 6000] ^= 1
    journal.write_bytes(bytes(data))
    return bytes(data)


def test_a_full_disk_at_the_cut_copy_cuts_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    found = _cut_case(path)

    def write(fd: int, data: Any) -> int:
        if ".cut-" in fd_name(fd):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return os.write(fd, data)

    monkeypatch.setattr(recovery_mod, "os", FakeOs(write=write))
    for _ in range(2):
        c = _client(path)
        with pytest.raises(PersistenceError, match="nothing cut"):
            c.restore_session("")
        c.close()
    assert not list(tmp_path.glob("*.cut-*"))  # no empty copy left at each try
    assert Path(str(path) + ".journal").read_bytes() == found
    monkeypatch.setattr(recovery_mod, "os", os)
    c = _client(path)
    c.restore_session("")  # room again: the copy kept, the records cut
    assert [m.message for m in c.outgoing_messages] == [b"first"]
    c.close()
    (kept,) = tmp_path.glob("*.cut-*")
    assert kept.read_bytes() == found


def _refusing_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted (injected)")

    monkeypatch.setattr(recovery_mod, "os", FakeOs(replace=replace))


def test_a_damaged_file_that_cannot_be_moved_aside_is_state_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"not a state")
    _refusing_renames(monkeypatch)
    c = _client(path)
    with pytest.raises(StateError, match="left in place"):
        c.restore_session("")
    c.close()
    assert path.read_bytes() == b"not a state"


def test_an_unrestored_session_that_cannot_be_moved_aside_is_never_written_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    c = _client(path)
    c.restore_session("")
    c.publish_data("t", 1, b"old")
    c.close()
    _refusing_renames(monkeypatch)
    c = _client(path)
    with pytest.raises(PersistenceError, match="left in place"):
        c.publish_data("t", 1, b"new")  # without a restore: the old session goes aside first
    with pytest.raises(PersistenceError):
        c.publish_data("t", 1, b"new")  # still refused: never compacted over the old one
    c.close()
    monkeypatch.setattr(recovery_mod, "os", os)
    again = _client(path)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [b"old"]
    again.close()


def test_an_unrestored_session_whose_journal_cannot_go_aside_keeps_its_disk_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unrestored session with messages in its disk queue, a publish without a restore,
    the journal's move aside refused: the queue stays with it. Before (a names hunt: a
    224-byte name made the journal's aside name too long), the queue, moved first, stayed
    aside: a restore then found the journal without its queue and m2-m5 were never sent."""
    path = _six_held(tmp_path)
    _refusing_renames(monkeypatch)  # (the journal's: the disk queue's own rename still works)
    c = _client(path, QueueInMemory=2)
    with pytest.raises(PersistenceError, match="left in place"):
        c.publish_data("t", 1, b"new")
    monkeypatch.setattr(recovery_mod, "os", os)
    c.restore_session("")  # the same client (review: its disk queue was read as empty)
    assert [m.message for m in c.outgoing_messages] == SIX
    c.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.journal", "s.queue"]
    again = _client(path, QueueInMemory=2)
    again.restore_session("")
    assert again.queue_stats().messages == 6
    assert [m.message for m in again.outgoing_messages] == SIX
    again.close()


def test_a_disk_queue_that_cannot_go_aside_takes_its_journal_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal went aside, its disk queue cannot follow: the journal is put back and a
    restore in the same client, or the next, has all six."""
    import mqttsession.spool as spool_mod

    path = _six_held(tmp_path)
    monkeypatch.setattr(spool_mod, "os", FakeOs(rename=lambda *a: _raise(errno.EPERM)))
    c = _client(path, QueueInMemory=2)
    with pytest.raises(PersistenceError, match="cannot keep the disk queue"):
        c.publish_data("t", 1, b"new")
    monkeypatch.setattr(spool_mod, "os", os)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.journal", "s.lock", "s.queue"]
    c.restore_session("")
    assert [m.message for m in c.outgoing_messages] == SIX
    c.close()
    again = _client(path, QueueInMemory=2)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == SIX
    again.close()


def test_a_journal_that_cannot_be_put_back_is_named_and_read_when_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the disk queue can go aside nor the journal back: the error names where the
    journal is; moved back by hand, a restore in the same client reads all six."""
    import mqttsession.spool as spool_mod
    import mqttsession.store as store_mod

    path = _six_held(tmp_path)
    monkeypatch.setattr(spool_mod, "os", FakeOs(rename=lambda *a: _raise(errno.EPERM)))
    monkeypatch.setattr(store_mod, "os", FakeOs(replace=lambda *a: _raise(errno.EPERM)))
    c = _client(path, QueueInMemory=2)
    with pytest.raises(PersistenceError, match="move it back to"):
        c.publish_data("t", 1, b"new")
    monkeypatch.setattr(spool_mod, "os", os)
    monkeypatch.setattr(store_mod, "os", os)
    for p in tmp_path.glob("s*.unrestored-*"):
        p.rename(tmp_path / p.name[:p.name.rindex(".unrestored-")])
    c.restore_session("")
    assert [m.message for m in c.outgoing_messages] == SIX
    c.close()


_KILL_AT_SECOND_MOVE = """
import os, sys
from mqttsession import Client
from mqttsession.journal import Journal
from mqttsession.spool import Spool
moves = []
def hooked(orig):
    def keep_aside(self, label):
        moves.append(label)
        if len(moves) == 2:
            os.kill(os.getpid(), 9)
        return orig(self, label)
    return keep_aside
Journal.keep_aside = hooked(Journal.keep_aside)
Spool.keep_aside = hooked(Spool.keep_aside)
c = Client(client_id="fs", clean_session=False)
c.config("SessionStateFile=" + sys.argv[1])
c.config("QueueInMemory=2")
c.config("SessionSync=" + sys.argv[2])
c.publish_data("t", 1, b"new")  # not restored: set aside, killed between the two moves
"""


@pytest.mark.parametrize("sync", ["none", "interval", "always"])
def test_a_kill_between_setting_aside_journal_and_queue_is_told(tmp_path: Path,
                                                                  sync: str) -> None:
    """kill -9 while an unrestored session goes aside, between its two files. Before, its
    disk queue went first: under ``none``/``interval`` the next run restored m0-m1 from the
    journal and m2-m5 stayed silently in ``s.queue.unrestored-*``. The journal goes first
    now: the next run finds a queue without its file, keeps it aside and tells."""
    path = _six_held(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
    run = subprocess.run([sys.executable, "-c", _KILL_AT_SECOND_MOVE, str(path), sync],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == -9, run
    c = _client(path, QueueInMemory=2, SessionSync=sync)
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    try:
        c.restore_session("")
        restored = [m.message for m in c.outgoing_messages]
    except StateError as exc:  # (refused: also told, nothing lost)
        restored, errors = [], [str(exc)]
    c.close()
    assert restored in ([], SIX), restored  # never a part of it, silently
    if restored == []:
        assert any("disk queue" in e or "queue" in e for e in errors), errors
        kept = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if "-" in p.name)
        assert kept, list(tmp_path.iterdir())


SIX = [f"m{i}".encode() for i in range(6)]


def _six_held(tmp_path: Path) -> Path:
    """A stored session ``tmp_path/s`` holding m0-m5, four of them in its disk queue."""
    path = tmp_path / "s"
    c = _client(path, QueueInMemory=2)
    c.restore_session("")
    for m in SIX:
        c.publish_data("t", 1, m)
    c.close()
    return path


def _raise(code: int) -> None:
    raise OSError(code, os.strerror(code))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_a_disk_queue_on_its_own_mount_keeps_an_unrestored_session(tmp_path: Path) -> None:
    path = tmp_path / "s"
    queue = tmp_path / "s.queue"
    queue.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(queue)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        c = _client(path, QueueInMemory=1)
        c.restore_session("")
        for i in range(4):
            c.publish_data("t", 1, f"old{i}".encode())
        c.close()
        c = _client(path, QueueInMemory=1)
        errors: list[str] = []
        c.on_error = lambda e: errors.append(e.description)
        c.publish_data("t", 1, b"new")  # not restored: kept aside, inside the mount
        c.close()
        assert any("not restored" in e for e in errors), errors
        again = _client(path, QueueInMemory=1)
        again.restore_session("")
        assert [m.message for m in again.outgoing_messages] == [b"new"]
        again.close()
        (inner,) = [p for p in queue.iterdir() if p.is_dir()]
        assert inner.name.startswith("unrestored-") and len(list(inner.iterdir())) >= 1
    finally:
        subprocess.run(["umount", "-l", str(queue)], check=False)


def test_a_state_file_with_a_second_name_is_refused(tmp_path: Path) -> None:
    """A hard link to the state file: each name has its own lock and journal, so two
    processes owned one session and both sent its held QoS 2 messages (delivered twice; a
    defect hunt). A snapshot with more than one name is refused, by either name."""
    path = tmp_path / "s"
    c = _client(path)
    c.restore_session("")
    c.publish_data("t", 2, b"held")
    c.close()
    os.link(path, tmp_path / "s-hardlink")
    for name in ("s", "s-hardlink"):
        again = _client(tmp_path / name)
        with pytest.raises(StateError, match="hard links"):
            again.restore_session("")
        again.close()
    os.unlink(tmp_path / "s-hardlink")
    again = _client(path)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [b"held"]
    again.close()


def test_a_state_file_mounted_on_its_own_says_so(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A state file bind-mounted on its own (``docker -v host/state:/app/state``): every
    snapshot's rename fails with EBUSY for good; the error said only "Device or resource
    busy". It now says what to do (mount the directory)."""
    import mqttsession.journal as journal_mod

    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy (injected)")

    c = _client(tmp_path / "s")
    c.restore_session("")
    monkeypatch.setattr(journal_mod, "os", FakeOs(replace=replace))
    with pytest.raises(PersistenceError, match="mount its directory instead"):
        c.save_session()
    monkeypatch.setattr(journal_mod, "os", os)
    c.close()


@pytest.mark.parametrize("how", ["missing", "empty", "dangling-link"])
def test_a_disk_queue_not_there_at_the_restart_is_refused_not_emptied(tmp_path: Path,
                                                                     how: str) -> None:
    """The disk queue on a volume of its own, not mounted yet at one restart: the session
    came back without the messages queued there, went on spooling and reading back past
    them, and once the volume was back they were skipped as read back: QoS 1 messages lost
    with no error (a defect hunt). Under ``SessionSync=always`` the snapshot names the last
    message appended there, so a queue without it is ``StateError``, nothing changed."""
    path = tmp_path / "s"
    c = _client(path, QueueInMemory=1)
    c.restore_session("")
    for i in range(5):
        c.publish_data("t", 1, f"m{i}".encode())
    c.close()
    queue, away = tmp_path / "s.queue", tmp_path / "volume"
    queue.rename(away)
    if how == "empty":
        queue.mkdir()  # a mount point with nothing mounted on it
    elif how == "dangling-link":
        os.symlink(tmp_path / "not-mounted", queue)
    before = path.read_bytes()
    c = _client(path, QueueInMemory=1)
    # (a symlink at the queue is refused as such since session 36: another user's, maybe)
    with pytest.raises(StateError, match="lacks the messages up to seq 5|symbolic link"):
        c.restore_session("")
    with pytest.raises(StateError):
        c.publish_data("t", 1, b"new")  # not restored: the same refusal, nothing written
    c.close()
    assert path.read_bytes() == before
    if queue.is_symlink() or queue.exists():
        queue.unlink() if queue.is_symlink() else queue.rmdir()
    away.rename(queue)  # the volume is back
    again = _client(path, QueueInMemory=1)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [f"m{i}".encode() for i in range(5)]
    again.close()


def test_a_disk_queue_not_there_after_a_crash_is_refused_not_emptied(tmp_path: Path) -> None:
    """The same after a kill -9 (the files copied as the process left them): no snapshot
    named the queue's messages yet, so the restart came back without them, silently (a defect
    hunt). The journal names each segment as it begins (``SpoolMark``)."""
    import shutil  # noqa: PLC0415

    path = tmp_path / "s"
    c = _client(path, QueueInMemory=1)
    c.restore_session("")
    for i in range(5):
        c.publish_data("t", 1, f"m{i}".encode())
    crash = tmp_path / "crash"
    crash.mkdir()
    for name in ("s", "s.journal"):  # what a kill -9 leaves, but the queue's volume
        if (tmp_path / name).exists():
            shutil.copy(tmp_path / name, crash / name)
    c.close()
    d = _client(crash / "s", QueueInMemory=1)
    with pytest.raises(StateError, match="lacks the messages"):
        d.restore_session("")
    d.close()
    shutil.copytree(tmp_path / "s.queue", crash / "s.queue")  # the volume is back
    e = _client(crash / "s", QueueInMemory=1)
    e.restore_session("")
    assert [m.message for m in e.outgoing_messages] == [f"m{i}".encode() for i in range(5)]
    e.close()


def test_a_disk_queue_deleted_in_use_fails_the_publishes_into_it(tmp_path: Path) -> None:
    """The queue's directory deleted while messages wait there (``rm -rf``): each publish
    into it under ``always`` returned as stored, into a file no restart reads (a defect hunt);
    now ``PersistenceError`` (found within a second), and the restart refuses the queue."""
    import shutil  # noqa: PLC0415

    path = tmp_path / "s"
    c = _client(path, QueueInMemory=1)
    c.restore_session("")
    for i in range(3):
        c.publish_data("t", 1, f"m{i}".encode())
    shutil.rmtree(tmp_path / "s.queue")
    deadline = time.monotonic() + 5  # (looked at once a second: a system call costs a GIL
    with pytest.raises(PersistenceError, match="deleted while in use"):  # hand-over)
        while time.monotonic() < deadline:
            c.publish_data("t", 1, b"into nowhere")
            time.sleep(0.1)
    c.close()
    d = _client(path, QueueInMemory=1)
    with pytest.raises(StateError, match="lacks the messages"):
        d.restore_session("")
    d.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_two_sessions_kept_aside_in_one_second_on_a_mounted_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second keep-aside within the same second took the first's name inside the mount
    (``File exists``) after the journal had gone aside and the queue's counts were emptied:
    the next restore adopted the unrestored session's queued messages (a review)."""
    import mqttsession.spool as spool_mod

    class Clock:  # the same second for every name
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def strftime(fmt: str) -> str:
            return "20261205T120000"

    monkeypatch.setattr(spool_mod, "time", Clock)
    path, queue = tmp_path / "s", tmp_path / "s.queue"
    queue.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(queue)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for run in range(3):
            c = _client(path, QueueInMemory=1)
            for i in range(4):  # run 0 restores nothing; runs 1, 2 go on without restoring
                c.publish_data("t", 1, f"s{run}-{i}".encode())
            c.close()
        again = _client(path, QueueInMemory=1)
        again.restore_session("")
        assert [m.message for m in again.outgoing_messages] == [f"s2-{i}".encode()
                                                               for i in range(4)]
        again.close()
        assert sorted(p.name for p in queue.iterdir() if p.is_dir()) == [
            "unrestored-20261205T120000", "unrestored-20261205T120000-2"]
    finally:
        subprocess.run(["umount", "-l", str(queue)], check=False)


def test_a_journal_without_its_snapshot_names_the_snapshot_set_aside(tmp_path: Path) -> None:
    """A kill -9 while a session is put back (the journal back, not yet its snapshot): the
    damage error names the snapshot set aside (a review: it said only "journal without its
    snapshot", the intact snapshot never named). Put back by hand, all six are there."""
    path = _six_held(tmp_path)
    aside = tmp_path / "s.unrestored-20261206T120000"
    path.rename(aside)
    c = _client(path, QueueInMemory=2)
    with pytest.raises(StateError, match="s.unrestored-20261206T120000: put it back"):
        c.restore_session("")
    c.close()
    aside.rename(path)
    (damaged,) = tmp_path.glob("s.journal.damaged-*")
    damaged.rename(tmp_path / "s.journal")
    again = _client(path, QueueInMemory=2)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == SIX
    again.close()
