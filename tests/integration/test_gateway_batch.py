"""``Gateway.publish_many``: one thread publishes a message of many sessions at once, against a
real mosquitto.

* under ``SessionSync=always`` ONE fdatasync makes the whole batch durable (counted in the
  calling thread), and every message arrives, each session's in the order given (one QoS a
  session: a broker orders a topic's messages of one QoS only);
* a bad message (a client of another gateway, a bad tuple, a wildcard topic) raises
  ``UsageError`` before anything is stored;
* a session that cannot store its message (a full queue) does not stop the others:
  ``PublishManyError`` names it, the others are durable (a new gateway on the directory holds
  them);
* a failed fdatasync (EIO) takes the whole batch back, and a KeyboardInterrupt during it leaves
  no message held;
* ``AsyncGateway.publish_many``: the same with one await.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from mqttsession import (Client, Gateway, PublishManyError, PublishRequest, QueueFullError,
                         UsageError)
from mqttsession.events import MessageEvent
from mqttsession.testing import MosquittoBroker

try:  # tests/integration may or may not be a package
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import wait_until  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]



def _eio_while(fail: list[bool]) -> Callable[[int], None]:
    """``os.fdatasync`` that fails (EIO) while ``fail[0]``."""
    import errno

    real = os.fdatasync

    def maybe_failing(fd: int) -> None:
        if fail[0]:
            raise OSError(errno.EIO, "injected")
        real(fd)
    return maybe_failing

def test_one_fdatasync_for_a_batch_of_many_sessions(mosquitto: MosquittoBroker, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def received(e: MessageEvent) -> None:
        with lock:
            got.append((e.topic, e.message))

    sub = Client(client_id="batch-sub", clean_session=True)  # no state file: no fdatasync
    sub.on_message_in = received
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("batch/#", 2)
    me = threading.current_thread()
    syncs = {"mine": 0}
    real = os.fdatasync

    def counting(fd: int) -> None:
        if threading.current_thread() is me:
            syncs["mine"] += 1
        real(fd)

    try:
        with Gateway(tmp_path / "gw") as gw:
            devices = [gw.client(f"batch-{i}", clean_session=False) for i in range(20)]
            assert gw.connect_all(mosquitto.host, mosquitto.port) == {}
            for d in devices:
                d.config("SessionSync=always")
            monkeypatch.setattr(os, "fdatasync", counting)
            for n in range(3):
                ids = gw.publish_many(
                    [(d, f"batch/{i}", 1 + i % 2, f"{i}-{n}") for i, d in enumerate(devices)]
                    + [(devices[0], PublishRequest("batch/0", 1, f"0-{n}b"))])
                assert len(ids) == 21 and all(isinstance(x, int) for x in ids)
            # at most one a batch, for all 21 records of 20 sessions (the gateway's sync thread
            # may cover a batch first); publish_data in a loop would take 63
            assert syncs["mine"] <= 3
            monkeypatch.setattr(os, "fdatasync", real)
            for d in devices:
                assert d.flush(10)
            wait_until(lambda: len(got) == 63, what="every message of the three batches")
    finally:
        sub.close()
    by_topic: dict[str, list[bytes]] = {}
    for topic, data in got:
        by_topic.setdefault(topic, []).append(data)
    assert by_topic["batch/0"] == [b"0-0", b"0-0b", b"0-1", b"0-1b", b"0-2", b"0-2b"]
    for i in range(1, 20):
        assert by_topic[f"batch/{i}"] == [f"{i}-{n}".encode() for n in range(3)]


def test_a_bad_message_stores_nothing(tmp_path: Path) -> None:
    with Gateway(tmp_path / "gw") as gw, Gateway(tmp_path / "other") as other:
        a, b = gw.client("bad-a"), gw.client("bad-b")
        foreign = other.client("bad-foreign")
        stranger = Client(client_id="bad-stranger")
        try:
            bad: list[Any] = [
                [(a, "t/a", 1, "x"), (foreign, "t/f", 1, "x")],
                [(a, "t/a", 1, "x"), (stranger, "t/s", 1, "x")],
                [(a, "t/a", 1, "x"), (b, "t/#", 1, "x")],  # a wildcard in a topic name
                [(a, "t/a", 1, "x"), (b, "t/b", 3, "x")],
                [(a, "t/a", 1, "x"), (b, "t/b")],
                [(a, "t/a", 1, "x"), ("bad-b", "t/b", 1, "x")],
                [(a, "t/a", 1, "x"), b],
            ]
            for messages in bad:
                with pytest.raises(UsageError):
                    gw.publish_many(messages)
            assert not a.outgoing_messages and not b.outgoing_messages
            assert gw.publish_many([]) == []
        finally:
            stranger.close()


def test_a_full_session_does_not_stop_the_others(tmp_path: Path) -> None:
    """Not connected: the messages wait in the sessions (durable, SessionSync=always)."""
    with Gateway(tmp_path / "gw") as gw:
        full, ok = gw.client("full", clean_session=False), gw.client("ok", clean_session=False)
        for c in (full, ok):
            c.config("SessionSync=always")
        full.config("MaxQueuedMessages=1")
        with pytest.raises(PublishManyError) as raised:
            gw.publish_many([(full, "t/full", 1, "f1"), (ok, "t/ok", 2, "o1"),
                             (full, "t/full", 1, "f2"), (ok, "t/ok", 1, "o2")])
        err = raised.value
        assert list(err.errors) == [2] and isinstance(err.errors[2], QueueFullError)
        assert err.ids[2] is None and all(isinstance(x, int) for i, x in enumerate(err.ids)
                                          if i != 2)
        assert [m.message for m in full.outgoing_messages] == [b"f1"]
        assert [m.message for m in ok.outgoing_messages] == [b"o1", b"o2"]
    with Gateway(tmp_path / "gw") as gw:  # what publish_many stored is in the store
        full, ok = gw.client("full", clean_session=False), gw.client("ok", clean_session=False)
        assert [m.message for m in full.outgoing_messages] == [b"f1"]
        assert [m.message for m in ok.outgoing_messages] == [b"o1", b"o2"]


def test_async_gateway_publish_many(mosquitto: MosquittoBroker, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from mqttsession import AsyncGateway, Options

    got: list[tuple[str, bytes]] = []
    sub = Client(client_id="abatch-sub", clean_session=True)  # no state file: no fdatasync
    sub.on_message_in = lambda e: got.append((e.topic, e.message))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("abatch/#", 1)
    syncs = [0]
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs[0] += 1
        real(fd)

    async def main() -> None:
        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        async with AsyncGateway(tmp_path / "agw") as gw:
            sessions = [await gw.session(f"abatch-{i}", opts, session_sync="always")
                        for i in range(10)]
            with pytest.raises(UsageError):  # not a session of this gateway: nothing stored
                await gw.publish_many([(sessions[0], "abatch/0", 1, "x"), (sub, "t", 1, "x")])
            monkeypatch.setattr(os, "fdatasync", counting)
            for n in range(3):
                ids = await gw.publish_many(
                    [(s, f"abatch/{i}", 1, f"{i}-{n}") for i, s in enumerate(sessions)])
                assert len(ids) == 10
            monkeypatch.setattr(os, "fdatasync", real)
            assert syncs[0] <= 6  # one or two a batch (publish in a loop: 30)
            for s in sessions:
                await s.flush()

    try:
        asyncio.run(main())
        wait_until(lambda: len(got) == 30, what="every message of the three batches")
    finally:
        sub.close()
    for i in range(10):
        assert [d for t, d in got if t == f"abatch/{i}"] == [f"{i}-{n}".encode()
                                                             for n in range(3)]


def test_a_failed_fdatasync_takes_the_batch_back(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails the batch's fdatasync (EIO): every message of it is taken back out of
    its session and reported (``PersistenceError``); the next batch is stored, and a new
    gateway on the directory holds exactly what was stored."""
    import errno

    from mqttsession import PersistenceError

    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("eio-a", clean_session=False), gw.client("eio-b", clean_session=False)
        for c in (a, b):
            c.config("SessionSync=always")
        gw.publish_many([(a, "t/a", 1, "a0"), (b, "t/b", 2, "b0")])
        real = os.fdatasync

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(PublishManyError) as raised:
            gw.publish_many([(a, "t/a", 1, "a1"), (b, "t/b", 2, "b1"), (a, "t/a", 1, "a2")])
        monkeypatch.setattr(os, "fdatasync", real)
        err = raised.value
        assert err.ids == [None, None, None]
        assert all(isinstance(e, PersistenceError) for e in err.errors.values())
        assert [m.message for m in a.outgoing_messages] == [b"a0"]
        assert [m.message for m in b.outgoing_messages] == [b"b0"]
        gw.publish_many([(b, "t/b", 2, "b3"), (a, "t/a", 1, "a3")])
    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("eio-a", clean_session=False), gw.client("eio-b", clean_session=False)
        assert [m.message for m in a.outgoing_messages] == [b"a0", b"a3"]
        assert [m.message for m in b.outgoing_messages] == [b"b0", b"b3"]


def test_an_interrupted_batch_leaves_nothing_held(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt during the batch's fdatasync: it propagates, and no message is left
    held (one would block every later message of its session): one not synced is taken back
    (``on_error`` says so) and the log rewritten without it, so that a kill -9 does not bring
    it back; the next batch is stored and held by nothing."""
    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("int-a", clean_session=False), gw.client("int-b", clean_session=False)
        reported: list[str] = []
        for c in (a, b):
            c.config("SessionSync=always")
            c.on_error = lambda e: reported.append(e.description)
        real = os.fdatasync

        def interrupted(fd: int) -> None:  # (once: Ctrl-C is pressed once)
            monkeypatch.setattr(os, "fdatasync", real)
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fdatasync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            gw.publish_many([(a, "t/a", 1, "a1"), (b, "t/b", 2, "b1")])
        monkeypatch.setattr(os, "fdatasync", real)
        kept = {c.client_id: [m.message for m in c.outgoing_messages] for c in (a, b)}
        assert not kept["int-a"]  # not synced: taken back (on_error says so)
        # b1 is taken back too, unless the rewrite without a1 synced the log first (then it
        # is durable, and kept)
        assert kept["int-b"] in ([], [b"b1"])
        assert len(reported) == 2 - len(kept["int-b"]), reported
        assert all("taken back" in r for r in reported), reported
        # their records were written before the interrupted fdatasync: what a kill -9 now
        # would leave is what the sessions hold (the log rewritten without what was taken back)
        from mqttsession.sessionlog import read_sessions
        stored = read_sessions(str(tmp_path / "gw"))
        assert {k: [m.payload for m in st.outgoing.values()] for k, st in stored.items()} \
            == kept
        ids = gw.publish_many([(a, "t/a", 1, "a2"), (b, "t/b", 2, "b2")])
        assert [m.message for m in a.outgoing_messages] == [b"a2"]
        assert [m.message for m in b.outgoing_messages] == [*kept["int-b"], b"b2"]
        assert all(not c._driver.holds() for c in (a, b)), ids  # noqa: SLF001


def test_a_record_cut_by_another_threads_failed_sync_is_reported(
        mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's fdatasync fails (EIO) while ``publish_many`` is between two messages:
    the first one's held record is cut with it. It is reported (not returned as published),
    it is not in the store, and no message of its session is left held: later ones go out."""
    import errno

    from mqttsession import PersistenceError
    from mqttsession.sessionlog import read_sessions

    fail = [False]
    maybe_failing = _eio_while(fail)

    with Gateway(tmp_path / "gw") as gw:
        a, b, c = (gw.client(f"cut-{x}", clean_session=False) for x in "abc")
        for x in (a, b, c):
            x.config("SessionSync=always")
        monkeypatch.setattr(os, "fdatasync", maybe_failing)
        locked = b._publish_locked  # noqa: SLF001

        def between(*args: Any, **kwargs: Any) -> Any:  # the other thread, at this moment
            fail[0] = True
            with pytest.raises(PersistenceError):
                c.publish_data("t/c", 1, b"c1")
            fail[0] = False
            return locked(*args, **kwargs)

        monkeypatch.setattr(b, "_publish_locked", between)
        with pytest.raises(PublishManyError) as raised:
            gw.publish_many([(a, "t/a", 1, "a1"), (b, "t/b", 1, "b1")])
        monkeypatch.setattr(b, "_publish_locked", locked)
        assert list(raised.value.errors) == [0]
        assert isinstance(raised.value.errors[0], PersistenceError)
        assert raised.value.ids[1] is not None
        stored = read_sessions(str(tmp_path / "gw"))  # what a kill -9 would restore
        assert [m.payload for m in stored["cut-a"].outgoing.values()] == []
        assert [m.payload for m in stored["cut-b"].outgoing.values()] == [b"b1"]
        assert gw.connect_all(mosquitto.host, mosquitto.port) == {}
        a.publish_data("t/a", 1, b"a2")
        assert a.flush(10), [m.message for m in a.outgoing_messages]
        assert not a._driver.holds()  # noqa: SLF001


def test_a_record_cut_then_rewritten_with_its_session_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same cut, but the session's next message in the batch rewrites the session whole
    (a snapshot of its state, synced) with the first message in it: that one is durable after
    all, so it is returned as published, not reported (reported, it would come back after a
    restart: a duplicate once the application published it again)."""
    import errno

    from mqttsession import PersistenceError
    from mqttsession.sessionlog import read_sessions

    fail = [False]
    maybe_failing = _eio_while(fail)

    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("cut-a", clean_session=False), gw.client("cut-b", clean_session=False)
        for c in (a, b):
            c.config("SessionSync=always")
        monkeypatch.setattr(os, "fdatasync", maybe_failing)
        locked, calls = a._publish_locked, [0]  # noqa: SLF001

        def between(*args: Any, **kwargs: Any) -> Any:  # the other thread, at this moment
            calls[0] += 1
            if calls[0] == 2:
                fail[0] = True
                with pytest.raises(PersistenceError):
                    b.publish_data("t/b", 1, b"b1")
                fail[0] = False
            return locked(*args, **kwargs)

        monkeypatch.setattr(a, "_publish_locked", between)
        ids = gw.publish_many([(a, "t/a", 1, "a1"), (a, "t/a", 1, "a2")])
        monkeypatch.setattr(a, "_publish_locked", locked)
        assert len(ids) == 2
        stored = read_sessions(str(tmp_path / "gw"))  # what a kill -9 would restore
        assert [m.payload for m in stored["cut-a"].outgoing.values()] == [b"a1", b"a2"]
        assert [m.message for m in a.outgoing_messages] == [b"a1", b"a2"]
        assert not a._driver.holds()  # noqa: SLF001


def test_what_publish_many_returned_is_on_disk_after_each_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction due inside a batch, and an fdatasync that fails (EIO) once: after every
    call, the store on disk (what a kill -9 would restore) holds exactly the messages that
    ``publish_many`` returned as published."""
    import errno

    from mqttsession.sessionlog import read_sessions

    real = os.fdatasync
    fail = [False]

    def failing_once(fd: int) -> None:
        if fail[0]:
            fail[0] = False
            raise OSError(errno.EIO, "injected")
        real(fd)

    with Gateway(tmp_path / "gw") as gw:
        a = gw.client("cmp-a", clean_session=False)
        a.config("SessionSync=always")
        a.config("JournalMaxBytes=300")  # a compaction due every few messages
        monkeypatch.setattr(os, "fdatasync", failing_once)
        stored: list[bytes] = []
        for n in range(8):
            fail[0] = n in (2, 5)
            data = f"a{n}".encode() + b"x" * 100
            try:
                gw.publish_many([(a, "t/a", 1, data)])
                stored.append(data)
            except PublishManyError:
                pass
            on_disk = read_sessions(str(tmp_path / "gw"))["cmp-a"]
            assert [m.payload for m in on_disk.outgoing.values()] == stored, n
        assert [m.message for m in a.outgoing_messages] == stored


def test_a_cancelled_async_publish_many_ends_as_its_sync_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncGateway.publish_many`` cancelled while its fdatasync runs (a slow card): the
    messages are settled when the sync ends, as a cancelled ``publish``'s are: durable, they
    stay in their sessions, which then hold what the disk holds."""
    import asyncio
    import time

    from mqttsession import AsyncGateway
    from mqttsession.sessionlog import read_sessions

    real = os.fdatasync

    def slow(fd: int) -> None:
        time.sleep(0.3)
        real(fd)

    async def main() -> None:
        async with AsyncGateway(tmp_path / "agw") as gw:
            a = await gw.session("can-a", session_sync="always", connect=False)
            b = await gw.session("can-b", session_sync="always", connect=False)
            monkeypatch.setattr(os, "fdatasync", slow)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    gw.publish_many([(a, "t/a", 1, "a1"), (b, "t/b", 1, "b1")]), 0.05)
            for _ in range(100):  # the sync job ends and its callback settles them
                if not a.client._driver.holds() and not b.client._driver.holds():  # noqa: SLF001
                    break
                await asyncio.sleep(0.05)
            monkeypatch.setattr(os, "fdatasync", real)
            in_memory = ([m.message for m in a.client.outgoing_messages],
                         [m.message for m in b.client.outgoing_messages])
            on_disk = read_sessions(str(tmp_path / "agw"))
            disk = ([m.payload for m in on_disk["can-a"].outgoing.values()],
                    [m.payload for m in on_disk["can-b"].outgoing.values()])
            assert in_memory == disk == ([b"a1"], [b"b1"])

    asyncio.run(main())


def test_a_batch_record_cut_right_after_it_was_written_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A review's finding.) Another session's fdatasync, in another thread, writes a
    ``publish_many`` message's held record right after it was appended, fails (EIO) and cuts
    it, before the batch takes its token: the message is reported, not returned as published
    (before, the token pointed where the log ended after the cut, which counted as synced),
    and the store holds exactly what returned."""
    import errno

    from mqttsession import PersistenceError
    from mqttsession.driver import Driver
    from mqttsession.sessionlog import read_sessions

    real = os.fdatasync
    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("a", clean_session=False), gw.client("b", clean_session=False)
        for x in (a, b):
            x.config("SessionSync=always")
        b.on_error = lambda e: None
        orig_hold = Driver.hold
        raised: list[BaseException] = []

        def hold(self: Driver, seq: int) -> Any:
            # another session's publish_data, in another thread, right now; its fdatasync
            # (which writes a's held record first) fails once (EIO)
            if self is a._driver:  # noqa: SLF001
                def once(fd: int) -> None:
                    monkeypatch.setattr(os, "fdatasync", real)
                    raise OSError(errno.EIO, "injected EIO")
                monkeypatch.setattr(os, "fdatasync", once)

                def other() -> None:
                    try:
                        b.publish_data("t", 1, b"b1")
                    except BaseException as exc:  # noqa: BLE001
                        raised.append(exc)
                t = threading.Thread(target=other)
                t.start()
                t.join()
            return orig_hold(self, seq)

        monkeypatch.setattr(Driver, "hold", hold)
        with pytest.raises(PublishManyError) as failed:
            gw.publish_many([(a, "t", 1, "a1")])
        monkeypatch.setattr(Driver, "hold", orig_hold)
        assert list(failed.value.errors) == [0] and isinstance(raised[0], PersistenceError)
        assert a.outgoing_messages == () and b.outgoing_messages == ()
        stored = read_sessions(str(tmp_path / "gw"))  # what a kill -9 now leaves
        assert all(not st.outgoing for st in stored.values()), stored


def test_gateway_record_written_after_a_rebuild_that_cut_its_predecessor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A review's finding.) A session's record is appended just after another thread's
    fdatasync failed and cut the record before it (after the append looked, before it
    wrote): the record is not written after the rebuilt log's gap (which made the session
    unreadable: StateError, kept aside as damaged); the session is rewritten whole instead,
    holding the cut message too, which is then durable and returned as published."""
    import errno

    from mqttsession import PersistenceError
    from mqttsession.errors import StateError
    from mqttsession.sessionlog import read_sessions
    from mqttsession.sharedlog import SharedLog

    real = os.fdatasync
    entered, go = threading.Event(), threading.Event()

    def blocking_failing(fd: int) -> None:  # the other thread's fdatasync: slow, then EIO
        monkeypatch.setattr(os, "fdatasync", real)
        entered.set()
        go.wait(10)
        raise OSError(errno.EIO, "injected EIO")

    with Gateway(tmp_path / "gw") as gw:
        a = gw.client("a", clean_session=False)
        a.config("SessionSync=always")
        a.on_error = lambda e: None
        d = a._driver  # noqa: SLF001
        with a._lock:  # noqa: SLF001  (a1: a group commit's held record)
            (_p, _r), t1 = a._publish_locked("t", 1, b"a1", None, b"", True)  # noqa: SLF001
        assert t1 is not None
        monkeypatch.setattr(os, "fdatasync", blocking_failing)
        err1: list[Any] = []
        x = threading.Thread(target=lambda: err1.append(d.wait_durable(t1)))
        x.start()
        assert entered.wait(10)
        orig_write = SharedLog._write

        def write(self: SharedLog, s: Any, frames: Any, tag: bytes, **kw: Any) -> Any:
            # a2's append checked ``s.stale`` a moment ago (not stale); a1's fdatasync fails now
            go.set()
            x.join()
            monkeypatch.setattr(SharedLog, "_write", orig_write)
            return orig_write(self, s, frames, tag, **kw)

        monkeypatch.setattr(SharedLog, "_write", write)
        a.publish_data("t", 1, b"a2")  # RETURNS (its record synced)
        assert isinstance(err1[0], PersistenceError)
        # a kill -9 now, before a1's publisher takes a1 back:
        try:
            stored = read_sessions(str(tmp_path / "gw"))
        except StateError as exc:
            pytest.fail(f"the log's session is damaged after a2 returned: {exc}")
        assert [m.payload for m in stored["a"].outgoing.values()] == [b"a1", b"a2"]
        d.release(t1, err1[0])  # a1: in the rewritten session, durable: no error
        assert [m.message for m in a.outgoing_messages] == [b"a1", b"a2"]
        assert not d.holds()
