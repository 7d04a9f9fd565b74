"""Wall-clock jumps against the pure engine (a sweep's findings; times are passed in, as the
driver passes ``time.time()`` and ``time.monotonic()``).

Fixed (each failed before): after a backward jump while connected no Activity record was
written until the wall clock caught up, so ``session_expired`` after a crash gave a wrong
definite answer; FailoverRepublish published a message again with all of its Message Expiry
Interval; a held message's age was counted by the wall clock only, so a backward jump
lengthened its life by the jump and a forward one (a 1970 boot clock set by NTP) expired it at
once (``expiry.MessageClock`` now counts it across jumps).
"""

from __future__ import annotations

import pytest

from mqttsession import _wire, codec, session_expired
from mqttsession.engine import Engine, EngineSettings, Notify, Persist, Write
from mqttsession.records import Activity, ClockOffset, decode_record, encode_record
from mqttsession.state import SessionState

T = 1_700_000_000.0
M = 5_000.0  # the monotonic clock at T
YEAR = 365 * 86400.0


def _expiring(seconds: int) -> bytes:
    return _wire.pack_properties([(0x02, seconds)])  # MQTT 5 Message Expiry Interval


def _engine(**kw: object) -> Engine:
    return Engine(EngineSettings(**kw),  # type: ignore[arg-type]
                  SessionState(client_id="c", clean_session=False, protocol_version=5,
                               session_expiry_interval=3600))


def _connect(e: Engine, now: float, present: bool = False, broker: str = "b:1",
             mono: float | None = None) -> list[object]:
    e.connecting(broker)
    return list(e.connack(0, "ok", present, 65535, None, now, mono=mono)) + list(e.resume())


def _publishes(actions: list[object]) -> list[_wire.Packet]:
    return [_wire.decode_packet(a.packet, 5) for a in actions
            if isinstance(a, Write) and a.kind is _wire.PacketType.PUBLISH]


def _dropped(actions: list[object]) -> list[object]:
    return [a.event for a in actions if isinstance(a, Notify) and a.name == "on_message_dropped"]


def test_activity_records_go_on_after_a_backward_jump() -> None:
    """Connected at T, ticking; at T+100 the wall clock goes back 1 h; ticks go on for 20 min
    (monotonic keeps counting); the process is killed. No Activity record was written after
    the jump, so the file's last_activity is still T+100. 90 min of real time after the kill
    the broker has discarded the session (SessionExpInterval 3600), yet session_expired says
    False: a definite wrong answer where the API promises None when the clock went back."""
    e = _engine()
    _connect(e, T)
    mono, acts = 1000.0, []
    for k in range(101):
        acts += [r for a in e.tick(T + k, mono + k) if isinstance(a, Persist)
                 for r in a.records if isinstance(r, Activity)]
    before = len(acts)
    for k in range(1201):
        acts += [r for a in e.tick(T - 3500 + k, mono + 100 + k) if isinstance(a, Persist)
                 for r in a.records if isinstance(r, Activity)]
    after_jump = len(acts) - before
    crash = T - 3500 + 1200
    verdict = session_expired(codec.encode(e.state), crash + 5400)
    assert after_jump > 0 and verdict is not False, (
        f"{after_jump} Activity records in 20 min after the jump; last_activity "
        f"{e.state.last_activity - T:+.0f} s from T; session_expired 90 min after the kill: {verdict}")


def test_a_message_lives_as_long_as_a_backward_jump() -> None:
    """60 s expiry, published offline at T; the clock goes back a year; 2 h later (by both
    clocks) the client connects. Before: sent with its full 60 s."""
    e = _engine()
    e.publish("t", b"a", 1, False, _expiring(60), now=T, mono=M)
    out = _connect(e, T - YEAR + 7200, mono=M + 7200)
    assert _publishes(out) == [] and [d.reason for d in _dropped(out)] == ["expired"], \
        f"sent with {[p.prop(0x02) for p in _publishes(out)]} s left after 2 h"


def test_a_resend_after_a_backward_jump_carries_more_than_the_first_send() -> None:
    e = _engine()
    e.publish("t", b"a", 1, False, _expiring(60), now=T, mono=M)
    assert _publishes(_connect(e, T + 50, mono=M + 50))[0].prop(0x02) == 10
    e.connection_lost(T + 51, 0x80, "lost")
    # the clock back 1 h; resent (DUP); before: with 60 s again
    again = _publishes(_connect(e, T + 55 - 3600, True, mono=M + 55))
    assert again[0].prop(0x02) <= 10, f"DUP resend carries {again[0].prop(0x02)}"


def test_ntp_correction_from_1970_does_not_expire_messages_30_s_old() -> None:
    """Booted with a 1970 clock: published offline at wall 40 with a 1 h expiry; 30 s later
    (monotonic) NTP sets the clock; connect. Before: dropped as 'expired'."""
    e = _engine()
    e.publish("t", b"a", 1, False, _expiring(3600), now=40.0, mono=M)
    out = _connect(e, T, mono=M + 30)
    assert _dropped(out) == [] and [p.prop(0x02) for p in _publishes(out)] == [3570], \
        f"dropped: {_dropped(out)}"


def test_failover_republish_carries_what_is_left_of_the_expiry() -> None:
    """FailoverRepublish copies the message with its ORIGINAL properties and a new publish
    time: 50 s after publishing with 60 s, the copy goes out with 60 s (not 10)."""
    e = _engine(failover_republish=5)
    e.publish("t", b"a", 1, False, _expiring(60), now=T)
    [p] = _publishes(_connect(e, T + 1, broker="a:1"))
    e.receive_ack(_wire.PacketType.PUBACK, p.packet_id, 0)
    e.connection_lost(T + 2, 0x80, "lost")
    again = _publishes(_connect(e, T + 50, True, broker="b:1"))
    assert [q.prop(0x02) for q in again] == [10]


def test_failover_republish_leaves_out_a_message_expired_meanwhile() -> None:
    e = _engine(failover_republish=5)
    e.publish("t", b"a", 1, False, _expiring(60), now=T)
    e.publish("t", b"b", 1, False, b"", now=T)
    out = _publishes(_connect(e, T + 1, broker="a:1"))
    for p in out:
        e.receive_ack(_wire.PacketType.PUBACK, p.packet_id, 0)
    e.connection_lost(T + 2, 0x80, "lost")
    again = _publishes(_connect(e, T + 70, True, broker="b:1"))
    assert [q.payload for q in again] == [b"b"]


def test_publish_many_under_a_clock_before_1970_stores_a_time_after_it() -> None:
    # before: TransitionError ("accepted time -5.0 is not a time"); then a time of 0
    # (unknown: the message never expired); now the session's clock starts at 1.0
    e = _engine()
    _ids, out = e.publish_many([("t", b"a", 1, False, b"")], -5.0)
    assert [m.accepted_at for m in e.state.outgoing.values()] == [1.0]
    assert ClockOffset(6.0) in _persisted(out)


def _persisted(actions: list[object]) -> list[object]:
    return [r for a in actions if isinstance(a, Persist) for r in a.records]


def test_a_jump_is_stored_and_counted_after_a_restart() -> None:
    """The offset a jump makes rides with the next publish's record and comes back with the
    session: after a restart (wall clock right, a new monotonic clock) both messages keep
    the age they had on the clock they were published by."""
    e = _engine()
    first = e.publish("t", b"a", 1, False, _expiring(3600), now=40.0, mono=M)[1]
    assert not [r for r in _persisted(first) if isinstance(r, ClockOffset)]
    second = e.publish("t", b"b", 1, False, _expiring(3600), now=T, mono=M + 30)[1]
    [rec] = [r for r in _persisted(second) if isinstance(r, ClockOffset)]
    assert rec.offset == 70.0 - T == e.state.clock_offset
    assert decode_record(encode_record(rec)) == rec
    again = Engine(EngineSettings(), codec.decode(codec.encode(e.state)))
    assert again.state.clock_offset == rec.offset
    out = _connect(again, T + 100, mono=1.0)
    assert [p.prop(0x02) for p in _publishes(out)] == [3470, 3500]


def test_a_slewing_clock_is_followed_and_nothing_is_stored() -> None:
    e = _engine()
    _connect(e, T, mono=M)
    actions: list[object] = []
    for k in range(1, 200):  # 0.4 ms a second apart (NTP slews at most 0.5)
        actions += e.tick(T + k * 1.0004, M + k)
        actions += e.publish("t", b"x", 1, False, b"", now=T + k * 1.0004, mono=M + k)[1]
    assert e.state.clock_offset == 0.0
    assert not [r for r in _persisted(actions) if isinstance(r, ClockOffset)]


def test_the_offset_goes_back_to_zero_once_nothing_is_held() -> None:
    e = _engine()
    e.publish("t", b"a", 1, False, b"", now=T, mono=M)
    [p] = _publishes(_connect(e, T - 3600, mono=M + 1))  # (a jump back 1 h)
    assert e.state.clock_offset == 3601.0
    e.receive_ack(_wire.PacketType.PUBACK, p.packet_id, 0)
    out = e.publish("t", b"b", 1, False, b"", now=T - 3590, mono=M + 11)[1]
    assert [r for r in _persisted(out) if isinstance(r, ClockOffset)] == [ClockOffset(0.0)]
    assert [m.accepted_at for m in e.state.outgoing.values()] == [T - 3590]


def test_the_queue_age_is_counted_across_a_jump() -> None:
    e = _engine()
    e.publish("t", b"a", 1, False, b"", now=T, mono=M)
    assert e.queue_stats(T - YEAR + 60, M + 60).oldest_age == 60.0
    assert e.queue_stats(T + YEAR, M + 60).oldest_age == 60.0


def test_a_clock_behind_the_held_messages_after_a_restart_counts_no_downtime() -> None:
    """The clock went back while no process ran (a board without an RTC battery): the new
    process counts from the newest held message's time, then follows jumps from there, so
    NTP setting the clock later does not make the messages 55 years old."""
    e = _engine()
    e.publish("t", b"a", 1, False, _expiring(3600), now=T, mono=M)
    e.publish("t", b"b", 1, False, _expiring(3600), now=T + 100, mono=M + 100)
    again = Engine(EngineSettings(), codec.decode(codec.encode(e.state)))
    again.publish("t", b"c", 1, False, _expiring(3600), now=40.0, mono=1.0)  # booted in 1970
    assert again.state.clock_offset == T + 100 - 40.0
    out = _connect(again, T + 7200, mono=61.0)  # NTP, a minute later
    assert [p.prop(0x02) for p in _publishes(out)] == [3440, 3540, 3540]


def test_a_disk_queue_that_cannot_be_read_does_not_fail_the_first_publish() -> None:
    """The first reading of a new process looks at the disk queue's oldest time; a read
    error there is the queue's to report, never a publish's."""
    from mqttsession.store import MemoryStore  # noqa: PLC0415

    class Unreadable(MemoryStore):
        def tail_time(self) -> float | None:
            raise OSError(5, "Input/output error")

    e = _engine(queue_in_memory=1)
    e.spool = Unreadable()
    e.spool.ready = True
    e.publish("t", b"a", 1, False, b"", now=T, mono=M)
    e.publish("t", b"b", 1, False, b"", now=T, mono=M)  # (into the queue)
    again = Engine(EngineSettings(queue_in_memory=1), e.state)
    again.spool = e.spool
    again.publish("t", b"c", 1, False, b"", now=T + 1, mono=1.0)
    assert again.state.held == 3


def test_a_clock_before_1970_then_ntp_still_ages_the_messages() -> None:
    """Published at wall -100 (a wrong RTC), then NTP; a second message with a 60 s expiry.
    Before: both stored with time 0 ("unknown") for as long as anything was held (the
    session's clock stayed below 0): never expired, no age in ``queue_stats``."""
    e = _engine()
    e.publish("t", b"m1", 1, False, b"", now=-100.0, mono=M)
    e.publish("t", b"m2", 1, False, _expiring(60), now=T, mono=M + 5)
    assert [m.accepted_at for m in e.state.outgoing.values()] == [1.0, 6.0]
    assert e.queue_stats(T + 200, M + 205).oldest_age == 205.0
    out = _connect(e, T + 200, mono=M + 205)
    assert [p.payload for p in _publishes(out)] == [b"m1"]
    assert [d.reason for d in _dropped(out)] == ["expired"]


@pytest.mark.parametrize("other_held", [True, False])
def test_failover_republish_after_a_jump_stamps_the_copy_with_the_sessions_time(
        other_held: bool) -> None:
    """NTP steps the clock 1 h forward while a QoS 1 message is in flight; its PUBACK comes,
    then the client moves to another server, which gets a copy (FailoverRepublish). Before:
    the copy was stamped with the session's time taken for a wall time (its offset counted
    twice, or dropped): it looked an hour old and was resent with 1 s of its expiry."""
    e = _engine(failover_republish=5)
    e.publish("t", b"m1", 1, False, _expiring(3600), now=T, mono=M)
    [m1] = _publishes(_connect(e, T + 1, broker="a:1", mono=M + 1))
    if other_held:
        e.publish("t", b"m2", 1, False, b"", now=T + 2, mono=M + 2)
    e.tick(T + 3600 + 5, M + 5)  # NTP
    e.receive_ack(_wire.PacketType.PUBACK, m1.packet_id, 0)
    e.connection_lost(T + 3600 + 6, 0x80, "lost")
    out = _connect(e, T + 3600 + 20, True, broker="b:1", mono=M + 20)
    assert [p.prop(0x02) for p in _publishes(out) if p.payload == b"m1"] == [3580]
    assert e.queue_stats(T + 3600 + 21, M + 21).oldest_age == (19.0 if other_held else 1.0)
    again = _publishes(_connect(e, T + 3600 + 40, True, broker="b:1", mono=M + 40))
    assert [p.prop(0x02) for p in again if p.payload == b"m1"] == [3560]
