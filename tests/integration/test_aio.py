"""``AsyncSession`` (``mqttsession.aio``) against mosquitto; plain pytest, ``asyncio.run`` inside.

* publish/subscribe round trip, MQTT 3.1.1 and 5; ``async for msg in session.messages()``,
  which ends when the session closes;
* ``async with AsyncSession(...)`` and ``async with await AsyncSession.create(...)``;
* durable: QoS 1/2 messages published while disconnected into a state file go out when a NEW
  AsyncSession restores that file and connects;
* the loop is never blocked: a 10 ms heartbeat sees no gap over 0.2 s while a connect to a
  silent broker times out, and while connect / publish (SessionSync=always) / flush / close run;
* a failed ``create()`` raises ``ConnectError`` and leaves nothing running.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mqttsession import AsyncSession, ConnectError, MQTTSessionError, Options, UsageError
from mqttsession.testing.fake_broker import FakeBroker

try:  # tests/integration may or may not be a package
    from . import _faults
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    import _faults  # type: ignore[no-redef]
    from _procs import wait_until  # type: ignore[no-redef]

T = TypeVar("T")


def _run(main: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)
    return asyncio.run(bounded())


def _options(broker: Any, version: int = 4, **kw: Any) -> Options:
    return Options(address=broker.address, protocol_version=version,
                   request_timeout_seconds=10.0, **kw)


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_round_trip_and_async_iteration(mosquitto: Any, version: int) -> None:
    async def main() -> None:
        session = await AsyncSession.create(_options(mosquitto, version))
        assert session.connected and session.client_id
        topic = f"aio/{session.client_id}"
        await session.subscribe(f"{topic}/#", 2)
        for n in range(3):
            await session.publish(f"{topic}/{n}", f"m{n}", qos=n)
        got = []
        async for msg in session.messages():
            got.append((msg.topic, msg.message))
            if len(got) == 3:
                break
        assert sorted(got) == [(f"{topic}/{n}", f"m{n}".encode()) for n in range(3)]

        # an iterator waiting when the session closes simply ends
        await session.ack()  # nothing left to acknowledge: the reader goes straight to waiting
        started = asyncio.Event()
        reader = asyncio.create_task(_collect(session, started))
        await started.wait()  # the reader is now blocked waiting for a message
        assert not reader.done()
        await session.close()
        assert await asyncio.wait_for(reader, 5) == []
        assert session.closed and not session.connected
        with pytest.raises(UsageError, match="closed"):
            await session.publish(topic, "late")
        await session.close()  # idempotent

    _run(main)


async def _collect(session: AsyncSession, started: asyncio.Event) -> list[bytes]:
    started.set()  # wakes the waiter only once this task blocks in messages() (one event loop)
    return [m.message async for m in session.messages()]


def test_async_with(mosquitto: Any) -> None:
    async def main() -> None:
        async with AsyncSession(_options(mosquitto)) as session:
            assert session.connected
            await session.subscribe("aio/with", 1)
            await session.publish("aio/with", b"\x00bytes")
            msg = await session.receive(10)
            assert msg is not None and msg.message == b"\x00bytes"
        assert session.closed and not session.connected
        async with await AsyncSession.create(_options(mosquitto)) as again:
            assert again.connected
        assert again.closed

    _run(main)


def test_state_file_survives_into_a_new_session(mosquitto: Any, tmp_path: Path) -> None:
    state = tmp_path / "gw.session"
    gw_id = f"aio-gw-{time.monotonic_ns()}"

    async def main() -> None:
        async with AsyncSession(_options(mosquitto)) as listener:
            await listener.subscribe("aio/durable", 2)

            offline = await AsyncSession.create(_options(mosquitto), client_id=gw_id,
                                                state_file=state, connect=False)
            assert not offline.connected
            for n in range(4):
                await offline.publish("aio/durable", f"d{n}", qos=1 + n % 2)
            assert len(offline.client.outgoing_messages) == 4
            await offline.close()  # never connected: everything waits in the file
            assert state.exists()

            restored = await AsyncSession.create(_options(mosquitto), client_id=gw_id,
                                                 state_file=state)
            assert restored.connected
            assert await restored.flush(10)
            got = sorted([(await _receive(listener)).message for _ in range(4)])
            assert got == [f"d{n}".encode() for n in range(4)]
            assert await listener.receive(0.2) is None  # no duplicate
            await restored.close()

            again = await AsyncSession.create(_options(mosquitto), client_id=gw_id,
                                              state_file=state, connect=False)
            assert again.client.outgoing_messages == ()  # acknowledged, and the file says so
            await again.close()

    _run(main)


async def _receive(session: AsyncSession) -> Any:
    msg = await session.receive(10)
    assert msg is not None
    return msg


class _SilentBroker:
    """Accepts TCP connections on 127.0.0.1 and never answers (no CONNACK)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        for c in self.conns:
            c.close()


def test_the_loop_is_never_blocked(mosquitto: Any, tmp_path: Path) -> None:
    silent = _SilentBroker()

    gaps: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()
        ticking = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)  # the heartbeat itself: what the test measures
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                ticking.set()

        beat = asyncio.create_task(heartbeat())
        await ticking.wait()  # the heartbeat is ticking before anything else runs
        with pytest.raises(ConnectError, match="CONNACK"):
            await AsyncSession.create(Options(address=f"127.0.0.1:{silent.port}",
                                              request_timeout_seconds=0.6))
        session = await AsyncSession.create(
            _options(mosquitto), client_id=f"aio-beat-{time.monotonic_ns()}",
            state_file=tmp_path / "beat.session", session_sync="always")
        assert await session.config("SessionSync") == "always"
        await session.subscribe("aio/beat", 1)
        await asyncio.gather(*(session.publish("aio/beat", f"b{n}", 1 + n % 2)
                               for n in range(100)))
        assert await session.flush(10)
        got = [(await _receive(session)).message for _ in range(100)]
        for qos in (1, 2):  # gathered publishes keep their order (within a QoS: MQTT's promise)
            assert [m for m in got if int(m[1:]) % 2 == qos - 1] == [
                f"b{n}".encode() for n in range(100) if n % 2 == qos - 1]
        await session.close()
        stop.set()
        await beat

    try:
        _run(main)
    finally:
        silent.close()
    assert max(gaps) < 0.2, f"the event loop was blocked for {max(gaps):.3f} s"
    assert len(gaps) > 20


def test_a_stuck_fsync_never_blocks_the_loop(mosquitto: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync behind an incoming QoS 2 message's PUBREC (persistence point 3) runs in the
    executor: while it is stuck (os.fdatasync blocked, a slow card), the loop runs and another
    session on it receives; the QoS 2 message is delivered once the sync ends, not before."""
    from mqttsession.testing.fsyncs import StuckFdatasync  # noqa: PLC0415

    stuck = StuckFdatasync(monkeypatch.setattr)

    async def main() -> None:
        tag = time.monotonic_ns()
        slow = await AsyncSession.create(_options(mosquitto), client_id=f"aio-slow-{tag}",
                                         state_file=tmp_path / "slow.session")
        other = await AsyncSession.create(_options(mosquitto), client_id=f"aio-other-{tag}",
                                          state_file=tmp_path / "other.session",
                                          session_sync="none")
        try:
            await slow.subscribe(f"aio/stuck/{tag}/slow", 2)
            await other.subscribe(f"aio/stuck/{tag}/other", 1)
            stuck.armed = True
            await other.publish(f"aio/stuck/{tag}/slow", "slow", 2)  # (none: no sync of its own)
            assert await asyncio.to_thread(stuck.entered.wait, 10), "the record was never synced"
            await other.publish(f"aio/stuck/{tag}/other", "other", 1)
            m = await other.receive(timeout=10)
            assert m is not None and m.message == b"other"
            assert await slow.receive(timeout=0.2) is None  # its PUBREC waits for the sync
            stuck.gate.set()
            m = await slow.receive(timeout=10)
            assert m is not None and m.message == b"slow"
        finally:
            stuck.gate.set()
            await slow.close()
            await other.close()

    _run(main)


def test_cancelled_publishes_waiting_for_their_sync_still_go_out(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish cancelled while it waits for the shared fdatasync (SessionSync=always) is in
    the session already: once the sync is done it goes out, once, like the others, and the
    publishes after it are not held up."""
    from mqttsession.testing.fsyncs import StuckFdatasync  # noqa: PLC0415

    stuck = StuckFdatasync(monkeypatch.setattr)

    async def main() -> None:
        tag = time.monotonic_ns()
        topic = f"aio/cancel/{tag}"
        async with AsyncSession(_options(mosquitto)) as listener:
            await listener.subscribe(topic, 1)
            pub = await AsyncSession.create(_options(mosquitto), client_id=f"aio-cancel-{tag}",
                                            state_file=tmp_path / "p.session",
                                            session_sync="always")
            try:
                stuck.armed = True
                tasks = [asyncio.create_task(pub.publish(topic, f"c{n}", 1)) for n in range(10)]
                assert await asyncio.to_thread(stuck.entered.wait, 10), "no sync began"
                for t in tasks[::2]:
                    t.cancel()
                stuck.gate.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
                assert all(isinstance(r, int) and r > 0 for r in results[1::2])
                for n in range(10, 15):
                    await pub.publish(topic, f"c{n}", 1)
                assert await pub.flush(10)
                got = sorted([(await _receive(listener)).message for _ in range(15)])
                assert got == sorted(f"c{n}".encode() for n in range(15))
                assert await listener.receive(0.3) is None  # each once
                assert pub.client.outgoing_messages == ()
            finally:
                stuck.gate.set()
                await pub.close()

    _run(main)


def test_failed_create(mosquitto: Any) -> None:
    async def main() -> None:
        with pytest.raises(ConnectError, match="refused"):
            await AsyncSession.create(Options(address=f"127.0.0.1:{_closed_port()}",
                                              request_timeout_seconds=2))
        with pytest.raises(UsageError, match="client_id"):
            AsyncSession(_options(mosquitto), state_file="x.session")

    before = threading.active_count()
    _run(main)
    # threads that end just after create() failed (paho's, the worker) get a deadline to go
    wait_until(lambda: threading.active_count() <= before, timeout=5, what="threads to end")
    assert threading.active_count() <= before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_publish_cancelled_after_its_sync_failed_is_taken_back(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish whose shared fdatasync failed, cancelled before it could take its message
    back: the message is taken back all the same (before: it stayed held, and went out with
    the next record though its publisher saw only CancelledError)."""
    from mqttsession import journal as journal_mod  # noqa: PLC0415

    failing = _faults.FailOnce()
    monkeypatch.setattr(journal_mod, "os", failing)
    real_settle = AsyncSession._settle

    async def main() -> None:
        tag = time.monotonic_ns()
        pub = await AsyncSession.create(_options(mosquitto), client_id=f"aio-cf-{tag}",
                                        state_file=tmp_path / "p.session",
                                        session_sync="always")
        try:
            await pub.publish(f"aio/cf/{tag}", b"first", 1)
            assert await pub.flush(10)  # (its ack's record's sync never takes the failure)
            tasks: list[asyncio.Task[int]] = []

            def settle(self: AsyncSession, batch: Any, err: Exception | None) -> None:
                real_settle(self, batch, err)
                for t in tasks:  # cancelled once told, before they run again
                    t.cancel()

            monkeypatch.setattr(AsyncSession, "_settle", settle)
            failing.armed = True
            tasks += [asyncio.create_task(pub.publish(f"aio/cf/{tag}", f"c{n}", 1))
                      for n in range(3)]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            monkeypatch.setattr(AsyncSession, "_settle", real_settle)
            assert not pub.client._driver._awaiting
            assert b"c0" not in [m.message for m in pub.client.outgoing_messages]
            await pub.publish(f"aio/cf/{tag}", b"after", 1)
            assert await pub.flush(10)
        finally:
            await pub.close()

    _run(main)


def test_receive_after_close_hands_out_nothing(mosquitto: Any) -> None:
    """Before: ``receive()`` went on handing out queued messages after ``close()``, which
    could not be acknowledged any more (the next start got them again)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    async def main() -> list[object]:
        s = await AsyncSession.create(Options(address=mosquitto.address),
                                      client_id=f"rac-{uuid.uuid4().hex[:8]}",
                                      clean_session=False)
        topic = f"aio/closed/{s.client_id}"
        await s.subscribe(topic, 1)
        p = mqtt.Client(CallbackAPIVersion.VERSION2)
        p.connect(mosquitto.host, mosquitto.port)
        p.loop_start()
        for n in range(3):
            p.publish(topic, f"m{n}", qos=1).wait_for_publish(10)
        p.disconnect()
        p.loop_stop()
        for _ in range(500):
            if s._queue.qsize() >= 3:
                break
            await asyncio.sleep(0.01)
        first = await s.receive(5)
        await s.close()
        return [first.message if first else None] + [await s.receive(0.1) for _ in range(2)]

    assert asyncio.run(main()) == [b"m0", None, None]


@pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])
def test_a_subscribe_refused_with_0x80_raises(version: int) -> None:
    """A SUBACK refusing the filter with exactly 0x80 (3.1.1's only failure code; MQTT 5's
    Unspecified error): ``subscribe`` raises ``MQTTSessionError`` (a hunt)."""
    async def main() -> None:
        fb = FakeBroker(suback_code=0x80)
        try:
            s = await AsyncSession.create(Options(address=f"{fb.host}:{fb.port}",
                                                  protocol_version=version,
                                                  request_timeout_seconds=10.0))
            try:
                with pytest.raises(MQTTSessionError, match="refused"):
                    await s.subscribe("denied/#", 1)
            finally:
                await s.close()
        finally:
            fb.stop()

    _run(main)


def test_a_subscribe_never_answered_raises_within_the_request_timeout() -> None:
    """A broker that never answers the SUBSCRIBE: ``subscribe`` raises ``MQTTSessionError``
    ("no SUBACK") once ``RequestTimeoutSeconds`` passed, not returning as if subscribed
    (a hunt)."""
    async def main() -> None:
        fb = FakeBroker()
        got, go = threading.Event(), threading.Event()

        def silent(_fb: Any, rec: Any) -> None:  # its SUBACK held back until the test ends
            if rec.type == "SUBSCRIBE":
                got.set()
                go.wait(20)

        fb.on_packet = silent
        try:
            s = await AsyncSession.create(Options(address=f"{fb.host}:{fb.port}",
                                                  request_timeout_seconds=0.5))
            try:
                started = time.monotonic()
                with pytest.raises(MQTTSessionError, match="no SUBACK"):
                    await s.subscribe("silent/#", 1)
                assert got.is_set() and time.monotonic() - started < 15
            finally:
                go.set()
                await s.close()
        finally:
            go.set()
            fb.stop()

    _run(main)


def test_a_failed_create_with_a_state_file_releases_the_file(tmp_path: Path) -> None:
    """``create(..., state_file=...)`` whose connect fails (nothing listens): the session it
    made is closed, its state file released, so a second ``create`` on the same file succeeds
    (before, the first one's lock held it till the process ended) (a hunt)."""
    async def main() -> None:
        state = str(tmp_path / "s.session")
        bad = Options(address=f"127.0.0.1:{_closed_port()}", request_timeout_seconds=2)
        with pytest.raises(ConnectError):
            await AsyncSession.create(bad, client_id="released", state_file=state)
        again = await AsyncSession.create(bad, client_id="released", state_file=state,
                                          connect=False)
        await again.close()

    _run(main)
