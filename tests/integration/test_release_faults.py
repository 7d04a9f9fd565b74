"""Group-commit publishes (publishers in several threads, every ``AsyncSession.publish``) under
a failing disk, at the edges a sweep found (each test fails before its fix):

* a durable publish released while the disk queue is read back, the read-back record's sync
  failing: the messages were marked sent but never written (no reconnect: stuck, and a later
  publish overtook them), and a publisher whose record was durable was told it failed;
* a group fdatasync that "succeeded" while another writer's failed (``_failed_meanwhile``)
  failed its publishers but left their records in the file: with the rewrites failing too, a
  kill -9 then restored a message its publisher was told was not stored.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
from mqttsession import Client
from mqttsession.errors import PersistenceError
from mqttsession.testing.fake_broker import FakeBroker

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


class _FailingOs:
    """``os`` for the journal whose fdatasyncs fail (EIO) as ``fail(call_number)`` says."""

    def __init__(self, fail: Any) -> None:
        self.fail, self.calls = fail, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        self.calls += 1
        if self.fail(self.calls):
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)


@pytest.mark.parametrize("synced_by", ["its own settle", "another thread's sync"])
def test_a_read_back_failing_as_a_durable_publish_is_released_drops_the_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced_by: str) -> None:
    with FakeBroker(qos1_ack="none") as broker:  # no PUBACK: the window stays as it is
        c = Client(client_id="relpump", clean_session=False)
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.config("QueueInMemory=4")
        errors: list[str] = []
        c.on_error = lambda e: errors.append(e.description)
        c.restore_session("")
        c.connect(broker.host, broker.port)
        try:
            for n in range(3):
                c.publish_data("t", 1, b"B%d" % n)  # sent, in flight
            broker.wait_for("PUBLISH", 3)
            d = c._driver
            # a publish taking the group commit (as publish_data does while another thread
            # publishes, and every AsyncSession.publish): its record held, its sync to come
            (_pid, _rest), token = c._publish_locked("t", 1, b"A", None, b"", True)
            assert token is not None
            c.publish_data("t", 1, b"S")  # memory holds 4: S goes to the disk queue
            if synced_by == "another thread's sync":
                assert d.wait_durable(token) is None  # A durable, not released yet
            # the read-back record's sync fails (after A's own, when settle runs that)
            first = 2 if synced_by == "its own settle" else 1
            monkeypatch.setattr(journal_mod, "os", _FailingOs(lambda n: n == first))
            d.settle(token)  # before: raised for a durable message, or left A and S unsent
            monkeypatch.setattr(journal_mod, "os", os)
            assert any("connection dropped" in e for e in errors), errors
            c.publish_data("t", 1, b"later")
            deadline = time.monotonic() + 10
            want = [b"B0", b"B1", b"B2", b"A", b"S", b"later"]
            while time.monotonic() < deadline:  # (resent after reconnecting, then later)
                got = [p.payload for p in broker.packets("PUBLISH")]
                if got[-6:] == want:
                    break
                time.sleep(0.05)
            assert got[-6:] == want, got
        finally:
            c.close()


@pytest.mark.parametrize("rewrites_fail", [2, 4])
def test_a_publish_failed_by_another_writers_failed_sync_is_not_found_after_a_kill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrites_fail: int) -> None:
    path = tmp_path / "w" / "s"
    path.parent.mkdir()
    c = Client(client_id="ivf", clean_session=False)  # (the id _powercut.kept restores)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")  # the journal is open: the group commit applies
    d, j = c._driver, c._file.journal
    started, go = threading.Event(), threading.Event()
    state = {"fsync_fail": rewrites_fail, "first": True}

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            if threading.current_thread().name == "waiter":
                started.set()  # A's group fdatasync: under way outside the mutex ...
                assert go.wait(5)
                while not j._broken:  # (the failed writer marks the journal broken)
                    time.sleep(0.001)
                os.fdatasync(fd)  # ... and it succeeds
                return
            if state["first"]:  # publish_many's own fdatasync, meanwhile: EIO
                state["first"] = False
                go.set()
                raise OSError(errno.EIO, "Input/output error (injected)")
            os.fdatasync(fd)

        def fsync(self, fd: int) -> None:  # the rewrites' (write_atomic)
            if state["fsync_fail"]:
                state["fsync_fail"] -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")
            os.fsync(fd)

    (_pid, _rest), token = c._publish_locked("t", 1, b"A", None, b"", True)
    assert token is not None
    monkeypatch.setattr(journal_mod, "os", _Os())
    out: dict[str, Any] = {}

    def waiter() -> None:  # A's publisher: its record written, its fdatasync under way
        out["err"] = d.wait_durable(token)

    t = threading.Thread(target=waiter, name="waiter", daemon=True)
    t.start()
    assert started.wait(5)
    with pytest.raises(PersistenceError):  # another thread's write: its fdatasync fails
        c.publish_many([("t", 1, b"B")])
    go.set()
    t.join(5)
    assert not t.is_alive()
    with pytest.raises(PersistenceError):
        d.release(token, out["err"])  # A's publisher is told it failed
    monkeypatch.setattr(journal_mod, "os", os)
    try:
        assert [m.message for m in c.outgoing_messages] == [b"first"]
        with c._lock:  # a kill -9 now: A must not come back (before: it did)
            assert _powercut.kept(_powercut.copy_now(path, tmp_path / "kill9")) == [b"first"]
    finally:
        c.close()
