"""``DisconnectReasonCode`` (IPWorks' setting): the reason code ``disconnect()`` sends in an MQTT 5
DISCONNECT. ``4`` (Disconnect with Will Message) has the broker publish the will, which a normal
DISCONNECT discards [MQTT-3.14.4-3]; MQTT 3.1.1's DISCONNECT carries no reason code."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from mqttsession import Client
from mqttsession.testing.fake_broker import FakeBroker

try:
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def _will_after_disconnect(mosquitto: Any, version: int, setting: str | None,
                           expect: bool) -> list[bytes]:
    """The payloads an observer of the will topic got after a clean ``disconnect()`` (waited
    for when ``expect``)."""
    topic = f"will/{uuid.uuid4().hex[:8]}"
    c = Client(client_id=f"w-{uuid.uuid4().hex[:8]}", protocol_version=version,
               will_topic=topic, will_message=b"gone")
    if setting is not None:
        c.config(f"DisconnectReasonCode={setting}")
    with _procs.observed(mosquitto.host, mosquitto.port, topic) as wills:
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        c.disconnect()
        if expect:
            _procs.wait_until(lambda: bool(wills), 10, "the will")
        else:
            time.sleep(0.5)  # (a will published after a DISCONNECT comes within this)
        got = list(wills)
    c.close()
    return got


@pytest.mark.parametrize("setting", ["4", "0x04"])
def test_reason_4_has_mosquitto_publish_the_will(mosquitto: Any, setting: str) -> None:
    assert _will_after_disconnect(mosquitto, 5, setting, True) == [b"gone"]


@pytest.mark.parametrize("setting", [None, "0"])
def test_a_normal_disconnect_discards_the_will(mosquitto: Any, setting: str | None) -> None:
    assert _will_after_disconnect(mosquitto, 5, setting, False) == []


def test_mqtt311_sends_no_reason_code_and_the_will_is_discarded(mosquitto: Any) -> None:
    assert _will_after_disconnect(mosquitto, 4, "4", False) == []


@pytest.mark.parametrize(("version", "code", "expiry"),
                         [(5, 0x04, None), (5, 0x98, None), (5, 0x04, 60), (5, 0, None),
                          (4, 0x04, None)])
def test_the_disconnect_packet_carries_the_code(fake: FakeBroker, version: int, code: int,
                                                expiry: int | None) -> None:
    """On the wire: the code (with the Session Expiry Interval beside it when one is set);
    none for 0 (paho's shortest form) and for MQTT 3.1.1 (a 2-byte DISCONNECT)."""
    c = Client(client_id="reason", clean_session=False, protocol_version=version)
    if expiry is not None:
        c.config(f"SessionExpInterval={expiry}")
    c.config(f"DisconnectReasonCode={code}")
    c.connect(fake.host, fake.port, timeout=10)
    c.disconnect()
    rec = fake.wait_for("DISCONNECT")[0]
    c.close()
    if version == 4:
        assert (rec.length, rec.reason_code) == (2, None)
    elif code == 0 and expiry is None:
        assert rec.reason_code in (None, 0)
    else:
        assert rec.reason_code == code
        assert rec.length > (3 if expiry is not None else 2)
