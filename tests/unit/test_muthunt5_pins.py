"""Pins from a mutation hunt over ``mqttsession/lifecycle.py`` and ``mqttsession/publishing.py``,
no broker needed: ``close()`` in a child of fork() takes nothing of the parent's (not even its
lock), a raising callback is logged with its traceback, and a ``publish_many`` that ``close()``
overtook between its first check and the session lock is refused, and the drops made by
publishes that ran in turns (``together``) are reported. Each test failed with one
mutant applied (named in its docstring)."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, MessageDroppedEvent, UsageError
from mqttsession import publishing

from ._support import at_line


def _client(path: Path, cid: str) -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    return c


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_close_in_a_fork_child_returns_while_a_parent_thread_holds_the_lock(
        tmp_path: Path) -> None:
    """``close()`` of the parent's Client in a child of fork() takes no lock and does no I/O
    (lifecycle.close_client: "no lock, no I/O: they are the parent's"): it returns even when
    a parent thread held the client's lock at the fork (mutant: the ``return`` of the
    ``foreign`` branch dropped, so the child waits for ever for a lock no thread of it holds)."""
    c = _client(tmp_path / "s", "mh5-fork-close")
    c.restore_session("")
    c.publish_message("mh5/t", 1, "kept")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with c._lock:  # (as a publish in another thread holds it)
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: close, report, leave without pytest
        code = 1
        try:
            c.close()
            os.write(write, b"closed\n")
            try:
                c.publish_message("mh5/t", 1, "child")
            except UsageError:
                os.write(write, b"UsageError\n")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    said = os.read(read, 4096).decode().split()
    os.close(read)
    release.set()
    t.join(5)
    assert done[0] != 0, "the child's close() hung on the parent's lock"
    assert said == ["closed", "UsageError"]
    assert [m.message for m in c.outgoing_messages] == [b"kept"]  # the parent's session goes on
    c.close()
    d = _client(tmp_path / "s", "mh5-fork-close")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"kept"]
    d.close()


def test_a_raising_callback_is_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged (ERROR, on the ``mqttsession`` logger, with the
    exception's traceback) and reported to ``on_error`` (lifecycle.call_back's docstring;
    mutant: the ``log.error`` call dropped)."""
    c = Client(client_id="mh5-cb", clean_session=False)
    c.config("MaxQueuedMessages=1")
    c.config("QueueFullPolicy=drop-oldest")
    errors: list[str] = []

    def dropped(_e: object) -> None:
        raise ValueError("mh5 boom")
    c.on_message_dropped = dropped
    c.on_error = lambda e: errors.append(e.description)
    with caplog.at_level(logging.ERROR, logger="mqttsession"):
        c.publish_message("mh5/t", 1, "a")
        c.publish_message("mh5/t", 1, "b")  # drops "a": on_message_dropped raises
    logged = [r for r in caplog.records if r.name == "mqttsession"
              and r.levelno == logging.ERROR and "on_message_dropped callback raised"
              in r.getMessage()]
    assert len(logged) == 1
    exc_info = logged[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], ValueError)
    assert any("on_message_dropped callback raised" in e and "mh5 boom" in e for e in errors)
    assert [m.message for m in c.outgoing_messages] == [b"b"]
    c.close()


def _close_at_the_lock(c: Client) -> Any:
    """``c.close()`` run in this thread just before ``store_checked`` takes the session lock
    (after its first ``_require_open``), as a close() in another thread would win the lock
    there; the list yielded gets an item once it ran."""
    fn = publishing.store_checked
    src, first = inspect.getsourcelines(fn)
    return at_line(fn, first + next(i for i, s in enumerate(src) if "with c._lock:" in s),
                   c.close)


def test_a_publish_many_that_close_overtook_before_the_lock_is_refused(tmp_path: Path) -> None:
    """``close()`` between ``publish_many``'s first check and its taking the lock: the
    publish is ``UsageError`` (checked again under the lock), nothing stored, the closed
    client's state file not opened again (its lock free for the next client). Mutant: the
    second ``_require_open`` in ``store_checked`` dropped (the closed client reopened its
    file and stored the messages after close's last snapshot)."""
    path = tmp_path / "s"
    c = _client(path, "mh5-race")
    c.restore_session("")
    c.publish_message("mh5/t", 1, "before")
    with _close_at_the_lock(c) as fired, pytest.raises(UsageError, match="close"):
        c.publish_many([("mh5/t", 1, "late1"), ("mh5/t", 1, "late2")])
    assert fired
    d = _client(path, "mh5-race")
    d.restore_session("")  # (the file is free: not reopened by the closed client)
    assert [m.message for m in d.outgoing_messages] == [b"before"]
    d.close()


def test_drops_made_by_publishes_in_turns_are_all_reported(tmp_path: Path) -> None:
    """``SessionSync=always``, four threads publishing into a full queue with
    ``QueueFullPolicy=drop-oldest``: every message dropped is reported by
    ``on_message_dropped`` (as many events as ``queue_stats().dropped``), also for the
    publishes that ran in turns (``publishing.together``). Mutant: ``together`` without its
    ``d.finish(rest)`` (the drop events of those publishes lost)."""
    c = Client(client_id="mh5-turns", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("SessionSync=always")
    c.config("MaxQueuedMessages=5")
    c.config("QueueFullPolicy=drop-oldest")
    c.restore_session("")
    dropped: list[MessageDroppedEvent] = []
    lock = threading.Lock()

    def on_dropped(e: MessageDroppedEvent) -> None:
        with lock:
            dropped.append(e)
    c.on_message_dropped = on_dropped
    threads, each = 4, 100
    start = threading.Barrier(threads)

    def publisher(n: int) -> None:
        start.wait(10)
        for i in range(each):
            c.publish_message("mh5/turns", 1, f"{n}-{i}")

    ts = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    try:
        assert len(c.outgoing_messages) == 5
        assert c.queue_stats().dropped == threads * each - 5
        assert len(dropped) == threads * each - 5
        assert len({d.seq for d in dropped}) == len(dropped)
    finally:
        c.close()


def test_an_async_publish_many_into_the_disk_queue_is_synced_before_it_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SessionSync=always``: an ``AsyncSession.publish_many`` whose batch the engine puts in
    the disk queue (4 of ``QueueInMemory=5`` held, 3 more: all to the disk queue, though
    ``spooling()`` said no and the call took the ``store_checked(group=True)`` path) returns
    with every byte written to the disk queue's files fdatasynced. Mutant: ``store_checked``
    without ``type(accepted[0]) is Accepted`` (the spooled records handed to the group commit,
    which syncs the journal only: the segment's frames were left unsynced)."""
    import asyncio  # noqa: PLC0415

    from mqttsession import AsyncSession, Options  # noqa: PLC0415

    queue_dir = str(tmp_path / "s.queue")
    dirty: set[str] = set()
    real_write, real_pwrite, real_sync = os.write, os.pwrite, os.fdatasync

    def where(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def write(fd: int, data: Any) -> int:
        if where(fd).startswith(queue_dir):
            dirty.add(where(fd))
        return real_write(fd, data)

    def pwrite(fd: int, data: Any, at: int) -> int:
        if where(fd).startswith(queue_dir):
            dirty.add(where(fd))
        return real_pwrite(fd, data, at)

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        dirty.discard(where(fd))

    async def main() -> list[bytes]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="mh5-spool",
                                      state_file=str(tmp_path / "s"), session_sync="always",
                                      connect=False)
        try:
            await s.config("QueueInMemory=5")
            for i in range(4):
                await s.publish("mh5/q", f"m{i}", 1)
            monkeypatch.setattr(os, "write", write)
            monkeypatch.setattr(os, "pwrite", pwrite)
            monkeypatch.setattr(os, "fdatasync", fdatasync)
            ids = await s.publish_many([("mh5/q", 1, "a"), ("mh5/q", 1, "b"),
                                        ("mh5/q", 1, "c")])
            written, left = set(dirty), sorted(dirty)
            monkeypatch.undo()
            assert ids == [0, 0, 0]  # (0: waiting in the disk queue)
            assert os.listdir(queue_dir), "nothing in the disk queue: the case is not made"
            assert not left, f"returned with unsynced writes to {left} ({written})"
            return [m.message for m in s.client.outgoing_messages]
        finally:
            monkeypatch.undo()
            await s.close()

    held = asyncio.run(asyncio.wait_for(main(), 30))
    assert held == [b"m0", b"m1", b"m2", b"m3", b"a", b"b", b"c"]
