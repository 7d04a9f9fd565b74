"""Group commit (issue 13 point 1): with SessionSync=always, publishers in several threads and
concurrent asyncio publishes share fdatasyncs; each record is still durable before its call
returns and before its PUBLISH leaves. Real mosquitto."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, Options
from mqttsession import journal as journal_mod
from mqttsession.driver import Driver
from mqttsession.engine import Engine
from mqttsession.testing.fsyncs import FsyncCounter

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

number_of, unique = _procs.number_of, _procs.unique

pytestmark = pytest.mark.integration

THREADS, EACH = 8, 150


def test_threads_share_fdatasyncs_and_nothing_is_published_before_it_is_durable(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = FsyncCounter()
    monkeypatch.setattr(journal_mod, "os", counting)
    tag = unique("gc")
    topic = f"mqs/{tag}"
    c = Client(client_id=unique("gc"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.connect(mosquitto.host, mosquitto.port)
    journal = c._file.journal
    assert journal is not None
    early: list[int] = []
    where: dict[int, tuple[int, int, int]] = {}  # seq -> where its record ends in the journal
    orig, orig_hold = Engine._publish, Driver.hold

    def hold(self: Driver, seq: int) -> Any:
        token = orig_hold(self, seq)
        where[seq] = token
        return token

    def publish(self: Engine, m: Any, dup: bool) -> Any:  # persistence point 1
        token = where.get(m.seq)
        if token is not None and not journal.is_synced(token[1], token[2]):
            early.append(m.seq)  # its PUBLISH before its record is on disk
        return orig(self, m, dup)

    monkeypatch.setattr(Driver, "hold", hold)
    monkeypatch.setattr(Engine, "_publish", publish)
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    returned: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(EACH):
            n = k * EACH + i
            c.publish_data(topic, 1 + n % 2, _procs.payload(tag, n).encode())
            with lock:
                returned.append(n)

    before = counting.syncs
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = THREADS * EACH
        assert c.flush(60) is True
        per_message = (counting.syncs - before) / total
        print(f"group commit: {THREADS} threads, {per_message:.3f} fdatasync per message")
        # shared (one thread alone pays 1.0 for QoS 1): the threads take turns, one
        # fdatasync a turn
        assert per_message < 0.5, per_message
        assert len(where) > total // 2  # most went through the group commit
        assert not early, early[:10]
        counter.wait_numbers(tag, range(total))
        assert all(counter.counts(tag)[n] == 1 for n in range(total) if n % 2)
    finally:
        counter.close()
        c.close()


def test_concurrent_asyncio_publishes_share_fdatasyncs(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = FsyncCounter()
    monkeypatch.setattr(journal_mod, "os", counting)
    tag = unique("agc")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> tuple[int, int]:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        session = AsyncSession(opts, client_id=unique("agc"), state_file=str(tmp_path / "a"))
        async with session as s:
            before = counting.syncs
            ids = await asyncio.gather(*(s.publish(topic, _procs.payload(tag, n), 1)
                                         for n in range(100)))
            syncs = counting.syncs - before
            await s.flush()
            return len(set(ids)), syncs

    try:
        distinct, syncs = asyncio.run(main())
        assert distinct == 100
        print(f"group commit: 100 concurrent asyncio publishes, {syncs} fdatasyncs")
        # 100 concurrent publishes: one executor job syncs for every publish waiting when it
        # starts, so a handful of fdatasyncs, not one each
        assert syncs <= 10, syncs
        counter.wait_numbers(tag, range(100))
    finally:
        counter.close()


def test_a_failed_shared_sync_fails_its_publishes_and_takes_them_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fdatasync a group commit waits for fails (EIO): publish_data raises
    PersistenceError, the message is not in the session, and the next publish rewrites the
    file from memory and succeeds; a restart finds exactly what was accepted."""
    import errno

    from mqttsession.errors import PersistenceError

    c = Client(client_id="gc-fail", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.publish_data("t", 1, b"kept")

    class _Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_mod, "os", _Failing())
    with pytest.raises(PersistenceError):
        c.publish_data("t", 1, b"lost")
    monkeypatch.setattr(journal_mod, "os", os)
    assert [m.message for m in c.outgoing_messages] == [b"kept"]
    c.publish_data("t", 2, b"after")
    assert [m.message for m in c.outgoing_messages] == [b"kept", b"after"]
    c.close()
    d = Client(client_id="gc-fail", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"kept", b"after"]
    d.close()


@pytest.mark.parametrize("fails", ["fdatasync", "write"])
def test_a_failed_shared_sync_fails_every_asyncio_publish_waiting_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    """Concurrent AsyncSession publishes share one fdatasync, and their records wait in
    memory for the publisher that runs it to write them all first; when that fdatasync (EIO)
    or that write (ENOSPC) fails, every one of them raises PersistenceError and none is left
    in the session, and the next publish succeeds; a restart finds exactly what was
    accepted."""
    import errno

    from mqttsession.errors import PersistenceError

    failed: list[str] = []

    class _Failing:
        def __getattr__(self, name: str) -> Any:
            if name == fails:
                return self._fail
            return getattr(os, name)

        def _fail(self, *_args: Any) -> Any:
            failed.append(fails)
            err = errno.EIO if fails == "fdatasync" else errno.ENOSPC
            raise OSError(err, os.strerror(err))

    async def main() -> list[bytes]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="agc-fail",
                                      state_file=str(tmp_path / "a"), connect=False)
        await s.publish("t", b"kept", 1)
        monkeypatch.setattr(journal_mod, "os", _Failing())
        results = await asyncio.gather(*(s.publish("t", b"lost%d" % i, 1) for i in range(20)),
                                       return_exceptions=True)
        monkeypatch.setattr(journal_mod, "os", os)
        assert all(isinstance(r, PersistenceError) for r in results), results
        assert failed  # the records met the failing disk
        await s.publish("t", b"after", 2)
        held = [m.message for m in s._client.outgoing_messages]
        await s.close()
        return held

    assert asyncio.run(main()) == [b"kept", b"after"]
    d = Client(client_id="agc-fail", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 'a'}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"kept", b"after"]
    d.close()


def test_compactions_while_threads_share_syncs_do_not_deadlock(
        mosquitto: Any, tmp_path: Path) -> None:
    """A compaction (the journal past JournalMaxBytes) waits for a running shared fdatasync
    while holding the journal's mutex; the thread that runs it must never need that mutex
    again (a deadlock found by bench_batch with 16 threads). A shared sync writes the turn's
    records outside the session lock, and still never takes the journal past its bound."""
    c = Client(client_id=unique("gcc"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("JournalMaxBytes=4096")
    c.connect(mosquitto.host, mosquitto.port)
    errors: list[BaseException] = []
    sizes: list[int] = []
    jp = f"{tmp_path / 's'}{journal_mod.JOURNAL_SUFFIX}"

    def worker() -> None:
        try:
            for _ in range(100):
                c.publish_data("t/gcc", 1, b"x" * 50)
                with c._lock:  # (no record is between its append and a due compaction)
                    sizes.append(os.path.getsize(jp))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "publishers stuck (deadlock)"
        assert not errors, errors
        assert len(sizes) == 1600 and max(sizes) <= 4096
        assert c.flush(60) is True
    finally:
        if not any(t.is_alive() for t in threads):
            c.close()


@pytest.mark.parametrize("bound", [0, 1024], ids=["no compaction", "compactions"])
def test_threads_whose_shared_sync_fails_raise_and_only_what_returned_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int) -> None:
    """Publishers in eight threads take turns running each other's publishes (one hold of the
    lock, one fdatasync a batch); every third fdatasync fails (EIO), and with a small journal
    bound every third fsync too (a compaction's, right after a held record). A publish that
    returned is in the session, in its thread's order, and after a restart; one that raised
    PersistenceError is in neither."""
    import errno

    from mqttsession.errors import PersistenceError
    from mqttsession.turns import Turns

    c = Client(client_id="gc-batch-fail", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")  # the journal is open: the group commit applies
    c.config(f"JournalMaxBytes={bound}")
    calls = [0]
    count_lock = threading.Lock()

    class _Flaky:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            with count_lock:
                calls[0] += 1
                fail = calls[0] % 3 == 0
            if fail:
                raise OSError(errno.EIO, "Input/output error")
            os.fdatasync(fd)

        def fsync(self, fd: int) -> None:  # a compaction's (write_atomic)
            if bound:
                self.fdatasync(fd)
            else:
                os.fsync(fd)

    batches: list[int] = []
    orig_run = Turns._run

    def run(batch: list[Any]) -> Any:
        batches.append(len(batch))
        return orig_run(batch)

    monkeypatch.setattr(Turns, "_run", staticmethod(run))
    monkeypatch.setattr(journal_mod, "os", _Flaky())
    returned: dict[int, list[bytes]] = {k: [] for k in range(8)}
    failed: list[bytes] = []

    def worker(k: int) -> None:
        for i in range(60):
            data = f"{k}-{i}".encode()
            try:
                c.publish_data("t", 1 + i % 2, data)
            except PersistenceError:
                failed.append(data)
            else:
                returned[k].append(data)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "publishers stuck"
    monkeypatch.setattr(journal_mod, "os", os)
    assert failed and any(returned.values())
    assert max(batches) > 1  # turns ran several threads' publishes at once

    def per_thread(messages: list[bytes]) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {k: [] for k in range(8)}
        for m in messages:
            if m != b"first":
                out[int(m.split(b"-")[0])].append(m)
        return out

    assert per_thread([m.message for m in c.outgoing_messages]) == returned
    c.close()
    d = Client(client_id="gc-batch-fail", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert d.outgoing_messages[0].message == b"first"
    assert per_thread([m.message for m in d.outgoing_messages]) == returned
    d.close()
