"""Issue 13's behaviour that no other test pinned (an audit): each group-commit publish is
on disk when it returns (threads, asyncio) and its PUBLISH leaves only after that; an ack's
record that a publisher's fdatasync already covered costs the network thread none;
``AsyncSession.publish_many`` is one fdatasync; the Mesh ``Session`` has ``publish_many``;
under ``SessionSync=interval`` a PUBLISH leaves before any sync, a power cut loses only a
suffix published since the last sync (nothing published before it, nothing after a restart),
and PUBREL / PUBCOMP still wait for their records' fdatasync. Real mosquitto; power cuts
modelled by ``_powercut.Recorder`` (only synced bytes survive)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession.journal as journal_mod
from mqttsession import AsyncSession, Client, Connection, Options, PublishRequest
from mqttsession._paho import PahoConnection
from mqttsession.testing.fsyncs import counting_fdatasyncs

try:  # tests/integration may or may not be a package
    from . import _powercut, _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

unique = _procs.unique


def _state_file(tmp_path: Path) -> Path:
    path = tmp_path / "w" / "s"
    path.parent.mkdir()
    return path


def _on_disk(rec: _powercut.Recorder, data: bytes) -> bool:
    """Whether ``data`` is in the synced bytes of some file (what a power cut now keeps)."""
    with rec.lock:
        return any(data in d for d in rec.durable.values())


# ------------------------------------------------------------------ group commit (always)


def test_every_threaded_publish_is_on_disk_when_it_returns_and_a_power_cut_keeps_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Persistence point 1 under group commit: four threads share fdatasyncs, and each
    ``publish_data`` returns only once a sync has put its record on disk; a power cut then
    (the client still open) loses none of them."""
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    cid = unique("i13-threads")
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")  # the journal is open: the group commit applies
    late: list[bytes] = []
    sent: list[bytes] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(40):
            data = b"<k%d-%03d>" % (k, i)
            c.publish_data("t", 1 + i % 2, data)
            with lock:
                sent.append(data)
                if not _on_disk(rec, data):
                    late.append(data)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert len(sent) == 160
        assert not late, late[:10]  # returned before its record was synced
        cut = rec.image(path, tmp_path / "cut")  # a power cut now
    finally:
        c.close()
    got = _powercut.kept(cut, cid)
    assert got[0] == b"first" and sorted(got[1:]) == sorted(sent)


def test_each_concurrent_asyncio_publish_is_on_disk_before_it_returns_and_before_it_leaves(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 concurrent ``await session.publish(...)`` calls under ``always``: each returns only
    once its record is synced, and no PUBLISH of them reaches the socket before that."""
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    tag = unique("i13aio")
    topic = f"mqs/{tag}"
    payloads = [f"<{tag}:{n:03d}>".encode() for n in range(50)]
    early: list[bytes] = []
    orig = PahoConnection.write

    def write(self: PahoConnection, packet: bytes, kind: int, packet_id: int = 0,
              qos: int = 0) -> None:
        if kind == 3:
            early.extend(p for p in payloads if p in packet and not _on_disk(rec, p))
        orig(self, packet, kind, packet_id, qos)

    monkeypatch.setattr(PahoConnection, "write", write)
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)

    async def main() -> list[bytes]:
        late: list[bytes] = []

        async def one(data: bytes) -> int:
            pid = await s.publish(topic, data, 1)
            if not _on_disk(rec, data):
                late.append(data)
            return pid

        opts = Options(address=f"{mosquitto.host}:{mosquitto.port}")
        async with AsyncSession(opts, client_id=unique("i13aio"), state_file=str(path)) as s:
            await s.publish(topic, b"warm-up", 1)
            ids = await asyncio.gather(*(one(p) for p in payloads))
            assert len(set(ids)) == 50
            await s.flush()
        return late

    try:
        late = asyncio.run(main())
        assert not late, late[:10]
        assert not early, early[:10]
        _procs.wait_until(lambda: set(payloads) <= {p for p, _q, _d in counter.received},
                          10, "every message delivered")
    finally:
        counter.close()


def test_an_ack_record_a_publishers_fdatasync_covered_costs_the_network_thread_none(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The records the network thread makes durable before a PUBREL ride on the publishers'
    syncs: the "released" record of a QoS 2 flow waits (its sync held back on the network
    thread) while a QoS 1 publish syncs the journal past it; the network thread's sync then
    needs no fdatasync of its own, and the PUBREL leaves."""
    proxy = mqtt_proxy_factory(mosquitto)
    syncers: list[int] = []

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fdatasync(self, fd: int) -> None:
            os.fdatasync(fd)
            syncers.append(threading.get_ident())

    monkeypatch.setattr(journal_mod, "os", _Os())
    armed, entered, gate = threading.Event(), threading.Event(), threading.Event()
    own: list[int] = []  # the network thread's fdatasyncs inside its held sync
    orig = journal_mod.Journal.sync_pending
    main_thread = threading.main_thread()

    def sync_pending(self: Any) -> None:
        if armed.is_set() and threading.current_thread() is not main_thread:
            armed.clear()
            entered.set()
            assert gate.wait(10)
            me, before = threading.get_ident(), len(syncers)
            try:
                orig(self)
            finally:
                own.append(sum(1 for t in syncers[before:] if t == me))
            return
        orig(self)

    monkeypatch.setattr(journal_mod.Journal, "sync_pending", sync_pending)
    c = Client(client_id=unique("i13ride"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.publish_data("mqs/i13ride", 1, b"warm-up")
        assert c.flush(10)
        armed.set()
        c.publish_data("mqs/i13ride", 2, b"released")
        assert entered.wait(10), "the PUBREC's batch made no sync"
        assert proxy.packets("c2s", "PUBREL") == []
        c.publish_data("mqs/i13ride", 1, b"its sync covers the released record")
        gate.set()
        proxy.wait_for("c2s", "PUBREL", timeout=10)
        assert own == [0], own  # covered already: no fdatasync of its own
        assert c.flush(10)
    finally:
        gate.set()
        c.close()


# ------------------------------------------------------------------ publish_many


def test_asyncio_publish_many_is_one_fdatasync(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="i13-amany",
                                      state_file=str(tmp_path / "a"), connect=False)
        try:
            await s.publish("t", b"warm-up", 1)  # the file is open
            with counting_fdatasyncs() as counting:
                ids = await s.publish_many(
                    [("t", 1 + n % 2, b"%d" % n) for n in range(40)]
                    + [PublishRequest("t", 1, b"req", retain=True)])
                return ids, counting.syncs
        finally:
            await s.close()

    ids, syncs = asyncio.run(main())
    assert syncs == 1, syncs
    assert len(ids) == 41 and all(ids) and len(set(ids)) == 41
    d = Client(client_id="i13-amany", clean_session=False)
    d.config(f"SessionStateFile={tmp_path / 'a'}")
    d.restore_session("")
    try:
        assert [m.message for m in d.outgoing_messages][-2:] == [b"39", b"req"]
        assert d.outgoing_messages[-1].retained is True
    finally:
        d.close()


def test_a_mesh_sessions_publish_many_reaches_the_broker_with_retain(mosquitto: Any) -> None:
    """The Mesh ``Session`` has ``publish_many`` too: ids returned, every message delivered,
    a request's ``retain=True`` kept by the broker."""
    tag = unique("i13mesh")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    session = Connection(Options(address=f"{mosquitto.host}:{mosquitto.port}")).create_session()
    session.open()
    try:
        ids = session.publish_many([(topic, 1, _procs.payload(tag, 0)),
                                    (topic, 2, _procs.payload(tag, 1)),
                                    PublishRequest(topic, 1, _procs.payload(tag, 2), retain=True)])
        assert len(ids) == 3 and all(ids) and len(set(ids)) == 3
        assert session.client.flush(10)
        _procs.wait_until(lambda: set(counter.counts(tag)) == {0, 1, 2}, 10, "the batch")
        retained: list[bytes] = []
        late = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("late"))
        late.on_message = lambda _c, _u, m: retained.append(m.payload) if m.retain else None
        late.connect(mosquitto.host, mosquitto.port)
        late.loop_start()
        try:
            late.subscribe(topic, 1)
            _procs.wait_until(lambda: retained, 10, "the retained message")
            assert retained == [_procs.payload(tag, 2).encode()]
            late.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # (cleared)
        finally:
            late.disconnect()
            late.loop_stop()
    finally:
        session.close()
        counter.close()


# ------------------------------------------------------------------ SessionSync=interval


def test_interval_publishes_leave_and_are_acknowledged_before_any_sync(
        mosquitto: Any, tmp_path: Path) -> None:
    tag = unique("i13iv")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    c = _powercut.interval_client(tmp_path / "s", 60_000, unique("i13iv"))
    try:
        with counting_fdatasyncs() as counting:
            c.connect(mosquitto.host, mosquitto.port, timeout=10)
            c.publish_message(topic, 1, _procs.payload(tag, 0))  # (its id reservation: synced)
            assert c.flush(10)
            before = counting.syncs
            for n in range(1, 11):
                c.publish_message(topic, 1, _procs.payload(tag, n))
            assert c.flush(10)  # all acknowledged with no sync: none waited for one
            assert counting.syncs == before
            counter.wait_numbers(tag, range(11))
    finally:
        c.close()
        counter.close()


def test_interval_power_cut_loses_only_a_suffix_published_since_the_last_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut under ``interval``: every message published before the last interval
    sync is kept, what is lost is a suffix of the publish order (those since), and a restart
    from what was kept loses nothing published after it."""
    rec = _powercut.install(monkeypatch)
    path = _state_file(tmp_path)
    first = [b"a%02d" % n for n in range(10)]
    then = [b"b%02d" % n for n in range(10)]
    c = _powercut.interval_client(path, 150, "i13cut")
    try:
        c.restore_session("")
        for body in first:
            c.publish_data("t/x", 1, body)
        assert _procs.wait_until(lambda: _on_disk(rec, first[-1]), 5, "the interval's sync")
        for body in then:  # the next sync is at most 150 ms away: cut before it
            c.publish_data("t/x", 1, body)
        cut = rec.image(path, tmp_path / "cut")
    finally:
        c.close()
    got = _powercut.kept(cut, "i13cut")
    sent = first + then
    assert got[:10] == first and got == sent[:len(got)], got
    d = _powercut.interval_client(cut, 150, "i13cut")
    try:
        d.restore_session("")
        for body in (b"c00", b"c01"):
            d.publish_data("t/x", 1, body)
        assert _procs.wait_until(lambda: _on_disk(rec, b"c01"), 5, "the interval's sync")
        again = rec.image(cut, tmp_path / "cut2")
    finally:
        d.close()
    assert _powercut.kept(again, "i13cut") == [*got, b"c00", b"c01"]


class _HeldSyncs:
    """``journal``'s ``os``: once armed, the ``skip``-th and later fdatasyncs made off the
    main thread count; the first counted one waits for ``gate``."""

    def __init__(self) -> None:
        self.armed, self.skip, self.seen = False, 0, 0
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.seen += 1
            if self.seen > self.skip and not self.entered.is_set():
                self.entered.set()
                self.gate.wait(10)
        os.fdatasync(fd)


def test_interval_pubrel_waits_for_the_released_records_fdatasync(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    held = _HeldSyncs()
    monkeypatch.setattr(journal_mod, "os", held)
    c = _powercut.interval_client(tmp_path / "s", 60_000, unique("i13rel"))
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.publish_data("mqs/i13rel", 1, b"warm-up")  # (the id reservation's sync)
        assert c.flush(10)
        held.armed = True
        c.publish_data("mqs/i13rel", 2, b"released once synced")
        proxy.wait_for("s2c", "PUBREC", timeout=10)
        assert held.entered.wait(5), "no fdatasync before the PUBREL"
        time.sleep(0.1)  # (room for a PUBREL that would not wait)
        assert proxy.packets("c2s", "PUBREL") == []
        held.gate.set()
        proxy.wait_for("c2s", "PUBREL", timeout=10)
        assert c.flush(10)
    finally:
        held.gate.set()
        c.close()


def test_interval_pubcomp_waits_for_the_removals_fdatasync(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable subscriber under ``interval``: an incoming QoS 2 message's PUBREC waits for
    its record's sync (the first), its PUBCOMP for the removal's (the second)."""
    proxy = mqtt_proxy_factory(mosquitto)
    held = _HeldSyncs()
    held.skip = 1  # the PUBREC's
    monkeypatch.setattr(journal_mod, "os", held)
    got: list[bytes] = []
    c = _powercut.interval_client(tmp_path / "s", 60_000, unique("i13comp"))
    c.on_message_in = lambda e: got.append(e.message)
    sender = Client(client_id=unique("i13sender"))
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe("mqs/i13comp", 2)
        proxy.wait_for("s2c", "SUBACK", timeout=10)
        held.armed = True
        sender.connect(mosquitto.host, mosquitto.port, timeout=10)
        sender.publish_data("mqs/i13comp", 2, b"removed once synced")
        proxy.wait_for("s2c", "PUBREL", timeout=10)
        assert held.entered.wait(5), "no fdatasync before the PUBCOMP"
        time.sleep(0.1)  # (room for a PUBCOMP that would not wait)
        assert proxy.packets("c2s", "PUBCOMP") == []
        assert held.seen == 2
        held.gate.set()
        proxy.wait_for("c2s", "PUBCOMP", timeout=10)
        assert got == [b"removed once synced"]
    finally:
        held.gate.set()
        sender.close()
        c.close()
