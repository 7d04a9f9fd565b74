"""What the application may hand to a session: topic names, topic filters, QoS levels, and
the size of the PUBLISH a message makes. Pure; errors are ``UsageError``."""

from __future__ import annotations

import math
import re
from typing import Final, Iterable

from .errors import TransitionError, UsageError
from .records import MAX_EXPIRY

__all__ = ["MAX_REMAINING_LENGTH", "check_expiry", "check_text", "check_sendable_text", "check_time", "MAX_TOPIC_BYTES", "publish_packet_size", "validate_filter",
           "validate_publish_topic", "validate_subscribe_filter", "will_payload", "validate_qos", "validate_topic"]

MAX_TOPIC_BYTES: Final = 65535

# Control characters and non-characters: a UTF-8 string SHOULD NOT hold them and a server MAY
# treat them as malformed (MQTT 3.1.1 1.5.3, MQTT 5 1.5.4, no statement id); mosquitto does (it
# drops the connection), so a stored message holding one would block the outgoing queue for good.
_UNSENDABLE: Final = re.compile(
    "[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000)) + "]")
_GOOD_TOPICS: set[str] = set()  # topic names found valid and sendable (a bounded memo)
_GOOD_TOPICS_MAX: Final = 4096


def topic_bytes(topic: str) -> int:
    """A topic's size in UTF-8, what MaxQueuedBytes counts (its length when it is ASCII)."""
    return len(topic) if topic.isascii() else len(topic.encode("utf-8"))


def validate_qos(qos: object, allowed: Iterable[int] = (0, 1, 2)) -> int:
    """Return ``qos`` if it is one of ``allowed``, else raise ``UsageError``."""
    if type(qos) is not int or qos not in tuple(allowed):
        raise UsageError(f"qos must be one of {tuple(allowed)}, got {qos!r}")
    return qos


def _check_utf8(what: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise UsageError(f"{what} must be str, got {type(text).__name__}")
    if not text:
        raise UsageError(f"{what} must not be empty")
    if "\x00" in text:
        raise UsageError(f"{what} must not contain U+0000")  # [MQTT-1.5.3-2]
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} is not valid UTF-8: {exc}") from None  # [MQTT-1.5.3-1]
    if len(raw) > MAX_TOPIC_BYTES:
        raise UsageError(f"{what} is longer than {MAX_TOPIC_BYTES} bytes")
    return raw


def validate_topic(topic: object) -> str:
    """A topic name as MQTT allows it: non-empty UTF-8, no wildcards [MQTT-3.3.2-2] (what a
    record or a received message may hold; ``validate_publish_topic`` for a new message)."""
    if type(topic) is str and topic in _GOOD_TOPICS:
        return topic  # the same few topics are published again and again
    _check_topic(topic)
    assert isinstance(topic, str)
    if _sendable(topic):
        _remember(topic)
    return topic


def validate_publish_topic(topic: object) -> str:
    """A topic name to publish to: ``validate_topic``'s, and no control character or
    non-character, which a broker may refuse (MQTT 5 1.5.4; U+0000: [MQTT-1.5.4-2])."""
    if type(topic) is str and topic in _GOOD_TOPICS:
        return topic
    _check_topic(topic)
    assert isinstance(topic, str)
    _require_sendable("topic", topic)
    _remember(topic)
    return topic


def check_sendable_text(what: str, text: object) -> None:
    """A UTF-8 string field of a message to publish (a property's): no U+0000
    [MQTT-1.5.4-2], no control character or non-character (``UsageError``)."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be str, got {type(text).__name__}")
    _require_sendable(what, text)


def _require_sendable(what: str, text: str) -> None:
    """``UsageError`` naming the first control character or non-character (or U+0000)."""
    if "\x00" in text or not _sendable(text):
        bad = _UNSENDABLE.search(text)
        code = ord(bad.group()) if bad is not None and "\x00" not in text else 0
        raise UsageError(f"{what} {text!r:.60} contains U+{code:04X}: control characters and"
                         " non-characters are refused by brokers")


def _check_topic(topic: object) -> None:
    _check_utf8("topic", topic)
    assert isinstance(topic, str)
    if "+" in topic or "#" in topic:
        raise UsageError(f"topic {topic!r} must not contain wildcards")  # [MQTT-3.3.2-2]


def _sendable(topic: str) -> bool:
    """No control character or non-character: ``isprintable`` (C speed) is false for every
    one of them (categories Cc, Cn), so only a topic it refuses is searched."""
    return topic.isprintable() or _UNSENDABLE.search(topic) is None


def _remember(topic: str) -> None:
    if len(_GOOD_TOPICS) >= _GOOD_TOPICS_MAX:
        _GOOD_TOPICS.clear()
    _GOOD_TOPICS.add(topic)


def validate_filter(topic_filter: object) -> str:
    """A topic filter: '#' only as the whole last level, '+' only as a whole level [MQTT-4.7.1]."""
    _check_utf8("topic filter", topic_filter)
    assert isinstance(topic_filter, str)
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise UsageError(f"topic filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise UsageError(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def split_filters(topic_filter: str, delimiter: str) -> list[str]:
    """The filters of a ``subscribe`` / ``unsubscribe`` string: one filter is taken as given
    (spaces are part of a topic); in a list, spaces around each are dropped ("a, b")."""
    if delimiter not in topic_filter:
        return [topic_filter]
    return [f.strip() for f in topic_filter.split(delimiter)]


def validate_subscribe_filter(topic_filter: object) -> str:
    """A filter to send in a SUBSCRIBE / UNSUBSCRIBE: ``validate_filter``'s, and no control
    character or non-character (a broker may drop the connection: a stored subscription would
    fail every reconnect; MQTT 5 1.5.4)."""
    validate_filter(topic_filter)
    assert isinstance(topic_filter, str)
    _require_sendable("topic filter", topic_filter)
    if topic_filter.startswith("$share/"):  # a shared subscription: $share/{name}/{filter}
        _, name, *rest = topic_filter.split("/", 2)
        if not name or "+" in name or "#" in name or not rest or not rest[0]:
            raise UsageError(f"shared subscription {topic_filter!r}: expected $share/NAME/FILTER,"
                             " NAME not empty and without wildcards [MQTT-4.8.2-1, 4.8.2-2]")
    return topic_filter


def text_payload(text: str, what: str = "message") -> bytes:
    """A text payload as UTF-8 (``UsageError`` for text that has none: lone surrogates)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} is not valid UTF-8: {exc}") from None


def will_payload(message: object) -> bytes:
    """A will message's payload: bytes, or text (UTF-8); at most 65,535 bytes, its length
    being two bytes in CONNECT (MQTT 3.1.3.3) (``UsageError``)."""
    if isinstance(message, str):
        message = text_payload(message, "will_message")
    if not isinstance(message, (bytes, bytearray)):
        raise UsageError(f"will_message must be bytes or str, got {type(message).__name__}")
    if len(message) > 65535:
        raise UsageError(f"will_message is {len(message)} bytes; at most 65535")
    return bytes(message)


MAX_REMAINING_LENGTH: Final = 268_435_455  # the largest Remaining Length MQTT can encode


def publish_packet_size(topic: str, payload_size: int, qos: int, properties_size: int = 0,
                        mqtt5: bool = False) -> tuple[int, int]:
    """(Remaining Length, whole packet size) of a PUBLISH, in bytes."""
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + payload_size
    if mqtt5:
        remaining += properties_size + _varint_size(properties_size)
    return remaining, 1 + _varint_size(remaining) + remaining


def _varint_size(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def check_time(what: str, at: object) -> float:
    """A record's time: a finite number (``TransitionError``)."""
    if type(at) not in (int, float) or not math.isfinite(at):  # type: ignore[arg-type]
        raise TransitionError(f"{what} must be a finite time, got {at!r}")
    return float(at)  # type: ignore[arg-type]


def check_text(what: str, text: object, optional: bool = False) -> None:
    """A record's text: UTF-8 without U+0000 (``TransitionError``)."""
    if optional and text is None:
        return
    if not isinstance(text, str) or "\x00" in text:
        raise TransitionError(f"{what} must be text without U+0000, got {text!r:.40}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TransitionError(f"{what} is not valid UTF-8") from None


def check_expiry(exp: object) -> None:
    """A Session Expiry Interval: None or 0..0xFFFFFFFF (``UsageError``)."""
    if exp is not None and (type(exp) is not int or not 0 <= exp <= MAX_EXPIRY):
        raise UsageError(f"session expiry interval must be 0..{MAX_EXPIRY}, got {exp!r}")
