"""The disk queue at its edges (a review's findings, each test failing before its fix): a
directory fsync failing after a segment was renamed sealed, drop-oldest finding no room after
reading the queue's head back, QueueInMemory=0 over a queue left by an earlier run, and under
SessionSync=interval the order in which the journal and the queue reach the disk."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod
from mqttsession import Client, QueueFullError
from mqttsession.errors import PersistenceError
from mqttsession.records import OutgoingMessage
from mqttsession.spool import QUEUE_SUFFIX, Spool
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.faults import FakeOs, fd_name

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def msg(seq: int) -> OutgoingMessage:
    return OutgoingMessage(seq, 0, "t/x", bytes([seq % 251]) * 100, 1, False, b"",
                           accepted_at=1000.0 + seq)


def _failing_dir_sync(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The directory sync after the next seal's rename fails (EIO); ``["n"]`` 0 once it did."""
    real = spool_mod._fsync_dir
    fail = {"n": 1}

    def fsync_dir(path: str) -> None:
        if path.endswith(".seg") and fail["n"]:
            fail["n"] -= 1
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(path)

    monkeypatch.setattr(spool_mod, "_fsync_dir", fsync_dir)
    return fail


def test_a_failed_directory_sync_after_a_seal_leaves_the_segment_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Spool(str(tmp_path / "s"), "c", sync=True, segment_bytes=600)
    sp.recover(0)
    fail = _failing_dir_sync(monkeypatch)
    stored = []
    seq = 1
    while seq <= 20:
        try:
            sp.append([msg(seq)], sync=True)
        except PersistenceError:
            continue  # the publisher is told "not stored"; the same seq is published again
        stored.append(seq)
        seq += 1
    assert fail["n"] == 0  # the fault happened
    d = str(tmp_path / "s") + QUEUE_SUFFIX
    assert any(n.endswith('.seg') for n in os.listdir(d))
    got = [m.seq for m in sp.read(1000)]  # FileNotFoundError here
    assert got == stored


def test_a_failed_directory_sync_after_a_seal_does_not_stop_the_queue_draining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fault through a Client: every read-back attempt raises FileNotFoundError on
    the network thread (hook failure: connection dropped, reconnect, again); flush never ends."""
    fail = _failing_dir_sync(monkeypatch)
    c = Client(client_id="ds", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's.state'}")
    c.config("QueueInMemory=5")
    c.config("QueueSegmentBytes=4096")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    c.restore_session("")
    n = 0
    while n < 60:
        try:
            c.publish_data("t/x", 1, b"%03d" % n + b"x" * 200)
        except PersistenceError:
            continue
        n += 1
    assert fail["n"] == 0
    with FakeBroker(session_present=True) as fake:
        c.connect(fake.host, fake.port)
        ok = c.flush(5)
        got = len(fake.packets("PUBLISH"))
        c.close()
    assert ok and errors == []


def _mr_client(path: Path) -> Client:
    c = Client(client_id="mr", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=1")
    c.config("MaxQueuedBytes=100")
    c.config("QueueFullPolicy=drop-oldest")
    return c


def test_drop_oldest_that_cannot_make_room_reads_nothing_back(
        tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    c = _mr_client(path)
    c.restore_session("")
    with FakeBroker(qos1_ack="none") as fake:
        c.connect(fake.host, fake.port)
        c.publish_data("t/x", 1, b"a" * 37)  # 40 bytes, in flight (never acknowledged)
        fake.wait_for("PUBLISH")
        c.disconnect()
    c.publish_data("t/x", 1, b"b" * 7)  # 10 bytes: the disk queue (QueueInMemory=1)
    assert c._engine.state.spooled == 1
    with pytest.raises(QueueFullError):
        c.publish_data("t/x", 1, b"c" * 67)  # 40 + 10 + 70 > 100 even without the 10
    st = c._engine.state
    assert st.spooled == 1  # nothing read back
    c.publish_data("t/x", 1, b"d" * 7)  # fits
    c.publish_data("t/x", 1, b"e" * 47)  # drop-oldest drops the message loaded above
    killed = _powercut.copy_now(path, tmp_path / "kill")  # a kill -9 now
    c.close()
    d = _mr_client(killed)
    d.restore_session("")  # StateError: journal record ... DROPPED: no outgoing message
    text = d.save_session()
    d.close()
    from mqttsession import load_state  # noqa: PLC0415
    # what a correct _make_room leaves: m1 in flight; b dropped for e; d and e queued
    assert [m.payload[:1] for m in load_state(text).never_sent] == [b"d", b"e"]


def _qim_client(path: Path, in_memory: int) -> Client:
    c = Client(client_id="qim", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"QueueInMemory={in_memory}")
    c.config("QueueSegmentBytes=4096")
    return c


def test_queue_in_memory_zero_over_a_queue_left_by_an_earlier_run_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    c = _qim_client(path, 5)
    c.restore_session("")
    for n in range(1, 21):
        c.publish_data("t/x", 1, str(n).encode())
    assert c._engine.state.spooled == 15
    c.close()

    d = _qim_client(path, 0)
    d.restore_session("")
    assert d.queue_stats().messages == 20
    d.publish_data("t/x", 1, b"21")
    errors: list[str] = []
    d.on_error = lambda e: errors.append(e.description)
    with FakeBroker(session_present=True) as fake:
        d.connect(fake.host, fake.port)
        ok = d.flush(10)
        order = [int(p.payload) for p in fake.packets("PUBLISH") if p.payload]
        d.close()
    e = _qim_client(path, 0)
    e.restore_session("")
    still = [int(m.message) for m in e.outgoing_messages]  # (the disk queue's too)
    e.close()
    missing = sorted(set(range(1, 22)) - set(order) - set(still))
    assert missing == []  # nothing lost
    assert order[:21] == list(range(1, 22))  # publish order
    assert errors == [] and ok


_iv_client, _iv_kept = _powercut.interval_client, _powercut.kept


def test_interval_the_queue_never_reaches_the_disk_before_earlier_publishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _powercut.install(monkeypatch)
    path = tmp_path / "w" / "s"
    path.parent.mkdir()
    settings: dict[str, object] = {"QueueInMemory": 10}
    c = _iv_client(path, 60_000, **settings)  # (the timer does not run during the test)
    sent = [b"m%02d" % n for n in range(15)]
    try:
        c.restore_session("")
        for body in sent:  # offline: 10 in memory (journal), 5 into the disk queue
            c.publish_data("t/x", 1, body)
        cut = rec.image(path, tmp_path / "cut")  # synced bytes only ...
        q = Path(str(path) + ".queue")
        (cut.parent / "s.queue").mkdir(exist_ok=True)
        for seg in q.iterdir():  # ... but the open segment's dirty page was written back
            shutil.copyfile(seg, cut.parent / "s.queue" / seg.name)
    finally:
        c.close()
    got = _iv_kept(cut, **settings)
    assert got == sent[:len(got)], [b[:3] for b in got]


def test_a_restart_syncs_the_journal_before_the_queue_a_killed_process_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No write-back luck needed: a kill -9 leaves m00-m09 (journal) and m10-m14 (open
    segment) in the page cache; the restart's Spool.recover (spool.py:155-158) fdatasyncs the
    open segment at once, while the journal's recovered records count as synced
    (journal.py:316 _new_incarnation(resume_at)) and are not synced. A power cut before the
    journal's next fdatasync keeps m10-m14 and loses m00-m09."""
    r1 = _powercut.install(monkeypatch)
    path = tmp_path / "w" / "s"
    path.parent.mkdir()
    settings: dict[str, object] = {"QueueInMemory": 10}
    a = _iv_client(path, 60_000, **settings)
    sent = [b"m%02d" % n for n in range(15)]
    a.restore_session("")
    for body in sent:
        a.publish_data("t/x", 1, body)
    killed = _powercut.copy_now(path, tmp_path / "killed")  # kill -9
    a_synced = r1.image(path, tmp_path / "a_synced")  # what A had made durable
    a.close()
    monkeypatch.undo()
    r2 = _powercut.install(monkeypatch)
    cut = tmp_path / "cut"

    def power_cut_image() -> None:
        """Each file as B last synced it, else as A left it durable."""
        cut.mkdir()
        for src in killed.parent.rglob("*"):
            if not src.is_file() or src.name.endswith(".lock"):
                continue
            rel = src.relative_to(killed.parent)
            st = src.stat()
            data = r2.durable.get((st.st_dev, st.st_ino))
            if data is None:
                prior = a_synced.parent / rel
                if not prior.exists():
                    continue
                data = prior.read_bytes()
            (cut / rel).parent.mkdir(parents=True, exist_ok=True)
            (cut / rel).write_bytes(data)

    orig = r2.fdatasync

    def fdatasync(fd: int) -> None:  # the power goes just before B's first journal sync
        if not cut.exists() and r2._name(fd).startswith("s.journal"):
            power_cut_image()
        orig(fd)

    r2.fdatasync = fdatasync  # type: ignore[method-assign]
    b = _iv_client(killed, 60_000, **settings)
    try:
        b.restore_session("")  # the restart
        firsts = [e for e in r2.events if e.startswith(("fdatasync s.journal", "fdatasync q-"))]
        assert firsts[0].startswith("fdatasync s.journal"), r2.events
        if not cut.exists():
            power_cut_image()
    finally:
        b.close()
    monkeypatch.undo()
    got = _iv_kept(cut / "s", **settings)
    assert got == sent[:len(got)], [x[:3] for x in got]


def _full_queue_client(path: Path, front: str) -> tuple[Client, Any, Any]:
    """A client of ``path`` whose disk queue holds 5 messages, drop-oldest at 5; its
    ``publish_data`` (through an offline ``AsyncSession`` for that ``front``) and closer."""
    import asyncio  # noqa: PLC0415

    from mqttsession.aio import AsyncSession  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    session = AsyncSession(client_id="full", state_file=path) if front != "Client" else None
    c = session._client if session else Client(client_id="full", clean_session=False)
    c.config(f"SessionStateFile={path}")
    for setting in ("QueueInMemory=2", "MaxQueuedMessages=5", "QueueFullPolicy=drop-oldest"):
        c.config(setting)
    if session:
        loop.run_until_complete(session.start(connect=False))
    else:
        c.restore_session("")
    for n in range(1, 6):
        c.publish_data("t/x", 1, b"%d" % n + b"x" * 100)
    assert c.queue_stats().messages == 5 and c._engine.state.spooled == 3

    def publish(topic: str, qos: int, data: bytes) -> int:
        assert session is not None
        return loop.run_until_complete(session.publish(topic, data, qos))

    def close() -> None:
        if session:
            loop.run_until_complete(session.close())
        c.close()
        loop.close()
    return c, publish if session else c.publish_data, close


@pytest.mark.parametrize("front", ["Client", "AsyncSession"])
def test_a_drop_made_for_a_publish_that_failed_on_a_full_disk_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    # AsyncSession: before, its notice waited for the session's next publish
    path = tmp_path / "s.state"
    c, publish, close = _full_queue_client(path, front)
    dropped: list[int] = []
    c.on_message_dropped = lambda e: dropped.append(e.seq)

    def write(fd: int, data: Any) -> int:  # the disk queue's file system is full
        if fd_name(fd).startswith("q-"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return os.write(fd, data)

    def pwrite(fd: int, data: Any, off: int) -> int:
        if fd_name(fd).startswith("q-"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return os.pwrite(fd, data, off)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, pwrite=pwrite))
    failures = 0
    for _ in range(3):
        try:
            publish("t/x", 1, b"new" + b"y" * 5000)
        except PersistenceError:
            failures += 1
        assert not c._driver.stashed  # reported before the error was raised
    monkeypatch.setattr(journal_mod, "os", os)
    left = c.queue_stats().messages
    close()
    d = Client(client_id="full", clean_session=False)
    d.config(f"SessionStateFile={path}")
    d.restore_session("")
    after_restart = len(d.outgoing_messages)  # (the disk queue's too)
    d.close()
    assert failures == 3
    # before: the drops were kept (the state rewritten with them) but never reported
    assert len(dropped) == 5 - left == 5 - after_restart, (dropped, left, after_restart)


def test_queue_segment_bytes_set_after_a_gateway_session_is_made_applies(
        tmp_path: Path) -> None:
    # before: a gateway session opens its file (and disk queue) when it is made; the setting
    # given after that never reached the open queue, whose segments stayed 1 MiB
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("seg", clean_session=False)
        c.config("QueueInMemory=1")
        c.config("QueueSegmentBytes=4096")
        for n in range(40):
            c.publish_data("t/x", 1, b"%02d" % n + b"x" * 300)
        queue = Path(c._file.spool.dir)
        assert len([p for p in queue.iterdir() if p.suffix == ".seg"]) >= 2


def test_a_refused_publish_after_a_read_back_loses_nothing_at_a_kill(tmp_path: Path) -> None:
    """MQTT 5, a full queue (QueueFullPolicy=reject): the search for expired messages read
    the disk queue back (packet ids given, the read position moved), then ``QueueFullError``
    threw its records away. The sends that followed named messages the journal never loaded:
    after a kill -9 the restore was ``StateError`` ("send: no outgoing message with seq 6"),
    the files kept aside, all 50 messages gone from the session (a regression review). The
    search's records are written before the error is raised."""
    import signal
    import subprocess
    import sys

    from mqttsession.testing.fake_broker import FakeBroker

    path = tmp_path / "s"
    setup = f"""
import mqttsession
def client():
    c = mqttsession.Client(client_id="fullq", clean_session=False, protocol_version=5)
    c.config("SessionStateFile={path}"); c.config("SessionExpInterval=600")
    c.config("QueueInMemory=5"); c.config("MaxQueuedMessages=50")
    c.config("QueueFullPolicy=reject")
    c.restore_session("")
    return c
"""
    fake = FakeBroker(qos1_ack="none")
    child = subprocess.Popen([sys.executable, "-u", "-c", setup + f"""
import time
c = client()
for i in range(50):
    c.publish_message("q1/t", 1, "m%02d" % i)
try:
    c.publish_message("q1/t", 1, "one too many")
except mqttsession.QueueFullError:
    print("refused", flush=True)
c.connect("{fake.host}", {fake.port}, 5)
print("connected", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "refused"
        assert child.stdout.readline().strip() == "connected"
        fake.wait_for("PUBLISH", 20)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
        fake.stop()
    ns: dict[str, Any] = {}
    exec(setup, ns)  # noqa: S102 - the same client, in this process
    c = ns["client"]()
    try:
        assert len(c.outgoing_messages) == 50
    finally:
        c.close()


def test_a_failed_segment_mark_neither_fails_the_publish_nor_loses_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal record naming a new segment (``SpoolMark``) fails to be written (a full
    disk, EIO) after the message went into the segment: the publish returns (its message is
    durable in the queue) and the failure goes to ``on_error``. Before (a review): the publish
    raised PersistenceError and was taken back in memory while the segment kept it; the next
    publish reused its seq and was never delivered, and the restart was StateError."""
    from mqttsession.records import SpoolMark  # noqa: PLC0415

    c = Client(client_id="mark", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("QueueInMemory=1")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    c.restore_session("")
    real = journal_mod.Journal.append

    def append(self: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(r, SpoolMark) for r in records):
            raise PersistenceError(errno.EIO, "injected")
        return real(self, records, *args, **kwargs)

    c.publish_data("t", 1, b"one")  # memory
    monkeypatch.setattr(journal_mod.Journal, "append", append)
    c.publish_data("t", 1, b"two")  # the queue's first segment begins: its mark fails
    monkeypatch.setattr(journal_mod.Journal, "append", real)
    c.publish_data("t", 1, b"three")
    assert any("segment mark was not written" in e for e in errors), errors
    assert [m.message for m in c.outgoing_messages] == [b"one", b"two", b"three"]
    c.close()
    d = Client(client_id="mark", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"one", b"two", b"three"]
    d.close()
