"""README "Using it", "The outgoing queue" and "Failover and server redirection": behaviour
sentences no other test pinned, on real brokers (mosquitto), the fake broker
(``mqttsession.testing.fake_broker``) and real state files."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession.testing.brokers import free_port
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.proxy import MQTTProxy

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

EventLog, unique, wait_until = _procs.EventLog, _procs.unique, _procs.wait_until

pytestmark = pytest.mark.integration

WAIT = 10.0


def _client(protocol: int = 5, **config: str) -> mqttsession.Client:
    c: mqttsession.Client = _procs.reconnecting_client("r1", 0.1, protocol, **config)
    return c


_addr = _procs.address


def test_a_failover_servers_change_applies_to_the_next_connect(mosquitto: Any) -> None:
    """README: "The list is read by ``connect()``; a change applies to the next one": set while
    connected, the automatic reconnect still goes to connect()'s servers only; the next
    ``connect()`` tries the new list."""
    with FakeBroker() as fake:
        c = _client(4)
        log = EventLog(c)
        try:
            c.connect(fake.host, fake.port, timeout=WAIT)
            c.config(f"FailoverServers={_addr(mosquitto)}")
            fake.close_client()
            second = log.wait("on_connected", 2, timeout=WAIT)[1]
            assert (second.status_code, second.server) == (0, f"{fake.host}:{fake.port}")
            assert fake.connections == 2
            c.disconnect()
            c.connect("127.0.0.1", free_port(), timeout=WAIT)  # nothing listens: the list
            assert c.config("ConnectedServer") == _addr(mosquitto)
        finally:
            c.close()


def test_server_moved_replaces_the_list_entry_only_until_the_next_connect(mosquitto: Any) -> None:
    """README: "0x9D also replaces, until the next ``connect()``, the list entry the client had
    come from": the setting keeps its text, and the next connect() goes to the entry again."""
    dead = f"127.0.0.1:{free_port()}"
    with FakeBroker() as fake:
        c = _client(FollowServerReference="true", FailoverServers=f"{fake.host}:{fake.port}")
        log = EventLog(c)
        try:
            host, port = dead.split(":")
            c.connect(host, int(port), timeout=WAIT)
            assert c.config("ConnectedServer") == f"{fake.host}:{fake.port}"
            fake.disconnect(0x9D, _addr(mosquitto))
            moved = log.wait("on_connected", 2, timeout=WAIT)[1]
            assert (moved.status_code, moved.server) == (0, _addr(mosquitto))
            assert c.config("FailoverServers") == f"{fake.host}:{fake.port}"
            c.disconnect()
            c.connect(host, int(port), timeout=WAIT)
            assert c.config("ConnectedServer") == f"{fake.host}:{fake.port}"
            assert fake.connections == 2
        finally:
            c.close()


def test_a_mismatched_ack_is_logged_once_per_connection(caplog: pytest.LogCaptureFixture) -> None:
    """README: a PUBACK answering a QoS 2 PUBLISH completes the message, "logged once per
    connection at WARNING and counted in ``config("MismatchedAcks")``": a new connection logs
    it again, and the count goes on."""
    with FakeBroker(qos2_ack="puback") as fake:
        c = _client(4)
        log = EventLog(c)
        try:
            with caplog.at_level(logging.WARNING, logger="mqttsession"):
                c.connect(fake.host, fake.port, timeout=WAIT)
                for n in range(2):
                    c.publish_message("t/q2", 2, f"a{n}")
                assert c.flush(WAIT)
                fake.close_client()
                log.wait("on_connected", 2, timeout=WAIT)
                for n in range(2):
                    c.publish_message("t/q2", 2, f"b{n}")
                assert c.flush(WAIT)
            warned = [r for r in caplog.records
                      if "PUBACK" in r.getMessage() and r.levelno == logging.WARNING]
            assert len(warned) == 2, [r.getMessage() for r in warned]
            assert c.config("MismatchedAcks") == "4"
            assert len(log.of("on_message_ack")) == 4
        finally:
            c.close()


def test_publish_returns_0_for_a_message_that_waits_in_the_disk_queue(tmp_path: Path) -> None:
    """README: each publish "returns the message's packet id, 0 for QoS 0 and for a message that
    has none yet (it waits in the disk queue ...)"; once read back it goes with an id."""
    c = _client(4, QueueInMemory="2")
    c.config(f"SessionStateFile={tmp_path}/s")
    c.restore_session("")
    try:
        ids = [c.publish_message("t/dq", 1, f"m{n}") for n in range(4)]
        assert ids[0] > 0 and ids[1] > 0 and ids[0] != ids[1]
        assert ids[2:] == [0, 0]
        assert c.publish_message("t/dq", 0, "zero") == 0
        assert len(list((tmp_path / "s.queue").iterdir())) >= 1
    finally:
        c.close()


def test_subscriptions_changed_elsewhere_go_again_to_a_broker_the_client_returns_to(
        mosquitto_factory: Any) -> None:
    """README: "Subscriptions made or dropped on the other broker since the client left this
    one go to it again on the return": A kept the session (SessionPresent=1), yet gets the
    SUBSCRIBE and the UNSUBSCRIBE made on B."""
    a, b = mosquitto_factory(), mosquitto_factory()
    with MQTTProxy(a.host, a.port) as pa:
        c = _client(4, FailoverServers=_addr(b))
        log = EventLog(c)
        unsubacked = threading.Event()
        c.on_unsubscribed = lambda e: unsubacked.set()
        try:
            c.connect(pa.host, pa.port, timeout=WAIT)
            c.subscribe("r1/x/#", 1)
            log.wait("on_subscribed", 1, timeout=WAIT)
            pa.stop()
            assert log.wait("on_connected", 2, timeout=WAIT)[1].server == _addr(b)
            c.subscribe("r1/y/#", 1)
            c.unsubscribe("r1/x/#")
            assert unsubacked.wait(WAIT), "no UNSUBACK from B"
            wait_until(lambda: len(log.of("on_subscribed")) >= 3, WAIT, "SUBACKs on B")
            pa.clear_log()
            pa.start()
            b.kill()
            back = log.wait("on_connected", 3, timeout=WAIT)[2]
            assert (back.server, back.session_present) == (pa.address, True)
            pa.wait_for("c2s", "SUBSCRIBE", timeout=WAIT,
                        predicate=lambda p: "r1/y/#" in (p.filters or ()))
            pa.wait_for("c2s", "UNSUBSCRIBE", timeout=WAIT,
                        predicate=lambda p: "r1/x/#" in (p.filters or ()))
        finally:
            c.close()
