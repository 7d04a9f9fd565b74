"""A failed sync on paho's network thread, then traffic: the state file stays restorable.

When the fdatasync of a read batch's records fails (the PUBRELs of QoS 2 flows wait for it),
the journal is left to be rewritten from memory by the next write, and the connection is
dropped. The next action list the driver carries out (the reconnect's resends, a publish and
its SEND step) held several records, all applied to memory already: the first of them found
the journal broken and wrote a snapshot holding all of them, and the others were then written
after that snapshot a second time. The file was then damaged for good ("send is illegal for a
QoS 2 message in phase await_pubrec", 9 runs in 10 here): a restart could not restore it.

Here a real mosquitto, a real subscriber, and a journal (or a gateway's shared log) whose
fdatasync fails (EIO) once per round on the network side: after every round what a kill -9
leaves restores, and at the end every QoS 2 message arrived exactly once.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession.groupcommit as groupcommit_mod
import mqttsession.journal as journal_mod
import mqttsession.sharedlog as sharedlog_mod
from mqttsession import Client, ErrorEvent, Gateway
from mqttsession.sessionlog import read_sessions
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.faults import FakeOs

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

ROUNDS = 6
PER_ROUND = 120


class _NetSyncFails(FakeOs):
    """``os`` of the store's modules: the next ``armed`` fdatasyncs in a thread that
    ``network`` picks by its name (the network side, not the publisher) fail."""

    def __init__(self, network: Callable[[str], bool]) -> None:
        super().__init__()
        self.network = network
        self.armed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        if self.network(threading.current_thread().name):
            with self._lock:
                fail, self.armed = self.armed > 0, max(0, self.armed - 1)
                self.failed += fail
            if fail:
                raise OSError(errno.EIO, "injected EIO on the network thread")
        os.fdatasync(fd)


def _subscriber(broker: MosquittoBroker, counts: collections.Counter[int],
                ready: threading.Event) -> mqtt.Client:
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_procs.unique("sub"))

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        c.subscribe("netsync/#", qos=2)

    def on_subscribe(*_a: Any) -> None:
        ready.set()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        counts[int(msg.payload)] += 1

    sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
    sub.connect(broker.host, broker.port, 60)
    sub.loop_start()
    return sub


def _rounds(c: Client, fake: _NetSyncFails, broker: MosquittoBroker,
            restorable: Callable[[], object]) -> None:
    """Rounds of QoS 2 publishes, one failed sync on the network side each, the files read
    after each; then every message delivered exactly once."""
    counts: collections.Counter[int] = collections.Counter()
    ready = threading.Event()
    sub = _subscriber(broker, counts, ready)
    errors: list[ErrorEvent] = []
    c.on_error = errors.append
    c.config("ReconnectDelayMin=0.1")  # (each failure drops the connection: back at once)
    c.config("ReconnectDelayMax=0.2")
    try:
        assert ready.wait(10)
        c.connect(broker.host, broker.port, timeout=10)
        n = 0
        for _ in range(ROUNDS):
            fake.armed = 1
            for _ in range(PER_ROUND):
                c.publish_data("netsync/x", 2, str(n).encode())
                n += 1
            assert c.flush(30), f"{len(c.outgoing_messages)} unacknowledged"
            restorable()  # StateError if damaged
        assert fake.failed >= ROUNDS - 1, "the injected syncs did not fail"
        assert any("durable" in e.description for e in errors)
        _procs.wait_until(lambda: sum(counts.values()) >= n, what="every message delivered")
    finally:
        sub.disconnect()
        sub.loop_stop()
    doubled = {m: k for m, k in counts.items() if k != 1}
    assert not doubled, f"QoS 2 messages not delivered exactly once: {doubled}"
    assert sorted(counts) == list(range(n)), "lost messages"


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_a_failed_sync_on_the_network_thread_leaves_a_restorable_file(
        mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sync: str) -> None:
    fake = _NetSyncFails(lambda name: name.startswith(("paho", "mqttsession-acksync")))  # (the
    monkeypatch.setattr(journal_mod, "os", fake)  # sync thread makes the read batches' syncs)
    path = tmp_path / "s.json"
    cid = _procs.unique("netsync")
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config(f"SessionSync={sync}")
    try:
        _rounds(c, fake, mosquitto, lambda: _procs.crash_copy(path, cid))
    finally:
        c.close()


def test_a_failed_sync_of_a_gateways_log_leaves_it_restorable(
        mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _NetSyncFails(lambda name: name.startswith("mqttsession-gateway-sync"))  # its syncs
    for mod in (journal_mod, groupcommit_mod, sharedlog_mod):
        monkeypatch.setattr(mod, "os", fake)
    gwdir = tmp_path / "gw"
    with Gateway(gwdir) as gw:
        c = gw.client(_procs.unique("netsync"), clean_session=False)
        c.config("SessionSync=always")
        _rounds(c, fake, mosquitto, lambda: read_sessions(str(gwdir)))
