"""SUBSCRIBE / UNSUBSCRIBE flows against real mosquitto. One the broker has not answered
survives a kill -9 (a real child process): the restored session sends it on its next
connection, SessionPresent=1 too. Before, the restored session listed the filter and never
sent it, so every QoS 1 message on it was lost (and an UNSUBSCRIBE never reached the broker,
which went on delivering).

Also: an UNSUBSCRIBE mosquitto answers by closing the connection (one over its
max_packet_size) is split, then given up, instead of being sent again at every reconnect ahead
of the publishes waiting; and MQTT 5 subscriptions fit the broker's Maximum Packet Size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession.testing.brokers import MosquittoBroker
from mqttsession.testing.proxy import MQTTProxy

try:  # tests/integration may or may not be a package
    from ._procs import TIMEOUT, EventLog, publish_direct, unique, wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import TIMEOUT, EventLog, publish_direct, unique, wait_until  # type: ignore[no-redef]

# Subscribes "kept" (answered), then, per argv[4]: "offline": disconnects, subscribes
# "new/+", unsubscribes "kept"; "unacked": subscribes "new/+" while a proxy holds it back.
_CHILD = textwrap.dedent("""
    import sys, time
    from mqttsession import Client
    host, port, path, how, cid, khost, kport = sys.argv[1:8]
    c = Client(client_id=cid, clean_session=False)
    c.config("SessionStateFile=" + path)
    c.restore_session("")
    c.connect(khost, int(kport))
    done = []
    c.on_subscribed = lambda e: done.append(e)
    c.subscribe("kept", 1)
    while not done:
        time.sleep(0.01)
    c.disconnect()
    if how == "offline":
        c.subscribe("new/+", 1)  # "works while disconnected"
        c.unsubscribe("kept")
    else:
        c.connect(host, int(port))
        c.subscribe("new/+", 1)  # its SUBACK never comes back before the kill
    print("ready", flush=True)
    time.sleep(60)
""")


def _killed_child(path: Path, how: str, cid: str, target: tuple[str, int],
                  broker: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, target[0], str(target[1]), str(path), how, cid,
         broker.host, str(broker.port)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # (the SUBSCRIBE on its way to the proxy)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("how", ["offline", "unacked"])
def test_unanswered_subscriptions_survive_a_kill(mosquitto: Any, tmp_path: Path,
                                                 how: str) -> None:
    cid, path = unique(f"subkill-{how}"), tmp_path / "s"
    proxy = MQTTProxy(mosquitto.host, mosquitto.port).start()
    try:
        proxy.drop("c2s", "SUBSCRIBE")  # (only the "unacked" child connects through it)
        _killed_child(path, how, cid, (proxy.host, proxy.port), mosquitto)
    finally:
        proxy.stop()
    c = mqttsession.Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    log = EventLog(c)
    try:
        c.restore_session("")
        c.connect(mosquitto.host, mosquitto.port)
        assert log.of("on_connected")[0].session_present  # the broker kept the session
        log.wait("on_subscribed")  # the SUBSCRIBE went out again
        publish_direct(mosquitto.host, mosquitto.port, "new/x", [(1, "on the new filter")])
        publish_direct(mosquitto.host, mosquitto.port, "kept", [(1, "on the kept filter")])
        want = {"new/x"} | ({"kept"} if how == "unacked" else set())
        wait_until(lambda: {e.topic for e in log.of("on_message_in")} >= want, TIMEOUT,
                   f"messages on {want}")
        if how == "offline":  # its UNSUBSCRIBE went out too: nothing more on "kept"
            time.sleep(0.5)
            assert "kept" not in {e.topic for e in log.of("on_message_in")}
        assert c.save_session().count('"unanswered"') == 0  # all answered, none sent again
    finally:
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_an_unsubscribe_the_broker_closes_on_does_not_block_the_session(
        tmp_path: Path, version: int) -> None:
    broker = MosquittoBroker("mosquitto.conf", extra_config="max_packet_size 2000").start()
    try:
        c = mqttsession.Client(client_id=unique("unsub-loop"), clean_session=False,
                               protocol_version=version)
        c.config("ReconnectDelayMin=0.1")
        c.config("ReconnectDelayMax=0.2")
        log = EventLog(c)
        filters = [f"sensors/building-{i:03d}/temperature" for i in range(100)]
        c.connect(broker.host, broker.port)
        for i in range(0, 100, 25):  # four small SUBSCRIBEs
            c.subscribe(",".join(filters[i:i + 25]), 1)
        log.wait("on_subscribed", 100)
        unsubscribed: list[Any] = []
        c.on_unsubscribed = unsubscribed.append
        c.unsubscribe(",".join(filters))  # one UNSUBSCRIBE of about 4 kB: mosquitto closes
        c.publish_message(unique("t"), 1, "waits behind it")
        assert c.flush(TIMEOUT)
        wait_until(lambda: len(unsubscribed) == 100, TIMEOUT, "100 UNSUBACK filters")
        assert len(log.of("on_disconnected")) <= 2
        c.close()
    finally:
        broker.stop()


def test_subscribes_fit_the_brokers_maximum_packet_size(tmp_path: Path) -> None:
    """MQTT 5, mosquitto announcing Maximum Packet Size 2000: a filter too large for it is
    refused up front, and 100 filters in one call go in packets within it (before: sent
    whole; mosquitto closed the connection three times, then they counted as refused)."""
    broker = MosquittoBroker("mosquitto.conf", extra_config="max_packet_size 2000").start()
    try:
        c = mqttsession.Client(client_id=unique("sub-size"), clean_session=False,
                               protocol_version=5)
        log = EventLog(c)
        c.connect(broker.host, broker.port)
        with pytest.raises(mqttsession.UsageError, match="Maximum Packet Size 2000"):
            c.subscribe("big/" + "x" * 3000, 1)
        filters = [f"sensors/building-{i:03d}/temperature" for i in range(100)]
        c.subscribe(",".join(filters), 1)
        granted = log.wait("on_subscribed", 100)
        assert sorted(e.topic_filter for e in granted) == filters
        assert all(e.response_code == 1 for e in granted)
        assert not log.of("on_disconnected") and not log.of("on_error")
        c.close()
    finally:
        broker.stop()


def test_a_filter_subscribed_and_unsubscribed_offline_gets_nothing(mosquitto: Any) -> None:
    """``subscribe`` then ``unsubscribe`` while disconnected, then ``connect``: no message on
    that filter arrives (the broker was never subscribed to it); one on a filter subscribed
    offline and kept, published after it, does (a hunt)."""
    base = unique("offsub")
    gone, kept = f"{base}/gone", f"{base}/kept"
    c = mqttsession.Client(client_id=unique("offsub"), clean_session=True)
    log = EventLog(c)
    try:
        c.subscribe(gone, 1)
        c.subscribe(kept, 1)
        c.unsubscribe(gone)
        c.connect(mosquitto.host, mosquitto.port)
        wait_until(lambda: kept in {e.topic_filter for e in log.of("on_subscribed")}, TIMEOUT,
                   "the SUBACK of the kept filter")
        publish_direct(mosquitto.host, mosquitto.port, gone, [(1, "dropped filter")])
        publish_direct(mosquitto.host, mosquitto.port, kept, [(1, "kept filter")])
        wait_until(lambda: kept in {e.topic for e in log.of("on_message_in")}, TIMEOUT,
                   "the message on the kept filter")
        time.sleep(0.3)
        assert gone not in {e.topic for e in log.of("on_message_in")}
    finally:
        c.close()
