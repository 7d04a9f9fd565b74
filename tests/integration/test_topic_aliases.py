"""``ClientTopicAliasMax`` (IPWorks' setting): the MQTT 5 Topic Alias Maximum the CONNECT
sends, and the aliases the broker then sets on a connection resolved as its PUBLISHes arrive
(3.3.2.3.4): a message is delivered and stored with its topic name, never its alias. An alias
past the maximum, or one never set on this connection, closes it (DISCONNECT 0x94 / 0x82)."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

import mqttsession
from mqttsession import _wire
from mqttsession.properties import unpack_properties
from mqttsession.testing.fake_broker import FakeBroker

try:
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _client(maximum: int | None = 4) -> mqttsession.Client:
    c = mqttsession.Client(client_id=_procs.unique("alias"), clean_session=False,
                           protocol_version=5)
    c.config("ReconnectDelayMin=0.1")
    c.config("SessionExpInterval=600")
    if maximum is not None:
        c.config(f"ClientTopicAliasMax={maximum}")
    return c


def _publish(fake: FakeBroker, topic: str, alias: int, payload: bytes, qos: int = 0,
             pid: int | None = None) -> None:
    fake.send_raw(_wire.encode_publish(topic, payload, qos=qos, packet_id=pid, protocol=5,
                                       properties=[(0x23, alias), (0x03, "text/plain")]))


def test_the_connect_carries_the_maximum_and_0_sends_none(fake: FakeBroker) -> None:
    for maximum, expected in ((4, 4), (None, None), (0, None)):
        c = _client(maximum)
        try:
            c.connect(fake.host, fake.port, timeout=10)
            rec = fake.wait_for("CONNECT")[-1]
        finally:
            c.close()
        props = unpack_properties(rec.properties or b"", PacketTypes.CONNECT)
        assert props is not None
        assert getattr(props, "TopicAliasMaximum", None) == expected


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_an_alias_set_then_used_delivers_the_topic_name(fake: FakeBroker, qos: int) -> None:
    c = _client()
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port, timeout=10)
        _publish(fake, "site/north/temp", 3, b"21", qos, 1 if qos else None)
        _publish(fake, "", 3, b"22", qos, 2 if qos else None)
        if qos == 2:
            fake.wait_for("PUBREC", 2)
            assert sorted(m.topic for m in c.incoming_messages) == ["site/north/temp"] * 2
            for pid in (1, 2):  # (the stored message holds no alias: delivered on PUBREL)
                fake.send_raw(fake.ack(0x62, pid))
        got = log.wait("on_message_in", 2)
        assert [(e.topic, e.message) for e in got] == [("site/north/temp", b"21"),
                                                       ("site/north/temp", b"22")]
        for e in got:  # the other properties kept, the alias taken out
            props = unpack_properties(e.properties) if e.properties else None
            assert props is not None and props.json() == {"ContentType": "text/plain"}
        assert log.of("on_error") == []
    finally:
        c.close()


@pytest.mark.parametrize(("alias", "topic", "code", "words"), [
    (5, "t/x", 0x94, "1..4"), (0, "t/x", 0x94, "1..4"), (2, "", 0x82, "never set"),
], ids=["past-the-maximum", "zero", "never-set"])
def test_an_alias_the_client_cannot_take_closes_the_connection(
        fake: FakeBroker, alias: int, topic: str, code: int, words: str) -> None:
    c = _client()
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port, timeout=10)
        _publish(fake, topic, alias, b"bad", 1, 9)
        errors = log.wait("on_error")
        assert errors[0].error_code == code and words in errors[0].description
        _procs.wait_until(lambda: fake.packets("DISCONNECT"), what="the DISCONNECT")
        assert [r.reason_code for r in fake.packets("DISCONNECT")] == [code]
        assert log.of("on_message_in") == [] and not fake.packets("PUBACK")
    finally:
        c.close()


def test_a_new_connection_starts_with_no_alias_set(fake: FakeBroker) -> None:
    """An alias set on a connection is gone on the next one [MQTT-3.3.2-7]: there it names
    nothing until set again."""
    c = _client()
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port, timeout=10)
        _publish(fake, "t/first", 1, b"a")
        log.wait("on_message_in")
        fake.close_client()
        fake.wait_connections(2)
        log.wait("on_connected", 2)
        _publish(fake, "", 1, b"b")
        errors = log.wait("on_error")
        assert errors[0].error_code == 0x82 and "never set" in errors[0].description
        assert [e.message for e in log.of("on_message_in")] == [b"a"]
    finally:
        c.close()


def test_an_alias_set_again_names_its_new_topic(fake: FakeBroker) -> None:
    """A PUBLISH with a topic name and an alias already set maps the alias anew (3.3.2.3.4)."""
    c = _client()
    log = _procs.EventLog(c)
    try:
        c.connect(fake.host, fake.port, timeout=10)
        for topic, payload in (("t/a", b"1"), ("", b"2"), ("t/b", b"3"), ("", b"4")):
            _publish(fake, topic, 1, payload)
        got = log.wait("on_message_in", 4)
        assert [(e.topic, e.message) for e in got] == [("t/a", b"1"), ("t/a", b"2"),
                                                       ("t/b", b"3"), ("t/b", b"4")]
    finally:
        c.close()
