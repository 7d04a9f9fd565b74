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
from mqttsession import groupcommit, journal, lifecycle, mapped, spool, statelock
from mqttsession.connecting import Connecting

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def interrupt_at(fn: Callable[..., Any], text: str, line: int = 0,
                 only_self: object = None) -> Iterator[list[int]]:
    """KeyboardInterrupt at the first line of ``fn`` holding ``text`` (or at line number
    ``line``) that this thread runs (``only_self``: in a call on that object); the list
    yielded gets an item once it fired."""
    src, first = inspect.getsourcelines(fn)
    line = line or first + next(i for i, s in enumerate(src) if text in s)
    code, fired = fn.__code__, []

    def tracer(frame: FrameType, _event: str, _arg: object) -> Any:
        if frame.f_code is not code or fired or (
                only_self is not None and frame.f_locals.get("self") is not only_self):
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


def test_a_publish_interrupted_before_its_sync_is_taken_back(tmp_path: Path) -> None:
    """A group-commit publish (publishers in several threads) whose caller is gone before
    its record's fdatasync (Ctrl-C, a cancelled task): the message is taken back (the caller
    was told it failed: kept, a later sync would write it and send it, a duplicate once the
    caller publishes it again) and ``on_error`` says so; the publishes around it are held and
    restored (a mutation hunt: skipping the take-back passed every test). The two halves of
    ``publish`` are called here, so that no other thread's sync covers the record first."""
    c = _client(tmp_path / "s")
    c.config("SessionSync=always")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    c.restore_session("")
    c.publish_message("k/t", 1, "before")
    _pid, token = c._publish_begin("k/t", 1, b"gone", None, None, group=True)
    assert token is not None
    c._driver.release_quietly(token, None)  # what ``settle`` does for a caller interrupted
    assert [m.message for m in c.outgoing_messages] == [b"before"]
    assert any("interrupted before its record was synced" in e for e in errors), errors
    c.publish_message("k/t", 1, "after")
    c.close()
    assert _held(tmp_path / "s") == [b"before", b"after"]


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


def test_interrupted_disk_queue_sync_takes_the_publish_back(tmp_path: Path) -> None:
    """Ctrl-C as a publish into the disk queue returns from its fdatasync (``always``): that
    publish raises, the ones after it work, and the restart holds exactly the publishes that
    returned. Before: its frame stayed in the segment and the next publish wrote the same seq
    after it; every restart was ``StateError`` ("seq out of order")."""
    c = _client(tmp_path / "s", "kbi-q")
    c.config("SessionSync=always")
    c.config("QueueInMemory=2")
    c.restore_session("")
    _interrupted_round(c, spool.Spool._sync_open, "self._tail.clear()", tmp_path / "s")


def _interrupted_round(c: Client, fn: Callable[..., Any], text: str, path: Path) -> None:
    """Four publishes (two into the disk queue), one interrupted at ``fn``'s ``text``, three
    more, then ``close()``: the restart holds exactly the seven that returned."""
    sent = []
    for i in range(7):
        if i == 4:
            with interrupt_at(fn, text) as fired, pytest.raises(KeyboardInterrupt):
                c.publish_message("kbi/q", 1, "interrupted")
            assert fired
        c.publish_message("kbi/q", 1, f"m{i}")
        sent.append(f"m{i}".encode())
    c.close()
    assert _held(path, c.client_id) == sent


@pytest.mark.parametrize("sync", ["none", "interval"])
def test_an_interrupt_anywhere_in_unmapping_leaves_the_disk_queue_usable(tmp_path: Path,
                                                                       sync: str) -> None:
    """Ctrl-C at each line of the disk queue's ``MappedTail.drop`` in turn (the mapping
    grows): the publish raises, the next ones work, the restart holds exactly the ones that
    returned. Before: an interrupt after the unmap left a closed map, and every later
    publish into the queue raised a raw ``ValueError`` (mmap closed)."""
    c = _client(tmp_path / "s", "kbi-m")
    c.config(f"SessionSync={sync}")
    c.config("QueueInMemory=2")
    c.restore_session("")
    big, sent = "x" * 4000, []

    def publish() -> None:
        text = f"{len(sent)}:{big}"
        c.publish_message("kbi/m", 1, text)
        sent.append(text.encode())

    for _ in range(3):
        publish()
    tail = c._file.spool._map  # noqa: SLF001  (the disk queue's mapping: the one aimed at)
    src, first = inspect.getsourcelines(mapped.MappedTail.drop)
    hits = 0
    for line in range(first + 1, first + len(src)):
        with interrupt_at(mapped.MappedTail.drop, "", line, tail) as fired:
            for _ in range(200):
                with contextlib.suppress(KeyboardInterrupt):
                    publish()
                if fired:
                    break
        hits += bool(fired)
        for _ in range(3):
            publish()  # (before: a raw ValueError)
    assert hits >= 2
    c.close()
    assert _held(tmp_path / "s", "kbi-m") == sent


def test_interrupted_connack_wait_leaves_no_connection_behind(mosquitto: Any) -> None:
    """Ctrl-C while ``connect()`` waits for the CONNACK: the attempt is ended (no network
    thread, not connected a moment later) and the next ``connect()`` works. Before: the
    client connected in the background after the program was told the connect was
    interrupted, and the next ``connect()`` was ``UsageError``."""
    c = Client(client_id="kbi-connack")
    try:
        with interrupt_at(Connecting._connect_once, "self._connack.wait(timeout)") as fired, \
                pytest.raises(KeyboardInterrupt):
            c.connect(mosquitto.host, mosquitto.port, 5)
        assert fired
        time.sleep(1.0)
        assert not c.connected
        assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-kbi")]
        c.connect(mosquitto.host, mosquitto.port, 5)
        assert c.connected
    finally:
        c.close()


_FORKER = """
import os, sys, time
from mqttsession import Client
from mqttsession.gateway import Gateway
if sys.argv[2] == "client":
    c = Client(client_id="forked", clean_session=False)
    c.config("SessionStateFile=" + sys.argv[1])
else:
    gw = Gateway(sys.argv[1])
    c = gw.client("forked", clean_session=False)
c.restore_session("")
c.publish_message("kbi/fork", 1, "kept")
if os.fork() == 0:  # a worker that never touches the client
    print(os.getpid(), flush=True)  # (its fork handlers ran)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["client", "gateway"])
def test_a_fork_child_does_not_hold_the_lock_after_its_parent_is_killed(tmp_path: Path,
                                                                        kind: str) -> None:
    """A process with a session forks a worker that never touches it, then is killed (-9):
    the restart restores the session while the worker lives. Before: ``StateLockedError``
    naming the dead pid (the worker's inherited descriptor held the flock)."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    import mqttsession  # noqa: PLC0415
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    where = str(tmp_path / ("s" if kind == "client" else "gw"))
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent),
               PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable, "-c", _FORKER, where, kind], stdout=subprocess.PIPE,
                         env=env)
    assert p.stdout is not None
    worker = int(p.stdout.readline())
    try:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        if kind == "client":
            assert _held(tmp_path / "s", "forked") == [b"kept"]
        else:
            with Gateway(where) as gw:
                c = gw.client("forked", clean_session=False)  # (restored)
                assert [m.message for m in c.outgoing_messages] == [b"kept"]
    finally:
        os.kill(worker, signal.SIGKILL)
        p.stdout.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_child_gets_usage_error_while_a_parent_thread_held_the_lock(tmp_path: Path) -> None:
    """fork() while another thread of the parent holds the client's lock (a publish under
    way): in the child every call on the client is ``UsageError`` at once. Before: the child
    waited for ever for the lock of a thread it does not have."""
    import os  # noqa: PLC0415

    c = _client(tmp_path / "s", "kbi-fork-lock")
    c.restore_session("")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with c._lock:  # noqa: SLF001  (as a publish in another thread holds it)
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            calls: list[Callable[[], object]] = [
                lambda: c.publish_message("kbi/fork", 1, "child"),
                lambda: c.publish_message("kbi/fork", 0, "child"),
                lambda: c.subscribe("kbi/#", 1), c.save_session, lambda: c.restore_session(""),
                lambda: c.outgoing_messages, lambda: c.incoming_messages, c.queue_stats]
            for call in calls:
                try:
                    call()
                except Exception as exc:  # noqa: BLE001
                    os.write(write, f"{type(exc).__name__}\n".encode())
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
    c.close()
    assert done[0] != 0, "the child hung on the parent's lock"
    assert said == ["UsageError"] * 8


@pytest.mark.parametrize("sync", ["always", "interval", "none"])
@pytest.mark.parametrize("where", ["spool", "store"])
def test_an_interrupt_after_the_disk_queue_wrote_takes_the_publish_back(
        tmp_path: Path, sync: str, where: str) -> None:
    """Ctrl-C after the disk queue wrote a publish's frame, before the publish returned (in
    the queue's counts, or in the store after it): the publish raises, later ones work, the
    restart holds exactly the ones that returned. Before (a review): the frame stayed while
    the publish's seq was used again: the restart was ``StateError`` ("seq out of order")."""
    from mqttsession.store import StateFile  # noqa: PLC0415

    fn, text = ((spool.Spool.append, "self.last_seq, self._newest = seg.last") if where == "spool"
                else (StateFile.append, "state.spool_last = self.spool.last_seq"))
    c = _client(tmp_path / "s", "kbi-w")
    c.config(f"SessionSync={sync}")
    c.config("QueueInMemory=2")
    c.restore_session("")
    _interrupted_round(c, fn, text, tmp_path / "s")


def test_a_segment_file_an_interrupt_left_is_made_again(tmp_path: Path) -> None:
    """A ``q-<seq>.open`` an interrupted segment opening left (created, never registered):
    the next publish into the queue makes it again. Before (a review): every publish into
    the queue raised ``PersistenceError`` ("File exists") until a restart."""
    import os  # noqa: PLC0415

    c = _client(tmp_path / "s", "kbi-n")
    c.config("QueueInMemory=2")
    c.restore_session("")
    c.publish_message("kbi/n", 1, "m0")
    c.publish_message("kbi/n", 1, "m1")
    queue = tmp_path / "s.queue"
    queue.mkdir(mode=0o700, exist_ok=True)
    (queue / f"q-{3:020d}.open").touch(mode=0o600)  # seq 3 is the queue's first
    for i in range(2, 5):
        c.publish_message("kbi/n", 1, f"m{i}")
    c.close()
    assert _held(tmp_path / "s", "kbi-n") == [f"m{i}".encode() for i in range(5)]
    assert os.listdir(queue)


@pytest.mark.parametrize("where", ["before-load", "after-load", "in-read"])
def test_an_interrupt_while_a_full_queue_reads_its_oldest_back_loses_no_message(
        tmp_path: Path, where: str) -> None:
    """Ctrl-C while a publish into a full queue (``drop-oldest``) reads the disk queue's oldest
    message back to drop it (in the read itself, before that message joined the session, or
    after): the publish raises, the ones after it work, and every message that returned is
    either still held or was told dropped (``on_message_dropped``): none vanishes, none is
    read back twice. Before, one interrupted before it joined vanished (counted dropped
    without an event)."""
    from mqttsession.outgoing import Outgoing  # noqa: PLC0415

    fn, text = {"before-load": (Outgoing._loaded, "upto = max("),
                "after-load": (Outgoing._loaded, "self._pending.extend("),
                "in-read": (spool.Spool._take, "out.append(found[0])")}[where]
    c = _client(tmp_path / "s", "kbi-d")
    c.config("QueueInMemory=5")
    c.config("MaxQueuedMessages=20")
    c.config("QueueFullPolicy=drop-oldest")
    dropped: list[int] = []
    c.on_message_dropped = lambda e: dropped.append(e.seq)
    c.restore_session("")
    sent = []
    for i in range(40):
        if i == 30:  # the five in memory dropped by now: the oldest come from the disk queue
            with interrupt_at(fn, text) as fired, pytest.raises(KeyboardInterrupt):
                c.publish_message("kbi/d", 1, "interrupted")
            assert fired
        c.publish_message("kbi/d", 1, f"m{i}")
        sent.append(f"m{i}".encode())
    c.close()
    held = _held(tmp_path / "s", "kbi-d")
    assert len(held) == 20
    assert held == sent[len(sent) - len(held):]  # the newest, in order
    assert len(dropped) + len(held) == len(sent), (len(dropped), len(held))
