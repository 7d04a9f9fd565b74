"""Ctrl-C, ``sys.exit()`` and ``fork()`` at bad moments. A KeyboardInterrupt raised at one
named line (a trace function on the calling thread raises it there, as SIGINT's handler would if
the signal arrived then) leaves the client usable, its file never locked for good, no fd number
stale; a callback that raises SystemExit on the network thread is reported, and the connection
goes on; a fork()'s child leaves the parent's session alone. Each test failed on the code before
the fix (a defect hunt's repros)."""

from __future__ import annotations

import contextlib
import gc
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from mqttsession import Client
from mqttsession import groupcommit, journal, lifecycle, statelock

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def interrupt_at(fn: Callable[..., Any], text: str) -> Iterator[list[int]]:
    """KeyboardInterrupt at the first line of ``fn`` holding ``text`` that this thread runs;
    the list yielded gets an item once it fired."""
    src, first = inspect.getsourcelines(fn)
    line = first + next(i for i, s in enumerate(src) if text in s)
    code, fired = fn.__code__, []

    def tracer(frame: FrameType, _event: str, _arg: object) -> Any:
        if frame.f_code is not code or fired:
            return None

        def local(frame: FrameType, event: str, _arg: object) -> Any:
            if event == "line" and frame.f_lineno == line and not fired:
                fired.append(1)
                raise KeyboardInterrupt
            return local
        return local

    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(None)


def _client(path: Path, cid: str = "kbi") -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    return c


def _held(path: Path, cid: str = "kbi") -> list[bytes]:
    c = _client(path, cid)
    try:
        c.restore_session("")
        return [m.message for m in c.outgoing_messages]
    finally:
        c.close()


def test_interrupted_group_commit_gives_its_sync_back(tmp_path: Path) -> None:
    """Ctrl-C just after a publisher claimed the group commit's fdatasync: before, every later
    publish, the network thread and ``close()`` waited for ever for that sync."""
    c = _client(tmp_path / "s")
    c.restore_session("")
    stop = threading.Event()

    def other() -> None:  # a second publisher: publishes take turns and share fdatasyncs
        while not stop.is_set():
            c.publish_message("k/o", 1, "o")
    t = threading.Thread(target=other, daemon=True)
    t.start()
    try:
        with interrupt_at(groupcommit.GroupCommit._claim_and_sync, "target = self._size") as fired:
            for n in range(20000):
                if fired:
                    break
                with contextlib.suppress(KeyboardInterrupt):
                    c.publish_message("k/m", 1, f"m{n}")
        assert fired, "the main thread never ran the group commit's fdatasync"
        done = threading.Event()
        threading.Thread(target=lambda: (c.publish_message("k/m", 1, "after"), done.set()),
                         daemon=True).start()
        assert done.wait(10), "a publish after the interrupt never returned"
    finally:
        stop.set()
        t.join(10)
    c.close()
    assert b"after" in _held(tmp_path / "s")


@pytest.mark.parametrize("sync", ["always", "none"])
def test_interrupted_snapshot_swap_leaves_no_stale_fd(tmp_path: Path, sync: str) -> None:
    """Ctrl-C in ``save_session`` as the journal let go of the snapshot it held: before, the
    fd number was closed but kept, then closed again once another file had it (raw EBADF from
    every later call, the file locked for the process)."""
    c = _client(tmp_path / "s")
    c.config(f"SessionSync={sync}")
    c.restore_session("")
    for i in range(5):
        c.publish_message("k/t", 1, f"a{i}")
    c.save_session()  # the journal holds the snapshot's fd now
    with interrupt_at(journal.Journal._hold_snapshot, "os.close(held)") as fired, \
            contextlib.suppress(KeyboardInterrupt):
        c.save_session()
    assert fired
    for i in range(5):
        c.publish_message("k/t", 1, f"b{i}")
    c.save_session()
    c.close()
    assert _held(tmp_path / "s") == [f"{x}{i}".encode() for x in "ab" for i in range(5)]


@pytest.mark.parametrize("text", ["os.ftruncate(fd, 0)", "        return fd"])
def test_interrupted_lock_taking_leaves_the_file_free(tmp_path: Path, text: str) -> None:
    """Ctrl-C in ``restore_session`` just after the state file's lock was taken: before, its
    fd leaked and the file stayed locked for the rest of the process."""
    seed = _client(tmp_path / "s")
    seed.restore_session("")
    seed.publish_message("k/t", 1, "held")
    seed.close()
    c = _client(tmp_path / "s")
    with interrupt_at(statelock.acquire_lock, text) as fired, \
            contextlib.suppress(KeyboardInterrupt):
        c.restore_session("")
    assert fired
    with contextlib.suppress(Exception):
        c.close()
    gc.collect()
    assert _held(tmp_path / "s") == [b"held"]


def test_interrupted_close_is_done_by_the_next_close(tmp_path: Path) -> None:
    """Ctrl-C in ``close()`` after it was marked closed, before its work began: before, the
    next ``close()`` did nothing (connection and file lock kept)."""
    c = _client(tmp_path / "s")
    c.restore_session("")
    c.publish_message("k/t", 1, "held")
    with interrupt_at(lifecycle.close_client, "delivering_in == me") as fired, \
            contextlib.suppress(KeyboardInterrupt):
        c.close()
    assert fired
    c.close()
    assert _held(tmp_path / "s") == [b"held"]


def test_system_exit_in_a_callback_on_the_network_thread_is_reported(mosquitto: Any,
                                                                     tmp_path: Path) -> None:
    """``sys.exit()`` in ``on_message_in``: before, paho's network thread died of it, the
    client said connected for ever and sent nothing more, nothing reported."""
    errors: list[str] = []
    c = _client(tmp_path / "s", "kbi-exit")
    c.restore_session("")
    c.on_error = lambda e: errors.append(e.description)

    def on_in(_e: object) -> None:
        sys.exit(3)
    c.on_message_in = on_in
    subscribed = threading.Event()
    c.on_subscribed = lambda e: subscribed.set()
    p = Client(client_id="kbi-exit-pub")
    try:
        c.connect(mosquitto.host, mosquitto.port, 10)
        c.subscribe("kbi/in", 1)
        assert subscribed.wait(10)
        p.connect(mosquitto.host, mosquitto.port, 10)
        p.publish_message("kbi/in", 1, "x")
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("SystemExit(3)" in e for e in errors), errors
        for i in range(5):
            c.publish_message("kbi/out", 1, f"m{i}")
        assert c.flush(10), "nothing sent after the callback's SystemExit"
    finally:
        p.close()
        c.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_child_gets_a_clear_error_and_leaves_the_parents_session(mosquitto: Any,
                                                                        tmp_path: Path) -> None:
    """fork() after connect (a script that daemonizes): the child's calls on the parent's
    Client are ``UsageError``, its ``close()`` and its garbage collection touch nothing (the
    lock file stays, no DISCONNECT on the shared socket); the parent goes on. Before, the
    child's publishes took packet ids the parent then reused and were written into the same
    journal (one flock shared through the inherited descriptor)."""
    import os  # noqa: PLC0415

    c = _client(tmp_path / "s", "kbi-fork")
    c.restore_session("")
    c.connect(mosquitto.host, mosquitto.port, 10)
    c.publish_message("kbi/fork", 1, "before")
    assert c.flush(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then run the finalizers, then leave without pytest
        code = 1
        try:
            calls: list[Callable[[], object]] = [
                lambda: c.publish_message("kbi/fork", 1, "child"), c.disconnect, c.flush,
                lambda: c.ack(1), lambda: c.config(f"SessionStateFile={tmp_path / 'other'}"),
                lambda: setattr(c, "clean_session", True)]
            for call in calls:
                try:
                    call()
                except Exception as exc:  # noqa: BLE001
                    os.write(write, f"{type(exc).__name__}: {exc}\n".encode())
            c.close()
            del c
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 4096).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = said.splitlines()
    assert len(lines) == 6 and all(s.startswith("UsageError") and "fork()" in s for s in lines)
    assert (tmp_path / "s.lock").exists()
    assert c.connected
    for i in range(3):
        c.publish_message("kbi/fork", 1, f"parent{i}")
    assert c.flush(10)
    with pytest.raises(Exception, match="in use"):  # the parent's lock still holds
        _client(tmp_path / "s", "kbi-fork").restore_session("")
    c.close()
    assert _held(tmp_path / "s", "kbi-fork") == []
