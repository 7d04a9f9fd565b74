"""What a SUBSCRIBE / UNSUBSCRIBE and a will may hold (a defect hunt's findings): shared
subscription filters as MQTT 5 shapes them, the broker's Maximum Packet Size, and a will
payload CONNECT can carry. Each was accepted before and cost the connection (or left the
Client half set up) later."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqttsession import Client, UsageError, _wire, codec
from mqttsession.actions import Write
from mqttsession.validation import validate_filter, validate_subscribe_filter

from .test_engine import connect, connected, make, packets

BAD_SHARES = ["$share/g", "$share//x", "$share/+/x", "$share/g/"]
GOOD_SHARES = ["$share/g/x/#", "$share/group-1/+", "$share/g/a/b"]


@pytest.mark.parametrize("flt", BAD_SHARES)
def test_a_shared_subscription_without_name_or_filter_is_refused(tmp_path: Path,
                                                                 flt: str) -> None:
    """[MQTT-4.8.2-1] a ShareName of at least one character, no '/', '+' or '#';
    [MQTT-4.8.2-2] followed by '/' and a filter."""
    c = Client(client_id="share", clean_session=False)
    with pytest.raises(UsageError, match="shared subscription"):
        c.subscribe(flt, 1)
    with pytest.raises(UsageError):
        c.subscribe(f"ok/+,{flt}", 1)
    assert '"subscriptions":[]' in c.save_session()
    c.close()


@pytest.mark.parametrize("flt", GOOD_SHARES)
def test_good_shared_subscriptions_are_taken(flt: str) -> None:
    assert validate_subscribe_filter(flt) == flt


def test_a_stored_shared_filter_of_the_old_shape_still_restores() -> None:
    """Files stay readable: what is read back is checked as MQTT's topic filter rule only."""
    e = make()
    e.state.subscriptions["$share/g"] = 1  # (stored by an earlier version)
    assert validate_filter("$share/g") == "$share/g"
    assert codec.decode(codec.encode(e.state)).subscriptions == {"$share/g": 1}


def test_a_filter_over_the_brokers_maximum_packet_size_is_refused() -> None:
    """MQTT 5: a packet over the Maximum Packet Size CONNACK gave must not be sent
    [MQTT-3.2.2-15]; mosquitto closes the connection (before: three closes, then the filter
    counted as refused, publishes stalled meanwhile)."""
    e = make(5)
    connect(e, max_packet=200)
    before = e.state.snapshot_fields()
    with pytest.raises(UsageError, match="Maximum Packet Size 200"):
        e.subscribe(["ok", "x" * 300], 1)
    with pytest.raises(UsageError, match="Maximum Packet Size 200"):
        e.unsubscribe(["x" * 300])
    assert e.state.snapshot_fields() == before
    # many filters that fit one by one go in as many packets as needed, each within it
    filters = [f"sensors/{i:03d}/temperature" for i in range(40)]
    out = e.subscribe(filters, 1)
    sizes = [len(w.packet) for w in out if isinstance(w, Write)]
    assert len(sizes) > 1 and max(sizes) <= 200
    sent = [f for p in packets(out, 5) for f in p.filters or ()]
    assert sent == filters
    unsub = [len(w.packet) for w in e.unsubscribe(filters) if isinstance(w, Write)]
    assert len(unsub) > 1 and max(unsub) <= 200


def test_without_a_maximum_packet_size_one_packet_goes() -> None:
    e = connected(5)
    assert len(packets(e.subscribe([f"s/{i}" for i in range(200)], 1), 5)) == 1


@pytest.mark.parametrize("message, match", [
    ({"not": "bytes"}, "bytes or str"),
    ("\ud800", "not valid UTF-8"),
    (b"x" * 65536, "at most 65535"),
], ids=["dict", "surrogate", "65536 bytes"])
def test_a_will_connect_cannot_carry_is_refused_and_leaves_no_connection(
        message: object, match: str) -> None:
    """Before: a raw TypeError / UnicodeEncodeError / struct.error from paho's CONNECT, and
    after the last one every ``connect()`` said "already connected" with a socket left open."""
    c = Client(client_id="will", clean_session=True)
    c.will_topic = "will/t"
    c.will_message = message  # type: ignore[assignment]
    with pytest.raises(UsageError, match=match):
        c.connect("127.0.0.1", 1, timeout=0.5)
    c.will_message = b"fits"
    with pytest.raises(Exception) as info:  # port 1: refused, not "already connected"
        c.connect("127.0.0.1", 1, timeout=0.5)
    assert "already connected" not in str(info.value)
    c.close()


def test_encode_subscribe_sizes_match_the_estimate() -> None:
    """The split counts a filter as 2 + its UTF-8 + 1 option byte, plus at most 8 bytes a
    packet: never under the encoder's size."""
    for n in (1, 10, 100):
        filters = [(f"f/{i}/é", 1) for i in range(n)]
        real = len(_wire.encode_subscribe(7, filters, protocol=5))
        assert real <= 8 + sum(2 + len(f.encode()) + 1 for f, _ in filters)
