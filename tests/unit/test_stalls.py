"""``stalls.HeadCloses``: connections that ended with no ack, the same message first in flight."""

from __future__ import annotations

from mqttsession.stalls import HeadCloses


def test_counts_closes_in_a_row_of_one_head_without_acks() -> None:
    h = HeadCloses()
    assert [h.closed(7), h.closed(7), h.closed(7)] == [1, 2, 3]
    assert h.closed(8) == 1  # another message first: a new count
    h.acked = True
    assert h.closed(8) == 0  # an ack came: the broker reads the stream
    assert h.closed(8) == 1
    assert h.closed(None) == 0  # nothing in flight
