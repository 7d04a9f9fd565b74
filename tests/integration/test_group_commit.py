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

number_of, unique, _crash_copy = _procs.number_of, _procs.unique, _procs.crash_copy

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


def _asyncio_rounds(mosquitto: Any, tmp_path: Path, counting: FsyncCounter, rounds: int
                    ) -> tuple[int, int]:
    """``rounds`` of 100 concurrent ``AsyncSession.publish`` calls under ``always``, each
    message received once; (distinct packet ids of the first round, fdatasyncs)."""
    tag = unique("agc")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> tuple[int, int]:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        session = AsyncSession(opts, client_id=unique("agc"), state_file=str(tmp_path / "a"))
        async with session as s:
            before, first = counting.syncs, 0
            for r in range(rounds):
                ids = await asyncio.gather(*(s.publish(topic, _procs.payload(tag, r * 100 + n),
                                                       1) for n in range(100)))
                first = first or len(set(ids))
            syncs = counting.syncs - before
            await s.flush()
            return first, syncs

    try:
        got = asyncio.run(main())
        counter.wait_numbers(tag, range(100 * rounds))
        return got
    finally:
        counter.close()


def test_concurrent_asyncio_publishes_share_fdatasyncs(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = FsyncCounter()
    monkeypatch.setattr(journal_mod, "os", counting)
    distinct, syncs = _asyncio_rounds(mosquitto, tmp_path, counting, 1)
    assert distinct == 100
    print(f"group commit: 100 concurrent asyncio publishes, {syncs} fdatasyncs")
    # 100 concurrent publishes: one executor job syncs for every publish waiting when it
    # starts, so a handful of fdatasyncs, not one each
    assert syncs <= 10, syncs


def test_asyncio_publishes_synced_by_the_job_before_need_no_job_of_their_own(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first of 100 concurrent publishes starts an executor job; its fdatasync writes the
    # records of all that were appended before it ran, so the ones that waited for the next
    # job are durable already: they are settled on the loop, without a thread hop
    counting = FsyncCounter()
    monkeypatch.setattr(journal_mod, "os", counting)
    jobs = [0]
    real = Driver.wait_durable

    def counted(self: Driver, token: tuple[int, int, int], release: bool = False
                ) -> Exception | None:
        jobs[0] += 1
        return real(self, token, release)

    monkeypatch.setattr(Driver, "wait_durable", counted)
    _, syncs = _asyncio_rounds(mosquitto, tmp_path, counting, 5)
    print(f"5 x 100 concurrent asyncio publishes: {jobs[0]} executor jobs, {syncs} fdatasyncs")
    assert 5 <= jobs[0] <= syncs, (jobs[0], syncs)  # (a job that found them synced: none)


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
    or that write (ENOSPC) fails, the publisher that ran it raises PersistenceError and its
    message is not in the session (unless a rewrite made it durable first: see below). The others fail with it, unless the file was rewritten
    whole from memory meanwhile (the failed publish's message taken back, theirs in it, with
    an fsync that worked: after a failed fdatasync): a publish that returned is in the
    session, one that raised is not, and a restart finds exactly what returned."""
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

    returned: list[bytes] = []

    async def main() -> list[bytes]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="agc-fail",
                                      state_file=str(tmp_path / "a"), connect=False)
        await s.publish("t", b"kept", 1)
        monkeypatch.setattr(journal_mod, "os", _Failing())
        results = await asyncio.gather(*(s.publish("t", b"lost%d" % i, 1) for i in range(20)),
                                       return_exceptions=True)
        monkeypatch.setattr(journal_mod, "os", os)
        assert all(isinstance(r, (PersistenceError, int)) for r in results), results
        # the one that ran the failed call fails, unless its sync ran before the others were
        # appended: the next one then found the journal cut and rewrote it whole (that message
        # in it, with an fsync that worked), so it is durable and returns; one after it fails
        assert any(isinstance(r, PersistenceError) for r in results), results
        if fails == "write":  # (the rewrite cannot write either)
            assert all(isinstance(r, PersistenceError) for r in results), results
        assert failed  # the records met the failing disk
        returned.extend(b"lost%d" % i for i, r in enumerate(results) if isinstance(r, int))
        await s.publish("t", b"after", 2)
        held = [m.message for m in s._client.outgoing_messages]
        await s.close()
        return held

    assert asyncio.run(main()) == [b"kept", *returned, b"after"]
    d = Client(client_id="agc-fail", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 'a'}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"kept", *returned, b"after"]
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
    # what a kill -9 now would leave: exactly what returned (none that raised)
    with c._lock:  # noqa: SLF001  (no write under way while the files are copied)
        crashed = _crash_copy(tmp_path / "s", "gc-batch-fail")
    assert per_thread(crashed) == returned
    c.close()
    d = Client(client_id="gc-batch-fail", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert d.outgoing_messages[0].message == b"first"
    assert per_thread([m.message for m in d.outgoing_messages]) == returned
    d.close()


def test_a_failed_sync_then_a_rewrite_keeps_the_message_it_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group commit's fdatasync fails (EIO) and cuts the journal; before its publisher takes
    the message back, another thread's record rewrites the file whole from memory, with that
    message (on disk now). The publish then returns (the message is durable and stays), not
    PersistenceError: what a kill -9 leaves is exactly what the publishers were told (before,
    the publish raised, the message was taken back from memory but not from the file, and a
    restart found it: a duplicate once the application published it again)."""
    import errno

    path = tmp_path / "s"
    c = Client(client_id="gc-rewrite", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")  # the journal is open: the group commit applies
    d = c._driver  # noqa: SLF001  (the two halves of a group-commit publish, one at a time)

    class _Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

    (_pid, rest), token = c._publish_locked("t", 1, b"A", None, b"", True)  # noqa: SLF001
    assert token is not None
    monkeypatch.setattr(journal_mod, "os", _Failing())
    err = d.wait_durable(token)
    assert err is not None  # cut: A's record is not in the file
    monkeypatch.setattr(journal_mod, "os", os)
    c.subscribe("u", 1)  # another thread's record: the file is rewritten whole, A with it
    d.release(token, err)  # A's publisher: durable after all, no error
    assert [m.message for m in c.outgoing_messages] == [b"first", b"A"]
    assert _crash_copy(path, "gc-rewrite") == [b"first", b"A"]  # what a kill -9 leaves
    c.close()



def test_a_publish_interrupted_in_its_fdatasync_is_not_found_after_a_kill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt in a group commit's fdatasync: the record was written, not synced,
    so the message is taken back (``on_error`` says so), and the file is rewritten without it:
    what a kill -9 leaves then does not hold it (before, the written record came back after a
    restart: a duplicate once the application published it again)."""
    path = tmp_path / "s"
    c = Client(client_id="gc-interrupt", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    reported: list[str] = []
    c.on_error = lambda e: reported.append(e.description)
    c.publish_data("t", 1, b"first")
    (_pid, _rest), token = c._publish_locked("t", 1, b"A", None, b"", True)  # noqa: SLF001
    assert token is not None

    class _Interrupted:  # (once: Ctrl-C is pressed once)
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            monkeypatch.setattr(journal_mod, "os", os)
            raise KeyboardInterrupt

    monkeypatch.setattr(journal_mod, "os", _Interrupted())
    with pytest.raises(KeyboardInterrupt):
        c._driver.settle(token)  # noqa: SLF001
    assert [m.message for m in c.outgoing_messages] == [b"first"]
    assert reported and "taken back" in reported[0], reported
    assert _crash_copy(path, "gc-interrupt") == [b"first"]
    c.publish_data("t", 1, b"after")
    assert _crash_copy(path, "gc-interrupt") == [b"first", b"after"]
    c.close()


def test_the_rewrite_after_an_interrupted_publish_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same interruption, and the rewrite that takes the message out of the file fails
    once (its fsync: EIO): it is tried again at once, so what a kill -9 leaves does not hold
    the message even before the session's next write."""
    import errno

    path = tmp_path / "s"
    c = Client(client_id="gc-retry", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.on_error = lambda e: None
    c.publish_data("t", 1, b"first")
    (_pid, _rest), token = c._publish_locked("t", 1, b"A", None, b"", True)  # noqa: SLF001
    assert token is not None
    fsyncs: list[str] = []

    class _Interrupted:  # Ctrl-C in the fdatasync, then one fsync of the rewrite fails
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            raise KeyboardInterrupt

        def fsync(self, fd: int) -> None:
            fsyncs.append("failed" if not fsyncs else "ok")
            if len(fsyncs) == 1:
                raise OSError(errno.EIO, "Input/output error")
            os.fsync(fd)

    monkeypatch.setattr(journal_mod, "os", _Interrupted())
    with pytest.raises(KeyboardInterrupt):
        c._driver.settle(token)  # noqa: SLF001
    monkeypatch.setattr(journal_mod, "os", os)
    assert fsyncs[:2] == ["failed", "ok"], fsyncs  # the rewrite, then its second try
    assert [m.message for m in c.outgoing_messages] == [b"first"]
    assert _crash_copy(path, "gc-retry") == [b"first"]
    c.close()

def test_a_publish_whose_record_a_failed_sync_cut_right_after_it_was_written_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A review's finding.) Another thread's group-commit fdatasync writes a publish's held
    record right after it was appended, fails (EIO) and cuts it, before the publish takes its
    token: the token is where the append put the record, not where the file ends after the
    cut (which counted as synced: the publish returned though the files lacked it). The
    publish fails, and a kill -9 finds exactly what returned."""
    import errno

    from mqttsession.driver import Driver
    from mqttsession.errors import PersistenceError

    class _FailingSync:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            raise OSError(errno.EIO, "injected EIO")

    path = tmp_path / "s"
    c = Client(client_id="rv-hold", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    d = c._driver  # noqa: SLF001
    with c._lock:  # noqa: SLF001  (publisher B: its record held, its sync not yet run)
        (_p, _r), tb = c._publish_locked("t", 1, b"B", None, b"", True)  # noqa: SLF001
    assert tb is not None
    orig_hold = Driver.hold
    err_b: list[Any] = []

    def hold(self: Driver, seq: int) -> Any:
        # publisher B's group commit runs right now, in its own thread: its fdatasync writes
        # every held record (A's too, appended a moment ago) and fails (EIO)
        monkeypatch.setattr(journal_mod, "os", _FailingSync())
        t = threading.Thread(target=lambda: err_b.append(d.wait_durable(tb)))
        t.start()
        t.join()
        monkeypatch.setattr(journal_mod, "os", os)
        return orig_hold(self, seq)

    monkeypatch.setattr(Driver, "hold", hold)
    with c._lock:  # noqa: SLF001  (publisher A: the locked half of publish_data's group commit)
        (_p, _r), ta = c._publish_locked("t", 1, b"A", None, b"", True)  # noqa: SLF001
    monkeypatch.setattr(Driver, "hold", orig_hold)
    assert isinstance(err_b[0], PersistenceError)
    assert ta is not None
    with pytest.raises(PersistenceError):
        d.settle(ta)  # A's publish: its record was cut
    d.release(tb, err_b[0])  # B's: A's rewrite put it on disk (durable: no error)
    assert [m.message for m in c.outgoing_messages] == [b"first", b"B"]
    assert _crash_copy(path, "rv-hold") == [b"first", b"B"]  # what a kill -9 now leaves
    c.close()


def test_a_publisher_queued_behind_an_interrupted_turn_is_woken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A review's finding.) Two threads publish on one Client (SessionSync=always: they
    take turns). Ctrl-C (KeyboardInterrupt) arrives in the thread whose turn runs the batch,
    inside its fdatasync, while the other thread's next publish waits in the queue for the
    turn: the turn is handed over all the same (before, that publisher slept until some other
    publish came along, forever if none did)."""
    c = Client(client_id="rv-turn", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    d = c._driver  # noqa: SLF001
    fired = [False]
    me = threading.current_thread()

    class _Interrupt:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            if not fired[0] and threading.current_thread() is me:
                import time
                deadline = time.monotonic() + 5
                while not d.turns._queue and time.monotonic() < deadline:  # noqa: SLF001
                    time.sleep(0.001)  # the other publisher queues for the next turn
                time.sleep(0.05)  # (and goes to sleep on its wake lock)
                fired[0] = True
                raise KeyboardInterrupt
            os.fdatasync(fd)

    stop = threading.Event()
    done: list[int] = []

    def other() -> None:
        n = 0
        while not stop.is_set():
            c.publish_data("t", 1, b"w%d" % n)
            n += 1
        done.append(n)

    monkeypatch.setattr(journal_mod, "os", _Interrupt())
    w = threading.Thread(target=other, daemon=True)
    w.start()
    try:
        for i in range(10000):  # the main thread publishes until Ctrl-C hits its fdatasync
            c.publish_data("t", 1, b"m%d" % i)
            if fired[0]:
                break
    except KeyboardInterrupt:
        pass  # (Ctrl-C: the application stops)
    assert fired[0]
    stop.set()  # the application stops publishing after Ctrl-C, and joins its threads
    w.join(10)
    monkeypatch.setattr(journal_mod, "os", os)
    stuck = w.is_alive()
    if stuck:
        c.publish_data("t", 1, b"unstick")  # another publish takes the turn and wakes it
        w.join(10)
    assert not stuck, ("the other publisher never returned; after one more publish from this"
                       f" thread: still stuck={w.is_alive()}")
    c.close()
