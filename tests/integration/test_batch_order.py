"""The order ``PahoConnection.write`` keeps while a read batch holds packets (the adapter alone,
no broker): PUBLISHes leave in the order written, whichever of them waited for the batch's sync;
acknowledgements in theirs; a PUBLISH passes held acknowledgements only [MQTT-4.6.0-1..4]."""

from __future__ import annotations

import threading
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

from mqttsession._paho import PahoConnection
from mqttsession._wire import PacketType


class _Hooks:
    """The driver's side, as far as ``write`` and a batch's end ask it."""

    def __init__(self) -> None:
        self.publisher_waits = False

    def _hook_publisher_waits(self) -> bool:
        return self.publisher_waits

    def _hook_batch_waits(self) -> bool:
        return False

    def _hook_batch_end(self) -> None:
        return None


def _conn(hooks: _Hooks) -> PahoConnection:
    conn = PahoConnection(hooks, "order", 4, False)  # type: ignore[arg-type]
    conn._batch, conn._batch_publishes = [], []  # a read batch under way on this thread
    conn._batch_thread = threading.current_thread()
    return conn


def _queued(conn: PahoConnection) -> list[tuple[int, bytes]]:
    return [(p["command"] >> 4, p["packet"]) for p in conn._out_packet]


def _publish(n: int) -> tuple[bytes, int, int, int]:
    return b"P%d" % n, PacketType.PUBLISH, n, 1


def test_publishes_keep_their_order_when_a_later_one_waits_for_the_sync() -> None:
    """PUBLISH 1 needs nothing of the batch; PUBLISH 2 needs a record it wrote (a packet id
    given at send time): 2 waits for the sync, and 1 must not be overtaken by it, also when
    the CONNACK's round releases the held packets before the batch ends (``release_held``)."""
    conn = _conn(_Hooks())
    conn.write(b"R9", PacketType.PUBREL, 9, 1)  # waits for the batch's sync (point 2)
    conn.write(*_publish(1))
    conn.hold_publishes()
    conn.write(*_publish(2))
    assert _queued(conn) == []  # all of them wait for now
    conn.release_held()
    conn._end_batch(MQTTErrorCode.MQTT_ERR_SUCCESS)
    kinds = _queued(conn)
    publishes = [p for k, p in kinds if k == PacketType.PUBLISH]
    assert publishes == [b"P1", b"P2"]
    assert (PacketType.PUBREL, b"R9") in kinds


def test_a_waiting_publisher_passes_held_acknowledgements_only() -> None:
    """Under SessionSync=always another thread's PUBLISH leaves at once during a batch, unless
    one of the batch's own PUBLISHes waits to go first."""
    hooks = _Hooks()
    hooks.publisher_waits = True
    conn = _conn(hooks)
    conn.write(b"R9", PacketType.PUBREL, 9, 1)
    out: list[Any] = []
    t = threading.Thread(target=lambda: (conn.write(*_publish(1)), out.append(_queued(conn))))
    t.start()
    t.join()
    assert out == [[(PacketType.PUBLISH, b"P1")]]  # queued for the network thread at once
    conn.write(*_publish(2))  # the batch's own: at its end
    t = threading.Thread(target=lambda: conn.write(*_publish(3)))
    t.start()
    t.join()
    assert [p for _, p in _queued(conn)] == [b"P1"]  # 3 waits behind 2
    conn._queue_publishes(keep=False)
    assert [p for _, p in _queued(conn)] == [b"P1", b"P2", b"P3"]
