"""What ``validate_publish_topic`` (and ``validate_subscribe_filter``) refuses is what mosquitto
refuses (defect D2): a PUBLISH (or SUBSCRIBE) whose topic holds a control character or a
non-character costs the connection, one with a character next to them goes through; the
session refuses the first kind up front, so the messages after it still flow."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqttsession
from mqttsession import UsageError
from mqttsession.validation import validate_publish_topic, validate_subscribe_filter

try:  # tests/integration may or may not be a package
    from ._procs import EventLog, unique
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import EventLog, unique  # type: ignore[no-redef]

REFUSED = ["\x01", "\x7f", "\x85", "\ufdd0", "\ufffe", "\U0010ffff"]
TAKEN = ["\ufeff", "\u00a0", "\ufdf0", "\U0001f600"]


def _broker_answers(mosquitto: Any, send: Callable[[mqtt.Client], object],
                    answer: str) -> bool:
    """Whether mosquitto answers what ``send`` sends (raw paho, no checks): ``answer`` is the
    paho callback (``on_publish``, ``on_subscribe``) that says so."""
    acked, lost = threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("raw"))
    setattr(c, answer, lambda *a: acked.set())
    c.on_disconnect = lambda *a: lost.set()
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    try:
        send(c)
        for _ in range(50):
            if acked.wait(0.1) or lost.is_set():
                break
        return acked.is_set()
    finally:
        c.disconnect()
        c.loop_stop()


# what the session checks, what paho sends to mosquitto, the callback of mosquitto's answer
_KINDS: dict[str, tuple[Callable[[object], str], Callable[[mqtt.Client, str], object], str]] = {
    "topic": (validate_publish_topic, lambda c, t: c.publish(t, b"x", 1), "on_publish"),
    # a subscription is sent again at every reconnect: one mosquitto refuses would cost every
    # connection after it
    "filter": (validate_subscribe_filter, lambda c, t: c.subscribe(t + "/#", 1), "on_subscribe"),
}


@pytest.mark.parametrize("kind", list(_KINDS))
@pytest.mark.parametrize("char", REFUSED + TAKEN, ids=lambda ch: f"U+{ord(ch):04X}")
def test_the_session_refuses_what_mosquitto_refuses(mosquitto: Any, char: str,
                                                    kind: str) -> None:
    check, send, answer = _KINDS[kind]
    topic = f"mqs/{unique('odd')}/{char}"
    try:
        check(topic)
        refused = False
    except UsageError:
        refused = True
    assert refused == (not _broker_answers(mosquitto, lambda c: send(c, topic), answer))
    assert refused == (char in REFUSED)


def test_a_refused_topic_leaves_the_queue_flowing(mosquitto: Any) -> None:
    c = mqttsession.Client(client_id=unique("gw"), clean_session=False)
    log = EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        with pytest.raises(UsageError):
            c.publish_data("mqs/t/\x7f", 1, b"poison")
        c.publish_data(f"mqs/{unique('t')}", 1, b"good")
        assert c.flush(10)
        assert not log.of("on_disconnected")
    finally:
        c.close()
