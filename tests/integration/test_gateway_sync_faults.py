"""A gateway's shared log under a failing fdatasync, for sessions under SessionSync=none (a
sweep's findings; each test fails before): a failed sync of the log (a compaction's, another
session's, one at close) cut every record not yet synced, and a none session's records never
are, so publishes that had returned were gone from the file (a kill -9 lost them, and a close
left them out for good). The log now keeps them, as it does under interval."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mqttsession import Client
from mqttsession.gateway import Gateway

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

_kept_by = _powercut.gateway_kept


def _none(gw: Gateway, cid: str, **settings: object) -> Client:
    c = gw.client(cid, clean_session=False)
    c.config("SessionSync=none")
    for k, v in settings.items():
        c.config(f"{k}={v}")
    c.on_error = lambda e: None
    return c


def test_a_failed_compaction_sync_keeps_a_none_sessions_returned_publishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _powercut.install(monkeypatch)
    gw = Gateway(tmp_path / "gw")
    try:
        b = _none(gw, "b", JournalMaxBytes=1500)
        rec.fail_name, rec.fail_next = "sessions.log", 1  # the next fdatasync: a compaction's
        sent: list[bytes] = []
        while rec.fail_next:
            sent.append(b"b%02d-" % len(sent) + b"x" * 300)
            b.publish_data("t/b", 1, sent[-1])  # returns: the record is in the OS
        killed = _powercut.copy_now(tmp_path / "gw", tmp_path / "kill9")
    finally:
        gw.close()
    assert _kept_by(killed, "b") == sent  # before: [] (all cut)


def test_another_sessions_failed_sync_keeps_a_none_sessions_returned_publish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _powercut.install(monkeypatch)
    gw = Gateway(tmp_path / "gw")
    try:
        a = gw.client("a", clean_session=False)
        a.config("SessionSync=always")
        b = _none(gw, "b")
        b.publish_data("t/b", 1, b"b0")
        rec.fail_name, rec.fail_next = "sessions.log", 1
        with pytest.raises(Exception):
            a.publish_data("t/a", 1, b"a0")  # its fdatasync fails: refused
        killed = _powercut.copy_now(tmp_path / "gw", tmp_path / "kill9")
    finally:
        gw.close()
    assert _kept_by(killed, "b") == [b"b0"]
    assert _kept_by(killed, "a") == []


def test_a_failed_sync_at_close_keeps_the_none_sessions_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _powercut.install(monkeypatch)
    gw = Gateway(tmp_path / "gw")
    a, b = _none(gw, "a"), _none(gw, "b")
    for n in range(3):
        a.publish_data("t/a", 1, b"a%d" % n)
        b.publish_data("t/b", 1, b"b%d" % n)
    rec.fail_name, rec.fail_next = "sessions.log", 1  # close(): a's final save's fdatasync
    gw.close()
    assert _kept_by(tmp_path / "gw", "a") == [b"a0", b"a1", b"a2"]  # before: []
    assert _kept_by(tmp_path / "gw", "b") == [b"b0", b"b1", b"b2"]


class _DirFsyncFails(_powercut.Recorder):
    """The power-cut model, whose next ``fail_dir`` fsyncs of a directory fail (EIO)."""

    fail_dir = 0

    def fsync(self, fd: int) -> None:
        if self.fail_dir and stat.S_ISDIR(os.fstat(fd).st_mode):
            self.fail_dir -= 1
            raise OSError(5, "Input/output error (injected)")
        super().fsync(fd)


def test_a_rotation_at_close_whose_directory_sync_fails_keeps_the_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _powercut.install(monkeypatch, _DirFsyncFails())
    d = tmp_path / "gw"
    gw = Gateway(d)
    gw.store.max_log_bytes = 5000
    cs = {cid: _none(gw, cid, JournalMaxBytes=1500) for cid in ("a", "b")}
    sent: dict[str, list[bytes]] = {"a": [], "b": []}
    for r in range(7):
        for cid, c in cs.items():
            sent[cid].append(f"{cid}{r:02d}-".encode() + b"x" * 300)
            c.publish_data(f"t/{cid}", 1, sent[cid][-1])
    # close(): a's final snapshot makes the log rotate; the rotation's directory fsync fails
    # after its os.replace put the new log in place
    rec.fail_dir = 1
    gw.close()
    assert rec.fail_dir == 0
    assert _kept_by(d, "a") == sent["a"]  # before: a05, a06 gone
    assert _kept_by(d, "b") == sent["b"]
