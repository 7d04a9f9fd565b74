"""Pins of the behaviour docs/operations.rst and the events' docs (``mqttsession.events``, on
docs/events.rst) describe, where no network is involved: logging through ``logging`` only,
the drops' log, the thread ``on_message_dropped`` and an offline interval sync run on, the
state file's log records."""

from __future__ import annotations

import ast
import errno
import logging
import os
import threading
import time
from pathlib import Path
import pytest

import mqttsession
import mqttsession.journal as journal_mod
from mqttsession import Client, StateError
from mqttsession.behind import SyncBehind
from mqttsession.queuelimits import DropLog
from mqttsession.testing.faults import FakeOs


def test_the_library_never_prints() -> None:
    """operations: the library logs through ``logging``, never ``print`` (the command line
    tool's output, ``mqttsession.cli``, is its job, not a log)."""
    root = Path(mqttsession.__file__).parent
    printing = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "cli.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "print"):
                printing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert printing == []


def test_the_drops_summary_counts_each_reason(caplog: pytest.LogCaptureFixture) -> None:
    """operations: ``K more messages dropped in S s (expired: A, queue-full: B)``."""
    caplog.set_level(logging.DEBUG, logger="mqttsession")
    drops = DropLog()
    drops.dropped(1, "t", "queue-full")
    drops.dropped(2, "t", "expired")
    drops.dropped(3, "t", "queue-full")
    drops.dropped(4, "t", "queue-full")
    drops.flush(force=True)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud[1:] == ["3 more messages dropped in 0 s (expired: 1, queue-full: 2)"], loud


def test_queue_full_drops_each_have_their_event_on_the_publishing_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    """events: ``on_message_dropped`` for ``queue-full`` runs in the thread calling
    ``publish_*``; operations: the log sums drops up, but ``on_message_dropped`` and
    ``queue_stats()`` carry each one."""
    caplog.set_level(logging.WARNING, logger="mqttsession")
    c = Client(client_id="drops-thread", clean_session=True)
    c.config("MaxQueuedMessages=1")
    c.config("QueueFullPolicy=drop-oldest")
    dropped: list[tuple[str, str, int]] = []
    c.on_message_dropped = lambda e: dropped.append(
        (e.reason, threading.current_thread().name, e.seq))

    def publish() -> None:
        for n in range(6):
            c.publish_message("t/x", 1, f"m{n}")

    try:
        t = threading.Thread(target=publish, name="publisher")
        t.start()
        t.join(10)
        assert c.queue_stats().dropped == 5
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        c.close()
    assert [(r, th) for r, th, _ in dropped] == [("queue-full", "publisher")] * 5
    assert len({s for _, _, s in dropped}) == 5
    assert len(warnings) == 1  # (summed up, not one each)


def test_an_offline_interval_sync_runs_and_reports_on_the_sync_timer_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """operations: while no connection is up a ``mqttsession-sync`` timer thread runs
    ``SessionSync=interval``'s fsync; events: a fault found there reaches ``on_error`` on
    that thread; operations: a state file that could not be written is a WARNING or ERROR."""
    caplog.set_level(logging.WARNING, logger="mqttsession")
    synced_on: list[str] = []
    fail = [True]

    def fdatasync(fd: int) -> None:
        name = threading.current_thread().name
        synced_on.append(name)
        if name == "mqttsession-sync" and fail[0]:
            fail[0] = False
            raise OSError(errno.EIO, "injected EIO")
        os.fdatasync(fd)

    c = Client(client_id="offline-sync", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("SessionSync=interval")
    c.config("SessionSyncInterval=50")
    errors: list[tuple[str, str]] = []
    c.on_error = lambda e: errors.append((threading.current_thread().name, e.description))
    try:
        c.restore_session("")
        c.publish_data("t/x", 1, b"first")  # (its packet-id reservation synced at once)
        monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=fdatasync))
        c.publish_data("t/x", 1, b"second")
        assert synced_on == []  # not in the publisher
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        monkeypatch.setattr(journal_mod, "os", os)
        c.close()
    assert synced_on and synced_on[0] == "mqttsession-sync", synced_on
    assert errors and errors[0][0] == "mqttsession-sync", errors
    assert any(r.levelno >= logging.WARNING and errors[0][1] in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_damaged_state_file_kept_aside_is_logged_as_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """operations: a damaged journal kept aside is a WARNING/ERROR."""
    path = tmp_path / "s"
    c = Client(client_id="damaged", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t/x", 1, b"x")
    c.close()
    path.write_bytes(path.read_bytes().replace(b'"t/x"', b'"t/y"'))
    caplog.set_level(logging.WARNING, logger="mqttsession")
    d = Client(client_id="damaged", clean_session=False)
    d.config(f"SessionStateFile={path}")
    try:
        with pytest.raises(StateError, match="kept aside"):
            d.restore_session("")
    finally:
        d.close()
    aside = [r for r in caplog.records if "kept aside" in r.getMessage()]
    assert aside and all(r.levelno >= logging.WARNING for r in aside)
    assert all(r.name.startswith("mqttsession") for r in aside)


def test_a_compaction_is_logged_at_info_naming_the_state_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """operations: ``state file PATH compacted: ...`` at INFO."""
    caplog.set_level(logging.INFO, logger="mqttsession")
    path = tmp_path / "s"
    c = Client(client_id="compact", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    for n in range(5):
        c.publish_data("t/x", 1, b"%d" % n)
    c.close()
    done = [r for r in caplog.records if r.getMessage().startswith(f"state file {path} compacted: ")]
    assert done and all(r.levelno == logging.INFO for r in done), [
        r.getMessage() for r in caplog.records]


def test_read_batches_ending_while_a_sync_runs_share_the_next_on_the_acksync_thread() -> None:
    """operations: on a slow disk the fsync a read batch's acknowledgements wait for runs on
    the client's ``mqttsession-acksync`` thread (made at the first one); the batches that end
    while one runs share the next."""
    gate, entered = threading.Event(), threading.Event()
    calls: list[str] = []

    def sync() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            entered.set()
            assert gate.wait(10)

    before = set(threading.enumerate())
    behind = SyncBehind(sync)
    try:
        assert not [t for t in threading.enumerate() if t not in before]  # made at the first
        first = behind.request(lambda: None)
        assert first is not None and entered.wait(10)
        waiting = [behind.request(lambda: None) for _ in range(3)]
        gate.set()
        assert first.result(10) is None
        for f in waiting:
            assert f is not None and f.result(10) is None
    finally:
        gate.set()
        behind.stop()
    assert len(calls) == 2 and all(n.startswith("mqttsession-acksync") for n in calls), calls
