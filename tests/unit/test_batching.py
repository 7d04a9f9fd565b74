"""``QoS0BacklogBytes``'s count of the memory a connection's unwritten QoS 0 PUBLISHes take
(``batching.ReadBatches.unsent_qos0``: their bytes and ``PACKET_COST`` each) through every way a packet goes: held with a read batch,
released into paho's queue, written or dropped by paho, dropped with the batch (the connection
lost) or with a failed sync. Each is counted once and uncounted once (a count that drifted up
would drop QoS 0 for good on a healthy link). A ``PahoConnection`` never connected: no
network."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from mqttsession import _wire
from mqttsession.actions import PACKET_COST
from mqttsession._paho import PahoConnection
from mqttsession._wire import PacketType


class _Hooks:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.waits = False  # SessionSync=always: a publisher waits for its record's sync

    def _hook_publisher_waits(self) -> bool:
        return self.waits

    def _hook_failure(self, exc: Exception, context: str) -> None:
        self.failures.append(context)


def _conn() -> tuple[PahoConnection, _Hooks]:
    hooks = _Hooks()
    conn = PahoConnection(hooks, "c", 4, True)  # type: ignore[arg-type]
    conn._batch, conn._batch_publishes = [], []  # a read batch begun, as loop_read does
    conn._batch_thread = conn.loop_thread = threading.current_thread()
    return conn, hooks


def _qos0(n: int) -> bytes:
    return _wire.encode_publish("t", b"x" * n, qos=0, packet_id=None, protocol=4)


def _written_by_paho(conn: PahoConnection) -> None:
    """paho wrote (or dropped) every queued packet: each QoS 0 one's info marked published."""
    for p in list(conn._out_packet):
        if p["info"] is not None:
            p["info"]._set_as_published()
    conn._out_packet.clear()


def test_a_held_qos0_publish_is_counted_once_until_paho_wrote_it() -> None:
    conn, _ = _conn()
    a, b = _qos0(100), _qos0(200)
    conn.write(a, PacketType.PUBLISH, 0, 0)  # joins the batch's PUBLISHes
    conn.hold_publishes()
    conn.write(b, PacketType.PUBLISH, 0, 0)  # held behind the batch's sync
    assert conn.unsent_qos0 == len(a) + len(b) + 2 * PACKET_COST
    conn._queue_publishes(keep=False)
    conn._release()  # (the batch's end: into paho's queue, not counted again)
    assert conn.unsent_qos0 == len(a) + len(b) + 2 * PACKET_COST and len(conn._out_packet) == 2
    _written_by_paho(conn)
    assert conn.unsent_qos0 == 0


def test_held_qos0_publishes_dropped_with_the_batch_are_uncounted() -> None:
    conn, _ = _conn()
    conn.write(_qos0(100), PacketType.PUBLISH, 0, 0)
    conn.hold_publishes()
    conn.write(_qos0(100), PacketType.PUBLISH, 0, 0)
    conn._wait_sync(Future())  # the batch's packets wait for a sync off the loop
    conn._batch = []
    conn.write(_qos0(100), PacketType.PUBLISH, 0, 0)  # (behind it)
    assert conn.unsent_qos0 > 0
    conn._drop_held()  # the connection lost
    assert conn.unsent_qos0 == 0


def test_qos0_publishes_held_behind_a_failed_sync_are_uncounted() -> None:
    conn, hooks = _conn()
    conn.hold_publishes()
    conn.write(_qos0(100), PacketType.PUBLISH, 0, 0)
    fut: Future[None] = Future()
    conn._wait_sync(fut)
    fut.set_exception(OSError(5, "EIO"))
    conn._synced(fut)
    assert hooks.failures and conn.unsent_qos0 == 0 and not conn._out_packet


def test_qos0_publishes_held_behind_a_sync_that_worked_are_counted_once() -> None:
    conn, _ = _conn()
    conn.hold_publishes()
    conn.write(_qos0(100), PacketType.PUBLISH, 0, 0)
    fut: Future[Any] = Future()
    conn._wait_sync(fut)
    fut.set_result(None)
    conn._synced(fut)
    assert conn.unsent_qos0 == len(_qos0(100)) + PACKET_COST and len(conn._out_packet) == 1
    _written_by_paho(conn)
    assert conn.unsent_qos0 == 0


def _kinds(conn: PahoConnection) -> list[int]:
    """The kinds of the packets in paho's queue, in order."""
    return [p["command"] >> 4 for p in conn._out_packet]


def _puback(packet_id: int) -> bytes:
    return _wire.encode_ack(PacketType.PUBACK, packet_id, protocol=4)


def _on_other_thread(fn: Any) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join(5)
    assert not t.is_alive()


def test_a_publishing_threads_publish_joins_the_batch_unless_the_publisher_waits() -> None:
    """Another thread's PUBLISH during a read batch goes out with the batch's PUBLISHes (first,
    at its end); with SessionSync=always (the publisher waits) it is queued at once."""
    conn, hooks = _conn()
    _on_other_thread(lambda: conn.write(_qos0(10), PacketType.PUBLISH, 0, 0))
    assert len(conn._batch_publishes or ()) == 1 and not conn._out_packet
    conn, hooks = _conn()
    hooks.waits = True
    _on_other_thread(lambda: conn.write(_qos0(10), PacketType.PUBLISH, 0, 0))
    assert not conn._batch_publishes and len(conn._out_packet) == 1


def test_only_the_network_thread_is_in_the_batch() -> None:
    """``in_batch``: the thread reading the batch, no other (a publisher's records sync now)."""
    conn, _ = _conn()
    seen: list[bool] = []
    _on_other_thread(lambda: seen.append(conn.in_batch()))
    assert conn.in_batch() and seen == [False]


def test_held_qos1_publishes_are_not_counted_as_qos0_backlog() -> None:
    """QoS0BacklogBytes counts QoS 0 PUBLISHes only: a held QoS 1 one neither adds nor, dropped
    with the batch, subtracts."""
    conn, _ = _conn()
    conn.hold_publishes()
    pub = _wire.encode_publish("t", b"x" * 50, qos=1, packet_id=3, protocol=4)
    conn.write(pub, PacketType.PUBLISH, 3, 1)
    assert conn._batch and conn.unsent_qos0 == 0
    conn._drop_held()
    assert conn.unsent_qos0 == 0


def test_hold_publishes_outside_a_batch_holds_nothing() -> None:
    """``hold_publishes`` with no read batch: the next batch's PUBLISHes are not held."""
    conn, _ = _conn()
    conn._batch = conn._batch_publishes = None
    conn.hold_publishes()
    conn._batch, conn._batch_publishes = [], []
    conn.write(_qos0(10), PacketType.PUBLISH, 0, 0)
    assert len(conn._batch_publishes) == 1 and not conn._batch


def test_a_batchs_held_publishes_do_not_hold_the_next_batchs() -> None:
    """Once a batch's held packets are written (no sync pending), the next batch's PUBLISHes
    go first again."""
    conn, _ = _conn()
    conn.hold_publishes()
    conn.write(_qos0(10), PacketType.PUBLISH, 0, 0)
    conn._queue_publishes(keep=False)
    conn._release()
    assert len(conn._out_packet) == 1
    conn._batch, conn._batch_publishes = [], []  # the next read batch
    conn.write(_qos0(10), PacketType.PUBLISH, 0, 0)
    assert len(conn._batch_publishes) == 1 and not conn._batch


def test_release_held_writes_publishes_first_and_the_batch_goes_on() -> None:
    """``release_held``: the batch's PUBLISHes, then its held packets, into paho's queue; the
    packets written after it are held again until the batch's end."""
    conn, _ = _conn()
    conn.write(_puback(1), PacketType.PUBACK, 1, 0)
    conn.write(_qos0(10), PacketType.PUBLISH, 0, 0)
    conn.release_held()
    assert _kinds(conn) == [PacketType.PUBLISH, PacketType.PUBACK]
    conn.write(_puback(2), PacketType.PUBACK, 2, 0)
    conn.write(_qos0(10), PacketType.PUBLISH, 0, 0)
    assert len(conn._out_packet) == 2 and conn._batch and conn._batch_publishes
    conn._queue_publishes(keep=False)
    conn._release()
    assert _kinds(conn) == [PacketType.PUBLISH, PacketType.PUBACK] * 2
