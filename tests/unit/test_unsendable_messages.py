"""A message no broker takes is refused before it enters the session (defect D2), no broker
needed:

* a topic holding a control character (U+0001..U+001F, U+007F..U+009F) or a non-character
  (U+FDD0..U+FDEF, U+nFFFE / U+nFFFF): mosquitto drops the connection over each (MQTT 5 1.5.4
  lets a server treat them as malformed), so a stored one blocked the outgoing queue for good;
* ``properties`` that are not a PUBLISH's (``Properties(PacketTypes.CONNECT)``), or carry a
  Subscription Identifier [MQTT-3.3.4-6], a Topic Alias (one connection's mapping
  [MQTT-3.3.2-7], a stored message is resent on later ones), a string property with such a
  character, a Response Topic with wildcards [MQTT-3.3.2-14].

``publish_data`` / ``publish_message`` / ``publish_many`` raise ``UsageError`` and the state
file is not written. What the session reads back (a state file, a received message) is still
checked only as MQTT requires (``validate_topic``): a session stored before stays readable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import Client, PublishRequest, UsageError, unpack_properties
from mqttsession.validation import validate_publish_topic, validate_topic

UNSENDABLE = ["\x01", "\x1f", "\x7f", "\x85", "\x9f", "\ufdd0", "\ufdef", "\ufffe", "\uffff",
              "\U0001fffe", "\U0010ffff"]
SENDABLE = ["\ufeff", "\u00a0", "\ufdcf", "\ufdf0", "\ufffd", "\U0001f600", " ", "~", "é"]


def _files(where: Path) -> dict[str, bytes]:
    return {p.relative_to(where).as_posix(): p.read_bytes()
            for p in sorted(where.rglob("*")) if p.is_file()}


def _client(tmp_path: Path, version: int = 4) -> Client:
    c = Client(client_id="poison", clean_session=False, protocol_version=version)
    c.config(f"SessionStateFile={tmp_path / 'gw.state'}")
    c.restore_session("")
    c.publish_data("t/before", 1, b"held")
    return c


PUBLISHES: dict[str, Callable[[Client, str, Properties | None], object]] = {
    "publish_data": lambda c, t, p: c.publish_data(t, 1, b"x", properties=p),
    "publish_message": lambda c, t, p: c.publish_message(t, 2, "x", properties=p),
    "publish_many": lambda c, t, p: c.publish_many(
        [("t/ok", 1, b"first"), PublishRequest(t, 1, b"x", properties=p)]),
}


@pytest.mark.parametrize("char", UNSENDABLE, ids=lambda ch: f"U+{ord(ch):04X}")
@pytest.mark.parametrize("call", list(PUBLISHES))
def test_a_topic_a_broker_refuses_is_not_stored(tmp_path: Path, char: str, call: str) -> None:
    c = _client(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=f"U\\+{ord(char):04X}: control characters"):
        PUBLISHES[call](c, f"t/{char}/x", None)
    assert _files(tmp_path) == before  # nothing written: not even publish_many's good first
    assert [m.topic for m in c.outgoing_messages] == ["t/before"]
    c.close()


@pytest.mark.parametrize("char", SENDABLE, ids=lambda ch: f"U+{ord(ch):04X}")
def test_other_characters_are_still_taken(tmp_path: Path, char: str) -> None:
    c = _client(tmp_path)
    c.publish_data(f"t/{char}", 1, b"x")
    assert [m.topic for m in c.outgoing_messages] == ["t/before", f"t/{char}"]
    c.close()


def test_topics_read_back_are_checked_as_mqtt_requires_only() -> None:
    """A state file, a received message: their topics are MQTT's, whatever a broker takes; a
    topic found valid that way does not pass for sendable (one memo, of sendable topics)."""
    for topic in ("r/\x07", "r/\ufffe"):
        for _ in range(2):
            assert validate_topic(topic) == topic
            with pytest.raises(UsageError):
                validate_publish_topic(topic)
    assert validate_publish_topic("r/ok") == validate_topic("r/ok") == "r/ok"


def _props(kind: int = PacketTypes.PUBLISH, **values: object) -> Properties:
    p = Properties(kind)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(p, name, value)
    return p


BAD_PROPERTIES: dict[str, tuple[Callable[[], object], str]] = {
    "connect": (lambda: _props(PacketTypes.CONNECT, SessionExpiryInterval=10),
                "properties are for Connect, not PUBLISH"),
    "topic alias": (lambda: _props(TopicAlias=1), "must not carry a TopicAlias"),
    "subscription id": (lambda: _props(SubscriptionIdentifier=5),
                        "must not carry a SubscriptionIdentifier"),
    "content type": (lambda: _props(ContentType="a\x01"), "ContentType .* U\\+0001"),
    "response topic": (lambda: _props(ResponseTopic="a/\ufffe"), "ResponseTopic .* U\\+FFFE"),
    "response wildcard": (lambda: _props(ResponseTopic="a/#"), "must not contain wildcards"),
    "user property": (lambda: _props(UserProperty=("k", "v\x85")), "UserProperty .* U\\+0085"),
    "not properties": (lambda: {"ContentType": "x"}, "must be paho Properties, got dict"),
}


@pytest.mark.parametrize("kind", list(BAD_PROPERTIES))
@pytest.mark.parametrize("call", list(PUBLISHES))
def test_properties_a_stored_message_cannot_carry_are_refused(tmp_path: Path, kind: str,
                                                              call: str) -> None:
    c = _client(tmp_path, version=5)
    make, match = BAD_PROPERTIES[kind]
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=match):
        PUBLISHES[call](c, "t/a", make())  # type: ignore[arg-type]
    assert _files(tmp_path) == before
    assert [m.topic for m in c.outgoing_messages] == ["t/before"]
    c.close()


def test_publish_properties_are_still_taken(tmp_path: Path) -> None:
    c = _client(tmp_path, version=5)
    good = _props(ContentType="text/plain", ResponseTopic="r/é", CorrelationData=b"\x01",
                  UserProperty=[("k", "v é")], MessageExpiryInterval=60,
                  PayloadFormatIndicator=1)
    c.publish_data("t/a", 1, b"x", properties=good)
    back = unpack_properties(c.outgoing_messages[-1].properties)
    assert getattr(back, "ResponseTopic", None) == "r/é"
    assert getattr(back, "UserProperty", None) == [("k", "v é")]
    c.close()


SUBSCRIPTION_CALLS: dict[str, Callable[[Client, str], object]] = {
    "subscribe": lambda c, f: c.subscribe(f, 1),
    "subscribe a list": lambda c, f: c.subscribe(f"ok/+,{f}", 1),
    "unsubscribe": lambda c, f: c.unsubscribe(f),
}


@pytest.mark.parametrize("char", UNSENDABLE[::2], ids=lambda ch: f"U+{ord(ch):04X}")
@pytest.mark.parametrize("call", list(SUBSCRIPTION_CALLS))
def test_a_filter_a_broker_refuses_is_not_stored(tmp_path: Path, char: str, call: str) -> None:
    """A subscription stored with such a filter would be sent again at every reconnect, and
    mosquitto drops the connection at each (``tests/integration/test_unsendable_topics.py``)."""
    c = _client(tmp_path)
    c.subscribe("kept/#", 1)
    text = c.save_session()
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=f"U\\+{ord(char):04X}: control characters"):
        SUBSCRIPTION_CALLS[call](c, f"f/{char}/+")
    assert _files(tmp_path) == before
    assert c.save_session() == text
    c.close()


@pytest.mark.parametrize("char", UNSENDABLE[1::2], ids=lambda ch: f"U+{ord(ch):04X}")
def test_a_will_topic_a_broker_refuses_fails_connect(tmp_path: Path, char: str) -> None:
    c = _client(tmp_path)
    c.will_topic = f"will/{char}"
    with pytest.raises(UsageError, match=f"U\\+{ord(char):04X}: control characters"):
        c.connect("127.0.0.1", 1, timeout=0.5)  # refused before any socket is opened
    assert not c.connected
    c.close()


def test_a_message_expiry_interval_of_0_is_refused(tmp_path: Path) -> None:
    """Accepted before, then dropped as "expired" without ever being sent (mosquitto reads 0
    as no expiry; here it expired the instant it was stored)."""
    c = _client(tmp_path, version=5)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 0
    with pytest.raises(UsageError, match="MessageExpiryInterval 0"):
        c.publish_data("t/zero", 1, b"x", properties=props)
    props.MessageExpiryInterval = 1
    c.publish_data("t/one", 1, b"x", properties=props)
    assert [m.topic for m in c.outgoing_messages] == ["t/before", "t/one"]
    c.close()
