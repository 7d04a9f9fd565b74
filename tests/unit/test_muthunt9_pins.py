"""Rules of ``memstore`` (the in-memory disk model) and ``subscriptions`` that mutation hunt 9
found no test pinned. Pure: no sockets."""

from __future__ import annotations

import pytest

from mqttsession import Client, _wire
from mqttsession._wire import PacketType
from mqttsession.engine import Action, Engine
from mqttsession.errors import UsageError
from mqttsession.records import MAX_PACKET_ID
from mqttsession.state import SessionState
from mqttsession.subscriptions import SUBSCRIBE_TRIES
from mqttsession.store import MemoryStore

try:  # tests/unit may or may not be a package
    from .test_batching import _conn, _qos0
    from .test_engine import connect, connected, incoming, make, notified, packets
    from .test_engine_pins import _on
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_batching import _conn, _qos0  # type: ignore[no-redef]
    from test_engine import (connect, connected, incoming, make, notified,  # type: ignore[no-redef]
                             packets)
    from test_engine_pins import _on  # type: ignore[no-redef]


def _queued(n: int) -> tuple[SessionState, MemoryStore]:
    """A model holding ``n`` messages in its disk queue, accepted at 1.0, 2.0, ..."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.spool_checked("t", bytes([i]), 1, False, b"", float(i + 1))
              for i in range(n)], state, sync=True)
    return state, m


def test_memory_store_read_to_is_one_past_the_last_message_read_back() -> None:
    """``read_to`` as ``Spool.read_to``: every seq below it was read back (0: none yet).
    Mutant: ``read_to`` returning the last read seq, not seq + 1."""
    _state, m = _queued(3)
    assert m.read_to() == 0
    got = m.read(2)
    assert m.read_to() == got[-1].seq + 1


def test_memory_store_tail_time_is_the_newest_queued_message() -> None:
    """``tail_time``: the newest queued message's acceptance time (not the oldest's).
    Mutant: ``tail_time`` returning ``queue[queue_read]``'s time."""
    _state, m = _queued(3)
    m.read(1)
    assert (m.head_time(), m.tail_time()) == (2.0, 3.0)
    m.read(2)
    assert m.tail_time() is None


def test_memory_store_without_a_sync_policy_a_sync_append_is_not_durable() -> None:
    """``sync_policy`` False (SessionSync=none): a ``sync`` append writes (a kill -9 keeps
    it) but a power cut loses it. Mutant: ``append`` syncing without the policy."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.sync_policy = False
    m.append([state.subscribe("a/#", 1)], state, sync=True)
    assert (m.syncs, m.durable) == (0, 0)
    assert "a/#" in m.recover().subscriptions
    assert "a/#" not in m.recover(power_cut=True).subscriptions


def test_memory_store_sync_pending_obeys_the_sync_policy() -> None:
    """``sync_pending`` with ``sync_policy`` False syncs nothing; True, what was written.
    Mutant: ``sync_pending`` ignoring the policy."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.subscribe("a/#", 1)], state)
    m.sync_policy = False
    m.sync_pending()
    assert "a/#" not in m.recover(power_cut=True).subscriptions
    m.sync_policy = True
    m.sync_pending()
    assert m.syncs == 1 and "a/#" in m.recover(power_cut=True).subscriptions


def test_memory_store_compaction_drops_the_lazy_records_the_snapshot_holds() -> None:
    """``compact`` writes the whole state, lazy records not yet written included: a later
    ``flush`` writes nothing more over the snapshot. Mutant: ``compact`` keeping ``lazy``."""
    state = SessionState(client_id="c", clean_session=False)
    m = MemoryStore(state)
    m.append([state.subscribe("a/#", 1)], state, lazy=True)
    m.compact(state)
    m.flush()
    assert (m.written, m.lazy) == ([], [])
    assert m.recover(power_cut=True).subscriptions == {"a/#": 1}


def test_queue_in_memory_defaults_to_a_thousand_messages() -> None:
    """README: at most ``QueueInMemory`` (default 1000) never-sent messages in memory; 0
    would change the order rules of a restart. Mutant: ``EngineSettings.queue_in_memory``
    defaulting to 0."""
    c = Client(client_id="pins")
    try:
        assert c.config("QueueInMemory") == "1000"
    finally:
        c.close()


def test_qos0_backlog_counts_256_bytes_a_packet_beside_its_bytes() -> None:
    """README: ``QoS0BacklogBytes`` counts a packet's bytes and 256 for what holds it (many
    tiny QoS 0 publishes are bounded too). Mutant: ``PACKET_COST`` 0."""
    conn, _ = _conn()
    a = _qos0(10)
    conn.write(a, PacketType.PUBLISH, 0, 0)
    assert conn.unsent_qos0 == len(a) + 256


def test_back_on_a_server_a_subscribe_in_flight_when_it_was_left_is_sent_again() -> None:
    """Failover: a SUBSCRIBE written to A and unanswered when A was lost, answered on B
    (SessionPresent=1); back on A (SessionPresent=1), which may never have read it: the
    SUBSCRIBE goes to A again. Mutant: ``left`` counting the filters of SUBSCRIBEs awaiting
    their SUBACK as held."""
    e = make()
    _on(e, "A:1", False)
    packets(e.subscribe(["a/#"], 1))  # its SUBACK never comes from A
    e.connection_lost(1.0, 0x80, "lost")
    (sub,) = packets(_on(e, "B:1", True))  # type: ignore[arg-type]
    assert (sub.type, sub.filters) == (PacketType.SUBSCRIBE, ("a/#",))
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    e.connection_lost(2.0, 0x80, "lost")
    back = packets(_on(e, "A:1", True))  # type: ignore[arg-type]
    assert [(p.type, p.filters) for p in back] == [(PacketType.SUBSCRIBE, ("a/#",))]


def test_a_filter_whose_subscribe_would_pass_the_maximum_packet_size_is_refused() -> None:
    """MQTT 5 Maximum Packet Size: the packet's own bytes (``_OVERHEAD``) count with the
    filter's; a filter whose SUBSCRIBE alone is over the cap is a ``UsageError``, one that
    fits is sent. Mutant: ``_check_size`` without the packet's overhead."""
    e = make(5)
    connect(e, max_packet=60)
    with pytest.raises(UsageError, match="Maximum Packet Size 60"):
        e.subscribe(["x" * 50], 1)  # 8 + 2 + 50 + 1 = 61
    assert e.state.subscriptions == {}
    (sub,) = packets(e.subscribe(["x" * 49], 1), 5)
    assert sub.filters == ("x" * 49,)


def test_filters_that_fill_the_maximum_packet_size_exactly_go_in_one_subscribe() -> None:
    """Filters whose SUBSCRIBE reaches the broker's Maximum Packet Size exactly are one
    packet; one byte more splits them. Mutant: ``_fitting`` splitting at ``>=``."""
    e = make(5)
    connect(e, max_packet=8 + 2 * (2 + 10 + 1))
    (one,) = packets(e.subscribe(["a" * 10, "b" * 10], 1), 5)
    assert one.filters == ("a" * 10, "b" * 10)
    two = packets(e.subscribe(["c" * 10, "d" * 11], 1), 5)
    assert [p.filters for p in two] == [("c" * 10,), ("d" * 11,)]


def test_a_filter_unsubscribed_then_subscribed_offline_is_only_subscribed_on_connect() -> None:
    """Offline: unsubscribe then subscribe the same filter: the next connection sends the
    SUBSCRIBE alone (no UNSUBSCRIBE: a subscribe taken back). Mutant: ``subscribe`` not
    dropping the filter from the UNSUBSCRIBEs waiting to be sent."""
    e = connected()
    (sub,) = packets(e.subscribe(["a/#"], 1))
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    e.connection_lost(1.0, 0, "lost")
    e.unsubscribe(["a/#"])
    e.subscribe(["a/#"], 2)
    got = packets(connect(e, session_present=True))
    assert [(p.type, p.filters) for p in got] == [(PacketType.SUBSCRIBE, ("a/#",))]


def _closes(e: Engine, n: int) -> list[Action]:
    """``n`` connections closed before any answer: the actions of each loss, then the packets
    of each new connection (SessionPresent=1)."""
    out: list[Action] = []
    for i in range(n):
        out += e.connection_lost(float(i + 10), 0, "closed")
        out += connect(e, session_present=True)
    return out


def test_a_subscribe_answered_after_a_close_starts_its_count_of_closes_again() -> None:
    """Closes count ``in a row``: a SUBACK clears the filter's count, so a later SUBSCRIBE of
    it is given up only after SUBSCRIBE_TRIES closes more. Mutant: ``suback`` keeping the
    filter's count of closes."""
    e = connected()
    packets(e.subscribe(["x"], 1))
    (again,) = packets(_closes(e, 1))
    e.receive(incoming(_wire.encode_suback(again.packet_id, [1])))
    packets(e.subscribe(["x"], 2))
    out = _closes(e, SUBSCRIBE_TRIES - 1)
    assert not notified(out, "on_error")
    assert e.state.subscriptions == {"x": 2}


def test_an_unsubscribe_answered_after_a_close_starts_its_count_of_closes_again() -> None:
    """As for SUBSCRIBE: an UNSUBACK clears the filter's count of closes. Mutant: ``unsuback``
    keeping it."""
    e = connected()
    packets(e.unsubscribe(["x"]))
    (again,) = packets(_closes(e, 1))
    e.receive(incoming(_wire.encode_unsuback(again.packet_id)))
    packets(e.unsubscribe(["x"]))
    out = _closes(e, SUBSCRIBE_TRIES - 1)
    assert not notified(out, "on_error")
    assert not notified(out, "on_unsubscribed")


def test_only_the_oldest_unanswered_subscribe_is_blamed_for_a_close() -> None:
    """Two SUBSCRIBEs unanswered at each close: the broker reads in order, so only the oldest
    counts the close; after SUBSCRIBE_TRIES closes it alone is refused. Mutant: every
    unanswered SUBSCRIBE counting each close."""
    e = connected()
    packets(e.subscribe(["a"], 1))
    packets(e.subscribe(["b"], 1))
    out = _closes(e, SUBSCRIBE_TRIES)
    (err,) = notified(out, "on_error")
    assert "'a'" in err.description  # type: ignore[attr-defined]
    assert e.state.subscriptions == {"b": 1}


def test_an_unsubscribe_cut_by_a_lost_connection_is_not_sent_again_once_resubscribed() -> None:
    """An UNSUBSCRIBE unanswered at a lost connection, the filter subscribed again since: the
    next connection sends the SUBSCRIBE alone. Mutant: ``requeue_unanswered`` sending the
    UNSUBSCRIBE of a filter subscribed since."""
    e = connected()
    (sub,) = packets(e.subscribe(["a/#"], 1))
    e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
    packets(e.unsubscribe(["a/#"]))  # its UNSUBACK never comes
    packets(e.subscribe(["a/#"], 1))  # nor this SUBACK
    e.connection_lost(1.0, 0, "lost")
    got = packets(connect(e, session_present=True))
    assert [(p.type, p.filters) for p in got] == [(PacketType.SUBSCRIBE, ("a/#",))]


def test_a_subscribe_awaiting_its_suback_keeps_its_packet_id_through_a_wrap() -> None:
    """A SUBSCRIBE never answered holds its packet id while the ids of later ones wrap round
    65535: none of them takes it (its SUBACK would answer the wrong one). Mutant:
    ``_next_sub_id`` skipping only the ids messages hold."""
    e = connected()
    (held,) = packets(e.subscribe(["held"], 1))
    for _ in range(MAX_PACKET_ID):
        (sub,) = packets(e.subscribe(["f"], 1))
        assert sub.packet_id != held.packet_id
        e.receive(incoming(_wire.encode_suback(sub.packet_id, [1])))
