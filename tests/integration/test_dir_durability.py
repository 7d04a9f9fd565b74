"""Directory entries under power cuts: a name made (the disk queue's directory, a gateway's
``queues/``, a ``FILE.cut-*`` copy) is durable before what depends on it (no broker).
The model (``_powercut.DirRecorder``): a directory's entries are those of its last fsync."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import mqttsession.gateway as gateway_mod
from mqttsession import Client, UsageError

from _powercut import DirRecorder, Recorder, gateway_kept, install, interval_client, kept

SENT = [b"m%d" % n for n in range(6)]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    return tmp_path / "d"


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_disk_queue_directory_made_durable(monkeypatch: pytest.MonkeyPatch, base: Path,
                                           tmp_path: Path, mode: str) -> None:
    """The first message to spill makes FILE.queue/: a power cut after the publishes returned
    (interval: after its window) finds every one of them."""
    rec = DirRecorder(base)
    install(monkeypatch, rec)
    c = interval_client(base / "s", 50, "dq", QueueInMemory=2)
    c.config(f"SessionSync={mode}")
    c.restore_session("")
    for body in SENT:
        c.publish_data("t/x", 1, body)
    if mode == "interval":
        time.sleep(0.5)  # ten windows
    rec.dir_image(tmp_path / "cut")
    c.close()
    rec.release()
    monkeypatch.undo()
    assert kept(tmp_path / "cut" / "s", "dq", QueueInMemory=2) == SENT


def test_gateway_state_dir_made_durable(monkeypatch: pytest.MonkeyPatch, base: Path,
                                        tmp_path: Path) -> None:
    """A gateway that makes its STATE_DIR (and queues/): a power cut keeps a session's disk
    queue."""
    rec = DirRecorder(base)
    install(monkeypatch, rec)
    monkeypatch.setattr(gateway_mod, "os", rec)
    gw = gateway_mod.Gateway(base / "gw")
    try:
        c = gw.client("dev1")
        c.config("QueueInMemory=2")
        for body in SENT:
            c.publish_data("t/x", 1, body)
        rec.dir_image(tmp_path / "cut")
    finally:
        gw.close()
        rec.release()
    monkeypatch.undo()
    assert gateway_kept(tmp_path / "cut" / "gw", "dev1") == SENT


def test_cut_copy_name_durable_before_the_cut(monkeypatch: pytest.MonkeyPatch, base: Path,
                                              tmp_path: Path) -> None:
    """A bad record followed by valid ones: the journal is cut only once its FILE.cut-* copy
    (name and bytes) would survive a power cut."""
    zeros = bytes(20000)
    c = interval_client(base / "s", 1000, "cc")
    c.config("SessionSync=always")
    c.restore_session("")
    for body in [b"first", b"Z" + zeros + b"Z"] + [b"m%d" % i for i in range(50)]:
        c.publish_data("t", 1, body)
    c._file.journal._lock_fd = None  # type: ignore[union-attr]  # (as a kill -9 leaves it)
    del c
    journal = base / "s.journal"
    data = bytearray(journal.read_bytes())
    data[data.find(zeros) + 6000] ^= 1  # a bit gone bad in a page of zeros
    journal.write_bytes(bytes(data))
    for lock in base.glob("*.lock"):
        lock.unlink()
    rec = DirRecorder(base)
    install(monkeypatch, rec)
    again = interval_client(base / "s", 1000, "cc")
    again.config("SessionSync=always")
    again.on_error = lambda e: None
    again.restore_session("")
    assert list(base.glob("s.journal.cut-*"))
    rec.dir_image(tmp_path / "cut")
    again.close()
    rec.release()
    copies = list((tmp_path / "cut").glob("s.journal.cut-*"))
    assert copies and copies[0].read_bytes() == bytes(data)


def test_state_file_change_refused_while_disk_queue_holds(tmp_path: Path) -> None:
    """SessionStateFile cannot move while messages wait in its disk queue (a new file would
    name a queue without them): UsageError, nothing changed; nor, without a disk queue, while
    the session in the open file holds messages (session 35: the old file kept them too, a
    message live in two files); an empty session moves."""
    c = Client(client_id="sw", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 'a'}")
    c.config("QueueInMemory=2")
    c.restore_session("")
    for body in SENT:
        c.publish_data("t/x", 1, body)
    with pytest.raises(UsageError, match="4 messages wait in the disk queue"):
        c.config(f"SessionStateFile={tmp_path / 'b'}")
    assert c.config("SessionStateFile") == str(tmp_path / "a")
    c.config(f"SessionStateFile={tmp_path / 'a'}")  # (the same file: no change)
    c.close()
    assert kept(tmp_path / "a", "sw", QueueInMemory=2) == SENT

    d = Client(client_id="sw2", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 'c'}")
    d.restore_session("")
    for body in SENT:
        d.publish_data("t/x", 1, body)
    with pytest.raises(UsageError, match="two files"):
        d.config(f"SessionStateFile={tmp_path / 'e'}")
    d.close()
    assert kept(tmp_path / "c", "sw2") == SENT and not (tmp_path / "e").exists()
    f = Client(client_id="sw3", clean_session=False)
    f.config(f"SessionStateFile={tmp_path / 'g'}")
    f.restore_session("")
    f.config(f"SessionStateFile={tmp_path / 'h'}")  # empty: it moves
    f.restore_session("")
    for body in SENT:
        f.publish_data("t/x", 1, body)
    f.close()
    assert kept(tmp_path / "h", "sw3") == SENT


def test_lowered_sync_interval_governs_an_armed_sync(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """SessionSyncInterval lowered while a sync is armed under the old value: what waits is
    synced within the new interval, not the old one."""
    c = interval_client(tmp_path / "s", 600_000, "iv")
    c.restore_session("")
    rec: Recorder = install(monkeypatch)
    c.publish_data("t/x", 1, b"under ten minutes")  # (its packet ids' reservation: synced)
    before = rec.syncs_of("s.journal")
    c.config("SessionSyncInterval=50")
    c.publish_data("t/x", 1, b"under 50 ms")
    deadline = time.monotonic() + 10
    while rec.syncs_of("s.journal") == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.syncs_of("s.journal") > before
    c.close()
