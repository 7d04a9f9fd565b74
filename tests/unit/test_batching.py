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

    def _hook_publisher_waits(self) -> bool:
        return False

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
