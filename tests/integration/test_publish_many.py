"""publish_many (issue 13 point 2): a batch stored with one write and one sync, all or
nothing; in memory or in the disk queue; the asyncio and Mesh front ends too. Real mosquitto."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from mqttsession import AsyncSession, Client, Options, PublishRequest, QueueFullError, UsageError
from mqttsession import journal as journal_mod
from mqttsession.errors import PersistenceError
from mqttsession.testing.fsyncs import FsyncCounter, counting_fdatasyncs

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

number_of, unique = _procs.number_of, _procs.unique

pytestmark = pytest.mark.integration


@pytest.fixture
def counting() -> Iterator[FsyncCounter]:
    with counting_fdatasyncs() as counter:
        yield counter


def _client(path: Path, cid: str, **config: str) -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    for k, v in config.items():
        c.config(f"{k}={v}")
    return c


def test_a_batch_is_one_sync_and_every_message_arrives(mosquitto: Any, tmp_path: Path,
                                                      counting: FsyncCounter) -> None:
    tag = unique("many")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    c = _client(tmp_path / "s", unique("gw"))
    try:
        c.restore_session("")
        c.publish_data(topic, 1, b"warm-up")  # the file is open and compacted
        before = counting.syncs
        ids = c.publish_many([(topic, 1 + n % 2, _procs.payload(tag, n)) for n in range(100)])
        assert counting.syncs - before == 1  # one fdatasync for 100 messages (point 1)
        assert len(ids) == 100 and all(ids) and len(set(ids)) == 100
        c.connect(mosquitto.host, mosquitto.port)
        assert c.flush(30) is True
        counter.wait_numbers(tag, range(100))
        assert max(counter.counts(tag).values()) == 1
    finally:
        counter.close()
        c.close()


def test_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(tmp_path / "s", "many-all", MaxQueuedMessages="10")
    c.restore_session("")
    with pytest.raises(UsageError):
        c.publish_many([("ok/t", 1, b"a"), ("bad/#", 1, b"b")])
    with pytest.raises(QueueFullError):
        c.publish_many([("t", 1, b"x")] * 11)
    assert c.queue_stats().messages == 0

    real = journal_mod._write_all

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod, "_write_all", full)
    with pytest.raises(PersistenceError):
        c.publish_many([("t", 1, b"x"), ("t", 2, b"y"), PublishRequest("t", 1, "z", retain=True)])
    assert c.queue_stats().messages == 0  # every one of them retracted
    monkeypatch.setattr(journal_mod, "_write_all", real)
    assert len(c.publish_many([("t", 1, b"x"), ("t", 2, b"y")])) == 2
    c.close()
    d = _client(tmp_path / "s", "many-all")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"x", b"y"]
    d.close()


def test_a_batch_beyond_queue_in_memory_goes_to_the_disk_queue(tmp_path: Path,
                                                             counting: FsyncCounter) -> None:
    c = _client(tmp_path / "s", "many-disk", QueueInMemory="10")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    before = counting.syncs
    ids = c.publish_many([("t", 1, str(n).encode()) for n in range(50)])
    assert ids == [0] * 50 and counting.syncs - before <= 2  # the new segment, then the batch
    assert c.queue_stats().messages == 51 and len(c._engine.state.outgoing) == 1
    c.close()
    d = _client(tmp_path / "s", "many-disk", QueueInMemory="10")
    d.restore_session("")
    assert d.queue_stats().messages == 51
    d.close()


def test_asyncio_publish_many(mosquitto: Any, tmp_path: Path) -> None:
    tag = unique("amany")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> list[int]:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        session = AsyncSession(opts, client_id=unique("aio"), state_file=str(tmp_path / "a"))
        async with session as s:
            ids = await s.publish_many([PublishRequest(topic, 1, _procs.payload(tag, n))
                                        for n in range(20)])
            await s.flush()
            return ids

    try:
        ids = asyncio.run(main())
        assert len(ids) == 20 and all(ids)
        counter.wait_numbers(tag, range(20))
    finally:
        counter.close()


def test_the_publishes_of_one_batch_leave_in_one_write_in_order(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PUBLISHes the engine writes together (a batch into the in-flight window, a resume
    plan) reach paho as one write, one ``send``: whole, in order, each once."""
    from mqttsession._paho import PahoConnection

    tag = unique("joined")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    c = _client(tmp_path / "s", unique("joined"))
    writes: list[int] = []  # the PUBLISH packets in each write
    orig = PahoConnection.write

    def write(self: PahoConnection, packet: bytes, kind: int, packet_id: int = 0,
              qos: int = 0) -> None:
        if kind == 3:
            n, i = 0, 0
            while i < len(packet):  # count the packets in it (one-byte lengths here)
                assert packet[i] >> 4 == 3 and packet[i + 1] < 0x80
                n, i = n + 1, i + 2 + packet[i + 1]
            writes.append(n)
        orig(self, packet, kind, packet_id, qos)

    monkeypatch.setattr(PahoConnection, "write", write)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        c.publish_many([(topic, 1, f"{tag}:{n}".encode()) for n in range(15)])
        assert c.flush(30) is True
        assert writes[0] == 15  # the whole batch (within the window of 20) in one write
        counter.wait_numbers(tag, range(15))
        assert counter.order(tag) == list(range(15))
        assert max(counter.counts(tag).values()) == 1
    finally:
        counter.close()
        c.close()


class _RecordingSyncs:
    """``journal``'s ``os``: records the thread of each fdatasync; ``fail`` makes the next EIO."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        if self.fail:
            self.fail = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)


def test_asyncio_publish_many_syncs_off_the_loop_and_all_or_nothing(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncSession.publish_many`` under ``always``: its fdatasync runs in the executor, not
    on the loop's thread (before: on the loop, whatever the README said); a failed one takes
    every message of the batch back and raises, and the session goes on."""
    syncs = _RecordingSyncs()
    tag = unique("amany")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> None:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        async with AsyncSession(opts, client_id=unique("aio"), state_file=str(tmp_path / "a"),
                                session_sync="always") as s:
            monkeypatch.setattr(journal_mod, "os", syncs)
            loop_thread = threading.get_ident()
            ids = await s.publish_many([(topic, 1, _procs.payload(tag, n)) for n in range(10)])
            assert len(ids) == 10 and syncs.threads and loop_thread not in syncs.threads
            await s.flush()
            syncs.fail = True
            with pytest.raises(PersistenceError):
                await s.publish_many([(topic, 2, _procs.payload(tag, n)) for n in range(10, 20)])
            assert s.client.queue_stats().messages == 0  # every one of them taken back
            await s.publish_many([(topic, 1, _procs.payload(tag, n)) for n in range(20, 25)])
            await s.flush()

    try:
        asyncio.run(main())
        counter.wait_numbers(tag, [*range(10), *range(20, 25)])
        assert not [n for n in range(10, 20) if counter.counts(tag).get(n)]
    finally:
        counter.close()
