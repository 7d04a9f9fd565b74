"""Issue 12, points 2 and 5: a bounded outgoing queue with a policy, and every message that
leaves without delivery reported. Pure: the engine, and a Client that never connects."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttsession import Client, MessageDroppedEvent, QueueFullError, UsageError
from mqttsession import _wire
from mqttsession._wire import PacketType
from mqttsession.engine import Engine, EngineSettings, Notify, Persist, Write
from mqttsession.state import (Accepted, Event, OutgoingMessage, Record, SessionState, Spooled,
                               Stepped, message_bytes)


def _engine(**kw: Any) -> Engine:
    return Engine(EngineSettings(**kw), SessionState(client_id="c", clean_session=False))


def test_reject_stores_nothing() -> None:
    e = _engine(max_queued_messages=2)
    e.publish("t/1", b"a", 1, False)
    e.publish("t/2", b"b", 2, False)
    before = e.state.snapshot_fields()
    with pytest.raises(QueueFullError, match="reject"):
        e.publish("t/3", b"c", 1, False)
    assert e.state.snapshot_fields() == before


def test_bytes_limit_counts_payload_topic_and_properties() -> None:
    e = _engine(max_queued_bytes=20)
    e.publish("t", b"x" * 10, 1, False, b"\x01\x01")  # 1 + 10 + 2 = 13 bytes
    assert e.state.outgoing_bytes == 13
    with pytest.raises(QueueFullError):
        e.publish("t", b"y" * 7, 1, False)  # 13 + 8 > 20
    e.publish("t", b"y" * 6, 1, False)  # 13 + 7 = 20: fits
    assert e.queue_stats(0.0).bytes == 20


def test_bytes_limit_counts_a_topic_in_utf8_bytes() -> None:
    """A topic of 3 characters and 6 bytes ("ü€x"): MaxQueuedBytes counted its characters (a
    defect hunt: 1,624 bytes held under a 1,000-byte limit, ``queue_stats`` saying 917)."""
    e = _engine(max_queued_bytes=20)
    e.publish("ü€x", b"x" * 10, 1, False)  # 6 + 10 = 16 bytes
    assert e.state.outgoing_bytes == 16 == e.queue_stats(0.0).bytes
    with pytest.raises(QueueFullError):
        e.publish("t", b"y" * 4, 1, False)  # 16 + 5 > 20
    e.state.expire(1)  # it leaves: the same count comes off
    assert e.state.outgoing_bytes == 0


def test_drop_oldest_drops_never_sent_messages_before_storing_the_new_one() -> None:
    e = _engine(max_queued_messages=2, queue_full_policy="drop-oldest")
    e.publish("t/1", b"a", 1, False)
    e.publish("t/2", b"b", 2, False)
    _, actions = e.publish("t/3", b"c", 1, False)
    persists = [a for a in actions if isinstance(a, Persist)]
    dropped = [a for a in actions if isinstance(a, Notify) and a.name == "on_message_dropped"]
    assert isinstance(persists[0].records[0], Stepped)
    assert persists[0].records[0].event is Event.DROPPED and persists[0].records[0].seq == 1
    assert isinstance(persists[1].records[0], Accepted) and persists[1].sync
    assert [d.event for d in dropped] == [MessageDroppedEvent("t/1", 1, 1, "queue-full")]
    assert [m.topic for m in e.state.outgoing.values()] == ["t/2", "t/3"]
    assert e.queue_stats(0.0).dropped == 1


def test_drop_oldest_never_drops_a_message_in_flight() -> None:
    e = _engine(max_queued_messages=1, queue_full_policy="drop-oldest")
    e.connecting("b:1")
    e.connack(0, "ok", False, 10, None, 0.0)
    e.resume()
    e.publish("t/1", b"a", 1, False)  # written: in flight
    with pytest.raises(QueueFullError, match="never sent"):
        e.publish("t/2", b"b", 1, False)
    assert [m.topic for m in e.state.outgoing.values()] == ["t/1"]


def test_queue_stats_age_of_the_oldest() -> None:
    e = _engine()
    e.publish("t/1", b"a", 1, False, now=100.0)
    e.publish("t/2", b"b", 1, False, now=150.0)
    s = e.queue_stats(160.0)
    assert (s.messages, s.bytes, s.oldest_age, s.dropped, s.expired) == (2, 8, 60.0, 0, 0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pub", "drop", "send", "ack"]),
                          st.integers(0, 30), st.integers(0, 5)), max_size=40))
def test_outgoing_bytes_follows_every_transition(steps: list[tuple[str, int, int]]) -> None:
    """However messages come and go (and after a replay of the records), ``outgoing_bytes``
    is the sum over what is held."""
    state = SessionState(client_id="c", clean_session=False)
    records: list[Record] = []
    for op, size, k in steps:
        held = list(state.outgoing.values())
        if op == "pub":
            records.append(state.accept(f"t/{k}", b"x" * size, 1 + k % 2, False, b"p" * (k % 3)))
        elif held:
            m = held[k % len(held)]
            if op == "drop" and not m.sent:
                records.append(state.drop(m.seq))
            elif op == "send" and not m.sent:
                records.append(state.send(m.seq))
            elif op == "ack" and m.sent:
                records.append(state.puback(m.packet_id) if m.qos == 1 else state.pubrec(m.packet_id, 0x80))
        assert state.outgoing_bytes == sum(map(message_bytes, state.outgoing.values()))
    replay = SessionState(client_id="c", clean_session=False)
    for rec in records:
        replay.apply(rec)
    assert replay.outgoing_bytes == state.outgoing_bytes


def test_client_offline_drop_oldest_is_durable_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    c = Client(client_id="gw", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("MaxQueuedMessages=3")
    c.config("QueueFullPolicy=drop-oldest")
    assert c.config("QueueFullPolicy") == "drop-oldest" and c.config("MaxQueuedBytes") == str(256 << 20)
    dropped: list[MessageDroppedEvent] = []
    c.on_message_dropped = dropped.append
    c.restore_session("")
    for n in range(5):
        c.publish_message("gw/t", 1 + n % 2, f"m{n}")
    assert [d.seq for d in dropped] == [1, 2] and {d.reason for d in dropped} == {"queue-full"}
    stats = c.queue_stats()
    assert (stats.messages, stats.dropped) == (3, 2) and stats.oldest_age is not None
    del c  # killed: no save, no close
    d = Client(client_id="gw")
    d.config(f"SessionStateFile={path}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"m2", b"m3", b"m4"]
    assert d.queue_stats().dropped == 0  # counted since the restore
    d.config("MaxQueuedMessages=3")
    with pytest.raises(QueueFullError):
        d.publish_message("gw/t", 1, "m5")  # reject is the default
    assert len(d.outgoing_messages) == 3
    d.close()


def test_bad_settings_are_refused() -> None:
    c = Client(client_id="gw")
    with pytest.raises(UsageError):
        c.config("QueueFullPolicy=drop-newest")
    with pytest.raises(UsageError):
        c.config("MaxQueuedMessages=-1")
    with pytest.raises(UsageError, match="MQTT 5"):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        c.publish_data("t", 1, b"x", properties=Properties(PacketTypes.PUBLISH))  # type: ignore[no-untyped-call]


def test_drain_rate_limit_paces_new_publishes() -> None:
    """DrainRateLimit=10: a gateway back from an outage sends its backlog at 10 a second (a
    token bucket filled by the timer ticks); resends are not held back."""
    e = _engine(drain_rate_limit=10, max_inflight=1000)
    for n in range(50):
        e.publish(f"t/{n}", b"x", 1, False)
    e.connecting("b:1")
    e.connack(0, "ok", False, 65535, None, 0.0)

    def publishes(actions: list[Any]) -> int:
        return sum(1 for a in actions if type(a).__name__ == "Write" and a.kind.name == "PUBLISH")

    assert publishes(e.resume()) == 0  # the bucket fills at the first tick
    assert publishes(e.tick(1.0, 100.0)) == 10  # one second's worth
    assert publishes(e.tick(1.5, 100.5)) == 5
    assert publishes(e.tick(5.0, 104.0)) == 10  # never more than a second's worth at once
    assert publishes(e.publish("t/new", b"x", 1, False)[1]) == 0  # waits its turn


def test_expired_messages_take_no_drain_rate_token() -> None:
    """DrainRateLimit: an expired message is dropped, never written, yet it took a token, so
    live messages behind 4,000 expired ones waited 20 s at 200 a second (a defect hunt)."""
    e = Engine(EngineSettings(drain_rate_limit=10, max_inflight=1000),
               SessionState(client_id="c", clean_session=False, protocol_version=5))
    expiring = _wire.pack_properties([(0x02, 1)])
    for n in range(100):
        e.publish(f"t/{n}", b"old", 1, False, expiring, now=1000.0)
    for n in range(5):
        e.publish(f"alarm/{n}", b"live", 1, False, now=1000.0)
    e.connecting("b:1")
    e.connack(0, "ok", False, 65535, None, 1003.0)
    e.resume()
    out = e.tick(1004.0, 100.0)
    sent = [a for a in out if isinstance(a, Write) and a.kind is PacketType.PUBLISH]
    assert len(sent) == 5  # the five live ones, at once: the expired took no token


@pytest.mark.parametrize("policy", ["reject", "drop-oldest"])
def test_a_full_queue_of_expired_messages_makes_room_as_expired(policy: str) -> None:
    """MQTT 5, offline: messages whose Message Expiry Interval ran out are never sent, so a
    full queue of them takes a new message, reported "expired" (before: ``reject`` raised
    ``QueueFullError`` and ``drop-oldest`` dropped them as "queue-full")."""
    from mqttsession import _wire

    e = Engine(EngineSettings(max_queued_messages=3, queue_full_policy=policy),
               SessionState(client_id="c", clean_session=False, protocol_version=5))
    expiring = _wire.pack_properties([(0x02, 10)])
    for n in range(3):
        e.publish(f"t/{n}", b"old", 1, False, expiring, now=1000.0 + n)
    _, actions = e.publish("t/new", b"new", 1, False, b"", now=1011.5)  # two ran out (10 s)
    reasons = [a.event.reason for a in actions if isinstance(a, Notify)
               and a.name == "on_message_dropped"]
    assert reasons == ["expired", "expired"]
    assert [m.topic for m in e.state.outgoing.values()] == ["t/2", "t/new"]
    assert e.queue_stats(1011.5).expired == 2


class _ListQueue:
    """The engine's disk queue (``QueueSource``) as a list: what the engine spooled, read
    back in order."""

    ready = True

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []
        self.next = 0

    def read(self, n: int) -> list[OutgoingMessage]:
        out, self.messages = self.messages[:n], self.messages[n:]
        if out:
            self.next = out[-1].seq + 1
        return out

    def head_time(self) -> float | None:
        return self.messages[0].accepted_at if self.messages else None

    def tail_time(self) -> float | None:
        return self.messages[-1].accepted_at if self.messages else None

    def queued(self) -> tuple[int, int]:
        return len(self.messages), sum(map(message_bytes, self.messages))

    def read_to(self) -> int:
        return self.messages[0].seq if self.messages else self.next

    def mark(self) -> object:
        return list(self.messages), self.next

    def reset(self, mark: object) -> None:
        self.messages, self.next = cast(tuple[list[OutgoingMessage], int], mark)


def _spooling_engine(**kw: Any) -> tuple[Engine, _ListQueue]:
    e = Engine(EngineSettings(**kw),
               SessionState(client_id="c", clean_session=False, protocol_version=5))
    q = _ListQueue()
    e.spool = q
    return e, q


def _publish(e: Engine, q: _ListQueue, topic: str, props: bytes, now: float) -> list[Any]:
    _, actions = e.publish(topic, b"x", 1, False, props, now=now)
    for a in actions:  # the store's part: a Spooled record's message goes to the disk queue
        for rec in a.records if isinstance(a, Persist) else ():
            if isinstance(rec, Spooled):
                q.messages.append(rec.message)
    return actions


def _dropped(actions: list[Any]) -> list[str]:
    return [a.event.reason for a in actions
            if isinstance(a, Notify) and a.name == "on_message_dropped"]


@pytest.mark.parametrize("policy", ["reject", "drop-oldest"])
def test_expired_messages_in_the_disk_queue_make_room_as_expired(policy: str) -> None:
    """Beyond QueueInMemory the expired messages wait in the disk queue: they took room
    (``reject`` raised ``QueueFullError``; ``drop-oldest`` reported them "queue-full")."""
    e, q = _spooling_engine(max_queued_messages=5, queue_full_policy=policy, queue_in_memory=1)
    expiring = _wire.pack_properties([(0x02, 1)])
    for n in range(5):
        _publish(e, q, f"old/{n}", expiring, 1000.0)
    assert len(q.messages) == 4
    reasons = []
    for n in range(5):
        reasons += _dropped(_publish(e, q, f"new/{n}", b"", 1002.0))
    assert reasons == ["expired"] * 5
    assert e.queue_stats(1002.0).expired == 5 and e.state.held == 5


@pytest.mark.parametrize("policy", ["reject", "drop-oldest"])
def test_expired_messages_behind_live_ones_in_the_disk_queue_make_room(policy: str) -> None:
    """A run of live messages (more than one read batch, 64) at the disk queue's head, the
    expired ones behind it: the search stopped at the first batch with a live one, so they
    took room (a hunt: ``reject`` refused a new alarm, ``drop-oldest`` dropped a live one)."""
    e, q = _spooling_engine(max_queued_messages=320, queue_full_policy=policy,
                            queue_in_memory=50)
    expiring = _wire.pack_properties([(0x02, 1)])
    for n in range(120):  # 70 of them on disk: more than a read batch
        _publish(e, q, f"alarm/{n}", b"", 1000.0)
    for n in range(200):
        _publish(e, q, f"reading/{n}", expiring, 1000.0)
    reasons = _dropped(_publish(e, q, "alarm/new", b"", 1002.0))
    assert reasons == ["expired"] * 200
    assert e.state.held == 121
    assert len(e.state.outgoing) <= 2 * 50 + 64  # read back within twice QueueInMemory


def test_a_full_queue_is_searched_again_after_the_clock_went_back() -> None:
    """The once-a-second search for expired messages was timed on the message clock: a
    search made while it read a day ahead (a wall clock set back, then nothing held) kept
    the next one off for that day."""
    e = Engine(EngineSettings(max_queued_messages=3),
               SessionState(client_id="c", clean_session=False, protocol_version=5))
    expiring = _wire.pack_properties([(0x02, 10)])
    e._expiry_scan = 1000.0 + 86400.0  # the last search, on a clock then a day ahead
    for n in range(3):
        e.publish(f"t/{n}", b"old", 1, False, expiring, now=1000.0 + n)
    _, actions = e.publish("t/new", b"new", 1, False, b"", now=1011.5)
    assert _dropped(actions) == ["expired", "expired"]


def test_a_backlog_of_expired_messages_does_not_hold_back_the_fresh_ones() -> None:
    """A pump that dropped every message read back as expired read no more until the next
    tick (one QueueInMemory batch a tick: 20,000 expired took 19 s, and a fresh message
    waited behind them). It now reads on while its window has room."""
    e, q = _spooling_engine(queue_in_memory=10)
    expiring = _wire.pack_properties([(0x02, 1)])
    for n in range(100):
        _publish(e, q, f"old/{n}", expiring, 1000.0)
    _publish(e, q, "fresh", b"", 1005.0)
    e.tick(1005.0, 5.0)
    e.reset()
    e.connecting("broker:1883")
    out = e.connack(0, "", False, 65535, None, 1005.0) + e.lost_incoming() + e.resume()
    sent = [w for w in out if isinstance(w, Write) and w.kind is PacketType.PUBLISH]
    assert len(sent) == 1 and b"fresh" in sent[0].packet
    assert _dropped(out).count("expired") == 100


@pytest.mark.parametrize("case", ["expiring", "drop-oldest", "plain"])
def test_the_send_of_a_qos2_message_that_could_be_taken_out_is_written_first(
        case: str) -> None:
    """A QoS 2 message's SEND step is lazy: after a kill -9 it read back waiting, though its
    PUBLISH had reached the broker; dropped then as expired (or for room), the broker kept its
    flow open for good, a slot of its Receive Maximum: a later message was refused 0x97 and
    lost (a hunt, mosquitto's defaults). For a message that could be taken out so (an MQTT 5
    one with properties, or under drop-oldest) the step is written before its PUBLISH leaves;
    the others' stays lazy (it costs a write and a send of its own)."""
    e = Engine(EngineSettings(queue_full_policy="drop-oldest" if case == "drop-oldest"
                              else "reject"),
               SessionState(client_id="c", clean_session=False, protocol_version=5))
    props = _wire.pack_properties([(0x02, 2)]) if case == "expiring" else b""
    e.publish("t/q2", b"m", 2, False, props, now=1000.0)
    e.connecting("b:1")
    out = e.connack(0, "", False, 65535, None, 1000.0) + e.lost_incoming() + e.resume()
    step = next(i for i, a in enumerate(out) if isinstance(a, Persist) and a.records
                and isinstance(a.records[0], Stepped) and a.records[0].event is Event.SEND)
    publish = next(i for i, a in enumerate(out) if isinstance(a, Write)
                   and a.kind is PacketType.PUBLISH)
    assert step < publish
    assert out[step].lazy is (case == "plain")  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["never-connected", "closed-cleanly"])
def test_a_waiting_qos2_message_of_a_session_that_did_not_end_connected_expires(
        how: str) -> None:
    """Only a session that ended connected (killed) may have sent a waiting QoS 2 message:
    one queued offline, or before a clean disconnect, expires and makes room as ever (the
    first form of the fix kept them all, sent expired ones and wedged drop-oldest: a review)."""
    from mqttsession import codec

    e = Engine(EngineSettings(), SessionState(client_id="c", clean_session=False,
                                              protocol_version=5))
    if how == "closed-cleanly":
        e.connecting("b:1")
        e.connack(0, "", False, 65535, None, 990.0)
        e.resume()
        e.disconnect(995.0)
    for n in range(2):
        e.publish(f"t/{n}", b"short-lived", 2, False, _wire.pack_properties([(0x02, 2)]),
                  now=1000.0)
    again = Engine(EngineSettings(max_queued_messages=2, queue_full_policy="drop-oldest"),
                   codec.decode(codec.encode(e.state)))
    _, made_room = again.publish("t/new", b"new", 2, False, now=1001.0)  # drop-oldest
    assert _dropped(made_room) == ["queue-full"]
    again.connecting("b:1")
    out = again.connack(0, "", True, 65535, None, 1005.0)
    out += again.lost_incoming() + again.resume()
    assert _dropped(out) == ["expired"]



def test_drops_are_logged_without_a_flood(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A gateway offline under drop-oldest drops at its publish rate: one INFO record each
    flooded the log (2,900 records in 0.06 s; a security hunt). The first drop of a window is
    a WARNING with its detail, the others DEBUG, summed up once the window is over (by the
    next drop, or the engine's tick)."""
    import mqttsession.queuelimits as ql

    clock = [1000.0]
    monkeypatch.setattr(ql.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.DEBUG, logger="mqttsession")
    e = _engine(max_queued_messages=1, queue_full_policy="drop-oldest")
    for n in range(51):
        e.publish("t/x", f"m{n}".encode(), 1, False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["message seq 1 to 't/x' dropped: queue-full (further drops within 10 s"
                        " are summed up)"]
    assert sum("dropped: queue-full" in r.getMessage() for r in caplog.records) == 50
    caplog.clear()
    clock[0] += 5
    e.tick(0.0, clock[0])  # (within the window: nothing yet)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    clock[0] += 6
    e.tick(0.0, clock[0])
    e.publish("t/x", b"again", 1, False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "49 more messages dropped in 11 s (queue-full: 49)",
        "message seq 51 to 't/x' dropped: queue-full (further drops within 10 s are summed up)"]


def test_close_sums_up_the_drops_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Drops offline, then ``close()`` within the window: the summary is logged then (review:
    it waited for a tick, which needs a connection, or a later drop: never came)."""
    caplog.set_level(logging.WARNING, logger="mqttsession")
    c = Client(client_id="drops", clean_session=True)
    c.config("MaxQueuedMessages=1")
    c.config("QueueFullPolicy=drop-oldest")
    for n in range(4):
        c.publish_message("t/x", 1, f"m{n}")
    c.close()
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 2 and texts[1].startswith("2 more messages dropped in 0 s (queue-full: 2)")


def _v5_engine(**kw: Any) -> Engine:
    return Engine(EngineSettings(**kw),
                  SessionState(client_id="c", clean_session=False, protocol_version=5))


def test_the_expiry_search_reads_the_disk_queue_back_only_to_its_memory_bound() -> None:
    """A full queue of live messages, most in the disk queue: the search for expired ones
    reads back while memory holds less than twice QueueInMemory (+ 64), one batch of 64 at
    most past it, never the whole disk queue into memory (a hunt)."""
    e, q = _spooling_engine(max_queued_messages=1000, queue_full_policy="reject",
                            queue_in_memory=10)
    live = _wire.pack_properties([(0x02, 3600)])
    for n in range(1000):
        _publish(e, q, f"t/{n}", live, 1000.0)
    assert len(q.messages) > 900
    with pytest.raises(QueueFullError) as info:
        _publish(e, q, "t/over", live, 1002.0)
    assert info.value.pending  # (what the search read back: records still to write)
    assert len(e.state.outgoing) < 2 * 10 + 64 + 64
    assert e.state.held == 1000


def test_a_full_queue_is_searched_for_expired_messages_again_a_second_later() -> None:
    """The search for expired messages runs once a second at most, not once a long while: a
    refusal at 1005 (nothing expired yet), then at 1020 the three that ran out (10 s) make
    room, "expired" (a hunt)."""
    e = _v5_engine(max_queued_messages=3, queue_full_policy="reject")
    expiring = _wire.pack_properties([(0x02, 10)])
    for n in range(3):
        e.publish(f"t/{n}", b"old", 1, False, expiring, now=1000.0)
    with pytest.raises(QueueFullError):
        e.publish("t/new", b"new", 1, False, b"", now=1005.0)
    _, actions = e.publish("t/new", b"new", 1, False, b"", now=1020.0)
    assert _dropped(actions) == ["expired"] * 3
    assert [m.topic for m in e.state.outgoing.values()] == ["t/new"]


def test_the_expiry_search_leaves_a_message_in_flight_alone() -> None:
    """A message in flight whose Message Expiry Interval ran out is not the search's: only
    never-sent (queued) ones expire; a full queue of one in flight refuses (taking it out
    raised a transition error) (a hunt)."""
    e = _v5_engine(max_queued_messages=1, queue_full_policy="reject")
    e.connecting("b:1")
    e.connack(0, "ok", False, 10, None, 1000.0)
    e.resume()
    e.publish("t/1", b"a", 1, False, _wire.pack_properties([(0x02, 5)]), now=1000.0)
    assert next(iter(e.state.outgoing.values())).sent  # written: in flight
    with pytest.raises(QueueFullError):
        e.publish("t/2", b"b", 1, False, b"", now=1010.0)
    assert [m.topic for m in e.state.outgoing.values()] == ["t/1"]


def test_a_victim_that_expired_since_the_last_search_is_reported_expired() -> None:
    """drop-oldest: a message that ran out after the last search (which runs once a second)
    and is dropped to make room is reported "expired", not "queue-full" (a hunt)."""
    e = _v5_engine(max_queued_messages=3, queue_full_policy="drop-oldest")
    e.publish("t/0", b"m0", 1, False, b"", now=1000.0)
    e.publish("t/1", b"m1", 1, False, _wire.pack_properties([(0x02, 5)]), now=1000.0)
    e.publish("t/2", b"m2", 1, False, b"", now=1000.0)
    _, actions = e.publish("t/3", b"m3", 1, False, b"", now=1004.5)  # searched: none ran out
    assert _dropped(actions) == ["queue-full"]
    _, actions = e.publish("t/4", b"m4", 1, False, b"", now=1005.2)  # no search: < 1 s later
    assert _dropped(actions) == ["expired"]
    assert [m.topic for m in e.state.outgoing.values()] == ["t/2", "t/3", "t/4"]
    stats = e.queue_stats(1005.2)
    assert (stats.expired, stats.dropped) == (1, 1)
