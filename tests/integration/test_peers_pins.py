"""Pins against failures other MQTT clients' users suffer (the peers survey), on real brokers.

Each test reproduces one peer's failure scenario against mqttsession and fails should
mqttsession repeat it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client
from mqttsession.spool import QUEUE_SUFFIX

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

number_of, qos_of, unique = _procs.number_of, _procs.qos_of, _procs.unique

pytestmark = pytest.mark.integration

LONG = "/" + "x" * 150  # a topic long enough that a few dozen messages fill 4 KiB segments


def _client(path: Path, client_id: str) -> Client:
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=3")
    c.config("QueueSegmentBytes=4096")
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    return c


def _written(monkeypatch: pytest.MonkeyPatch, tag: str) -> list[int]:
    """The numbers of the PUBLISH packets the client writes, in the order it writes them."""
    from mqttsession.engine import Engine

    sent: list[int] = []
    orig = Engine._publish

    def publish(self: Engine, m: Any, dup: bool) -> Any:
        if (k := number_of(tag, m.payload)) is not None:
            sent.append(k)
        return orig(self, m, dup)

    monkeypatch.setattr(Engine, "_publish", publish)
    return sent


def _segments(path: Path) -> list[Path]:
    folder = Path(str(path) + QUEUE_SUFFIX)
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_disk_queue_order_comes_from_sequence_numbers_not_file_times(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paho.golang#205/#342, paho.mqtt.golang#251: stored messages replayed in the order of
    their files' timestamps came out of order. Here the segments' modification times are
    turned round before the restart: the new process still sends them in publish order."""
    path = tmp_path / "gw.state"
    tag, cid = unique("order"), unique("gw")
    topic = f"mqs/{tag}{LONG}"
    n = 60
    c = _client(path, cid)
    c.restore_session("")
    for i in range(1, n + 1):
        c.publish_message(topic, qos_of(i), _procs.payload(tag, i))
    c.close()
    segs = _segments(path)
    assert len(segs) >= 3  # sealed segments and the open one
    for k, seg in enumerate(segs):  # the first written now looks the newest, and so on
        os.utime(seg, (2_000_000_000 - 1000 * k, 2_000_000_000 - 1000 * k))

    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    sent = _written(monkeypatch, tag)
    d = _client(path, cid)
    try:
        d.restore_session("")
        assert [number_of(tag, m.message) for m in d.outgoing_messages] == list(range(1, n + 1))
        d.connect(mosquitto.host, mosquitto.port)
        assert d.flush(_procs.TIMEOUT)
        counter.wait_numbers(tag, range(1, n + 1))
        assert sent == list(range(1, n + 1))  # written in publish order, once [MQTT-4.6.0-1]
        assert max(counter.counts(tag).values()) == 1
    finally:
        counter.close()
        d.close()


def test_disk_queued_messages_survive_a_restart_and_a_broker_that_lost_the_session(
        mosquitto_factory: Any, tmp_path: Path) -> None:
    """paho.mqtt.c#640: on SessionPresent=0, queued never-sent messages were thrown away with
    the in-flight ones. Here messages queued offline (most in the disk queue) survive a new
    process AND a broker that forgot the session: all are sent, each once, and
    ``on_session_lost`` lists them as queued, not dropped."""
    broker = mosquitto_factory()  # persistence false: a restart forgets every session
    path = tmp_path / "gw.state"
    tag, cid = unique("lostq"), unique("gw")
    topic = f"mqs/{tag}{LONG}"
    n = 40
    c = _client(path, cid)
    c.restore_session("")
    c.connect(broker.host, broker.port)  # a broker accepts the session: it can be lost later
    c.close()
    c = _client(path, cid)
    c.restore_session("")
    for i in range(1, n + 1):  # offline, in a new process
        c.publish_message(topic, qos_of(i), _procs.payload(tag, i))
    assert len(c._engine.state.outgoing) < n  # most of them are in the disk queue
    c.close()
    broker.restart()

    counter = _procs.Counter(broker.host, broker.port, topic)
    d = _client(path, cid)
    log = _procs.EventLog(d)
    try:
        d.restore_session("")
        d.connect(broker.host, broker.port)
        (lost,) = log.wait("on_session_lost")
        assert d.flush(_procs.TIMEOUT), d.outgoing_messages
        counter.wait_numbers(tag, range(1, n + 1))
        counts = counter.counts(tag)
    finally:
        counter.close()
        d.close()
    assert lost.dropped == () and lost.republished == ()
    assert [number_of(tag, m.message) for m in lost.queued][:1] == [1]
    _procs.assert_delivered(counts, range(1, n + 1))
    assert max(counts.values()) == 1
    assert _segments(path) == [] or all(not s.name.endswith(".seg") for s in _segments(path))
