"""A record holding a page of zeros, one byte of it gone bad: recovery took the zero page for
a page a power cut never wrote back, and cut the records after it as a torn tail, in place,
with a WARNING only (a defect hunt: 51 of 52 messages of a journal, of an open disk-queue
segment, and every session's after it in a gateway's shared log). Such a cut can be a power
cut's (the records after it were never synced) or damage: recovery cannot tell. It now keeps
the file as found (``FILE.cut-<time>``) and logs the loss at ERROR whenever valid records
follow the bad one. Pure files, no network: a Client / Gateway that never connects."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mqttsession
from mqttsession import Client
from mqttsession.gateway import Gateway

ZEROS = bytes(20000)


def _flip_in_zeros(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    at = data.find(ZEROS) + 6000  # inside the record's own page of zeros
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


def _client(where: Path, queue_in_memory: int) -> Client:
    c = Client(client_id="zp", clean_session=False)
    c.config(f"SessionStateFile={where / 's'}")
    c.config("SessionSync=always")
    c.config(f"QueueInMemory={queue_in_memory}")
    return c


@pytest.mark.parametrize("where", ["journal", "disk queue"])
def test_a_cut_with_valid_records_after_it_keeps_the_file(tmp_path: Path, where: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    c = _client(tmp_path, 1000 if where == "journal" else 1)
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    c.publish_data("t", 1, b"Z" + ZEROS + b"Z")
    for i in range(50):
        c.publish_data("t", 1, f"m{i}".encode())
    del c  # killed: nothing saved or compacted
    files = sorted(tmp_path.rglob("*.open")) if where == "disk queue" else [tmp_path / "s.journal"]
    damaged = files[-1]
    found = _flip_in_zeros(damaged)
    errors: list[str] = []
    with caplog.at_level(logging.ERROR):
        again = _client(tmp_path, 1000)
        again.on_error = lambda e: errors.append(e.description)
        again.restore_session("")
    kept = sorted(damaged.parent.glob(damaged.name + ".cut-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == found
    assert "50 valid ones, cut with it" in caplog.text
    # the application is told too (on_error), not only the log
    assert [e for e in errors if "cut with what followed it" in e and str(kept[0]) in e], errors
    again.close()


def test_a_torn_last_record_alone_is_cut_without_a_copy(tmp_path: Path) -> None:
    """A kill -9 in the middle of a record's copy into the mapping leaves it torn, nothing
    valid after it: cut as before, no copy (it would pile up at every such restart)."""
    c = _client(tmp_path, 1000)
    c.config("SessionSync=none")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    c.publish_data("t", 1, b"last" * 100)
    del c
    journal = tmp_path / "s.journal"
    data = bytearray(journal.read_bytes())
    at = data.find(b"last" * 100) + 200
    data[at] ^= 0x01  # the last record torn
    journal.write_bytes(bytes(data))
    again = _client(tmp_path, 1000)
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [b"first"]
    assert not list(tmp_path.glob("*.cut-*"))
    again.close()


def test_a_gateway_shared_log_cut_keeps_the_log(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    child = f"""
import os
from mqttsession.gateway import Gateway
gw = Gateway({str(tmp_path / "gw")!r})
a, b = gw.client("dev-a"), gw.client("dev-b")
for c in (a, b):
    c.config("SessionSync=always")
a.publish_data("t/a", 1, b"Z" + bytes(20000) + b"Z")
for i in range(50):
    b.publish_data("t/b", 1, f"b{{i}}".encode())
os._exit(0)  # as a kill -9: nothing closed
"""
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
    subprocess.run([sys.executable, "-c", child], check=True, env=env, timeout=60)
    log_path = tmp_path / "gw" / "sessions.log"
    found = _flip_in_zeros(log_path)
    with caplog.at_level(logging.ERROR):
        gw = Gateway(tmp_path / "gw")
    kept = sorted(log_path.parent.glob("sessions.log.cut-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == found
    assert "valid ones, cut with it" in caplog.text
    # every session is told too (on_error, set before the restore), not only the log (before:
    # logged only: the application never knew a session may have lost records)
    for cid in ("dev-a", "dev-b"):
        errors: list[str] = []
        gw.client(cid, on_error=lambda e: errors.append(e.description))
        assert any("was cut with what followed it" in e for e in errors), errors
    gw.close()


def test_read_state_of_such_a_journal_writes_nothing(tmp_path: Path) -> None:
    """``read_state`` (``mqttsession inspect``) of a journal with a cut and valid records
    after it: read-only, so no ``.cut-`` copy is made and no file is changed (a hunt)."""
    from mqttsession.recovery import read_state  # noqa: PLC0415

    c = _client(tmp_path, 1000)
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    c.publish_data("t", 1, b"Z" + ZEROS + b"Z")
    for i in range(5):
        c.publish_data("t", 1, f"m{i}".encode())
    del c
    _flip_in_zeros(tmp_path / "s.journal")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    read_state(str(tmp_path / "s"), "zp")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
