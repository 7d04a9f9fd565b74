"""Issue 12, point 4: a held message whose MQTT 5 Message Expiry Interval passed while it
waited is never sent (``on_message_dropped``, reason ``expired``); one that is sent carries
what is left of it [MQTT-3.3.2-6]; a clock that went back expires nothing early. The time a
message was published is durable (journal record "b", snapshot format 3)."""

from __future__ import annotations

from pathlib import Path

from mqttsession import Client, MessageDroppedEvent, _wire
from mqttsession.engine import Engine, EngineSettings, Notify, Persist, Write
from mqttsession.records import decode_record, encode_record
from mqttsession.state import Event, SessionState, Stepped


def _expiring(seconds: int) -> bytes:
    return _wire.pack_properties([(0x02, seconds), (0x03, "text/plain")])


def _engine() -> Engine:
    return Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                                 protocol_version=5))


def _connect(e: Engine, now: float) -> list[object]:
    e.connecting("b:1")
    e.connack(0, "ok", False, 65535, None, now)
    return list(e.resume())


def _sent(actions: list[object]) -> dict[str, _wire.Packet]:
    out = {}
    for a in actions:
        if isinstance(a, Write) and a.kind is _wire.PacketType.PUBLISH:
            p = _wire.decode_packet(a.packet, 5)
            out[p.topic or ""] = p
    return out


def test_expired_while_waiting_is_never_sent_and_the_rest_carry_what_is_left() -> None:
    e = _engine()
    e.publish("t/short", b"a", 1, False, _expiring(3), now=1000.0)
    e.publish("t/long", b"b", 2, False, _expiring(10), now=1000.0)
    e.publish("t/none", b"c", 1, False, now=1000.0)
    actions = _connect(e, 1005.5)
    sent = _sent(actions)
    assert set(sent) == {"t/long", "t/none"}
    assert sent["t/long"].prop(0x02) == 5 and sent["t/long"].prop(0x03) == "text/plain"
    assert sent["t/none"].properties == b"\x00"
    gone = [a for a in actions if isinstance(a, Persist) and a.records
            and isinstance(a.records[0], Stepped) and a.records[0].event is Event.EXPIRED]
    assert len(gone) == 1 and gone[0].records[0].seq == 1
    assert [a.event for a in actions if isinstance(a, Notify) and a.name == "on_message_dropped"] \
        == [MessageDroppedEvent("t/short", 1, 1, "expired")]
    stats = e.queue_stats(1006.0)
    assert (stats.expired, stats.dropped, stats.messages) == (1, 0, 2)


def test_a_clock_that_went_back_expires_nothing_early() -> None:
    e = _engine()
    e.publish("t", b"a", 1, False, _expiring(3), now=1000.0)
    sent = _sent(_connect(e, 900.0))  # the wall clock jumped back 100 s
    assert sent["t"].prop(0x02) == 3


def test_a_resend_carries_what_is_left_too() -> None:
    for present, dup in ((True, True), (False, False)):
        e = _engine()
        e.publish("t", b"a", 1, False, _expiring(60), now=1000.0)
        assert _sent(_connect(e, 1001.0))["t"].prop(0x02) == 59
        e.connection_lost(1010.0, 0x80, "lost")
        e.connecting("b:1")
        e.connack(0, "ok", present, 65535, None, 1040.0)
        again = _sent(e.resume())["t"]  # resent (DUP) or, the session lost, published anew
        assert again.dup is dup and again.prop(0x02) == 20


def test_the_publish_time_is_durable(tmp_path: Path) -> None:
    state = SessionState(client_id="c")
    rec = state.accept("t", b"x", 1, accepted_at=1234.5)
    data = encode_record(rec)
    assert data[:1] == b"b" and decode_record(data) == rec
    c = Client(client_id="gw", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.publish_data("t", 1, b"x")
    at = c._engine.state.outgoing[1].accepted_at
    assert at > 0
    del c
    d = Client(client_id="gw", protocol_version=5)
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert d._engine.state.outgoing[1].accepted_at == at  # from the journal
    d.save_session()  # and through the snapshot
    d.close()
    e = Client(client_id="gw", protocol_version=5)
    e.config(f"SessionStateFile={tmp_path / 's'}")
    e.restore_session("")
    assert e._engine.state.outgoing[1].accepted_at == at
    age = e.queue_stats().oldest_age
    assert age is not None and age >= 0
    e.close()


def test_records_and_snapshots_of_the_previous_format_are_read() -> None:
    """An "a" record (no time) and a format 2 snapshot: the time is 0, unknown; nothing
    expires by it and the queue's age is not known."""
    import struct

    from mqttsession import codec

    old = struct.pack(">cQHBBHII", b"a", 1, 1, 1, 0, 1, 1, 0) + b"t" + b"x"
    rec = decode_record(old)
    assert rec.message.accepted_at == 0.0  # type: ignore[union-attr]
    state = SessionState(client_id="c")
    state.apply(rec)
    v2 = codec.state_to_obj(state, version=2)
    assert len(v2["outgoing"][0]) == 8
    assert codec.decode(codec.encode(state)).outgoing[1].accepted_at == 0.0
    e = Engine(EngineSettings(), SessionState(client_id="c", protocol_version=5))
    e.state.accept("t", b"x", 1, False, _expiring(1))  # as an older file had it: no time
    assert e.queue_stats(5000.0).oldest_age is None
    assert _sent(_connect(e, 5000.0))["t"].prop(0x02) == 1  # not expired by a time unknown


def test_a_message_whose_interval_ran_out_on_its_way_is_resent_with_one_second() -> None:
    """A message already sent whose Message Expiry Interval ran out before its resend goes
    again with 1 s left, never 0 (which a broker may read as no expiry at all; a mutation
    hunt: ``max(left, 0)`` passed every test)."""
    from mqttsession.expiry import MESSAGE_EXPIRY_INTERVAL, with_remaining  # noqa: PLC0415

    props = _wire.pack_properties([(MESSAGE_EXPIRY_INTERVAL, 60), (0x03, "text/plain")])
    for left, sent in ((0, 1), (-5, 1), (1, 1), (42, 42)):
        assert list(_wire.parse_properties(with_remaining(props, left))) == [
            (MESSAGE_EXPIRY_INTERVAL, sent), (0x03, "text/plain")]
