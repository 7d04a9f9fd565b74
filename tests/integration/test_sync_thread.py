"""A threaded ``Client``'s read batches on a slow disk: the fdatasync their acks wait for runs
on the session's sync thread (``behind.SyncBehind``), not on paho's network thread. While a
slow disk holds that sync, the connection keeps reading (QoS 0 deliveries, acks of the session's own
publishes, keep-alive), and the acks that depend on the batch's records still wait for it
(persistence point 2: no PUBREC before its record is durable). Real mosquitto, an
``MQTTProxy`` logging what the client sends, a plain paho publisher; the disk's fdatasync
held by a gate in the journal's ``os``."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession.journal as journal_mod
from mqttsession import Client, MessageEvent
from mqttsession.testing.faults import FakeOs

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


class _HeldSync(FakeOs):
    """The journal's ``os``: every fdatasync ``slow`` seconds longer (a card's: the read
    batches sync on the sync thread from ``behind.SLOW_SYNC``); while ``armed``, one on the
    network side (paho's thread or the sync thread) waits for ``gate``; ``entered`` once one
    does."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = 0.005
        self.armed = False
        self.fails = False  # the held one then fails (EIO)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd: int) -> None:
        name = threading.current_thread().name
        time.sleep(self.slow)
        if self.armed and name.startswith(("paho", "mqttsession-acksync")):
            self.entered.set()
            assert self.gate.wait(30), "the gate was never opened"
            if self.fails:
                self.armed = self.fails = False
                raise OSError(errno.EIO, "injected EIO")
        os.fdatasync(fd)


def _publisher(address: tuple[str, int]) -> mqtt.Client:
    p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_procs.unique("pub"))
    p.connect(*address, 30)
    p.loop_start()
    return p


def _warmed(pub: mqtt.Client, topic: str, got: list[Any]) -> None:
    """Three QoS 2 messages received one after the other, each read batch's sync 5 ms: the
    syncs' moving average past ``behind.SLOW_SYNC`` (a card's)."""
    for n in range(3):
        pub.publish(topic, b"warm%d" % n, 2)
        _procs.wait_until(lambda: len(got) > n, what="a warm-up message")
    assert len(got) == 3


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_a_held_read_batch_sync_leaves_the_connection_reading(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    """Before: the read batch's fdatasync ran on paho's network thread, so a slow disk
    stopped the whole connection (here: no QoS 0 message handed over while it lasted)."""
    disk = _HeldSync()
    monkeypatch.setattr(journal_mod, "os", disk)
    proxy = mqtt_proxy_factory(mosquitto)
    tag = _procs.unique("st")
    got: list[tuple[str, bytes]] = []
    arrived = threading.Condition()

    def on_message_in(e: MessageEvent) -> None:
        with arrived:
            got.append((e.topic, e.message))
            arrived.notify_all()

    c = Client(client_id=_procs.unique("st"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's.session'}")
    c.config(f"SessionSync={sync}")
    c.on_message_in = on_message_in
    pub = _publisher((mosquitto.host, mosquitto.port))
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe(f"{tag}/q2", 2)
        c.subscribe(f"{tag}/q0", 0)
        _procs.wait_until(lambda: len(proxy.packets("s2c", "SUBACK")) == 2, what="SUBACKs")
        _warmed(pub, f"{tag}/q2", got)
        got.clear()
        proxy.clear_log()
        disk.armed = True
        pub.publish(f"{tag}/q2", b"two", 2)
        assert disk.entered.wait(10), "the QoS 2 message's record was never synced"
        for n in range(5):
            pub.publish(f"{tag}/q0", b"zero%d" % n, 0)
        with arrived:  # handed over while the sync is held
            ok = arrived.wait_for(lambda: sum(t.endswith("q0") for t, _ in got) == 5, 10)
        assert ok, f"QoS 0 messages not handed over while the sync was held: {got}"
        assert not proxy.packets("c2s", "PUBREC"), "a PUBREC before its record was durable"
        disk.gate.set()
        proxy.wait_for("c2s", "PUBREC", timeout=10)  # the held ack, once the sync ended
        proxy.wait_for("c2s", "PUBCOMP", timeout=10)
        with arrived:  # (handed over by the network thread: maybe just after its PUBCOMP)
            arrived.wait_for(lambda: any(t.endswith("q2") for t, _ in got), 10)
        assert [p for t, p in got if t.endswith("q2")] == [b"two"]
    finally:
        disk.gate.set()
        pub.loop_stop()
        pub.disconnect()
        c.close()


def test_a_held_sync_that_fails_after_a_reconnect_is_reported(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the read batch's sync held while the connection is cut (its acks dropped
    with it, the client reconnecting), then failing: before, nobody read its error (the
    dropped batch's future was only looked at while queued); now ``on_error`` says so, and
    the QoS 2 message is handed over once."""
    disk = _HeldSync()
    monkeypatch.setattr(journal_mod, "os", disk)
    proxy = mqtt_proxy_factory(mosquitto)
    tag = _procs.unique("sf")
    errors: list[str] = []
    got: list[bytes] = []
    c = Client(client_id=_procs.unique("sf"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's.session'}")
    c.config("SessionSync=interval")
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.2")
    c.on_error = lambda e: errors.append(e.description)
    c.on_message_in = lambda e: got.append(e.message)
    pub = _publisher((mosquitto.host, mosquitto.port))
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe(f"{tag}/q2", 2)
        _procs.wait_until(lambda: proxy.packets("s2c", "SUBACK"), what="SUBACK")
        _warmed(pub, f"{tag}/q2", got)
        got.clear()
        proxy.clear_log()
        disk.armed = disk.fails = True
        pub.publish(f"{tag}/q2", b"two", 2)
        assert disk.entered.wait(10), "the QoS 2 message's record was never synced"
        proxy.cut()  # the connection goes, the client reconnects
        _procs.wait_until(lambda: proxy.packets("c2s", "CONNECT"), what="a reconnect")
        disk.gate.set()  # the held sync fails now
        _procs.wait_until(lambda: any("durable" in e for e in errors), what="on_error")
        _procs.wait_until(lambda: got == [b"two"], what="the message, once")
    finally:
        disk.gate.set()
        pub.loop_stop()
        pub.disconnect()
        c.close()
    assert got == [b"two"], got


def test_a_fast_disks_read_batches_sync_on_the_network_thread(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``behind.SLOW_SYNC`` (a fast SSD's fdatasync; here one that writes nothing and
    takes microseconds) the hand-over to the sync thread costs more than the wait: the read
    batches sync on paho's thread, no sync thread made."""
    synced_on: list[str] = []
    disk = FakeOs(fdatasync=lambda _fd: synced_on.append(threading.current_thread().name))
    monkeypatch.setattr(journal_mod, "os", disk)
    proxy = mqtt_proxy_factory(mosquitto)
    tag = _procs.unique("fs")
    got: list[bytes] = []
    c = Client(client_id=_procs.unique("fs"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's.session'}")
    c.on_message_in = lambda e: got.append(e.message)
    pub = _publisher((mosquitto.host, mosquitto.port))
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe(f"{tag}/q2", 2)
        _procs.wait_until(lambda: proxy.packets("s2c", "SUBACK"), what="SUBACK")
        _warmed(pub, f"{tag}/q2", got)
    finally:
        pub.loop_stop()
        pub.disconnect()
        c.close()
    assert any(n.startswith("paho") for n in synced_on), synced_on
    assert not any(n.startswith("mqttsession-acksync") for n in synced_on), synced_on
