"""SessionSync=interval under faults (found by a review, each failing before its fix): a failed
fdatasync never takes published records out of the files (kill -9 loses nothing), the disk
queue never reaches the disk ahead of the journal's earlier records (a power cut loses only
what was published since the last sync), the timer survives a publish made as the connection
drops, and a restart syncs the queue a killed process left in the page cache. Power cuts are
modelled by ``_powercut.Recorder``: only synced bytes survive."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import mqttsession
from mqttsession import Client
from mqttsession.durability import _NetTimer
from mqttsession.gateway import Gateway

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


_client, _kept = _powercut.interval_client, _powercut.kept


def _state_file(tmp_path: Path) -> Path:
    path = tmp_path / "w" / "s"
    path.parent.mkdir()
    return path


def _after_a_failed_sync(c: Client, rec: _powercut.Recorder) -> list[bytes]:
    """Publishes around one failed interval fdatasync (10 in memory, 10 into the disk queue);
    what was published."""
    c.restore_session("")
    c.publish_data("t/x", 1, b"m00")  # (its packet-id reservation is synced at once)
    rec.fail_next = 1  # the interval's next fdatasync fails once (a transient EIO)
    for n in range(1, 10):
        c.publish_data("t/x", 1, b"m%02d" % n)
    time.sleep(0.5)  # the interval's sync ran and failed
    for n in range(10, 20):  # into the disk queue (QueueInMemory=10)
        c.publish_data("t/x", 1, b"m%02d" % n)
    time.sleep(0.5)  # more interval syncs: the disk works again
    return [b"m%02d" % n for n in range(20)]


def test_a_failed_interval_sync_keeps_every_published_record_for_a_kill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the failed sync cut the journal back to its last synced byte, and nothing
    # rewrote it while publishes went to the disk queue only: a kill -9 lost m00-m09
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    errors: list[str] = []
    c = _client(path, 100, QueueInMemory=10)
    c.on_error = lambda e: errors.append(e.description)
    try:
        sent = _after_a_failed_sync(c, rec)
        killed = _powercut.copy_now(path, tmp_path / "kill9")
        assert any("rewritten from memory" in e for e in errors), errors  # reported
    finally:
        c.close()
    assert _kept(killed, QueueInMemory=10) == sent


def test_a_failed_interval_sync_is_made_good_before_the_disk_queue_is_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the journal stayed broken, each later sync raised at it before the queue was
    # synced, and close() synced the journal only: a power cut after close() lost m10-m19
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    c = _client(path, 100, QueueInMemory=10)
    try:
        sent = _after_a_failed_sync(c, rec)
    finally:
        c.close()
    assert _kept(rec.image(path, tmp_path / "cut"), QueueInMemory=10) == sent


@contextlib.contextmanager
def _spilled(tmp_path: Path, settings: dict[str, object], size: int
             ) -> Iterator[tuple[Path, list[bytes]]]:
    """30 messages of ``size`` bytes published offline under interval (its timer idle
    during the test): 10 in memory (the journal), the rest into the disk queue; yields the
    state file and what was sent, the client still open."""
    path = _state_file(tmp_path)
    c = _client(path, 60_000, **settings)
    sent = [b"m%02d-" % n + b"x" * size for n in range(30)]
    try:
        c.restore_session("")
        for body in sent:
            c.publish_data("t/x", 1, body)
        yield path, sent
    finally:
        c.close()


def test_a_sealed_queue_segment_never_reaches_the_disk_before_earlier_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: sealing a full segment fdatasynced it while the journal's records of earlier
    # publishes waited for the interval: a power cut kept m10-m25 and lost m00-m09
    rec = _powercut.install(monkeypatch)
    settings: dict[str, object] = {"QueueInMemory": 10, "QueueSegmentBytes": 4096}
    with _spilled(tmp_path, settings, 500) as (path, sent):
        assert rec.syncs_of("q-"), "no segment was sealed"
        cut = rec.image(path, tmp_path / "cut")  # before the interval's sync
    got = _kept(cut, **settings)
    assert len(got) >= 10 and got == sent[:len(got)], [b[:3] for b in got]


def test_the_disk_queue_written_back_before_the_journal_restores_a_prefix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first message into the disk queue first syncs the journal's records of those
    published before it (``sync_before_queue``): the kernel writes the two files back in no
    set order, and a power cut that kept the queue's pages but only the journal's synced
    bytes restored the later messages without the earlier ones (a mutation hunt: without
    that sync no test failed)."""
    rec = _powercut.install(monkeypatch)
    settings: dict[str, object] = {"QueueInMemory": 10}
    with _spilled(tmp_path, settings, 100) as (path, sent):
        cut = rec.image(path, tmp_path / "cut")
        queue = Path(f"{path}.queue")
        for seg in queue.iterdir():  # the queue as the page cache holds it: written back
            (cut.parent / queue.name).mkdir(exist_ok=True)
            (cut.parent / queue.name / seg.name).write_bytes(seg.read_bytes())
    got = _kept(cut, **settings)
    assert len(got) >= 10 and got == sent[:len(got)], [b[:3] for b in got]


class _PublishAsTheConnectionDrops(logging.Handler):
    """When the network thread logs the lost connection (before the engine stops being
    connected), another thread publishes: the interleaving of a publisher busy at that
    moment."""

    def __init__(self, c: Client) -> None:
        super().__init__()
        self.c, self.done = c, False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not self.done and "lost" in text and "reconnecting" in text:
            self.done = True
            t = threading.Thread(target=self.c.publish_data, args=("t/x", 1, b"in the window"))
            t.start()
            t.join()


def test_a_publish_as_the_connection_drops_leaves_no_dead_timer(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # before: that publish armed a timer only the network thread runs, which paho does not
    # run while it waits to reconnect: nothing was synced for the whole outage
    rec = _powercut.install(monkeypatch)
    proxy = mqtt_proxy_factory(mosquitto)
    c = _client(tmp_path / "s", 200, ReconnectDelayMin=30, ReconnectDelayMax=30)
    c.connect(proxy.host, proxy.port)
    h = _PublishAsTheConnectionDrops(c)
    lg = logging.getLogger("mqttsession")
    lg.addHandler(h)
    level = lg.level
    lg.setLevel(logging.INFO)
    try:
        c.publish_data("t/x", 1, b"first")
        proxy.cut()
        deadline = time.monotonic() + 10
        while not h.done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.done
        time.sleep(0.2)
        before = rec.syncs_of("s.journal")
        for k in range(5):
            c.publish_data("t/x", 1, b"offline %d" % k)
        deadline = time.monotonic() + 10  # (paho waits 30 s to reconnect)
        while rec.syncs_of("s.journal") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.syncs_of("s.journal") > before, "offline publishes never synced"
        assert not isinstance(c._driver._sync_timer, _NetTimer)
    finally:
        lg.removeHandler(h)
        lg.setLevel(level)
        c.close()


def test_a_restart_syncs_the_disk_queue_a_killed_process_left_unsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the restored open segment was synced only when something new was appended
    path = _state_file(tmp_path)
    a = _client(path, 60_000, QueueInMemory=2)
    a.restore_session("")
    for n in range(6):
        a.publish_data("t/x", 1, b"m%d" % n)  # m2-m5 into the disk queue, not synced
    killed = _powercut.copy_now(path, tmp_path / "b")
    a.close()
    rec = _powercut.install(monkeypatch)
    b = _client(killed, 60_000, QueueInMemory=2)
    try:
        b.restore_session("")
        assert rec.syncs_of("q-") >= 1  # at once, not after the interval
    finally:
        b.close()


def test_a_power_cut_that_kept_a_later_page_but_not_an_earlier_one_restores_a_prefix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the journal frame torn by the page not written back, with good frames after
    # it, was 'damage mid-file': StateError, the files kept aside, nothing restored
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    c = _client(path, 60_000, QueueInMemory=1000)
    sent = [b"m%02d-" % n + b"x" * 300 for n in range(40)]  # three pages not synced
    try:
        c.restore_session("")
        for body in sent:
            c.publish_data("t/x", 1, body)
        journal = Path(f"{path}.journal")
        st = journal.stat()
        synced = rec.durable[(st.st_dev, st.st_ino)]
        cached = journal.read_bytes()  # what the page cache holds
        snapshot = path.read_bytes()
    finally:
        c.close()
    page = 4096
    start = (len(synced.rstrip(b"\0")) // page + 1) * page  # a page of unsynced records
    assert start + page < len(cached.rstrip(b"\0"))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "s").write_bytes(snapshot)
    (cut / "s.journal").write_bytes(cached[:start] + bytes(page)  # never written back:
                                    + cached[start + page:])  # the zeros written ahead
    got = _kept(cut / "s", QueueInMemory=1000)
    assert len(got) >= 2 and got == sent[:len(got)] and len(got) < len(sent)


def _device(gw: Gateway, cid: str, interval_ms: int) -> Client:
    c = gw.client(cid, clean_session=False)
    c.config("QueueInMemory=10")
    c.config("SessionSync=interval")
    c.config(f"SessionSyncInterval={interval_ms}")
    return c


class _FailOnce:
    """Makes the shared log's next fdatasync fail (EIO)."""

    def __init__(self, rec: _powercut.Recorder) -> None:
        self.rec = rec

    def __call__(self) -> None:
        self.rec.fail_name, self.rec.fail_next = "sessions.log", 1


@contextlib.contextmanager
def _failing_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> Iterator[tuple[Gateway, _FailOnce]]:
    """A gateway in ``tmp_path / "gw"`` under the power-cut model, closed at the end."""
    fail_once = _FailOnce(_powercut.install(monkeypatch))
    gw = Gateway(tmp_path / "gw")
    try:
        yield gw, fail_once
    finally:
        gw.close()


_kept_by = _powercut.gateway_kept


def test_a_gateway_sessions_failed_interval_sync_keeps_every_sessions_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the shared log was cut back to its last synced byte, taking out the returned
    # publishes of every session in it (b's own timer never ran): a kill -9 lost them
    with _failing_gateway(tmp_path, monkeypatch) as (gw, fail_once):
        a, b = _device(gw, "a", 100), _device(gw, "b", 60_000)
        a.publish_data("t/a", 1, b"a0")
        b.publish_data("t/b", 1, b"b0")
        fail_once()
        for n in range(1, 4):
            b.publish_data("t/b", 1, b"b%d" % n)
        a.publish_data("t/a", 1, b"a1")  # a's timer: its sync fails
        time.sleep(0.5)
        killed = _powercut.copy_now(tmp_path / "gw", tmp_path / "kill9")
    assert _kept_by(killed, "a") == [b"a0", b"a1"]
    assert _kept_by(killed, "b") == [b"b0", b"b1", b"b2", b"b3"]


def test_a_gateway_session_is_made_good_after_a_failed_interval_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: each later interval sync raised at the stale session before its disk queue was
    # synced, and was tried again every interval: a power cut lost every message
    with _failing_gateway(tmp_path, monkeypatch) as (gw, fail_once):
        c = _device(gw, "a", 100)
        c.publish_data("t/x", 1, b"m00")
        fail_once()
        for n in range(1, 10):
            c.publish_data("t/x", 1, b"m%02d" % n)
        time.sleep(0.5)  # the interval's sync failed once
        for n in range(10, 20):  # into the disk queue
            c.publish_data("t/x", 1, b"m%02d" % n)
        time.sleep(0.6)  # more intervals, the disk working again
        cut = fail_once.rec.image(tmp_path / "gw", tmp_path / "cut")
    assert _kept_by(cut, "a") == [b"m%02d" % n for n in range(20)]


def test_a_connected_gateway_sessions_interval_sync_never_runs_on_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the loop's timer ran the fdatasync on the gateway's loop: every session of it
    # waited for the disk (a slow card: a second)
    import os  # noqa: PLC0415

    real = os.fdatasync
    on_loop: list[str] = []
    got: list[float] = []
    with Gateway(tmp_path / "gw") as gw:

        def fdatasync(fd: int) -> None:
            if threading.current_thread() is gw.thread:
                on_loop.append(os.readlink(f"/proc/self/fd/{fd}"))
                time.sleep(0.3)
            real(fd)

        dev = gw.client("dev", clean_session=False)
        sub = gw.client("sub", clean_session=False)
        sub.on_message_in = lambda e: got.append(time.monotonic())
        assert gw.connect_all(mosquitto.host, mosquitto.port) == {}
        dev.config("SessionSync=interval")
        dev.config("SessionSyncInterval=50")
        sub.subscribe("loop/t", 0)
        time.sleep(0.3)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        dev.publish_data("loop/x", 1, b"x")  # its interval sync: 50 ms later
        time.sleep(0.2)
        dev.publish_data("loop/t", 0, b"ping")  # another session's traffic
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        monkeypatch.setattr(os, "fdatasync", real)
    assert got and on_loop == [], on_loop


def test_offline_gateway_sessions_sync_on_the_gateways_loop_not_a_thread_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: each offline session under interval started a timer thread of its own
    rec = _powercut.install(monkeypatch)
    with Gateway(tmp_path / "gw") as gw:
        cs = [_device(gw, f"d{i}", 100) for i in range(20)]
        for c in cs:
            c.publish_data("t/x", 1, b"x")
        timers = [t for t in threading.enumerate() if t.name == "mqttsession-sync"]
        assert not timers, f"{len(timers)} timer threads for 20 offline sessions"
        deadline = time.monotonic() + 10
        while rec.syncs_of("sessions.log") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # (every session's timer ran)
        cut = rec.image(tmp_path / "gw", tmp_path / "cut")
    for i in range(20):  # a power cut now loses none of them
        assert _kept_by(cut, f"d{i}") == [b"x"]


def test_a_failed_sync_of_the_disk_queue_is_written_again_before_it_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the retry after the failed fdatasync of the queue's open segment "succeeded"
    # over pages Linux had marked clean: they never reached the disk, and a power cut after
    # close() lost every queued message
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    errors: list[str] = []
    c = _client(path, 100, QueueInMemory=2)
    c.on_error = lambda e: errors.append(e.description)
    sent = [b"m%02d" % n for n in range(20)]
    try:
        c.restore_session("")
        for n, body in enumerate(sent):  # offline: 2 in memory, the rest into the disk queue
            c.publish_data("t/x", 1, body)
            if n == 2:  # (its segment made): the queue's next fdatasync fails once
                rec.fail_name, rec.fail_next = "q-", 1
        time.sleep(0.6)  # the interval's sync failed, then was tried again
        assert rec.fail_next == 0 and rec.syncs_of("q-") >= 1
        assert any("disk queue" in e for e in errors), errors
    finally:
        c.close()
    assert _kept(rec.image(path, tmp_path / "cut"), QueueInMemory=2) == sent


def test_a_failed_seal_of_a_queue_segment_is_written_again_before_it_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the next publish sealed the segment again, its fdatasync "succeeding" over the
    # pages the failed one had left marked clean: a power cut lost the segment's messages
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    settings: dict[str, object] = {"QueueInMemory": 2, "QueueSegmentBytes": 4096}
    c = _client(path, 60_000, **settings)
    sent: list[bytes] = []
    try:
        c.restore_session("")
        for n in range(30):  # offline: 2 in memory, the rest into the disk queue
            body = b"m%02d-" % n + b"x" * 500
            if n == 3:  # (a segment made): the queue's next fdatasync, a seal's, fails
                rec.fail_name, rec.fail_next = "q-", 1
            try:
                c.publish_data("t/x", 1, body)
            except mqttsession.PersistenceError:
                continue  # the publish that sealed: refused, not stored
            sent.append(body)
        assert rec.fail_next == 0 and len(sent) == 29
        assert rec.syncs_of("q-") >= 2  # sealed on the next publish
    finally:
        c.close()
    assert _kept(rec.image(path, tmp_path / "cut"), **settings) == sent  # (close() synced)


def test_an_interval_sync_after_a_failed_compaction_rewrites_the_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the failed compaction closed the journal (its records never synced) without
    # marking it broken; the interval's sync then found no file, synced nothing and reported
    # nothing: a power cut lost every publish since the last sync (a sweep's finding)
    rec = _powercut.install(monkeypatch)
    rec.fail_fsync = True
    path = _state_file(tmp_path)
    c = _client(path, 60_000, JournalMaxBytes=2048)
    sent = [b"m00"]
    try:
        c.restore_session("")
        c.publish_data("t/x", 1, sent[0])
        c._driver._interval_sync()
        rec.fail_name, rec.fail_next = "s.tmp", 1  # the next snapshot's fsync fails
        while rec.fail_next:  # until one passes JournalMaxBytes: its compaction fails
            sent.append(b"m%02d-" % len(sent) + b"x" * 300)
            c.publish_data("t/x", 1, sent[-1])
        c._driver._interval_sync()  # as its timer runs it
        cut = rec.image(path, tmp_path / "cut")
    finally:
        c.close()
    assert _kept(cut, JournalMaxBytes=2048) == sent


def test_a_journal_left_broken_is_rewritten_before_the_disk_queue_takes_a_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the journal's sync before the first queued message failed, and both rewrites
    # after it; published again, the message found the journal closed, its sync did nothing,
    # and the queue went to disk ahead of m02: a power cut restored m00, m01, m03... (a gap;
    # a sweep's finding)
    rec = _powercut.install(monkeypatch)
    rec.fail_fsync = True
    path = _state_file(tmp_path)
    c = _client(path, 60_000, QueueInMemory=3)
    sent = [b"m%02d" % n for n in range(8)]
    try:
        c.restore_session("")
        for body in sent[:2]:
            c.publish_data("t/x", 1, body)
        c._driver._interval_sync()
        c.publish_data("t/x", 1, sent[2])  # in memory, in the OS
        rec.fail_next = 3  # the journal's fdatasync, then the two rewrites' fsyncs
        with pytest.raises(mqttsession.PersistenceError):
            c.publish_data("t/x", 1, sent[3])  # the first into the disk queue: refused
        assert rec.fail_next == 0
        for body in sent[3:]:  # published again, and more
            c.publish_data("t/x", 1, body)
        c._driver._interval_sync()
        cut = rec.image(path, tmp_path / "cut")
    finally:
        c.close()
    assert _kept(cut, QueueInMemory=3) == sent


def _abandon(c: Client) -> None:
    """The client's files released as a kill -9 leaves them (no sync; the page cache keeps
    what was written), in the same boot."""
    c._closed = True
    c._driver.cancel_sync_timer = lambda: None  # type: ignore[method-assign]
    with c._lock:
        c._file.close()


def test_close_raises_when_its_sync_of_the_disk_queue_fails_and_a_restart_makes_it_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: close() returned normally (on_error only), and neither it nor a restart in the
    # same boot wrote the pages the failed write-back left clean: a power cut lost m04-m07
    # (a sweep's finding)
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    c = _client(path, 60_000, QueueInMemory=2)
    sent = [b"m%02d" % n for n in range(8)]
    c.restore_session("")
    for body in sent[:4]:  # 2 in memory, 2 into the disk queue
        c.publish_data("t/x", 1, body)
    c._driver._interval_sync()
    for body in sent[4:]:  # into the disk queue, in the OS only
        c.publish_data("t/x", 1, body)
    rec.fail_name, rec.fail_next = "q-", 2  # close()'s sync of the queue, and its retry
    with pytest.raises(mqttsession.PersistenceError, match="disk queue"):
        c.close()
    assert rec.fail_next == 0
    assert _kept(path, QueueInMemory=2) == sent  # a restart (then close) in the same boot
    assert _kept(rec.image(path, tmp_path / "cut"), QueueInMemory=2) == sent


def test_a_restart_writes_again_the_journal_records_a_failed_write_back_left_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the restart's fdatasync of the records it recovered wrote nothing: the failed
    # sync had left their pages clean, and a power cut after the restart lost them
    rec = _powercut.install(monkeypatch)
    rec.fail_fsync = True
    path = _state_file(tmp_path)
    c = _client(path, 60_000)
    sent = [b"m%02d" % n for n in range(6)]
    c.restore_session("")
    c.publish_data("t/x", 1, sent[0])
    c._driver._interval_sync()
    for body in sent[1:]:
        c.publish_data("t/x", 1, body)
    rec.fail_next = 3  # the interval's fdatasync, then its rewrite (a snapshot's fsync), twice
    c._driver._interval_sync()
    c._driver._interval_sync()
    assert rec.fail_next == 0
    _abandon(c)  # killed
    d = _client(path, 60_000)
    try:
        d.restore_session("")
        cut = rec.image(path, tmp_path / "cut")  # a power cut after the restart
    finally:
        d.close()
    assert _kept(cut) == sent


def test_a_reopened_shared_log_writes_again_what_a_failed_write_back_left_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: opening the log counted every byte read as synced and synced nothing: the
    # records of a killed process (in the page cache, or left clean by a failed write-back)
    # stayed off the disk after the restart
    from mqttsession.sharedlog import SharedLog  # noqa: PLC0415
    from mqttsession.state import SessionState  # noqa: PLC0415

    rec = _powercut.install(monkeypatch)
    d = tmp_path / "gw"
    d.mkdir()
    log = SharedLog(str(d))
    view, st = log.session("a"), SessionState(client_id="a", clean_session=False)
    view.compact(st)
    view.keep_unsynced = True  # SessionSync=interval
    for body in (b"one", b"two"):
        view.append([st.accept("t", body, 1)], st, sync=False)  # in the OS only
    rec.fail_name, rec.fail_next = "sessions.log", 1
    with pytest.raises(mqttsession.PersistenceError):
        view.sync_pending()  # failed: the pages are clean, not on disk
    log.close()  # (as a kill -9 leaves it: no sync)
    SharedLog(str(d)).close()  # a restart
    cut = rec.image(d / "sessions.log", tmp_path / "cut").parent
    log = SharedLog(str(cut))
    try:
        got = log.session("a").recover()
        assert [m.payload for m in got.outgoing.values()] == [b"one", b"two"]
    finally:
        log.close()


@pytest.mark.parametrize("kind", ["session", "gateway"])
def test_offline_asyncio_sessions_sync_on_their_loop_not_a_thread_each(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: an ``AsyncSession`` (or ``AsyncGateway`` session) not connected started a
    timer thread for each interval sync, on the loop (a hunt: 5,390 thread starts in 10 s for
    300 offline gateway sessions at SessionSyncInterval=50). Now the timer is the loop's and
    the sync runs in its executor; the records reach the disk all the same."""
    import asyncio  # noqa: PLC0415

    from mqttsession import AsyncGateway, AsyncSession, Options  # noqa: PLC0415

    opts = Options(address="127.0.0.1:1")  # (never connected)
    timers: list[str] = []
    older = {t.ident for t in threading.enumerate()}  # (earlier tests' timers may linger)
    syncs: list[str] = []  # the threads the fdatasyncs ran in
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append(threading.current_thread().name)
        real(fd)
    monkeypatch.setattr(os, "fdatasync", fdatasync)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if kind == "gateway":
                gw = await stack.enter_async_context(AsyncGateway(str(tmp_path / "gw")))
                ss = [await gw.session(f"d{i}", opts, session_sync="interval", connect=False)
                      for i in range(10)]
            else:
                ss = []
                for i in range(10):
                    s = AsyncSession(opts, client_id=f"d{i}", session_sync="interval",
                                     state_file=str(tmp_path / f"s{i}"))
                    await s.start(connect=False)
                    stack.push_async_callback(s.close)
                    ss.append(s)
            for s in ss:
                await s.config("SessionSyncInterval=20")
            for _ in range(10):
                for s in ss:
                    await s.publish("t/x", b"x", 1)
                    timers.extend(t.name for t in threading.enumerate()
                                  if t.name == "mqttsession-sync" and t.ident not in older)
                await asyncio.sleep(0.03)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert not timers, f"{len(timers)} sightings of timer threads"
    loop_thread = threading.current_thread().name
    assert len([n for n in syncs if n != loop_thread]) >= 10, syncs  # (the executor's)


def test_an_interval_sync_whose_rewrite_failed_too_is_tried_again_by_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval's fdatasync fails and so does the rewrite from memory after it: the sync
    is armed again and, the disk working again, makes the records durable without any
    further publish or close (a hunt: without the re-arm they stayed in the OS only, while
    on_error said "tried again after the interval")."""
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    errors: list[str] = []
    c = _client(path, 100)
    c.on_error = lambda e: errors.append(e.description)
    try:
        c.restore_session("")
        c.publish_data("t/x", 1, b"m00")
        time.sleep(0.4)  # its interval sync done
        rec.fail_next, rec.fail_fsync = 2, True  # the next sync fails, and its rewrite
        c.publish_data("t/x", 1, b"m01")
        deadline = time.monotonic() + 10
        while not any("tried again after the interval" in e for e in errors):
            assert time.monotonic() < deadline, errors
            time.sleep(0.02)
        time.sleep(0.6)  # a few intervals, nothing published
        cut = rec.image(path, tmp_path / "cut")  # a power cut now, the client still open
    finally:
        c.close()
    assert _kept(cut) == [b"m00", b"m01"]
