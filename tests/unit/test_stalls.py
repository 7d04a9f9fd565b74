"""``stalls.HeadCloses``: connections that ended with no ack, the same message first in flight."""

from __future__ import annotations

from mqttsession.state import OutgoingMessage, Phase
from mqttsession.stalls import HeadCloses, oldest_publish


def test_counts_closes_in_a_row_of_one_head_without_acks() -> None:
    h = HeadCloses()
    assert [h.closed(7), h.closed(7), h.closed(7)] == [1, 2, 3]
    assert h.closed(8) == 1  # another message first: a new count
    h.acked = True
    assert h.closed(8) == 0  # an ack came: the broker reads the stream
    assert h.closed(8) == 1
    assert h.closed(None) == 0  # nothing in flight


def test_the_oldest_publish_skips_messages_past_their_pubrec() -> None:
    """A message awaiting PUBCOMP is not a PUBLISH in flight: the head is the oldest other one;
    a seq in flight with no message (removed) is skipped too."""
    out = {1: OutgoingMessage(1, 5, "a", b"x", 2, phase=Phase.AWAIT_PUBCOMP),
           2: OutgoingMessage(2, 6, "b", b"y", 1, phase=Phase.AWAIT_PUBACK)}
    assert oldest_publish([1, 2], out) == 2
    assert oldest_publish([3, 2, 1], out) == 2
    assert oldest_publish([1], out) is None
