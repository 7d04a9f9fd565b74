"""Reconnects on mosquitto: the broker losing the session, and the connection cut mid-stream.

* SessionPresent=0 [MQTT-3.2.2-5]: messages in every phase are held by the client (PUBLISH lost,
  PUBACK/PUBREC lost, QoS 2 past PUBREC, queued while disconnected) when a NON-persistent mosquitto
  restarts and forgets every session. After the reconnect nothing is lost at an independent
  subscriber (which itself resubscribes on every CONNACK), QoS 2 is not duplicated, and
  ``on_session_lost`` reports what was republished, dropped (past PUBREC: the broker had accepted
  it) and queued, and which subscriptions were sent again; an incoming QoS 2 message held awaiting
  PUBREL is handed to ``on_message_in`` exactly once (the broker will never send that PUBREL).
* A stream of 200 numbered messages with the connection cut (RST) three times under it, with
  auto-reconnect on (and MaxInflight=20, mosquitto's limit, see test_client_burst.py): nothing
  lost, QoS 2 exactly once, and one ``on_disconnected`` (non-zero
  status) plus one ``on_connected`` (SessionPresent=1) per cut. On the wire: every resent PUBLISH
  has DUP=1 and the id of its first send [MQTT-4.4.0-1]; no PUBLISH follows a PUBREL of the same id
  [MQTT-4.3.3-6].
"""

from __future__ import annotations

from typing import Any

import pytest

import mqttsession

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

Counter, EventLog = _procs.Counter, _procs.EventLog
number_of, payload, qos_of, unique = _procs.number_of, _procs.payload, _procs.qos_of, _procs.unique
wait_until = _procs.wait_until

pytestmark = pytest.mark.integration


def _client(client_id: str, protocol: int) -> mqttsession.Client:
    c = mqttsession.Client(client_id=client_id, clean_session=False, protocol_version=protocol)
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    if protocol == 5:
        c.config("SessionExpInterval=600")  # the broker keeps the session across a cut
    return c


def _numbers(tag: str, msgs: Any) -> list[int | None]:
    return [number_of(tag, m.message) for m in msgs]


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_session_present_0_after_broker_restart_loses_nothing(
    mosquitto_factory: Any, mqtt_proxy_factory: Any, protocol: int
) -> None:
    broker = mosquitto_factory()  # persistence false: a restart forgets every session
    proxy = mqtt_proxy_factory(broker)
    tag = unique("lost")
    topic, echo = f"mqs/{tag}", f"mqs/{tag}/echo"
    counter = Counter(broker.host, broker.port, topic, protocol)
    c = _client(unique("gw"), protocol)
    # 10 below is past PUBREC and its PUBREL reached the broker, which delivered it: published
    # again (the default, see the next test) it would arrive twice
    c.config("ReleasedOnSessionLost=drop")
    log = EventLog(c)
    try:
        c.connect(proxy.host, proxy.port)
        c.subscribe(echo, 2)
        log.wait("on_subscribed")
        ids = {}
        for n in range(1, 5):
            ids[n] = c.publish_message(topic, qos_of(n), payload(tag, n))
        assert c.flush(_procs.TIMEOUT)

        proxy.drop("c2s", "PUBLISH", count=2)  # 5, 6: the broker never sees them
        for n in (5, 6):
            ids[n] = c.publish_message(topic, qos_of(n), payload(tag, n))
        proxy.wait_for("c2s", "PUBLISH", predicate=lambda r: r.dropped, count=2)
        proxy.drop("s2c", "PUBACK", "PUBREC")  # 7, 8: the broker has them, the acks are lost
        for n in (7, 8):
            ids[n] = c.publish_message(topic, qos_of(n), payload(tag, n))
        proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.dropped and r.packet_id == ids[7])
        proxy.wait_for("s2c", "PUBREC", predicate=lambda r: r.dropped and r.packet_id == ids[8])
        proxy.clear_drops()
        proxy.drop("s2c", "PUBCOMP")  # 10: past PUBREC, released, its PUBCOMP lost
        for n in (9, 10):
            ids[n] = c.publish_message(topic, qos_of(n), payload(tag, n))
        proxy.wait_for("c2s", "PUBREL", predicate=lambda r: r.packet_id == ids[10])
        proxy.wait_for("s2c", "PUBCOMP", predicate=lambda r: r.dropped and r.packet_id == ids[10])
        wait_until(lambda: _numbers(tag, c.outgoing_messages) == [5, 6, 7, 8, 10],
                   what="9 acknowledged")
        # and an incoming QoS 2 message held awaiting a PUBREL that the restart will make moot
        proxy.drop("s2c", "PUBREL")
        _procs.publish_direct(broker.host, broker.port, echo, [(2, f"{tag}:in")], protocol)
        proxy.wait_for("s2c", "PUBREL", predicate=lambda r: r.dropped)
        assert [m.message for m in c.incoming_messages] == [f"{tag}:in".encode()]
        assert log.of("on_message_in") == []

        # what the broker has released reaches the counter before the broker goes: the counter
        # is a plain clean-session client and would lose a QoS 2 delivery cut by the restart
        counter.wait_numbers(tag, [1, 2, 3, 4, 7, 9, 10])
        proxy.stop()  # the connection goes, and nothing listens: the client cannot come back yet
        log.wait("on_disconnected")
        wait_until(lambda: not c.connected, what="disconnected")
        for n in (11, 12):  # queued while disconnected
            ids[n] = c.publish_message(topic, qos_of(n), payload(tag, n))
        assert _numbers(tag, c.outgoing_messages) == [5, 6, 7, 8, 10, 11, 12]

        broker.restart()  # no persistence: the session of the client (and the counter) is gone
        counter.wait_subscribed(2)  # the counter is back and subscribed before anything flows
        proxy.clear_drops()
        proxy.start()  # same port: the client reconnects by itself

        lost = log.wait("on_session_lost")[0]
        connected = log.wait("on_connected", 2)
        assert [(e.status_code, e.session_present) for e in connected] == [(0, False), (0, False)]
        assert c.config("SessionPresent") == "False"
        assert sorted(_numbers(tag, lost.republished)) == [5, 6, 7, 8]
        assert _numbers(tag, lost.dropped) == [10]
        assert _numbers(tag, lost.queued) == [11, 12]
        # the broker will never send that PUBREL: the message is handed over, once
        assert [m.message for m in lost.delivered_incoming] == [f"{tag}:in".encode()]
        assert [e.message for e in log.of("on_message_in")] == [f"{tag}:in".encode()]
        assert c.incoming_messages == ()
        assert tuple(lost.resubscribed) == ((echo, 2),)
        assert lost.expired is False

        assert c.flush(_procs.TIMEOUT), c.outgoing_messages
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        counter.wait_numbers(tag, range(1, 13), timeout=15)  # END is no strict barrier
        _procs.assert_delivered(counter.counts(tag), range(1, 13))

        # on the wire: the broker forgot them, so they go out as NEW messages (DUP=0) [MQTT-3.2.2-5]
        last = proxy.packets("c2s", "CONNECT")[-1].conn
        connack = proxy.packets("s2c", "CONNACK", conn=last)
        assert [r.session_present for r in connack] == [False]
        pubs = [r for r in proxy.packets("c2s", "PUBLISH", conn=last)
                if number_of(tag, r.payload or b"") is not None]
        assert [number_of(tag, r.payload or b"") for r in pubs] == [5, 6, 7, 8, 11, 12]
        assert not any(r.dup for r in pubs)
        assert len({r.packet_id for r in pubs}) == len(pubs)
        subs = proxy.packets("c2s", "SUBSCRIBE", conn=last)
        assert subs, "the lost subscription was not sent again"
        # the echo subscription works again
        _procs.publish_direct(broker.host, broker.port, echo, [(1, f"{tag}:echo")], protocol)
        wait_until(lambda: [e for e in log.of("on_message_in") if e.message == f"{tag}:echo".encode()],
                   what="the resubscribed filter delivers")
        assert [e.message for e in log.of("on_message_in")].count(f"{tag}:in".encode()) == 1
    finally:
        c.close()
        counter.close()


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_released_qos2_is_republished_when_the_broker_lost_it(
    mosquitto_factory: Any, mqtt_proxy_factory: Any, protocol: int
) -> None:
    """mosquitto hands a QoS 2 message to subscribers only on PUBREL: a session lost between
    PUBREC and PUBREL loses it on the broker. ReleasedOnSessionLost=republish (the default)
    publishes it again as new, flagged in on_session_lost as a possible duplicate."""
    broker = mosquitto_factory()  # persistence false: a restart forgets every session
    proxy = mqtt_proxy_factory(broker)
    tag = unique("rel")
    topic = f"mqs/{tag}"
    counter = Counter(broker.host, broker.port, topic, protocol)
    c = _client(unique("gw"), protocol)
    assert c.config("ReleasedOnSessionLost") == "republish"
    log = EventLog(c)
    try:
        c.connect(proxy.host, proxy.port)
        proxy.drop("c2s", "PUBREL")  # released by the client, never by the broker
        c.publish_message(topic, 2, payload(tag, 1))
        proxy.wait_for("c2s", "PUBREL", predicate=lambda r: r.dropped)
        proxy.stop()
        log.wait("on_disconnected")
        broker.restart()
        counter.wait_subscribed(2)
        proxy.clear_drops()
        proxy.start()
        lost = log.wait("on_session_lost")[0]
        assert _numbers(tag, lost.possible_duplicates) == [1]
        assert _numbers(tag, lost.republished) == [1] and lost.dropped == ()
        assert c.flush(_procs.TIMEOUT)
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        _procs.assert_delivered(counter.counts(tag), [1])
    finally:
        c.close()
        counter.close()


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_connection_cut_mid_stream_loses_nothing(
    mosquitto: Any, mqtt_proxy_factory: Any, protocol: int
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("cut")
    topic = f"mqs/{tag}"
    counter = Counter(mosquitto.host, mosquitto.port, topic, protocol)
    c = _client(unique("gw"), protocol)
    assert c.config("AutoReconnect") == "True"  # the default
    # mosquitto takes at most max_inflight_messages (20) unfinished QoS>0 flows from a client and
    # silently discards the rest, with a PUBACK that looks like success in MQTT 3.1.1 (in MQTT 5
    # it says so in CONNACK's Receive Maximum, which the client honours). The client's default
    # window is unbounded in 3.1.1: test_client_burst.py exposes that; here the window is set so
    # that this test is about the cuts.
    c.config("MaxInflight=20")
    log = EventLog(c)
    total, chunk, cuts = 200, 50, 3
    acks = ("PUBACK", "PUBREC", "PUBCOMP")
    try:
        # on every connection that will be cut, the first few acks are lost: whatever the timing
        # of the cut, some flows of that connection are unfinished and must be resumed
        proxy.drop("s2c", *acks, count=6)
        c.connect(proxy.host, proxy.port)
        for r in range(total // chunk):
            for n in range(r * chunk + 1, (r + 1) * chunk + 1):
                c.publish_message(topic, qos_of(n), payload(tag, n))
            if r < cuts:
                # cut a live connection with this chunk (or the resent one) in flight
                log.wait("on_connected", r + 1)
                wait_until(lambda: c.connected and proxy.active_connections == 1,
                           what="connected through the proxy")
                conn = proxy.packets("c2s", "CONNECT")[-1].conn
                # mid-stream: the stream is flowing on this connection
                wait_until(lambda conn=conn: len(proxy.packets("c2s", "PUBLISH", conn=conn)) >= 10,
                           what="the stream flowing on this connection")
                assert proxy.cut() == 1
                proxy.clear_drops()
                if r + 1 < cuts:
                    proxy.drop("s2c", *acks, count=6)
                log.wait("on_disconnected", r + 1)
        assert c.flush(60), f"{len(c.outgoing_messages)} messages never completed"
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END", timeout=30)
        counter.wait_numbers(tag, range(1, total + 1), timeout=15)  # END is no strict barrier
        _procs.assert_delivered(counter.counts(tag), range(1, total + 1))

        disconnected = log.of("on_disconnected")
        connected = log.of("on_connected")
        assert len(disconnected) == cuts and all(e.status_code != 0 for e in disconnected)
        assert len(connected) == cuts + 1
        assert [e.session_present for e in connected] == [False] + [True] * cuts
        assert all(e.status_code == 0 for e in connected)
        assert log.of("on_session_lost") == []
    finally:
        c.close()
        counter.close()

    # the wire, over all connections
    first_id: dict[int, int] = {}
    released: set[int] = set()
    for r in proxy.packets("c2s"):
        if r.type == "PUBREL":
            released.add(r.packet_id or -1)
        if r.type != "PUBLISH" or (n := number_of(tag, r.payload or b"")) is None:
            continue
        assert r.packet_id not in released, f"[MQTT-4.3.3-6] PUBLISH of {n} after its PUBREL"
        if n not in first_id:
            # may already carry DUP=1: a PUBLISH handed to a connection that was cut before its
            # bytes left counts as sent (DUP=1 means "may have been sent before")
            first_id[n] = r.packet_id or -1
        else:
            assert r.dup and r.packet_id == first_id[n], f"resend of {n}: {r}"  # [MQTT-4.4.0-1]
    assert len(first_id) == total
    # every cut left unfinished flows, which the next connection resumed: a PUBLISH with DUP=1,
    # or a PUBREL for a message past PUBREC (one not PUBLISHed on that connection)
    for conn in (2, 3, 4):
        out = proxy.packets("c2s", conn=conn)
        published = {r.packet_id for r in out if r.type == "PUBLISH"}
        resumed = [r for r in out if (r.type == "PUBLISH" and r.dup)
                   or (r.type == "PUBREL" and r.packet_id not in published)]
        assert resumed, proxy.log_text()


def test_a_server_keep_alive_does_not_outlive_its_connection() -> None:
    """MQTT 5 Server Keep Alive (CONNACK 0x13) is the keep-alive of THAT connection: paho kept
    it as its own and every automatic reconnect sent it (0 from one server: no PINGREQ on any
    later connection, a dead link never noticed; a defect hunt). The reconnect asks for the
    client's own ``keep_alive_interval`` again."""
    from mqttsession import _wire
    from mqttsession.testing.fake_broker import FakeBroker

    class ZeroKeepAliveOnce(FakeBroker):
        first = True

        def connack(self, session_present: bool = False, reason: int = 0) -> bytes:
            if not self.first:
                return super().connack(session_present, reason)
            self.first = False
            return _wire.encode_connack(session_present, reason, protocol=5,
                                        properties=[(0x13, 0)])

    fake = ZeroKeepAliveOnce()
    c = mqttsession.Client(client_id=_procs.unique("ska"), clean_session=False,
                           protocol_version=5, keep_alive_interval=5)
    c.config("ReconnectDelayMin=0.1")
    c.config("ReconnectDelayMax=0.1")
    try:
        c.connect(fake.host, fake.port)
        fake.close_client()
        fake.wait_connections(2, timeout=10)
        assert _procs.wait_until(lambda: len(fake.packets("CONNECT")) >= 2)
        assert [p.keepalive for p in fake.packets("CONNECT")][:2] == [5, 5]
    finally:
        c.close()
        fake.stop()


def test_a_reconnect_through_a_dead_first_address_gets_its_connack_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's name resolves to an address that drops SYNs (::1 with a full accept
    queue), then to mosquitto's: a reconnect spends ``timeout`` on the first address; its
    CONNACK wait starts once the socket is connected. Before (a review): the wait counted
    from before the TCP connect, so every reconnect was dropped at "no CONNACK", for ever."""
    import socket  # noqa: PLC0415

    from mqttsession import Client  # noqa: PLC0415
    from mqttsession.testing import MosquittoBroker  # noqa: PLC0415

    with MosquittoBroker() as b:
        try:
            hole = socket.socket(socket.AF_INET6)
            hole.bind(("::1", b.port))
        except OSError:
            pytest.skip("no IPv6 loopback")
        hole.listen(0)
        fill = [socket.socket(socket.AF_INET6) for _ in range(3)]
        for s in fill:
            s.setblocking(False)
            s.connect_ex(("::1", b.port))
        real = socket.getaddrinfo

        def gai(host: Any, port: Any, *a: Any, **k: Any) -> Any:
            if host == "dual-stack-broker":
                return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            return real(host, port, *a, **k)

        monkeypatch.setattr(socket, "getaddrinfo", gai)
        c = Client(client_id="dead-first-address", clean_session=False)
        c.config("ReconnectDelayMin=0.5")
        c.config("ReconnectDelayMax=0.5")
        try:
            c.connect("dual-stack-broker", b.port, 2)
            b.stop()
            c.publish_message("t/dead-first", 1, "published while the broker was down")
            b.start()
            assert c.flush(20), "never reconnected: each CONNACK wait ran out in the TCP connect"
        finally:
            c.close()
            for s in [hole, *fill]:
                s.close()


def test_a_session_no_broker_had_is_not_reported_lost(mosquitto_factory: Any, tmp_path: Any
                                                      ) -> None:
    """A new session that subscribes in ``on_connected`` (paho's habit) and published before
    its first connect: SessionPresent=0 there is no loss (a hunt: ``on_session_lost`` fired at
    every first deployment, "the broker lost the session" logged). Once a broker accepted it,
    a restart that forgets it is reported, the subscription in ``resubscribed``, also after a
    restart of the client between."""
    broker = mosquitto_factory()  # persistence false: a restart forgets every session
    tag = unique("new")
    topic = f"mqs/{tag}"
    cid = unique("gw")
    c = _client(cid, 5)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    log = EventLog(c)
    c.on_connected = lambda e: c.subscribe(f"{topic}/cmd", 1)
    c.publish_message(topic, 1, payload(tag, 1))
    c.connect(broker.host, broker.port)
    assert c.flush(_procs.TIMEOUT)
    log.wait("on_subscribed")
    c.close()
    assert log.of("on_session_lost") == []
    again = _client(cid, 5)
    again.config(f"SessionStateFile={tmp_path / 's'}")
    again.restore_session("")
    log = EventLog(again)
    try:
        broker.restart()
        again.connect(broker.host, broker.port)
        lost = log.wait("on_session_lost")[0]
        assert lost.resubscribed == ((f"{topic}/cmd", 1),)
    finally:
        again.close()


def test_a_session_restored_in_on_connected_counts_as_accepted(mosquitto_factory: Any) -> None:
    """A session saved by a client that never connected, restored inside the first
    ``on_connected`` (SUBACK received): a broker restart that forgets it is reported (a
    review: its ``connected_at`` stayed unset, so the loss was taken for a first connect)."""
    broker = mosquitto_factory()
    offline = _client(unique("gw"), 5)
    offline.subscribe("mqs/restored/cmd", 1)
    saved = offline.save_session()
    cid = offline.client_id
    offline.close()
    c = _client(cid, 5)
    log = EventLog(c)
    restored: list[bool] = []

    def on_connected(_e: Any) -> None:
        if not restored:  # (the first connection only)
            restored.append(True)
            c.restore_session(saved)

    c.on_connected = on_connected
    try:
        c.connect(broker.host, broker.port)
        log.wait("on_subscribed")
        broker.restart()
        lost = log.wait("on_session_lost")[0]
        assert lost.resubscribed == (("mqs/restored/cmd", 1),)
    finally:
        c.close()
