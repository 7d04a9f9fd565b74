"""A read batch's records that only its acknowledgements wait for (a received QoS 2
PUBLISH's, the "released" record of a PUBREC) wait in memory and go out with one ``write`` at
the batch's end, fsynced before any of the batch's PUBRECs or PUBRELs leave (persistence points
3 and 2).

* Against mosquitto behind ``MQTTProxy``: the subscriber drains what mosquitto held for it
  while it was away; the journal's ``os`` is wrapped to count its writes and to keep, after
  every fdatasync, the bytes then on disk; the proxy logs each PUBREC with the time it
  arrived. Every PUBREC must come after a sync whose bytes hold that message's record, every
  message must arrive once, and under ``always`` the journal must see fewer writes than
  records (before: one for each received record, one for each removal; under ``interval``
  records are copied into a mapping, no write either way).
* Against ``FakeBroker``, a batch that also writes the held records early (a repeated QoS 2
  PUBLISH, a repeated PUBREC: their empty records flush what waits): the acks still wait for
  an fdatasync of them.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession.journal as journal_mod
from mqttsession import Client, MessageEvent
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.faults import FakeOs, fd_name

pytestmark = pytest.mark.integration

N = 200
TIMEOUT = 20.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class _Watch(FakeOs):
    """``os`` of the journal module: counts the journal's writes; after each fdatasync of it,
    keeps (when it returned, the file's bytes)."""

    def __init__(self, journal_name: str) -> None:
        super().__init__()
        self.name = journal_name
        self.writes = 0
        self.synced: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def _ours(self, fd: int) -> bool:
        try:
            return fd_name(fd) == self.name
        except OSError:
            return False

    def write(self, fd: int, data: bytes) -> int:
        if self._ours(fd):
            with self._lock:
                self.writes += 1
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        if self._ours(fd):
            size = os.fstat(fd).st_size
            with self._lock:
                self.synced.append((time.monotonic(), os.pread(fd, size, 0)))


def _hold_for(broker: Any, client_id: str, topic: str) -> None:
    """A persistent session subscribed to ``topic`` at QoS 2, then gone: mosquitto keeps what
    is published to it meanwhile."""
    c = Client(client_id=client_id, clean_session=False)
    try:
        c.connect(broker.host, broker.port, timeout=TIMEOUT)
        c.subscribe(topic, 2)
        c.disconnect()
    finally:
        c.close()


def _publish(broker: Any, topic: str, payloads: list[bytes]) -> None:
    p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_uid("feeder"))
    p.connect(broker.host, broker.port)
    p.loop_start()
    try:
        for info in [p.publish(topic, m, qos=2) for m in payloads]:
            info.wait_for_publish(TIMEOUT)
    finally:
        p.disconnect()
        p.loop_stop()


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_a_read_batchs_received_records_are_written_together_and_synced_before_its_pubrecs(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    cid, topic = _uid("gather"), f"mqs/{_uid('gather')}"
    _hold_for(mosquitto, cid, topic)
    payloads = [f"gather-{i:05d}".encode() for i in range(N)]
    _publish(mosquitto, topic, payloads)

    path = tmp_path / "sub.session"
    watch = _Watch(path.name + journal_mod.JOURNAL_SUFFIX)
    monkeypatch.setattr(journal_mod, "os", watch)
    proxy = mqtt_proxy_factory(mosquitto)
    got: list[tuple[int, bytes]] = []
    done = threading.Event()

    def on_in(e: MessageEvent) -> None:
        got.append((e.packet_id, e.message))
        if len(got) == N:
            done.set()

    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"SessionSync={sync}")
    c.on_message_in = on_in
    try:
        c.connect(proxy.host, proxy.port, timeout=TIMEOUT)
        assert done.wait(TIMEOUT), f"{len(got)} of {N} delivered"
        proxy.wait_for("c2s", "PUBCOMP", count=N, timeout=TIMEOUT)
        writes = watch.writes
    finally:
        c.close()

    assert sorted(m for _, m in got) == payloads  # each once
    by_id = dict(got)
    assert len(by_id) == N  # (mosquitto gave each its own packet id)
    pubrecs = proxy.packets("c2s", "PUBREC")
    assert len(pubrecs) == N
    for r in pubrecs:
        payload = by_id[r.packet_id]
        assert any(t < r.time and payload in data for t, data in watch.synced), \
            f"PUBREC {r.packet_id} left before the record of {payload!r} was synced"
    if sync == "always":  # (interval copies records into a mapping: no write either way)
        # gathered: one write a batch for the received records (the removals are written
        # one by one, at once after on_message_in, as promised); before, one more a message
        assert writes < 1.5 * N, f"{writes} journal writes for {N} messages"
    assert len(watch.synced) < N / 2


def _client_on(fake: FakeBroker, path: Path, sync: str) -> Client:
    c = Client(client_id=_uid("gather-fake"), clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"SessionSync={sync}")
    c.connect(fake.host, fake.port, timeout=TIMEOUT)
    return c


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_a_repeated_qos2_publish_in_the_batch_does_not_let_its_pubrec_out_unsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    """A broker's resend (DUP=1) read with the PUBLISH in one batch: the resend's empty record
    writes the held one at once; the PUBREC still waits for its fdatasync."""
    path = tmp_path / "sub.session"
    watch = _Watch(path.name + journal_mod.JOURNAL_SUFFIX)
    monkeypatch.setattr(journal_mod, "os", watch)
    with FakeBroker() as fake:
        c = _client_on(fake, path, sync)
        try:
            payload = b"gathered-then-repeated"
            fake.send_raw(fake.publish("t/x", payload, 2, 1)
                          + fake.publish("t/x", payload, 2, 1, flags=0x0C))  # QoS 2, DUP
            first = fake.wait_for("PUBREC", timeout=TIMEOUT)[0]
        finally:
            c.close()
    assert any(t < first.time and payload in data for t, data in watch.synced), \
        "PUBREC left before the received record was synced"


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_a_repeated_pubrec_in_the_batch_does_not_let_the_pubrel_out_unsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    """A PUBREC and its resend read in one batch: the resend's empty record writes the held
    "released" one at once; the PUBREL still waits for an fdatasync after the PUBLISH."""
    path = tmp_path / "pub.session"
    watch = _Watch(path.name + journal_mod.JOURNAL_SUFFIX)
    monkeypatch.setattr(journal_mod, "os", watch)
    with FakeBroker(qos2_ack="none") as fake:
        c = _client_on(fake, path, sync)
        try:
            pid = c.publish_data("t/x", 2, b"released once synced")
            sent = fake.wait_for("PUBLISH", timeout=TIMEOUT)[0]
            rec = fake.ack(0x50, pid)
            fake.send_raw(rec + rec)
            pubrel = fake.wait_for("PUBREL", timeout=TIMEOUT)[0]
        finally:
            c.close()
    assert any(sent.time < t < pubrel.time for t, _ in watch.synced), \
        "PUBREL left before the released record was synced"
