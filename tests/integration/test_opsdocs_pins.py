"""Pins of the behaviour docs/operations.rst and the events' docs (``mqttsession.events``, on
docs/events.rst) describe: the thread each event runs on, the order of events, what is logged
at which level, what a callback may do. Real mosquitto; an ``MQTTProxy`` for the wire faults."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, Gateway, UsageError
from mqttsession.events import DIRECTION_CLIENT, DIRECTION_SERVER

try:  # tests/integration may or may not be a package
    from ._procs import TIMEOUT, publish_direct, unique, wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import TIMEOUT, publish_direct, unique, wait_until  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


class _Threads:
    """Every event of a ``Client``: its name, the thread it ran on, the event."""

    NAMES = ("on_connected", "on_disconnected", "on_message_in", "on_message_out",
             "on_message_ack", "on_subscribed", "on_unsubscribed", "on_session_lost",
             "on_error")

    def __init__(self, client: Client) -> None:
        self._cond = threading.Condition()
        self.events: list[tuple[str, str, Any]] = []
        for name in self.NAMES:
            setattr(client, name, (lambda n: lambda ev: self._add(n, ev))(name))

    def _add(self, name: str, event: Any) -> None:
        with self._cond:
            self.events.append((name, threading.current_thread().name, event))
            self._cond.notify_all()

    def of(self, name: str) -> list[tuple[str, Any]]:
        with self._cond:
            return [(t, e) for n, t, e in self.events if n == name]

    def wait(self, name: str, count: int = 1, timeout: float = TIMEOUT) -> list[tuple[str, Any]]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(n == name for n, _, _ in self.events) >= count, timeout)
        assert ok, f"{count} x {name} not seen: {self.events}"
        return self.of(name)


def test_each_event_runs_on_the_thread_its_table_names(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """events: on_connected (``connect()`` waits for it), on_subscribed, on_unsubscribed,
    on_message_in, on_message_ack and a QoS 1 on_message_out run on the network thread, as
    does on_disconnected on a lost connection; a QoS 0 on_message_out runs in the thread
    calling ``publish_*``."""
    proxy = mqtt_proxy_factory(mosquitto)
    main = threading.current_thread().name
    c = Client(client_id=unique("thr"), clean_session=False)
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.5")
    rec = _Threads(c)
    topic = f"mqs/{unique('thr')}"
    try:
        c.connect(proxy.host, proxy.port, 10)
        connected = rec.of("on_connected")  # (not waited for: connect() did)
        assert len(connected) == 1, rec.events
        net = connected[0][0]
        assert net != main
        c.subscribe(topic, 1)
        rec.wait("on_subscribed")
        c.publish_message(topic, 0, "zero")
        c.publish_message(topic, 1, "one")
        rec.wait("on_message_out", 2)
        rec.wait("on_message_in", 2)
        wait_until(lambda: {e.direction for _, e in rec.of("on_message_ack")}
                   == {DIRECTION_CLIENT, DIRECTION_SERVER}, what="both acks")
        c.unsubscribe(topic)
        rec.wait("on_unsubscribed")
        proxy.cut()
        rec.wait("on_disconnected")
        rec.wait("on_connected", 2)
        c.disconnect()
        rec.wait("on_disconnected", 2)
    finally:
        c.close()
    out = {e.qos: t for t, e in rec.of("on_message_out")}
    assert out == {0: main, 1: net}, out
    for name in ("on_connected", "on_subscribed", "on_unsubscribed", "on_message_in",
                 "on_message_ack"):
        assert {t for t, _ in rec.of(name)} == {net}, (name, rec.of(name))
    (lost_on, lost), (_, closed) = rec.of("on_disconnected")[:2]
    assert lost.status_code != 0 and lost_on == net
    assert closed.status_code == 0


def test_a_clean_disconnects_on_disconnected_runs_on_the_network_thread(mosquitto: Any) -> None:
    """events: ``on_disconnected`` of a clean close runs on the network thread (paho's, for a
    ``Client``), not the thread calling ``disconnect()``, which waits for it (the table said
    the caller's thread: an audit)."""
    c = Client(client_id=unique("clean"), clean_session=True)
    rec = _Threads(c)
    try:
        c.connect(mosquitto.host, mosquitto.port, 10)
        t = threading.Thread(target=c.disconnect, name="closer")
        t.start()
        t.join(TIMEOUT)
        assert rec.of("on_disconnected"), "disconnect() returned before on_disconnected"
    finally:
        c.close()
    [(thread, event)] = rec.of("on_disconnected")
    assert thread.startswith("paho-mqtt-client-") and event.status_code == 0, thread


def test_manual_ack_fires_the_server_direction_ack_in_the_thread_calling_ack(
        mosquitto: Any) -> None:
    """events: with ManualAck, ``on_message_ack`` of DIRECTION_SERVER fires in the thread
    calling ``ack()``."""
    c = Client(client_id=unique("mack"), clean_session=True)
    c.config("ManualAck=True")
    got: list[Any] = []
    acks: list[tuple[int, str]] = []
    c.on_message_in = got.append
    c.on_message_ack = lambda e: acks.append((e.direction, threading.current_thread().name))
    topic = f"mqs/{unique('mack')}"
    try:
        c.connect(mosquitto.host, mosquitto.port, 10)
        c.subscribe(topic, 1)
        assert c.flush(TIMEOUT)
        time.sleep(0.2)  # (the SUBACK)
        publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "m")])
        wait_until(lambda: got, what="the message")
        assert acks == []  # nothing acknowledged before ack()
        t = threading.Thread(target=lambda: c.ack(got[0]), name="acker")
        t.start()
        t.join(TIMEOUT)
        wait_until(lambda: acks, what="on_message_ack")
    finally:
        c.close()
    assert acks == [(DIRECTION_SERVER, "acker")]


def test_session_lost_fires_after_on_connected_on_the_network_thread_before_anything_is_sent(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """events: ``on_session_lost`` on the network thread, after ``on_connected`` and before
    anything is sent on the new connection (here: the subscription sent again); never for a
    session's first accepted connection."""
    proxy = mqtt_proxy_factory(mosquitto)
    cid = unique("lostord")
    c = Client(client_id=cid, clean_session=False)
    rec = _Threads(c)
    sent_before: list[int] = []

    def on_session_lost(e: Any) -> None:
        rec._add("on_session_lost", e)  # noqa: SLF001
        time.sleep(0.3)  # whatever was written before this callback reaches the proxy's log
        sent_before.append(len(proxy.packets("c2s", "SUBSCRIBE")))

    c.on_session_lost = on_session_lost
    try:
        c.connect(proxy.host, proxy.port, 10)  # SessionPresent=0: the first one
        c.subscribe(f"mqs/{cid}/#", 1)
        rec.wait("on_subscribed")
        c.disconnect()
        assert rec.of("on_session_lost") == []
        wipe = Client(client_id=cid, clean_session=True)  # the broker forgets the session
        try:
            wipe.connect(mosquitto.host, mosquitto.port, 10)
        finally:
            wipe.close()
        proxy.clear_log()
        c.connect(proxy.host, proxy.port, 10)
        rec.wait("on_session_lost")
        rec.wait("on_subscribed", 2)
    finally:
        c.close()
    names = [n for n, _, _ in rec.events]
    second = [i for i, n in enumerate(names) if n == "on_connected"][1]
    assert names.index("on_session_lost") == second + 1, names
    assert rec.of("on_session_lost")[0][0] == rec.of("on_connected")[1][0]
    assert rec.of("on_session_lost")[0][0] != threading.current_thread().name
    assert sent_before == [0]


def test_a_raising_on_message_in_is_logged_reported_and_its_message_acknowledged(
        mosquitto: Any, mqtt_proxy_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """events: a callback that raises is logged (``mqttsession`` logger, with its traceback)
    and reported through ``on_error``; the session goes on; without ManualAck the message is
    acknowledged all the same. operations: a callback that raised is a WARNING/ERROR."""
    caplog.set_level(logging.DEBUG, logger="mqttsession")
    proxy = mqtt_proxy_factory(mosquitto)
    c = Client(client_id=unique("raise"), clean_session=True)
    got: list[bytes] = []
    errors: list[str] = []

    def on_message_in(e: Any) -> None:
        got.append(e.message)
        if e.message == b"boom":
            raise RuntimeError("the application broke")

    c.on_message_in = on_message_in
    c.on_error = lambda e: errors.append(e.description)
    topic = f"mqs/{unique('raise')}"
    try:
        c.connect(proxy.host, proxy.port, 10)
        c.subscribe(topic, 1)
        proxy.wait_for("s2c", "SUBACK", timeout=TIMEOUT)
        publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "boom"), (1, "after")])
        wait_until(lambda: got == [b"boom", b"after"], what="both messages")
        wait_until(lambda: len(proxy.packets("c2s", "PUBACK")) == 2, what="both PUBACKs")
    finally:
        c.close()
    assert any("on_message_in callback raised" in d and "the application broke" in d
               for d in errors), errors
    raised = [r for r in caplog.records if "on_message_in callback raised" in r.getMessage()
              and r.name == "mqttsession"]
    assert raised and raised[0].levelno >= logging.WARNING
    assert raised[0].exc_info is not None and "the application broke" in str(raised[0].exc_info[1])


def test_callbacks_may_call_back_into_the_client_but_flush_raises(mosquitto: Any) -> None:
    """events: callbacks never run under the session's lock: ``publish_*``, ``subscribe``,
    ``ack`` and ``config`` work inside one, ``flush()`` raises there (operations: call
    ``flush()`` from your own thread, not from an event callback)."""
    c = Client(client_id=unique("inside"), clean_session=True)
    c.config("ManualAck=True")
    topic = f"mqs/{unique('inside')}"
    results: list[object] = []
    out: list[bytes] = []

    def on_message_in(e: Any) -> None:
        if e.message != b"go":
            return
        try:
            c.flush(2)
            results.append("flushed")
        except UsageError as exc:
            results.append(exc)
        c.publish_message(f"{topic}/reply", 1, "reply")
        c.subscribe(f"{topic}/more", 1)
        results.append(c.config("ManualAck"))
        results.append(c.ack(e))

    c.on_message_in = on_message_in
    c.on_message_out = lambda e: out.append(e.message)
    try:
        c.connect(mosquitto.host, mosquitto.port, 10)
        c.subscribe(topic, 1)
        assert c.flush(TIMEOUT)
        time.sleep(0.2)
        publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "go")])
        wait_until(lambda: len(results) == 3, what="the callback")
        wait_until(lambda: out == [b"reply"], what="the reply's on_message_out")
        assert c.flush(TIMEOUT)
        publish_direct(mosquitto.host, mosquitto.port, f"{topic}/more", [(0, "more")])
    finally:
        c.close()
    assert isinstance(results[0], UsageError), results
    assert results[1:] == ["True", True], results


def test_while_a_callback_runs_no_other_packet_of_its_connection_is_processed(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """events: while a callback runs, no other packet of that connection is processed (a
    QoS 1 message that arrived meanwhile is not taken, its PUBACK not sent)."""
    proxy = mqtt_proxy_factory(mosquitto)
    c = Client(client_id=unique("hold"), clean_session=True)
    gate, holding = threading.Event(), threading.Event()
    got: list[bytes] = []

    def on_message_in(e: Any) -> None:
        got.append(e.message)
        if e.message == b"hold":
            holding.set()
            gate.wait(TIMEOUT)

    c.on_message_in = on_message_in
    topic = f"mqs/{unique('hold')}"
    try:
        c.connect(proxy.host, proxy.port, 10)
        c.subscribe(topic, 1)
        proxy.wait_for("s2c", "SUBACK", timeout=TIMEOUT)
        proxy.clear_log()
        publish_direct(mosquitto.host, mosquitto.port, topic, [(0, "hold"), (1, "next")])
        assert holding.wait(TIMEOUT)
        proxy.wait_for("s2c", "PUBLISH", predicate=lambda r: r.qos == 1, timeout=TIMEOUT)
        time.sleep(0.3)  # room to (wrongly) take it
        taken = [m.message for m in c.incoming_messages]
        acked = len(proxy.packets("c2s", "PUBACK"))
        gate.set()
        wait_until(lambda: got == [b"hold", b"next"], what="the second message")
        proxy.wait_for("c2s", "PUBACK", timeout=TIMEOUT)
    finally:
        gate.set()
        c.close()
    assert taken == [] and acked == 0, (taken, acked)


def test_a_failed_reconnect_and_pahos_packets_are_logged(
        mosquitto: Any, mqtt_proxy_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """operations: ``reconnecting to HOST:PORT failed: REASON`` at INFO when an attempt fails;
    ``mqttsession.paho`` carries paho's own log (its packets, at DEBUG); nothing at WARNING."""
    caplog.set_level(logging.DEBUG)
    proxy = mqtt_proxy_factory(mosquitto)
    where = f"{proxy.host}:{proxy.port}"
    c = Client(client_id=unique("refl"), clean_session=True)
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.2")
    try:
        c.connect(proxy.host, proxy.port, 10)
        proxy.stop()  # the port now refuses
        wait_until(lambda: any(f"reconnecting to {where} failed: " in r.getMessage()
                               for r in caplog.records), timeout=5, what="a failed attempt")
    finally:
        c.close()
    ours = [r for r in caplog.records
            if r.name.startswith("mqttsession") and not r.name.startswith("mqttsession.testing")]
    failed = [r for r in ours if f"reconnecting to {where} failed: " in r.getMessage()]
    assert {r.levelno for r in failed} == {logging.INFO}
    assert [r for r in ours if r.levelno >= logging.WARNING] == []
    paho = [r.getMessage() for r in ours if r.name == "mqttsession.paho"
            and r.levelno == logging.DEBUG]
    assert any("CONNECT" in m for m in paho) and any("CONNACK" in m for m in paho), paho


def test_a_disk_queue_read_back_is_logged_at_info(
        mosquitto: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """operations: ``disk queue DIR: N segment(s) read back and deleted`` at INFO."""
    caplog.set_level(logging.INFO, logger="mqttsession")
    c = Client(client_id=unique("dq"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("QueueInMemory=2")
    try:
        c.restore_session("")
        for n in range(20):
            c.publish_data("mqs/dq", 1, b"%d" % n)
        assert c.queue_stats().messages == 20
        c.connect(mosquitto.host, mosquitto.port, 10)
        assert c.flush(TIMEOUT)
    finally:
        c.close()
    read = [r for r in caplog.records if "segment(s) read back and deleted" in r.getMessage()]
    assert read and all(r.levelno == logging.INFO for r in read), read
    assert read[0].getMessage().startswith("disk queue ")


def test_a_connected_gateway_sessions_interval_sync_runs_in_the_jobs_thread(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """operations: a Gateway runs the loop's other jobs (an ``interval`` sync) in
    ``mqttsession-gateway-jobs``; its loop thread is ``mqttsession-gateway``."""
    import os  # noqa: PLC0415

    real = os.fdatasync
    names: list[str] = []

    def fdatasync(fd: int) -> None:
        names.append(threading.current_thread().name)
        real(fd)

    with Gateway(tmp_path / "gw") as gw:
        assert gw.thread.name == "mqttsession-gateway"
        dev = gw.client("dev", clean_session=False)
        assert gw.connect_all(mosquitto.host, mosquitto.port) == {}
        dev.config("SessionSync=interval")
        dev.config("SessionSyncInterval=50")
        dev.publish_data("jobs/x", 1, b"warm")
        assert dev.flush(TIMEOUT)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        dev.publish_data("jobs/x", 0, b"x")
        dev.publish_data("jobs/x", 1, b"y")  # its interval sync: 50 ms later
        wait_until(lambda: names, timeout=5, what="the interval sync")
        time.sleep(0.2)
        monkeypatch.setattr(os, "fdatasync", real)
    assert any(n.startswith("mqttsession-gateway-jobs") for n in names), names
    assert "mqttsession-gateway" not in names, names


def test_an_async_sessions_tcp_connect_and_ack_sync_run_in_the_default_executor(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """operations: an ``AsyncSession``'s TCP connect, and the fsync an acknowledgement waits
    for, run in the loop's default executor: the loop never waits for the disk. events: its
    on_disconnected of a clean close runs on an executor thread or the network (loop) thread."""
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415

    import mqttsession.dialing as dialing_mod  # noqa: PLC0415
    import mqttsession.journal as journal_mod  # noqa: PLC0415
    from mqttsession import AsyncSession, Options  # noqa: PLC0415
    from mqttsession.testing.faults import FakeOs  # noqa: PLC0415

    dials: list[str] = []
    syncs: list[str] = []
    real_dial = dialing_mod.connect_tcp

    def connect_tcp(*args: Any, **kwargs: Any) -> Any:
        dials.append(threading.current_thread().name)
        return real_dial(*args, **kwargs)

    def fdatasync(fd: int) -> None:
        syncs.append(threading.current_thread().name)
        os.fdatasync(fd)

    monkeypatch.setattr(dialing_mod, "connect_tcp", connect_tcp)
    topic = f"mqs/{unique('aiox')}"

    closed_on: list[str] = []

    async def main() -> str:
        s = AsyncSession(Options(address=mosquitto.address, request_timeout_seconds=10),
                         client_id=unique("aiox"), state_file=tmp_path / "a.session",
                         session_sync="always")
        s.client.on_disconnected = lambda e: closed_on.append(threading.current_thread().name)
        async with s:
            await s.subscribe(topic, 2)
            monkeypatch.setattr(journal_mod, "os", FakeOs(fdatasync=fdatasync))
            await asyncio.to_thread(publish_direct, mosquitto.host, mosquitto.port, topic,
                                    [(2, "two")])
            got = await s.receive(10)
            assert got is not None and got.message == b"two"
            monkeypatch.setattr(journal_mod, "os", os)
        return threading.current_thread().name

    loop_thread = asyncio.run(asyncio.wait_for(main(), 30))
    assert dials and loop_thread not in dials and all(d.startswith("asyncio_") for d in dials)
    assert syncs and loop_thread not in syncs, syncs
    assert len(closed_on) == 1, closed_on
    assert closed_on[0] == loop_thread or closed_on[0].startswith("asyncio_"), closed_on


def test_an_async_gateway_restores_a_session_in_its_jobs_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """operations: ``AsyncGateway`` restores a session it opens, and closes one, in
    ``mqttsession-gateway-jobs`` (its reads and syncs off the loop)."""
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415

    from mqttsession import AsyncGateway  # noqa: PLC0415

    real = os.fdatasync
    names: list[str] = []

    def fdatasync(fd: int) -> None:
        names.append(threading.current_thread().name)
        real(fd)

    async def main() -> str:
        async with AsyncGateway(tmp_path / "gw") as gw:
            monkeypatch.setattr(os, "fdatasync", fdatasync)
            s = await gw.session("dev", connect=False)
            opened = list(names)
            await s.publish("t", b"held", 1)
            del names[:]
            await s.close()
            closing = list(names)
            monkeypatch.setattr(os, "fdatasync", real)
        names[:] = opened
        assert closing and all(n.startswith("mqttsession-gateway-jobs") for n in closing), \
            closing
        return threading.current_thread().name

    loop_thread = asyncio.run(asyncio.wait_for(main(), 30))
    assert names and loop_thread not in names, names
    assert all(n.startswith("mqttsession-gateway-") for n in names), names
    assert any(n.startswith("mqttsession-gateway-jobs") for n in names), names


def test_an_async_gateways_disk_queue_batches_use_at_most_eight_spool_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """operations: ``AsyncGateway`` stores its sessions' disk-queue batches
    (``SessionSync=always``) in ``mqttsession-gateway-spool`` threads, up to 8, side by side."""
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415

    import mqttsession.spool as spool_mod  # noqa: PLC0415
    from mqttsession import AsyncGateway, Options  # noqa: PLC0415
    from mqttsession.testing.faults import FakeOs  # noqa: PLC0415

    threads: set[str] = set()
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def fdatasync(fd: int) -> None:
        with lock:
            threads.add(threading.current_thread().name)
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.02)
        os.fdatasync(fd)
        with lock:
            running[0] -= 1

    async def main() -> None:
        async with AsyncGateway(tmp_path / "gw") as gw:
            sessions = [await gw.session(f"dev{i}", Options(address="127.0.0.1:1"),
                                         session_sync="always", connect=False)
                        for i in range(12)]
            for s in sessions:
                await s.config("QueueInMemory=1")
                await s.publish("t", b"first", 1)
            monkeypatch.setattr(spool_mod, "os", FakeOs(fdatasync=fdatasync))

            async def device(s: Any) -> None:
                for n in range(3):
                    await s.publish("t", b"m%d" % n, 1)
            await asyncio.gather(*(device(s) for s in sessions))
            monkeypatch.setattr(spool_mod, "os", os)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert {n.rsplit("_", 1)[0] for n in threads} == {"mqttsession-gateway-spool"}, threads
    assert 1 < len(threads) <= 8 and running[1] <= 8, (threads, running)


def test_a_broker_that_broke_the_protocol_is_logged_at_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """operations: WARNING and ERROR mean something needs attention: a broker that broke the
    protocol (here a second CONNACK)."""
    from mqttsession.testing.fake_broker import FakeBroker  # noqa: PLC0415

    caplog.set_level(logging.WARNING, logger="mqttsession")
    fake = FakeBroker()
    c = Client(client_id=unique("viol"), clean_session=True)
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(fake.connack(session_present=False))  # a second CONNACK
        wait_until(lambda: errors, timeout=5, what="on_error")
    finally:
        c.close()
        fake.stop()
    assert any("second CONNACK" in r.getMessage() and r.levelno >= logging.WARNING
               for r in caplog.records), [r.getMessage() for r in caplog.records]
