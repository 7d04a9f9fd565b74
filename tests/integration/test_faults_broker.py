"""Brokers that bend or break the protocol (issue 10, points 6, 7 and 13), on a raw-socket
``FakeBroker`` over loopback.

* An acknowledgement of the wrong kind (RabbitMQ 3.x answers a QoS 2 PUBLISH with PUBACK) ends
  the flow as the broker meant it: counted, logged once per connection, never a silent stall.
* A refused SUBSCRIBE, also one re-sent after SessionPresent=0, is reported through
  ``on_subscribed`` with its reason code and never drops the connection. A SUBSCRIBE lost with
  its connection goes out again; one a broker answers by closing the connection (RabbitMQ 3.x)
  counts as refused after three closes in a row, so no reconnect loop follows.
* A protocol violation (a second CONNACK, a PUBLISH with QoS bits 11, SessionPresent=1 answering
  Clean Start 1, an MQTT 5 PUBLISH with a Topic Alias or a property twice, a flow beyond the
  Receive Maximum, a packet type no broker sends, a PUBREL with packet id 0) closes the
  connection (MQTT 5: DISCONNECT with its reason code first), is reported through
  ``on_error`` and changes nothing in the session.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest

import mqttsession
from mqttsession import ConnectError, _wire
from mqttsession.errors import UsageError
from mqttsession.testing.fake_broker import FakeBroker

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

PROTOCOLS = pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])



def _client(protocol: int, clean: bool = False) -> mqttsession.Client:
    c = mqttsession.Client(client_id=_procs.unique("gw"), clean_session=clean,
                           protocol_version=protocol)
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    if protocol == 5 and not clean:
        c.config("SessionExpInterval=600")
    return c


# ------------------------------------------------------------------ wrong-kind acknowledgements


@PROTOCOLS
def test_puback_for_qos2_ends_the_flow(fake: FakeBroker, protocol: int,
                                       caplog: pytest.LogCaptureFixture) -> None:
    fake.qos2_ack = "puback"  # RabbitMQ 3.x: QoS 2 downgraded to 1
    c = _client(protocol)
    c.config("MaxInflight=2")
    log = _procs.EventLog(c)
    try:
        with caplog.at_level(logging.WARNING, logger="mqttsession"):
            c.connect(fake.host, fake.port)
            for n in range(6):
                c.publish_message("t/q2", 2, f"m{n}")
            assert c.flush(5), "QoS 2 messages answered with PUBACK stalled the window"
        assert c.config("MismatchedAcks") == "6"
        warnings = [r for r in caplog.records if "PUBACK" in r.getMessage()]
        assert len(warnings) == 1  # once per connection
        assert len(log.of("on_message_ack")) == 6
        assert not fake.packets("PUBREL")
    finally:
        c.close()


def test_pubrec_for_qos1_ends_the_flow_and_lets_the_broker_finish(fake: FakeBroker) -> None:
    fake.qos1_ack = "pubrec"
    c = _client(4)
    try:
        c.connect(fake.host, fake.port)
        ids = [c.publish_message("t/q1", 1, f"m{n}") for n in range(3)]
        assert c.flush(5)
        assert c.config("MismatchedAcks") == "3"
        rels = fake.wait_for("PUBREL", 3)
        assert [r.packet_id for r in rels] == ids
    finally:
        c.close()


# ------------------------------------------------------------------ refused subscriptions


@PROTOCOLS
def test_refused_resubscription_never_drops_the_connection(fake: FakeBroker, protocol: int) -> None:
    fake.qos1_ack = "none"  # 20 messages in flight, as in the RabbitMQ cluster case
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        c.subscribe("cmd/a,cmd/b", 1)
        assert [e.response_code for e in log.wait("on_subscribed", 2)] == [1, 1]
        for n in range(20):
            c.publish_message("t/q1", 1, f"m{n}")
        fake.wait_for("PUBLISH", 20)
        fake.suback_code = 0x80  # the node holding the queue is gone: refused from now on
        fake.close_client()  # SessionPresent=0 on the way back: the subscriptions are re-sent
        subacks = log.wait("on_subscribed", 4)
        assert [e.response_code for e in subacks[2:]] == [0x80, 0x80]
        log.wait("on_session_lost")
        time.sleep(2.5)  # two reconnect delays: a loop would show here
        assert fake.connections == 2
        assert len(log.of("on_session_lost")) == 1
        assert len(log.of("on_disconnected")) == 1
        assert c.connected
        assert len(fake.packets("SUBSCRIBE")) == 2
    finally:
        c.close()


@PROTOCOLS
def test_subscribe_cut_before_its_suback_is_sent_again(fake: FakeBroker, protocol: int) -> None:
    """A SUBSCRIBE lost with its connection (no SUBACK) goes out again on the next one, also
    when SessionPresent=1 (the broker may never have seen it)."""
    fake.session_present = True
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.closes_on_subscribe = {"cmd/#"}
        c.subscribe("cmd/#", 1)
        fake.wait_connections(2)
        fake.closes_on_subscribe = set()
        assert [(e.topic_filter, e.response_code) for e in log.wait("on_subscribed")] == \
            [("cmd/#", 1)]
        assert log.of("on_error") == []
    finally:
        c.close()


@PROTOCOLS
def test_subscribe_answered_by_closing_is_refused_after_three_tries(fake: FakeBroker,
                                                                  protocol: int) -> None:
    """RabbitMQ 3.x closes the connection when the queue behind a subscription cannot be
    declared: after three closes in a row on its SUBSCRIBE the filter counts as refused
    (on_subscribed 0x80, on_error) and leaves the session: no reconnect loop; the other
    filter is kept."""
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.closes_on_subscribe = {"bad/#"}
        c.subscribe("good/a,bad/#", 1)
        _procs.wait_until(lambda: any(e.topic_filter == "good/a" and e.response_code == 1
                                      for e in log.of("on_subscribed")),
                          what="good/a subscribed after bad/# was given up")
        refused = [e for e in log.of("on_subscribed") if e.response_code == 0x80]
        assert [e.topic_filter for e in refused] == ["bad/#"]
        assert any("taken as refused" in e.description for e in log.of("on_error"))
        seen = fake.connections
        time.sleep(2.5)  # two reconnect delays: a loop would show here
        assert fake.connections == seen == 4 and c.connected
        assert mqttsession.load_state(c.save_session()).subscriptions == {"good/a": 1}
    finally:
        c.close()


# ------------------------------------------------------------------ protocol violations


def _disconnect_codes(fake: FakeBroker) -> list[int | None]:
    """The reason codes of the DISCONNECTs the fake broker read, once it read one (the client
    may raise before its network thread has written it)."""
    _procs.wait_until(lambda: fake.packets("DISCONNECT"), what="the client's DISCONNECT")
    return [r.reason_code for r in fake.packets("DISCONNECT")]


@PROTOCOLS
def test_second_connack_closes_and_changes_nothing(fake: FakeBroker, protocol: int) -> None:
    fake.qos2_ack = "none"  # one QoS 2 message stays in flight, awaiting PUBREC
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        pid = c.publish_message("t/q2", 2, "held")
        fake.wait_for("PUBLISH")
        before = c.outgoing_messages
        fake.session_present = True  # the reconnect resumes the session
        fake.send_raw(fake.connack(session_present=False))  # a second CONNACK: a violation
        errors = log.wait("on_error")
        assert errors[0].error_code == 0x82 and "second CONNACK" in errors[0].description
        fake.wait_connections(2)
        _procs.wait_until(lambda: len(fake.packets("PUBLISH")) == 2, what="the resend")
        again = fake.packets("PUBLISH")[1]
        assert (again.packet_id, again.dup) == (pid, True)  # [MQTT-4.4.0-1] resumed, not anew
        assert log.of("on_session_lost") == []
        assert [(m.packet_id, m.message) for m in c.outgoing_messages] == \
            [(m.packet_id, m.message) for m in before]
        if protocol == 5:
            assert _disconnect_codes(fake) == [0x82]
    finally:
        c.close()


@PROTOCOLS
def test_publish_with_qos_bits_11_is_refused(fake: FakeBroker, protocol: int) -> None:
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(fake.publish("t/in", b"bad", 2, packet_id=7, flags=0x06))
        errors = log.wait("on_error")
        assert errors[0].error_code == 0x81 and "QoS bits 11" in errors[0].description
        fake.wait_connections(2)
        assert c.incoming_messages == ()
        assert log.of("on_message_in") == []
        if protocol == 5:
            assert _disconnect_codes(fake) == [0x81]
    finally:
        c.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("topic,props,code,words", [
    ("", [(0x23, 1)], 0x94, "Topic Alias"),  # [MQTT-3.1.2-27]: the client allows none
    ("t/in", [(0x23, 1)], 0x94, "Topic Alias"),
    ("t/in", [(0x02, 60), (0x02, 60)], 0x82, "twice"),  # 2.2.2.2
    ("t/in", [(0x11, 60)], 0x82, "cannot carry"),  # Session Expiry Interval: CONNECT's
], ids=["alias-for-topic", "alias-beside-topic", "property-twice", "connect-property"])
def test_mqtt5_publish_a_client_must_refuse(fake: FakeBroker, qos: int, topic: str,
                                            props: list[tuple[int, int]], code: int,
                                            words: str) -> None:
    """Before: the QoS 0 and 1 ones were delivered (with an empty topic for an alias) and
    PUBACKed, the rest passed silently."""
    c = _client(5)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(_wire.encode_publish(topic, b"bad", qos=qos, packet_id=7 if qos else None,
                                           protocol=5, properties=props))
        errors = log.wait("on_error")
        assert errors[0].error_code == code and words in errors[0].description
        assert _disconnect_codes(fake) == [code]
        fake.wait_connections(2)
        assert log.of("on_message_in") == [] and c.incoming_messages == ()
        assert not fake.packets("PUBACK") and not fake.packets("PUBREC")
    finally:
        c.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_flows_beyond_the_receive_maximum_are_taken_and_logged(
        fake: FakeBroker, qos: int, caplog: pytest.LogCaptureFixture) -> None:
    """MQTT 5: the CONNECT's Receive Maximum (5 here) bounds the QoS 1/2 flows the broker may
    leave open [MQTT-3.3.4-9]. mosquitto 2.0.11 opens more when the application acks slowly;
    session 29 closed the connection (DISCONNECT 0x93) for the one beyond, and each reconnect
    overshot again: a ManualAck subscriber looped, 39 of 60 messages never delivered. The
    flow is now taken, logged once a connection at WARNING."""
    c = _client(5)
    c.config("ReceiveMaximum=5")
    c.config("ManualAck=True")  # none acknowledged: five flows stay open
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        for pid in range(1, 6):
            fake.send_raw(_wire.encode_publish("t/in", b"%d" % pid, qos=qos, packet_id=pid,
                                               protocol=5))
        if qos == 1:
            log.wait("on_message_in", 5)
        else:  # (delivered on PUBREL)
            fake.wait_for("PUBREC", 5)
        with caplog.at_level(logging.WARNING, logger="mqttsession"):
            for pid in (6, 7):
                fake.send_raw(_wire.encode_publish("t/in", b"%d" % pid, qos=qos,
                                                   packet_id=pid, protocol=5))
            if qos == 1:
                log.wait("on_message_in", 7)
            else:
                fake.wait_for("PUBREC", 7)
        assert caplog.text.count("more QoS 1/2 flows than the Receive Maximum 5") == 1
        assert not log.of("on_error") and not fake.packets("DISCONNECT")
    finally:
        c.close()


@pytest.mark.parametrize("packet", [b"\x00\x00", _wire.encode_subscribe(1, [("t", 0)]),
                                    b"\x62\x02\x00\x00", b"\xc0\x00", b"\xd0\x01\x00",
                                    b"\xd1\x00"],
                         ids=["reserved-type-0", "subscribe", "pubrel-id-0", "pingreq",
                              "pingresp-body", "pingresp-flags"])
@PROTOCOLS
def test_a_packet_no_broker_may_send_is_reported(fake: FakeBroker, protocol: int,
                                                 packet: bytes) -> None:
    """Before: paho dropped the connection with no ``on_error`` (a reserved type, a
    SUBSCRIBE), or a PUBREL with packet id 0 was answered with PUBCOMP 0."""
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(packet)
        errors = log.wait("on_error")
        assert errors[0].error_code in (0x81, 0x82)
        fake.wait_connections(2)
        assert not fake.packets("PUBCOMP")
        if protocol == 5:
            assert _disconnect_codes(fake) == [errors[0].error_code]
    finally:
        c.close()


@PROTOCOLS
def test_session_present_answering_clean_start_is_refused(fake: FakeBroker, protocol: int) -> None:
    fake.session_present = True
    c = _client(protocol, clean=True)
    log = _procs.EventLog(c)
    try:
        with pytest.raises(ConnectError, match="SessionPresent=1 answering Clean Start 1"):
            c.connect(fake.host, fake.port, timeout=5)
        assert log.of("on_error")[0].error_code == 0x82
        assert not c.connected
        if protocol == 5:
            assert _disconnect_codes(fake) == [0x82]
    finally:
        c.close()


# ------------------------------------------------------------------ messages too large to send


def test_message_over_mqtt_limit_is_refused_before_the_session(tmp_path: Any) -> None:
    c = mqttsession.Client(client_id=_procs.unique("big"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    try:
        huge = bytes(268_435_455)  # payload alone at the limit: the packet is over it
        with pytest.raises(UsageError, match="too large"):
            c.publish_data("t/big", 1, huge)
        del huge
        assert c.outgoing_messages == ()
        c.config("MaxMessageSize=1000")
        with pytest.raises(UsageError, match="MaxMessageSize=1000"):
            c.publish_data("t/big", 2, b"x" * 1000)
        with pytest.raises(UsageError, match="MaxMessageSize"):
            c.publish_data("t/big", 0, b"x" * 1000)
        c.publish_data("t/ok", 1, b"x" * 900)
        assert [m.topic for m in c.outgoing_messages] == ["t/ok"]
    finally:
        c.close()
    assert os.path.getsize(tmp_path / "s") < 10_000


def test_broker_maximum_packet_size(fake: FakeBroker) -> None:
    """MQTT 5 CONNACK Maximum Packet Size: a larger publish is refused; a held message that
    became too large (published before this broker's limit was known) is taken out with
    on_error naming it, and the messages behind it still go."""
    fake.maximum_packet_size = 500
    c = _client(5)
    log = _procs.EventLog(c)
    try:
        c.publish_data("t/a", 1, b"a" * 100)  # while disconnected: no limit known yet
        c.publish_data("t/b", 2, b"b" * 1000)
        c.publish_data("t/c", 1, b"c" * 100)
        c.connect(fake.host, fake.port)
        assert c.flush(5)
        assert [r.topic for r in fake.wait_for("PUBLISH", 2)] == ["t/a", "t/c"]
        errors = log.of("on_error")
        assert len(errors) == 1 and "'t/b'" in errors[0].description
        assert "Maximum Packet Size 500" in errors[0].description
        with pytest.raises(UsageError, match="Maximum Packet Size 500"):
            c.publish_data("t/d", 1, b"d" * 1000)
        c.publish_data("t/e", 1, b"e" * 100)
        assert c.flush(5)
    finally:
        c.close()


# ------------------------------------------------------------------ the reader: packets split


@PROTOCOLS
def test_packets_split_and_joined_anyhow_are_each_handled_once(fake: FakeBroker,
                                                               protocol: int) -> None:
    """The client reads whatever a recv call returns and handles each whole packet in it:
    packets cut at every kind of place (inside the Remaining Length too) and many in one read,
    up to one larger than a read (70 KB), arrive in order, each once, and are acknowledged."""
    import random

    rnd = random.Random(protocol)
    sizes = [0, 1, 60, 120, 127, 128, 300, 16_383, 16_384, 70_000] + [rnd.randrange(400)
                                                                      for _ in range(40)]
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        stream = b"".join(
            fake.publish(f"t/split/{i}", bytes([i]) * size, 1 if i % 2 else 0,
                         packet_id=i + 1 if i % 2 else 0)
            for i, size in enumerate(sizes))
        pos = 0
        while pos < len(stream):  # chunks of 1 to 300 bytes, a few large ones
            n = rnd.choice([1, 1, 2, 3, 5, 300, rnd.randrange(1, 300), 20_000])
            fake.send_raw(stream[pos:pos + n])
            pos += n
            if rnd.random() < 0.2:
                time.sleep(0.001)  # let the client read what it has: a part of a packet
        got = log.wait("on_message_in", len(sizes))
        assert [(e.topic, e.message) for e in got] == \
            [(f"t/split/{i}", bytes([i]) * size) for i, size in enumerate(sizes)]
        acks = fake.wait_for("PUBACK", len(sizes) // 2)
        assert [r.packet_id for r in acks] == [i + 1 for i in range(len(sizes)) if i % 2]
        assert log.of("on_error") == []
    finally:
        c.close()


@PROTOCOLS
def test_remaining_length_of_five_bytes_is_refused(fake: FakeBroker, protocol: int) -> None:
    """A Remaining Length longer than four bytes [MQTT-1.5.5] is a malformed packet: the
    connection is closed (MQTT 5: DISCONNECT 0x81 first) and reported; the client reconnects."""
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(b"\x30\xff\xff\xff\xff\x01")
        errors = log.wait("on_error")
        assert errors[0].error_code == 0x81 and "Remaining Length" in errors[0].description
        fake.wait_connections(2)
        if protocol == 5:
            assert _disconnect_codes(fake) == [0x81]
    finally:
        c.close()


@PROTOCOLS
def test_remaining_length_not_in_its_shortest_form_is_refused(fake: FakeBroker,
                                                               protocol: int) -> None:
    """A Remaining Length in more bytes than its value needs [MQTT-1.5.5-1] (here 200 in
    three) is malformed too: read with the wire codec's own decoder, as the proxy and the
    compat scenarios read it."""
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        fake.send_raw(b"\x30\xc8\x81\x00" + bytes(200))
        errors = log.wait("on_error")
        assert errors[0].error_code == 0x81 and "shortest form" in errors[0].description
        assert log.of("on_message_in") == []
        fake.wait_connections(2)
        if protocol == 5:
            assert _disconnect_codes(fake) == [0x81]
    finally:
        c.close()


@PROTOCOLS
def test_packets_sent_by_publishing_threads_arrive_whole_and_in_order(
        fake: FakeBroker, protocol: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On plain TCP a publishing thread sends its PUBLISH itself while nothing waits to be
    written; what the socket does not take (a small send buffer, payloads of 300 KB) is
    finished by the network thread, and what other threads queue meanwhile waits behind it.
    From three threads, big and small messages interleaved: each arrives whole, once, in
    order per thread and QoS, and is acknowledged."""
    import socket
    import threading

    from mqttsession._paho import PahoConnection

    direct: list[bool] = []
    send_now = PahoConnection._send_now

    def spy(self: PahoConnection, *args: Any) -> bool:
        direct.append(send_now(self, *args))
        return direct[-1]

    monkeypatch.setattr(PahoConnection, "_send_now", spy)
    c = _client(protocol, clean=True)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)
        c._driver.conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)

        def size(i: int) -> int:
            return 300_000 if i % 5 == 0 else 20 + i

        def burst(name: str) -> None:
            for i in range(40):
                c.publish_data(f"t/{name}/{i}", 1 + i % 2, bytes([i]) * size(i))

        threads = [threading.Thread(target=burst, args=(n,)) for n in ("a", "b", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.flush(30)
        got = fake.wait_for("PUBLISH", 120, timeout=30)
        assert len(got) == 120
        for name in ("a", "b", "c"):  # in order per thread and QoS [MQTT-4.6.0-2..-4]
            for qos in (1, 2):
                mine = [(r.topic, r.payload) for r in got
                        if r.topic and r.topic.startswith(f"t/{name}/") and r.qos == qos]
                assert mine == [(f"t/{name}/{i}", bytes([i]) * size(i))
                                for i in range(40) if 1 + i % 2 == qos]
        assert True in direct  # the publishing threads did send themselves
        assert len(log.wait("on_message_out", 120)) == 120
        assert log.of("on_error") == []
    finally:
        c.close()


@PROTOCOLS
def test_packets_written_together_arrive_whole_and_in_order(fake: FakeBroker,
                                                            protocol: int) -> None:
    """Packets waiting together are joined into one send: a burst of QoS 0 / 1 / 2 publishes
    from two threads, while acknowledgements for incoming messages are queued too, reaches the
    broker as whole packets, each thread's in its order (per QoS); every QoS 0 message is reported sent
    (on_message_out) and every QoS 1 / 2 one acknowledged."""
    import threading

    c = _client(protocol, clean=True)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port)

        def burst(name: str) -> None:
            for i in range(150):
                c.publish_data(f"t/{name}/{i}", i % 3, bytes([i]) * (i % 7 * 40))

        threads = [threading.Thread(target=burst, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        fake.send_raw(b"".join(fake.publish(f"t/in/{i}", b"x", 1, packet_id=i + 1)
                               for i in range(40)))  # their PUBACKs queue up with the rest
        for t in threads:
            t.join()
        assert c.flush(10)
        got = fake.wait_for("PUBLISH", 300)
        for name in ("a", "b"):  # in order per thread and QoS [MQTT-4.6.0-2..-4]
            for qos in (0, 1, 2):
                mine = [(r.topic, r.payload) for r in got
                        if r.topic and r.topic.startswith(f"t/{name}/") and r.qos == qos]
                assert mine == [(f"t/{name}/{i}", bytes([i]) * (i % 7 * 40))
                                for i in range(150) if i % 3 == qos]
        assert [r.packet_id for r in fake.wait_for("PUBACK", 40)] == list(range(1, 41))
        assert len(fake.wait_for("PUBREL", 100)) == 100
        sent = log.wait("on_message_out", 300)
        assert sum(1 for e in sent if e.qos == 0) == 100
        assert log.of("on_error") == []
    finally:
        c.close()


# ------------------------------------------------------------------ a PUBLISH before CONNACK


@PROTOCOLS
@pytest.mark.parametrize("qos", [1, 2])
def test_a_publish_before_connack_is_handled_after_it(fake: FakeBroker, protocol: int,
                                                      qos: int) -> None:
    """aedes 1.2 (with its Redis persistence) at times sends a queued PUBLISH before the
    CONNACK [MQTT-3.2.0-1]. Before: ``connect()`` failed, "not an MQTT broker there?", now and
    then at a restart. Now it is handled right after the CONNACK: delivered once and acked."""
    fake.session_present = True

    def early(fb: FakeBroker, rec: Any) -> None:
        if rec.type == "CONNECT":
            fb.send_raw(_wire.encode_publish("t/early", b"queued", qos=qos, packet_id=7,
                                             protocol=protocol))

    fake.on_packet = early
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port, 5)
        fake.wait_for("PUBACK" if qos == 1 else "PUBREC")
        if qos == 2:
            fake.send_raw(_wire.encode_ack(_wire.PacketType.PUBREL, 7))
            fake.wait_for("PUBCOMP")
        assert [e.message for e in log.wait("on_message_in")] == [b"queued"]
        assert not log.of("on_error") and not log.of("on_disconnected")
    finally:
        c.close()
