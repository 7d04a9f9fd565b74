"""The asyncio front ends cancelled around a failed fdatasync (a cancellation hunt; each case
failed before its fix): a publish whose await was cancelled after its sync failed must be
taken back (the caller saw only ``CancelledError``, never a success), and a ``close()``
cancelled half way still settles the syncs under way and the last ``ack``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
from mqttsession import AsyncGateway, AsyncSession, Options
from mqttsession.hosting import StoreSync as _StoreSync
from mqttsession.testing.faults import FakeOs

try:  # tests/integration may or may not be a package
    from . import _faults, _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _faults  # type: ignore[no-redef]
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

def test_a_gateway_publish_many_cancelled_after_its_sync_failed_is_taken_back(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel lands after the sync's callback handed the error to the waiting future,
    before the task resumed (a ``wait_for`` deadline in the same loop iteration). Before, the
    message stayed held and went out with the next publish."""
    failing = _faults.FailOnce()
    monkeypatch.setattr(groupcommit_mod, "os", failing)
    tag = _procs.unique("gpm")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    tasks: list[asyncio.Task[Any]] = []
    real_done = _StoreSync._done

    def done(self: _StoreSync, batch: Any, f: Any) -> None:
        real_done(self, batch, f)
        for t in tasks:
            t.cancel()

    async def main() -> None:
        async with AsyncGateway(tmp_path / "gw") as gw:
            s = await gw.session(_procs.unique("gs"), Options(address=mosquitto.address,
                                                               request_timeout_seconds=5),
                                 session_sync="always")
            await s.publish(topic, _procs.payload(tag, 1), 1)
            assert await s.flush(_procs.TIMEOUT)  # (its ack's sync never takes the failure)
            monkeypatch.setattr(_StoreSync, "_done", done)
            failing.armed = True
            tasks.append(asyncio.create_task(gw.publish_many([(s, topic, 1,
                                                               _procs.payload(tag, 2))])))
            (r,) = await asyncio.gather(*tasks, return_exceptions=True)
            monkeypatch.setattr(_StoreSync, "_done", real_done)
            assert isinstance(r, asyncio.CancelledError), r
            assert not s.client.outgoing_messages  # taken back
            await s.publish(topic, f"{tag}:END", 2)
            assert await s.flush(_procs.TIMEOUT)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        counter.wait_payload(f"{tag}:END")
        assert counter.counts(tag) == {1: 1}, counter.counts(tag)
    finally:
        counter.close()


def _judge(results: list[Any], counter: Any, tag: str) -> None:
    """Each publish returned (delivered after the restart) or raised (never delivered)."""
    for n, r in enumerate(results):
        delivered = counter.counts(tag)[n]
        assert delivered == (0 if isinstance(r, BaseException) else 1), (n, r, delivered)
    assert any(isinstance(r, BaseException) for r in results)  # (the failed sync's)


@pytest.mark.parametrize("cancel", [True, False], ids=["close-cancelled", "close"])
@pytest.mark.parametrize("host", ["session", "gateway"])
def test_close_waits_for_a_failing_sync_even_cancelled(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str,
        cancel: bool) -> None:
    """Offline, ``always``: ten publishes wait for an fdatasync that fails; ``close()`` runs
    meanwhile (and is cancelled). Before: a cancelled ``AsyncSession.close()`` closed the file
    at once (a publish that raised came back in the closing snapshot, delivered after the
    restart); a gateway session's ``close()`` never waited for the shared sync (it blocked
    the loop in its compaction, and publishes told success were lost)."""
    import mqttsession.journal as journal_mod

    from mqttsession import AsyncSession

    failing = _faults.StuckThenEIO()
    monkeypatch.setattr(groupcommit_mod if host == "gateway" else journal_mod, "os", failing)
    tag = _procs.unique("close")
    topic = f"mqs/{tag}"
    cid = _procs.unique("c")
    opts = Options(address=mosquitto.address, request_timeout_seconds=5)
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def waits(s: Any) -> list[Any]:
        failing.armed = True
        tasks = [asyncio.create_task(s.publish(topic, _procs.payload(tag, n), 1))
                 for n in range(10)]
        assert await asyncio.to_thread(failing.entered.wait, 10)
        closer = asyncio.create_task(s.close())
        await asyncio.wait([closer], timeout=0.05)
        assert not closer.done()  # (waits, off the loop)
        if cancel:
            closer.cancel()
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, failing.gate.set)  # then the sync fails
        with contextlib.suppress(asyncio.CancelledError):
            await closer
        assert s.closed
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)

    async def first() -> list[Any]:
        if host == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                return await waits(await gw.session(cid, opts, session_sync="always",
                                                    connect=False))
        return await waits(await AsyncSession.create(opts, client_id=cid, connect=False,
                                                     state_file=tmp_path / "s.session"))

    async def again() -> None:
        if host == "gateway":
            async with AsyncGateway(tmp_path / "gw") as gw:
                s = await gw.session(cid, opts, session_sync="always")
                await s.publish(topic, f"{tag}:END", 2)
                assert await s.flush(_procs.TIMEOUT)
            return
        async with AsyncSession(opts, client_id=cid, state_file=tmp_path / "s.session") as s:
            await s.publish(topic, f"{tag}:END", 2)
            assert await s.flush(_procs.TIMEOUT)

    try:
        results = asyncio.run(first())
        monkeypatch.setattr(groupcommit_mod if host == "gateway" else journal_mod, "os", os)
        asyncio.run(asyncio.wait_for(again(), 60))
        counter.wait_payload(f"{tag}:END")
        _judge(results, counter, tag)
    finally:
        counter.close()


def test_a_cancelled_close_still_acks_what_a_waiting_receive_took(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path) -> None:
    """A ``receive()`` waiting when ``close()`` began is handed a QoS 2 message during its
    flush; ``close()`` is then cancelled. Before, its last ``ack()`` was skipped: the next
    session handed the message out again (a QoS 2 duplicate)."""
    from mqttsession import AsyncSession

    proxy = mqtt_proxy_factory(mosquitto)
    proxy.drop("s2c", "PUBACK")  # close() waits in its flush
    cid, topic = _procs.unique("f"), f"mqs/{_procs.unique('f')}"
    state = tmp_path / "f.session"
    seen: list[bytes | None] = []

    async def first() -> None:
        s = await AsyncSession.create(Options(address=proxy.address, request_timeout_seconds=3),
                                      client_id=cid, state_file=state)
        await s.subscribe(topic, 2)
        waiting = asyncio.create_task(s.receive(10))
        await s.publish(topic + "/other", "x", 1)
        closing = asyncio.create_task(s.close())
        while not s._idle:  # (close() flushes)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_procs.publish_direct, mosquitto.host, mosquitto.port, topic,
                                [(2, "q2-msg")])
        m = await waiting
        seen.append(m and m.message)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert s.closed

    async def second() -> None:
        async with AsyncSession(Options(address=mosquitto.address, request_timeout_seconds=3),
                                client_id=cid, state_file=state) as s:
            while (m := await s.receive(1.5)) is not None:
                seen.append(m.message)

    asyncio.run(asyncio.wait_for(first(), 60))
    _procs.wait_until(lambda: proxy.active_connections == 0)  # (its last acks forwarded)
    asyncio.run(asyncio.wait_for(second(), 60))
    assert seen == [b"q2-msg"], seen


def test_a_gateway_closed_while_a_failed_publish_many_settles_keeps_only_what_it_told_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncGateway.publish_many`` over two offline sessions whose shared fdatasync fails
    once (EIO), and the gateway closed right after: every message the call reports failed is
    gone after a restart, every one it reports stored is there (a review: the sessions closed,
    saving their held messages, before ``publish_many`` withdrew them, in 17 of 20 runs;
    ``close()`` now waits for a ``publish_many`` settling their syncs)."""
    from mqttsession import PublishManyError  # noqa: PLC0415

    failing = _faults.FailOnce()
    monkeypatch.setattr(groupcommit_mod, "os", failing)
    opts = Options(address="127.0.0.1:1", request_timeout_seconds=3)

    async def sessions(gw: AsyncGateway) -> list[Any]:
        return [await gw.session(cid, opts, session_sync="always", connect=False)
                for cid in ("A", "B")]

    async def run(where: Path, delay: float) -> tuple[dict[bytes, bool], list[bytes]]:
        gw = AsyncGateway(where)
        a, b = await sessions(gw)
        await a.publish("t", b"A0", 1)
        await b.publish("t", b"B0", 1)
        failing.armed = True
        msgs = [(a, "t", 1, b"A1"), (b, "t", 1, b"B1"), (a, "t", 1, b"A2"), (b, "t", 1, b"B2")]
        task = asyncio.create_task(gw.publish_many(msgs))
        await asyncio.sleep(0)
        await asyncio.sleep(delay)
        await gw.close()
        (r,) = await asyncio.gather(task, return_exceptions=True)
        failed = r.errors if isinstance(r, PublishManyError) else (
            dict.fromkeys(range(4)) if isinstance(r, BaseException) else {})
        told = {m[3]: i not in failed for i, m in enumerate(msgs)}
        again = AsyncGateway(where)
        held = [m.message for s in await sessions(again) for m in s.client.outgoing_messages]
        await again.close()
        return told, held

    async def main() -> None:
        for k, delay in enumerate((0, 0, 0.001, 0.002, 0.003, 0.005)):
            told, held = await run(tmp_path / f"gw{k}", delay)
            assert {b"A0", b"B0"} <= set(held)
            assert [m for m, ok in told.items() if ok != (m in held)] == [], (delay, told, held)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_publish_cancelled_while_its_take_back_rewrites_reports_the_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish whose fdatasync failed, cancelled while the file is rewritten without it (in a
    thread): its publisher saw only ``CancelledError``, so ``on_error`` says the publish failed,
    on the loop's thread as for the other cancelled publishes (a review: nothing was reported;
    and those others were reported from the executor's thread)."""
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    state = {"armed": False, "slow": False}
    entered = threading.Event()

    def hooked(real: Any) -> Any:
        def sync(fd: int) -> None:
            if state["armed"]:
                state["armed"], state["slow"] = False, True
                raise OSError(errno.EIO, "Input/output error (injected)")
            if state["slow"] and threading.current_thread() is not threading.main_thread():
                entered.set()
                time.sleep(0.3)
            real(fd)
        return sync

    monkeypatch.setattr(os, "fdatasync", hooked(real_fdatasync))
    monkeypatch.setattr(os, "fsync", hooked(real_fsync))
    errors: list[tuple[bool, str]] = []

    async def main() -> list[bytes]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="tbc",
                                      session_sync="always", state_file=str(tmp_path / "s"),
                                      connect=False)
        s.client.on_error = lambda e: errors.append(
            (threading.current_thread() is threading.main_thread(), e.description))
        await s.publish("t", b"ok", 1)
        state["armed"] = True
        task = asyncio.create_task(s.publish("t", b"failed", 1))
        assert await asyncio.to_thread(entered.wait, 10), "no rewrite began"
        task.cancel()
        (r,) = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(r, asyncio.CancelledError), r
        held = [m.message for m in s.client.outgoing_messages]
        await s.close()  # (waits for the rewrite)
        state["slow"] = False
        return held

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"ok"]
    assert [e for e in errors if "publish (seq 2)" in e[1]] != [], errors
    assert all(on_loop for on_loop, text in errors if "publish (seq" in text), errors


def test_a_cancelled_gateway_publish_many_reports_every_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncGateway.publish_many`` cancelled while it waits for a slow shared-log sync
    (session A), its message for session B's disk queue failing (EIO): the caller sees only
    ``CancelledError``, so B's failure goes to B's on_error, on the loop's thread, and asyncio
    logs no "Future exception was never retrieved" (a review: nothing reported, the message
    gone; the same for failures ``publish_many`` had recorded before the cancel)."""
    import mqttsession.spool as spool_mod  # noqa: PLC0415

    slow, fail = {"on": False}, {"n": 0}

    def slow_sync(fd: int) -> None:
        if slow["on"]:
            time.sleep(0.3)
        os.fdatasync(fd)

    def failing_sync(fd: int) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)

    monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=slow_sync))
    monkeypatch.setattr(spool_mod, "os", FakeOs(fdatasync=failing_sync))
    opts = Options(address="127.0.0.1:1", request_timeout_seconds=5)
    errors: list[tuple[str, bool, str]] = []
    loop_errors: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        gw = AsyncGateway(tmp_path / "gw")
        a = await gw.session("A", opts, session_sync="always", connect=False)
        b = await gw.session("B", opts, session_sync="always", connect=False)
        await b.config("QueueInMemory=1")
        for s in (a, b):
            s.client.on_error = (lambda n: lambda e: errors.append(
                (n, threading.current_thread() is threading.main_thread(), e.description)))(
                s.client_id)
        await a.publish("t", b"A0", 1)
        await b.publish("t", b"B0", 1)
        await b.publish("t", b"B0q", 1)  # (into B's disk queue)
        slow["on"], fail["n"] = True, 10
        task = asyncio.create_task(gw.publish_many([(a, "t", 1, b"A1"), (b, "t", 1, b"B1")]))
        await asyncio.sleep(0.1)
        task.cancel()
        (r,) = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(r, asyncio.CancelledError), r
        await asyncio.sleep(0.5)
        slow["on"], fail["n"] = False, 0
        gc.collect()
        await gw.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    gc.collect()
    assert [e for e in errors if e[0] == "B" and "publish_many (cancelled)" in e[2]] != [], errors
    assert all(on_loop for _n, on_loop, _t in errors), errors
    assert loop_errors == []
