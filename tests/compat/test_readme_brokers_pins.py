"""README "Brokers", "Broker compatibility" and "The broker matrix": claims no test held, each
checked here on the real brokers (mosquitto, amqtt embedded and as a process, aedes in memory and
as a Redis cluster) or on the compat checker in front of one (a README behaviour audit).

* amqtt 0.12.1: hands QoS 2 on at PUBREL; delivers even a QoS 0 message at a QoS 2
  subscription's QoS; a clean session outlives its connection with its subscriptions; after a
  take-over its messages wait for the next reconnect; a QoS 2 flow it retries at a reconnect
  completes on the PUBREL before it handles the DUP PUBLISH sent before it, and the message is
  delivered twice (mosquitto: once);
* aedes 1.2: refuses an MQTT 5 CONNECT with CONNACK code 1; in memory it sends finished QoS 2
  flows again after a reconnect, and sometimes a PUBREL under an id it never used (the flow it
  started never gets one); with Redis neither;
* mosquitto 2.0: a WebSockets listener does not start alone; ``listener PORT lo`` keeps it on
  loopback; an MQTT 5 take-over is closed without DISCONNECT 0x8E (2.0.x);
* ``mqttsession compat``: every client id begins with ``msc``, every topic is under
  ``mqttsession-compat/``, each scenario has its own; a SUBACK granting QoS 1, a QoS 2 PUBLISH
  answered with PUBACK and a Maximum Packet Size the scenario exceeds are n/a with the reason.

Raw packets (``mqttsession.compat.raw``): paho would acknowledge and retry by itself. Waits are
bounded; nothing here measures speed.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttsession.compat import SCENARIOS, TOPIC_ROOT, Scenario, Status, Target, run_scenario
from mqttsession.compat.raw import PacketType, RawClient, encode_ack, encode_publish
from mqttsession.testing import AmqttProcess, EmbeddedAmqtt, MosquittoBroker
from mqttsession.testing.brokers import free_port, load_template, render_template, wait_for_port
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.node_brokers import AedesBroker, AedesCluster
from mqttsession.testing.pytest_plugin import MosquittoFactory, ProxyFactory, require_mosquitto

pytestmark = pytest.mark.integration

TIMEOUT = 2.0


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _publishes(client: RawClient, duration: float) -> list[bytes]:
    return [p.payload for p in client.collect(duration) if p.type is PacketType.PUBLISH]


@pytest.fixture(params=["embedded", "process"])
def amqtt(request: pytest.FixtureRequest) -> Iterator[EmbeddedAmqtt | AmqttProcess]:
    """amqtt 0.12.1 in this process and as a process (both with broker_conf/amqtt.yaml)."""
    yield request.getfixturevalue("embedded_amqtt" if request.param == "embedded" else "amqtt_broker")


# ------------------------------------------------------------------------------ amqtt 0.12.1


def test_amqtt_hands_qos2_on_at_pubrel(amqtt: EmbeddedAmqtt | AmqttProcess) -> None:
    """README: "mosquitto 2.0, amqtt 0.12: hand QoS 2 on at PUBREL: keep
    ``ReleasedOnSessionLost=republish``" (test_compat.py accepted either value for amqtt)."""
    result = run_scenario(_scenario("qos2-delivery-point"), Target(amqtt.host, amqtt.port, 4, timeout=TIMEOUT))
    assert result.status is Status.INFO, result.reason
    assert result.value == "on PUBREL", result.reason
    assert "keep ReleasedOnSessionLost=republish" in result.reason


def test_amqtt_delivers_even_qos0_at_the_subscriptions_qos2(amqtt: EmbeddedAmqtt | AmqttProcess) -> None:
    """README: "delivery uses the subscription's QoS (even a QoS 0 message goes out at QoS 2)";
    the matrix's FAIL of ``delivered-qos-min`` names both (test_compat.py's known reason only the
    QoS 1 one)."""
    result = run_scenario(_scenario("delivered-qos-min"), Target(amqtt.host, amqtt.port, 4, timeout=TIMEOUT))
    assert result.status is Status.FAIL
    assert result.reason == ("QoS 1 to a QoS 2 subscription (granted 2) delivered at QoS 2; QoS 0 to"
                             " a QoS 2 subscription (granted 2) delivered at QoS 2"), result.reason


def test_amqtt_keeps_a_clean_session_and_its_subscriptions_after_the_connection(
        amqtt: EmbeddedAmqtt | AmqttProcess) -> None:
    """README: "a clean session is kept until its session monitor runs (up to 1 s after the
    connection closed: a quick reconnect with CleanSession=0 gets SessionPresent=1 and the clean
    session's subscriptions)". A quick reconnect can miss the window by luck (about 1 in 100,
    test_compat.py): three tries."""
    seen = []
    for _ in range(3):
        topic, cid = f"{TOPIC_ROOT}/{_tag()}/t", f"msc{_tag()}c"
        with RawClient(amqtt.host, amqtt.port, timeout=TIMEOUT) as c, \
                RawClient(amqtt.host, amqtt.port, timeout=TIMEOUT) as p:
            c.connect(cid, clean=True)
            c.subscribe(topic, 1)
            c.disconnect(linger=0.2)
            c.connect(cid, clean=False)
            present = c.session_present
            p.connect(f"msc{_tag()}p", clean=True)
            p.publish(topic, b"after", 1)
            got = _publishes(c, 1.0)
            c.connect(cid, clean=True)  # end the session
            c.disconnect(linger=0.2)
        seen.append((present, got))
        if present and got == [b"after"]:
            return
    pytest.fail(f"no quick reconnect found the clean session and its subscription: {seen}")


def test_amqtt_queues_a_taken_over_sessions_messages_until_the_next_reconnect(
        amqtt: EmbeddedAmqtt | AmqttProcess) -> None:
    """README: "after a take-over the session counts as disconnected, so its messages are queued
    instead of delivered until the client reconnects again"."""
    topic, cid = f"{TOPIC_ROOT}/{_tag()}/t", f"msc{_tag()}s"
    with RawClient(amqtt.host, amqtt.port, timeout=TIMEOUT) as a, \
            RawClient(amqtt.host, amqtt.port, timeout=TIMEOUT) as b, \
            RawClient(amqtt.host, amqtt.port, timeout=TIMEOUT) as p:
        a.connect(cid, clean=False)
        a.subscribe(topic, 1)
        b.connect(cid, clean=False)  # takes the session over
        assert b.session_present
        a.collect(1.0)
        p.connect(f"msc{_tag()}p", clean=True)
        p.publish(topic, b"to b", 1)
        assert _publishes(b, 1.5) == []  # queued, not sent on the live connection
        b.disconnect(linger=0.2)
        b.connect(cid, clean=False)
        assert b.session_present
        assert _publishes(b, 1.5) == [b"to b"]
        b.connect(cid, clean=True)
        b.disconnect(linger=0.2)


def _retried_qos2_flow(host: str, port: int, *, retries: bool) -> tuple[int, list[bytes]]:
    """A publisher's QoS 2 PUBLISH (id 5) got PUBREC; its connection dropped, it reconnects and
    sends the PUBLISH again (DUP=1) and its PUBREL together, as a client does once it has the
    PUBREC of the broker's retried flow (``retries``: wait for that PUBREC first), and answers
    every PUBREC with PUBREL. Meanwhile the publisher's socket is kept full (QoS 0 messages to
    its own subscription, unread), so the broker's PUBREC write waits: the broker's tasks for
    the two packets run in the order the broker gives them, not the wire's. Returns the PUBRECs
    the publisher got after the reconnect and the payloads a subscriber got."""
    tag = _tag()
    topic, flood = f"{TOPIC_ROOT}/{tag}/t", f"{TOPIC_ROOT}/{tag}/flood"
    with RawClient(host, port, timeout=5.0) as sub, RawClient(host, port, timeout=5.0) as pub, \
            RawClient(host, port, timeout=5.0) as flooder:
        sub.connect(f"msc{tag}s", clean=True)
        sub.subscribe(topic, 2)
        pub.connect(f"msc{tag}p", clean=False)
        pub.subscribe(flood, 0)
        pub.send(encode_publish(topic, b"once", qos=2, packet_id=5))
        pub.expect(PacketType.PUBREC, 5)
        pub.close()  # dropped before PUBREL
        pub.connect(f"msc{tag}p", clean=False)
        assert pub.session_present
        pubrecs = 0
        if retries:
            pub.expect(PacketType.PUBREC, 5)  # amqtt retries the flow at the reconnect
            pubrecs += 1
        flooder.connect(f"msc{tag}f", clean=True)
        for _ in range(200):
            flooder.publish(flood, b"x" * 65536, 0)
        time.sleep(0.5)
        pub.send(encode_publish(topic, b"once", qos=2, packet_id=5, dup=True)
                 + encode_ack(PacketType.PUBREL, 5))
        time.sleep(0.5)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            packet = pub._read(time.monotonic() + 1.0)
            if packet is None:
                break
            if packet.type is PacketType.PUBREC:
                pubrecs += 1
                pub.send(encode_ack(PacketType.PUBREL, 5))
        got = []
        for m in sub.collect(1.0):
            if m.type is PacketType.PUBLISH:
                got.append(m.payload)
                sub.send(encode_ack(PacketType.PUBREC, m.packet_id))
        pub.connect(f"msc{tag}p", clean=True)
        pub.disconnect(linger=0.2)
        return pubrecs, got


def test_amqtt_delivers_twice_a_retried_qos2_flow_completed_before_its_dup_publish(
        embedded_amqtt: EmbeddedAmqtt, mosquitto: MosquittoBroker) -> None:
    """README (amqtt): "since it handles one connection's packets in concurrent tasks, a QoS 2
    flow it retries on reconnect can complete before it sees the DUP PUBLISH that preceded the
    PUBREL on the wire, and it then delivers that message twice". The PUBREL ends the retried
    flow (delivered), then the DUP PUBLISH starts a new one (PUBREC, delivered again on the
    PUBREL that answers it). mosquitto, the same packets: once."""
    pubrecs, got = _retried_qos2_flow(embedded_amqtt.host, embedded_amqtt.port, retries=True)
    assert got == [b"once", b"once"], (pubrecs, got)
    assert pubrecs >= 2  # the retried flow's PUBREC and the new flow's
    _, once = _retried_qos2_flow(mosquitto.host, mosquitto.port, retries=False)
    assert once == [b"once"]


# ------------------------------------------------------------------------------ aedes 1.2


def test_aedes_refuses_mqtt5_with_connack_code_1(aedes_broker: AedesBroker) -> None:
    """README (the broker matrix, "Protocols refused"): aedes 1.2.0, MQTT 5: "refused an MQTT 5
    CONNECT: CONNACK code 1 (unacceptable protocol version)" (test_matrix.py held only that the
    protocol was refused)."""
    from mqttsession.compat import BrokerUnavailable, check_broker

    with pytest.raises(BrokerUnavailable) as caught:
        check_broker(Target(aedes_broker.host, aedes_broker.port, 5, timeout=TIMEOUT))
    assert (f"the broker at {aedes_broker.host}:{aedes_broker.port} refused an MQTT 5 CONNECT:"
            " CONNACK code 1 (unacceptable protocol version)") in str(caught.value)


def _qos2_stream(host: str, port: int, count: int = 100) -> tuple[list[bytes], int, list[bytes]]:
    """``count`` QoS 2 messages to a persistent raw subscriber that answers PUBREC and PUBCOMP at
    once; then it reconnects. Returns the payloads of the flows it finished (PUBCOMP sent), how
    many flows never got a PUBREL, and the payloads sent again after the reconnect."""
    tag = _tag()
    topic, cid = f"{TOPIC_ROOT}/{tag}/t", f"msc{tag}s"
    with RawClient(host, port, timeout=TIMEOUT) as s, RawClient(host, port, timeout=TIMEOUT) as p:
        s.connect(cid, clean=False)
        s.subscribe(topic, 2)
        p.connect(f"msc{tag}p", clean=True)
        for n in range(count):
            p.publish(topic, b"%d" % n, 2)
        awaiting: dict[int, bytes] = {}
        finished: list[bytes] = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            packet = s._read(time.monotonic() + 1.0)
            if packet is None:
                break
            if packet.type is PacketType.PUBLISH:
                assert packet.packet_id is not None
                awaiting[packet.packet_id] = packet.payload
                s.send(encode_ack(PacketType.PUBREC, packet.packet_id))
            elif packet.type is PacketType.PUBREL:
                assert packet.packet_id is not None
                s.send(encode_ack(PacketType.PUBCOMP, packet.packet_id))
                if packet.packet_id in awaiting:
                    finished.append(awaiting.pop(packet.packet_id))
        s.disconnect(linger=0.3)
        s.connect(cid, clean=False)
        assert s.session_present
        again = _publishes(s, 1.5)
        s.connect(cid, clean=True)
        s.disconnect(linger=0.2)
        return finished, len(awaiting), again


def test_aedes_in_memory_breaks_qos2_towards_a_subscriber(aedes_broker: AedesBroker) -> None:
    """README (aedes): "With its in-memory store ... it sometimes never sends the PUBREL of a flow
    it started ..., and after a reconnect it sends flows already finished with PUBCOMP again as
    new ones (delivered twice)". Pinned: a finished flow sent again at the reconnect (every
    run). The missing PUBREL comes in most runs only (a CI run had none in five): not
    asserted, "sometimes" is what README says."""
    finished, never_released, again = _qos2_stream(aedes_broker.host, aedes_broker.port)
    assert set(again) & set(finished), (len(finished), never_released, again)


def test_aedes_with_redis_finishes_every_qos2_flow_once(aedes_cluster: AedesCluster) -> None:
    """README (aedes): "Run aedes with a persistence (the tests use aedes-persistence-redis): then
    neither happens": every flow gets its PUBREL, nothing finished is sent again."""
    node = aedes_cluster.nodes[0]
    for _ in range(2):
        finished, never_released, again = _qos2_stream(node.host, node.port)
        assert (len(finished), never_released, again) == (100, 0, [])


# ------------------------------------------------------------------------------ mosquitto 2.0


def _mosquitto_version() -> str:
    out = subprocess.run([require_mosquitto(), "-h"], capture_output=True, text=True, timeout=10,
                         check=False)
    return (out.stdout + out.stderr).split("mosquitto version ", 1)[-1].split()[0]


def test_mosquitto_websockets_listener_does_not_start_alone(tmp_path: Path) -> None:
    """README (mosquitto): "Its WebSockets listener (2.0.11) does not start alone (it needs a
    plain listener too)" (why broker_conf/mosquitto-websockets.conf has one)."""
    conf = tmp_path / "ws-alone.conf"
    conf.write_text(f"listener {free_port()} lo\nprotocol websockets\nallow_anonymous true\n"
                    "log_dest stderr\n", encoding="utf-8")
    done = subprocess.run([require_mosquitto(), "-c", str(conf)], capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode != 0
    assert "Unable to start any listening sockets" in done.stderr + done.stdout


def _listening(pid: int) -> set[str]:
    done = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip("ss (iproute2) not available to list listening sockets")
    return {line.split()[3] for line in done.stdout.splitlines() if f"pid={pid}," in line}


def test_mosquitto_websockets_listener_on_lo_listens_on_loopback_only(tmp_path: Path) -> None:
    """README (mosquitto): the WebSockets listener "binds to an interface, not an address
    (``listener PORT lo``)": broker_conf/mosquitto-websockets.conf's listener is on loopback
    alone, the plain one on 127.0.0.1. (That ``listener PORT 127.0.0.1`` with ``protocol
    websockets`` listens on every address was seen by hand, not here: tests open loopback
    sockets only.)"""
    ws_port = free_port()
    text, _ = load_template("mosquitto-websockets.conf")
    conf = tmp_path / "mosquitto-websockets.conf"
    conf.write_text(render_template(text, ws_port=ws_port), encoding="utf-8")
    broker = MosquittoBroker(conf, mosquitto_bin=require_mosquitto())
    broker.start()
    try:
        assert wait_for_port("127.0.0.1", ws_port, 10), broker.log_text()
        assert broker.pid is not None
        listening = _listening(broker.pid)
        assert f"127.0.0.1:{broker.port}" in listening, listening
        ws = {a for a in listening if a.endswith(f":{ws_port}")}
        assert ws and all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")) for a in ws), ws
    finally:
        broker.stop()


def test_mosquitto_2_0_closes_a_taken_over_mqtt5_connection_without_disconnect_0x8e(
        mosquitto: MosquittoBroker) -> None:
    """README: "mosquitto sends DISCONNECT 0x8E on a take-over only from 2.1 on ... and the spec
    does not require it": on 2.0 ``takeover`` passes with that note (test_compat.py accepted
    either)."""
    if not _mosquitto_version().startswith("2.0."):
        pytest.skip(f"mosquitto {_mosquitto_version()}: the claim is about 2.0")
    result = run_scenario(_scenario("takeover"), Target(mosquitto.host, mosquitto.port, 5, timeout=TIMEOUT))
    assert result.status is Status.PASS
    assert result.reason == "old connection closed without DISCONNECT 0x8E (allowed)"


# ------------------------------------------------------------------------------ the checker


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_every_scenario_uses_its_own_msc_ids_and_topics_under_the_root(
        mosquitto: MosquittoBroker, mqtt_proxy_factory: ProxyFactory, protocol: int) -> None:
    """README: "Each scenario uses its own client ids and topics ...  Every topic is under
    ``mqttsession-compat/#`` (``mqttsession-compat/RANDOM/NAME``) and every client id begins
    with ``msc``": what each scenario sends, read off the wire by a proxy."""
    proxy = mqtt_proxy_factory(mosquitto)
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for scenario in SCENARIOS:
        proxy.clear_log()
        result = run_scenario(scenario, Target(proxy.host, proxy.port, protocol, timeout=TIMEOUT))
        ids = {r.client_id for r in proxy.packets("c2s", "CONNECT") if r.client_id is not None}
        topics = {r.topic for r in proxy.packets("c2s", "PUBLISH") if r.topic is not None}
        topics |= {f for r in proxy.packets("c2s", "SUBSCRIBE") for f in r.filters or ()}
        if result.status is not Status.NA:  # (n/a: MQTT 5 only, or failover-resume alone)
            assert ids, scenario.name
        assert all(i.startswith("msc") for i in ids), (scenario.name, ids)
        parts = [t.split("/") for t in topics]
        assert all(len(p) == 3 and p[0] == TOPIC_ROOT and p[1] and p[2] for p in parts), (scenario.name, topics)
        seen[scenario.name] = (ids, {p[1] for p in parts})
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seen[a][0] & seen[b][0], (a, b, "client ids")
            assert not seen[a][1] & seen[b][1], (a, b, "topics")


def test_a_suback_granting_qos1_makes_the_qos2_delivery_scenarios_not_applicable(
        mosquitto_factory: MosquittoFactory) -> None:
    """README: n/a when the broker "granted QoS 1, so there is no QoS 2 flow to check"
    (RabbitMQ's rows; here mosquitto's ``max_qos 1``, which grants QoS 1 on 3.1.1)."""
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_qos 1")
    for name in ("redelivery-qos2", "resume-pubrel"):
        result = run_scenario(_scenario(name), Target(broker.host, broker.port, 4, timeout=TIMEOUT))
        assert (result.status, result.reason) == (
            Status.NA, "SUBACK granted QoS 1 for a QoS 2 subscription (allowed): no QoS 2 delivery"
            " to check"), (name, result)


def test_a_qos2_publish_answered_with_puback_makes_the_qos2_flow_scenarios_not_applicable() -> None:
    """README: n/a when "the broker took QoS 2 as QoS 1" (RabbitMQ's rows; here the fake broker
    answering PUBACK): no FAIL for what ``qos2-publish-pubrec`` reports."""
    reason = ("the broker answered the QoS 2 PUBLISH with PUBACK (QoS 2 taken as QoS 1, reported by"
              " qos2-publish-pubrec): no QoS 2 flow to check")
    with FakeBroker(qos2_ack="puback") as fake:
        for name in ("qos2-dedupe-connection", "qos2-delivery-point", "qos2-dedupe-reconnect"):
            result = run_scenario(_scenario(name), Target(fake.host, fake.port, 4, timeout=1.0, quiet=0.3))
            assert (result.status, result.reason) == (Status.NA, reason), (name, result)


def test_a_maximum_packet_size_the_scenario_exceeds_makes_it_not_applicable(
        mosquitto_factory: MosquittoFactory) -> None:
    """README: n/a when the MQTT 5 CONNACK gave "a Maximum Packet Size the scenario's packets
    exceed: the checker never sends what the broker forbade [MQTT-3.2.2-15]" (test_broker_limits.py
    held the raw client's refusal, not a scenario's verdict); a scenario whose packets fit passes."""
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_packet_size 40")
    target = Target(broker.host, broker.port, 5, timeout=TIMEOUT)
    big = run_scenario(_scenario("delivered-qos-min"), target)
    assert big.status is Status.NA
    assert big.reason.startswith("CONNACK Maximum Packet Size 40: a client must not send a "), big.reason
    assert big.reason.endswith("[MQTT-3.2.2-15]")
    assert run_scenario(_scenario("session-present-new"), target).status is Status.PASS


# ------------------------------------------------------------------------------ the client


@pytest.mark.parametrize("qos", [1, 2])
def test_a_first_delivery_with_dup_1_is_delivered_with_the_brokers_flag(qos: int) -> None:
    """README (ejabberd, which "sets DUP=1 on the first delivery of a message queued while the
    client was away"): "``MessageEvent.duplicate`` is the broker's flag, not "already
    delivered"; mqttsession never drops a message for its DUP": a PUBLISH under a new packet id
    with DUP=1 is delivered once, ``duplicate`` True, and acknowledged."""
    import threading

    import mqttsession

    got: list[tuple[bytes, bool]] = []
    arrived = threading.Event()

    def on_message(event: object) -> None:
        got.append((event.message, event.duplicate))  # type: ignore[attr-defined]
        arrived.set()

    with FakeBroker(session_present=True) as fake:
        c = mqttsession.Client(client_id=f"msc{_tag()}d", clean_session=False)
        c.on_message_in = on_message
        try:
            c.connect(fake.host, fake.port, 5)
            fake.send_raw(fake.publish("t/queued", b"first", qos, packet_id=9,
                                       flags=0x08 | qos << 1))  # DUP=1
            if qos == 1:
                fake.wait_for("PUBACK")
            else:
                fake.wait_for("PUBREC")
                fake.send_raw(fake.ack(0x62, 9))  # PUBREL
                fake.wait_for("PUBCOMP")
            assert arrived.wait(5)
            time.sleep(0.2)
            assert got == [(b"first", True)]
        finally:
            c.close()


def test_a_suback_refusing_the_topic_tree_stops_the_check_in_one_line() -> None:
    """README: the command tries the topics first "and, if a SUBACK refuses it, a PUBACK says 0x87
    or the message does not come back, stops with one line (``not allowed to use
    mqttsession-compat/# ...``, exit code 2)" (test_broker_limits.py: the last two; here the
    SUBACK, from the fake broker refusing every filter with 0x80)."""
    from mqttsession.compat import BrokerUnavailable, check_broker

    with FakeBroker(suback_code=0x80) as fake:
        with pytest.raises(BrokerUnavailable) as caught:
            check_broker(Target(fake.host, fake.port, 4, timeout=1.0))
    text = str(caught.value)
    assert text.startswith(f"not allowed to use {TOPIC_ROOT}/# (the topics of every scenario) at"), text
    assert "SUBSCRIBE" in text and "refused" in text and "\n" not in text, text
