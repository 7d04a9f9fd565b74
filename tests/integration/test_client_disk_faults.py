"""A Client / AsyncSession under one disk fault at a time (a sweep of every write, sync,
rename and open of a workload; each test failed before its fix):

* ``close()`` whose Disconnected record could not be written raised and left the connection
  running: the "closed" client went on receiving QoS 2 messages (and fought a new process
  for the session), which no application got;
* one failed ``open()`` of the snapshot after a compaction was forgotten, and the next write
  said the state file was "deleted or replaced" (nothing was);
* ``AsyncSession.flush()`` raised ``PersistenceError`` when a read of its disk queue failed
  (it read every queued message back to learn whether anything was held).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
import mqttsession.spool as spool_mod
from mqttsession import AsyncSession, Client, Options, PersistenceError
from mqttsession.testing.faults import FakeOs, fd_name

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sync", ["always", "interval", "none"])
def test_a_close_that_raises_still_ends_the_connection(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    armed = [False]

    def write(fd: int, data: Any) -> int:
        if armed[0] and fd_name(fd).endswith("s.journal"):
            armed[0] = False
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return os.write(fd, data)

    from mqttsession.mapped import MappedTail
    monkeypatch.setattr(MappedTail, "put", lambda *a: False)  # (records through write())
    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write))
    cid, topic = _procs.unique("cf"), f"mqs/{_procs.unique('cf')}"
    got: list[bytes] = []
    c = Client(client_id=cid, clean_session=False)
    c.on_message_in = lambda e: got.append(e.message)
    c.config(f"SessionSync={sync}")
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.connect(mosquitto.host, mosquitto.port, timeout=5)
    c.subscribe(topic, 2)
    time.sleep(0.3)
    armed[0] = True
    with pytest.raises(PersistenceError):
        c.close()
    monkeypatch.setattr(journal_mod, "os", os)
    assert not [t for t in threading.enumerate() if t.name.startswith("paho")]
    _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(2, "m0"), (2, "m1")])
    time.sleep(0.5)
    assert got == []  # closed: it takes nothing
    again = Client(client_id=cid, clean_session=False)
    again.config(f"SessionStateFile={tmp_path / 's'}")
    later: list[bytes] = []
    again.on_message_in = lambda e: later.append(e.message)
    again.restore_session("")
    try:
        again.connect(mosquitto.host, mosquitto.port, timeout=5)
        deadline = time.monotonic() + _procs.TIMEOUT
        while len(later) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert later == [b"m0", b"m1"]
    finally:
        again.close()


def test_a_snapshot_open_that_failed_once_is_held_at_the_next_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "s")
    armed = [False]

    def failing_open(p: Any, flags: int, *a: Any, **kw: Any) -> int:
        if armed[0] and os.fspath(p) == path and not flags & (os.O_WRONLY | os.O_RDWR):
            armed[0] = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        return os.open(p, flags, *a, **kw)

    monkeypatch.setattr(journal_mod, "os", FakeOs(open=failing_open))
    c = Client(client_id="snap", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    armed[0] = True
    c.save_session()  # its compaction's open of the new snapshot fails once
    c.publish_data("t", 1, b"second")  # (before: "deleted or replaced while in use")
    c.close()
    again = Client(client_id="snap", clean_session=False)
    again.config(f"SessionStateFile={path}")
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [b"first", b"second"]
    again.close()


def test_async_flush_counts_without_reading_the_disk_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    armed = [False]

    def failing_open(p: Any, flags: int, *a: Any, **kw: Any) -> int:
        if armed[0] and ".queue/" in os.fspath(p) and not flags & (os.O_WRONLY | os.O_RDWR):
            armed[0] = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        return os.open(p, flags, *a, **kw)

    async def main() -> None:
        s = AsyncSession(Options(address="127.0.0.1:1"), client_id="af",
                         state_file=tmp_path / "s")
        s.client.config("QueueInMemory=2")
        await s.start(connect=False)
        for i in range(5):
            await s.publish("t", b"m%d" % i, 1)
        monkeypatch.setattr(spool_mod, "os", FakeOs(open=failing_open))
        armed[0] = True
        assert await s.flush(timeout=0.2) is False
        monkeypatch.setattr(spool_mod, "os", os)
        await s.close()

    asyncio.run(main())


def test_a_close_whose_last_ack_fails_still_closes(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``receive()`` waiting when ``close()`` began hands out a QoS 2 message during the
    flush, then the disk fails: the last ack raises. A review: the session stayed open (its
    client reconnecting), and a second ``close()`` never returned."""
    from mqttsession.mapped import MappedTail

    armed = [False]

    def failing(real: Any) -> Any:
        def call(*a: Any) -> Any:
            if armed[0]:
                raise OSError(errno.EIO, "Input/output error (injected)")
            return real(*a)
        return call

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=failing(os.write),
                                                  fsync=failing(os.fsync),
                                                  fdatasync=failing(os.fdatasync)))
    real_put = MappedTail.put
    monkeypatch.setattr(MappedTail, "put",
                        lambda self, *a: False if armed[0] else real_put(self, *a))
    proxy = mqtt_proxy_factory(mosquitto)
    cid = _procs.unique("ca")
    topic = f"mqs/{cid}"

    async def main() -> None:
        s = await AsyncSession.create(Options(address=proxy.address, request_timeout_seconds=2),
                                      client_id=cid, state_file=tmp_path / "s",
                                      session_sync="always")
        await s.subscribe(f"{topic}/in", 2)
        proxy.drop("s2c", "PUBACK")  # close() waits in its flush
        await s.publish(f"{topic}/out", "x", 1)
        rx = asyncio.ensure_future(s.receive())
        await asyncio.sleep(0.1)
        closer = asyncio.ensure_future(s.close())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_procs.publish_direct, mosquitto.host, mosquitto.port,
                                f"{topic}/in", [(2, "q2")])
        m = await asyncio.wait_for(rx, 5)
        assert m is not None and m.message == b"q2"
        armed[0] = True
        with pytest.raises(PersistenceError):
            await asyncio.wait_for(closer, 10)
        assert s.closed and not s.client.connected
        await asyncio.wait_for(s.close(), 5)  # (before: never returned)
        armed[0] = False

    asyncio.run(main())
