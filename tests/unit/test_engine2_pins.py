"""The engine's rules a second mutation hunt found no test held (each test here fails with
the mutation of engine.py it names: a guard dropped, a comparison flipped, a statement made
to do nothing). The engine is pure: times are passed in."""

from __future__ import annotations

import dataclasses

import pytest

from mqttsession import _wire, codec
from mqttsession._wire import PacketType
from mqttsession.engine import ConnState, Deliver, Engine, EngineSettings, Persist
from mqttsession.errors import ProtocolViolation, UsageError
from mqttsession.events import DisconnectedEvent, MessageEvent, SessionLostEvent
from mqttsession.records import Activity, ClockOffset, Orphaned, OrphanReleased
from mqttsession.state import Reserved, SessionState

try:  # tests/unit may or may not be a package
    from .test_engine import (_answer, _on, _recovered_state, ack_in, connect, connected,
                              make, notified, packets, publish, publish_in)
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_engine import (_answer, _on, _recovered_state, ack_in,  # type: ignore[no-redef]
                             connect, connected, make, notified, packets, publish, publish_in)


def _records(actions: list[object]) -> list[object]:
    return [r for a in actions if isinstance(a, Persist) for r in a.records]


def _delivered(actions: list[object]) -> list[MessageEvent]:
    return [a.message for a in actions if isinstance(a, Deliver)]


# ------------------------------------------------------------------ connection, moves


def test_a_server_the_driver_found_is_the_sessions_own_is_no_move() -> None:
    """``same_as``: the session's recorded server reached under another name is no move, so a
    held QoS 2 message waits for its PUBREL instead of being delivered early (engine.py
    ``_moving``: ``and prev != self.same_as`` dropped)."""
    e = connected()
    e.receive(publish_in(7, 2, b"seven"))
    e.connection_lost(0.0, 0, "gone")
    e.reset()
    e.same_as = "broker:1883"
    e.connecting("alias:1883")
    out = e.connack(0, "", True, 65535, None, 0.0) + e.lost_incoming() + e.resume()
    assert _delivered(out) == []
    got = e.receive(ack_in(PacketType.PUBREL, 7))
    assert [m.message for m in _delivered(got)] == [b"seven"]


def test_a_return_to_a_server_that_lost_the_session_sends_no_unsubscribe() -> None:
    """Back on A with SessionPresent=0: A holds no subscription, so what was dropped
    elsewhere is not UNSUBSCRIBEd there; only the session's subscriptions go again
    [MQTT-3.2.2-5] (engine.py ``_moving``: ``self.session_present and`` dropped)."""
    e = make()
    _answer(e, _on(e, "a:1883", False) + packets(e.subscribe(["s/one", "s/old"], 1)))
    _answer(e, _on(e, "b:1883", False))
    _answer(e, packets(e.unsubscribe(["s/old"])))
    back = _on(e, "a:1883", False)
    assert [(p.type, p.filters) for p in back] == [(PacketType.SUBSCRIBE, ("s/one",))]


def test_a_reservation_restored_in_on_connected_ends_when_the_session_was_lost() -> None:
    """A session with a recovered packet-id reservation restored in ``on_connected`` of a
    CONNACK with SessionPresent=0: the broker holds no flow of ours, so the reservation ends
    (the DISCONNECT's records clear it: ``Reserved(0, 0)``) (engine.py ``resume``: the
    ``_end_release()`` for ``not self.session_present`` made to do nothing)."""
    e = Engine(EngineSettings(reserve_packet_ids=4),
               SessionState(client_id="c", clean_session=False))
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, 0.0)
    e.restore(_recovered_state(), 0.0)  # in on_connected
    out = e.lost_incoming() + e.resume()
    assert not any(p.type is PacketType.PUBREL for p in packets(out))
    assert Reserved(0, 0) in _records(e.disconnect(1.0))


def test_a_lost_connection_reports_0x80_when_the_broker_gave_no_reason() -> None:
    """``on_disconnected`` of a lost connection never says 0 (a clean close's code): without
    a reason code it is 0x80 (engine.py ``connection_lost``: ``reason_code or 0x80`` ->
    ``reason_code``)."""
    e = connected()
    out = e.connection_lost(1.0, 0, "reset by peer")
    [ev] = notified(out, "on_disconnected")
    assert isinstance(ev, DisconnectedEvent) and ev.status_code == 0x80


def test_the_close_after_disconnect_is_a_clean_one() -> None:
    """``disconnect()`` then the connection ends: ``on_disconnected`` with 0 and the engine
    disconnected for good, no ``Disconnected`` record again (engine.py ``connection_lost``:
    the ``CLOSING`` branch skipped)."""
    e = connected()
    e.disconnect(1.0)
    out = e.connection_lost(2.0, 0, "closed")
    assert notified(out, "on_disconnected") == [DisconnectedEvent(0, "OK")]
    assert e.conn is ConnState.DISCONNECTED


def test_disconnect_expiry_is_none_on_mqtt_311() -> None:
    """An MQTT 3.1.1 DISCONNECT carries no Session Expiry Interval (engine.py
    ``disconnect_expiry``: the ``protocol_version != 5`` return dropped)."""
    assert connected(4).disconnect_expiry() is None
    assert connected(5).disconnect_expiry() is not None


# ------------------------------------------------------------------ ticks


def _ticked(times: list[float], connected_at: float = 100.0) -> dict[float, bool]:
    """Whether each tick (wall = monotonic) wrote an Activity record."""
    e = make()
    e.reset()
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, connected_at)
    e.resume()
    return {t: any(isinstance(r, Activity) for r in _records(e.tick(t, t))) for t in times}


def test_activity_records_every_five_seconds_from_the_connack() -> None:
    """An Activity record once ``ACTIVITY_EVERY`` (5 s) passed since the CONNACK or the last
    one, exactly at 5 s too, not at every tick after (engine.py: ``connack`` not setting
    ``_last_activity``; ``tick``'s ``>=`` -> ``>``; ``tick`` not noting the record's time)."""
    assert _ticked([101.0, 104.0, 105.0, 106.0, 109.0, 110.0]) == {
        101.0: False, 104.0: False, 105.0: True, 106.0: False, 109.0: False, 110.0: True}


def test_a_wall_clock_jump_seen_at_a_tick_is_durable() -> None:
    """A tick that sees the wall clock jump (monotonic says 1 s passed, the wall clock 1 h
    back) while a message is held makes the new clock offset durable (engine.py ``tick``:
    the ``ClockOffset`` Persist made conditional on ``False``)."""
    t, m = 1_700_000_000.0, 5_000.0
    e = Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                              protocol_version=5))
    e.connecting("b:1")
    e.connack(0, "", False, 65535, None, t, mono=m)
    e.resume()
    publish(e, b"held", 1)
    out = e.tick(t + 1 - 3600, m + 1)
    offsets = [r for r in _records(out) if isinstance(r, ClockOffset)]
    assert len(offsets) == 1 and offsets[0].offset == pytest.approx(3600.0, abs=2)
    assert e.state.clock_offset == offsets[0].offset


# ------------------------------------------------------------------ receiving and acking


def test_a_message_under_a_held_id_with_another_topic_is_a_new_message() -> None:
    """A QoS 2 PUBLISH under a held id with the same payload but another topic is no resend:
    the held one is orphaned (delivered now) and the new one stored [MQTT-4.3.3-10] (engine.py
    ``_publish_in``: ``im.topic != topic or`` dropped)."""
    e = connected()
    e.receive(publish_in(7, 2, b"p", topic="a"))
    out = e.receive(publish_in(7, 2, b"p", topic="b"))
    assert [(m.topic, m.message) for m in _delivered(out)] == [("a", b"p")]
    assert e.state.incoming[7].topic == "b"


def test_a_pubrel_with_packet_id_0_is_a_protocol_violation() -> None:
    """MQTT 5 [MQTT-2.2.1-5], 3.1.1 [MQTT-2.3.1-6]: a PUBREL needs a non-zero packet id
    (engine.py ``_pubrel``: the ``if not pid`` guard made ``if False``)."""
    e = connected()
    with pytest.raises(ProtocolViolation):
        e.receive_ack(PacketType.PUBREL, 0)


def test_no_puback_goes_after_disconnect() -> None:
    """A QoS 1 message taken after ``disconnect()`` (the connection closing) writes no
    PUBACK (engine.py ``ack``: ``if self._live`` -> ``if True``)."""
    e = connected()
    [event] = _delivered(e.receive(publish_in(5, 1)))
    e.disconnect(1.0)
    acked, out = e.ack(event)
    assert acked and packets(out) == []


def test_ack_of_another_event_under_a_held_id_is_not_this_ones() -> None:
    """A QoS 2 delivery is acknowledged by its own event (or by packet id), not by another
    event object that names the same id (engine.py ``ack``: ``and (by_id or h.event is
    message)`` dropped)."""
    e = connected()
    e.receive(publish_in(7, 2, b"seven"))
    [event] = _delivered(e.receive(ack_in(PacketType.PUBREL, 7)))
    other = dataclasses.replace(event, message=b"stale")
    assert e.ack(other) == (False, [])
    assert 7 in e.state.incoming
    acked, out = e.ack(event)
    assert acked and [p.type for p in packets(out)] == [PacketType.PUBCOMP]


# ------------------------------------------------------------------ restore


def test_restore_is_refused_over_orphans() -> None:
    """``check_restorable``: orphans (incoming QoS 2 of a lost session, handed out and not
    taken) are messages held: a restore would drop them (engine.py: ``or cur.orphans``
    dropped)."""
    e = connected()
    e.receive(publish_in(7, 2, b"seven"))
    e.connection_lost(0.0, 0, "gone")
    connect(e, session_present=False)
    assert e.state.orphans and not e.state.incoming and not e.state.outgoing
    e.disconnect(1.0)
    e.closed()
    with pytest.raises(UsageError):
        e.check_restorable()


def test_restore_is_refused_over_a_disk_queue() -> None:
    """``check_restorable``: messages in the disk queue are held too (engine.py: ``or
    cur.spooled`` dropped)."""
    e = make()
    e.state.spooled = 3
    with pytest.raises(UsageError):
        e.check_restorable()


def test_restore_into_a_client_without_an_id_takes_the_saved_one() -> None:
    """A client without a client id restores any session and takes its id (engine.py
    ``restore``: ``cur.client_id and`` dropped)."""
    saved = SessionState(client_id="saved", clean_session=False)
    e = Engine(EngineSettings(), SessionState(clean_session=False))
    e.restore(saved, 0.0)
    assert e.state.client_id == "saved"


def test_a_session_expiry_interval_of_0_set_on_the_client_wins_over_the_saved_one() -> None:
    """The client's own settings win in a restore, a Session Expiry Interval of 0 too
    (engine.py ``restore``: ``is not None`` -> truthiness)."""
    e = Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                              protocol_version=5, session_expiry_interval=0))
    e.restore(SessionState(client_id="c", clean_session=False, protocol_version=5,
                           session_expiry_interval=100), 0.0)
    assert e.state.session_expiry_interval == 0


def _expired_save() -> SessionState:
    """An MQTT 5 session (expiry 10 s) that disconnected at 1000 holding a subscription."""
    st = SessionState(client_id="c", clean_session=False, protocol_version=5,
                      session_expiry_interval=10)
    st.connected(900.0, "broker:1883", False)
    st.subscribe("s/#", 1)
    st.disconnected(1000.0)
    return codec.decode(codec.encode(st))


def test_a_session_restored_in_on_connected_is_not_judged_expired_by_the_clock() -> None:
    """Restored before connecting, a session past its expiry by this clock is marked so;
    restored in ``on_connected`` the CONNACK's SessionPresent has decided already (engine.py
    ``restore``: ``self.conn is not ConnState.RESUMING and`` dropped)."""
    before = Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                                   protocol_version=5))
    before.restore(_expired_save(), 5000.0)
    assert before.restored_expired
    e = Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                              protocol_version=5))
    e.connecting("broker:1883")
    e.connack(0, "", True, 65535, None, 5000.0)
    e.restore(_expired_save(), 5000.0)  # in on_connected
    assert not e.restored_expired


def test_a_session_restored_in_on_connected_that_a_broker_accepted_is_told_it_was_lost() -> None:
    """A fresh client (never accepted) restores in ``on_connected`` of a SessionPresent=0
    CONNACK a session a broker accepted before, holding only a subscription: its loss is
    reported (``on_session_lost``), judged by the restored session (engine.py ``restore``:
    ``self._never_accepted = ...`` dropped)."""
    saved = make()
    _answer(saved, _on(saved, "broker:1883", False) + packets(saved.subscribe(["s/#"], 1)))
    e = make()
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, 0.0)
    e.restore(codec.decode(codec.encode(saved.state)), 0.0)  # in on_connected
    out = e.lost_incoming() + e.resume()
    assert len(notified(out, "on_session_lost")) == 1
    assert [p.type for p in packets(out)] == [PacketType.SUBSCRIBE]


def test_restore_starts_the_dropped_count_again() -> None:
    """The ``dropped`` count is the session's since made or restored (engine.py ``restore``:
    ``self.dropped = self.expired = 0`` dropped)."""
    e = make()
    e.dropped = 1  # (a message refused and removed before)
    e.restore(SessionState(client_id="c", clean_session=False), 0.0)
    assert e.dropped == 0



# ------------------------------------------------------------------ a lost session, and more


def test_a_message_dropped_with_the_lost_session_is_reported_dropped() -> None:
    """``RepublishOnSessionLost=False``: a message sent and unacknowledged when the broker
    lost the session is dropped, and ``on_message_dropped`` says so ("session-lost")
    (engine.py ``resume``: the ``_dropped`` loop over ``lost.dropped`` removed)."""
    e = connected(republish_on_session_lost=False)
    publish(e, b"x", 1)
    e.connection_lost(1.0, 0, "gone")
    out = connect(e, session_present=False)
    [ev] = notified(out, "on_message_dropped")
    assert ev.reason == "session-lost"  # type: ignore[attr-defined]
    assert not e.state.outgoing and e.dropped == 1


@pytest.mark.parametrize("outgoing", [False, True])
def test_the_session_lost_event_names_the_incoming_qos2_delivered_without_pubrel(
        outgoing: bool) -> None:
    """[MQTT-3.2.2-5]: the incoming QoS 2 messages a lost session will never release are
    delivered, and ``on_session_lost`` lists them (``delivered_incoming``), with an outgoing
    message held (reset at CONNACK) or without (engine.py ``resume``: ``orphans`` -> ``()``
    in either ``SessionLost``; ``lost_incoming``: ``_orphans_now.append`` removed)."""
    e = connected()
    e.receive(publish_in(7, 2, b"seven"))
    if outgoing:
        publish(e, b"x", 1)
    e.connection_lost(1.0, 0, "gone")
    out = connect(e, session_present=False)
    assert [m.message for m in _delivered(out)] == [b"seven"]
    [ev] = notified(out, "on_session_lost")
    assert isinstance(ev, SessionLostEvent)
    assert [(m.packet_id, m.message) for m in ev.delivered_incoming] == [(7, b"seven")]


def test_a_failed_connect_closed_leaves_the_engine_disconnected() -> None:
    """``closed()`` (a connect that failed for good) leaves the engine disconnected, not still
    connecting (engine.py ``closed``: ``self.conn = ConnState.DISCONNECTED`` removed)."""
    e = make()
    e.connecting("broker:1883")
    e.closed()
    assert e.conn is ConnState.DISCONNECTED


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_qos0_delivery_has_packet_id_minus_1_and_no_properties(protocol: int) -> None:
    """A QoS 0 message has no packet id: its event says -1; an MQTT 5 one without properties
    (a property length of 0 on the wire) carries ``b""`` (engine.py ``_publish_in``: ``-1`` ->
    ``pid``; ``props = b"" if ... == b"\\x00"`` -> ``p.properties``)."""
    e = connected(protocol)
    p = _wire.decode_packet(_wire.encode_publish("t", b"zero", protocol=protocol), protocol)
    [event] = _delivered(e.receive(p))
    assert (event.packet_id, event.qos, event.properties) == (-1, 0, b"")


def test_orphans_of_a_session_restored_in_on_connected_are_durable_before_delivery() -> None:
    """A session holding an incoming QoS 2 message awaiting PUBREL, restored in
    ``on_connected`` of a SessionPresent=0 CONNACK: the message becomes an orphan durably
    (``Orphaned``) before it is delivered [MQTT-3.2.2-5] (engine.py ``lost_incoming``: that
    Persist made to do nothing)."""
    saved = connected()
    saved.receive(publish_in(7, 2, b"seven"))
    e = make()
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, 0.0)
    e.restore(codec.decode(codec.encode(saved.state)), 0.0)  # in on_connected
    out = e.lost_incoming()
    kinds = [type(r) for a in out if isinstance(a, Persist) for r in a.records]
    assert kinds == [Orphaned]
    assert isinstance(out[0], Persist) and isinstance(out[-1], Deliver)
    assert out[-1].message.message == b"seven"


def test_a_qos2_delivery_is_acknowledged_by_its_packet_id() -> None:
    """``ack(packet_id)`` (ManualAck by id) ends a QoS 2 delivery: removal, then PUBCOMP
    (engine.py ``ack``: ``qos in (0, 2)`` -> ``qos == 2`` for the held ones)."""
    e = connected()
    e.receive(publish_in(7, 2, b"seven"))
    e.receive(ack_in(PacketType.PUBREL, 7))
    acked, out = e.ack(7)
    assert acked and [p.type for p in packets(out)] == [PacketType.PUBCOMP]
    assert 7 not in e.state.incoming


def test_a_message_taken_at_a_move_leaves_a_lost_session_durably() -> None:
    """Taken at a move (``Taken``), then the session is lost (SessionPresent=0, no outgoing
    message: no reset record): the orphan it became leaves the session with a durable record,
    so a restart does not hold it for good (engine.py ``resume``: ``if reset is not None or
    released`` -> ``if reset is not None``)."""
    try:
        from .test_engine import _held_then_moved
    except ImportError:  # pragma: no cover - rootdir-relative import
        from test_engine import _held_then_moved  # type: ignore[no-redef]
    e, out = _held_then_moved("other:1883")
    d7 = next(m for m in _delivered(out) if m.packet_id == 7)
    e.ack(d7)
    e.connection_lost(1.0, 0, "gone")
    out = connect(e, session_present=False)
    assert [im.packet_id for im in e.state.orphans] == [8]
    gone = [r for r in _records(out) if isinstance(r, OrphanReleased)]
    assert [r.packet_id for r in gone] == [7]
