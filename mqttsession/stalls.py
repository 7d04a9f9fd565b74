"""A message the broker closes the connection on: the oldest PUBLISH in flight when a
connection ends with no ack of ours answered, the same one several times in a row (an MQTT
3.1.1 broker can refuse a message it will not take, too large, a QoS or retain it does not
allow, a topic too deep, only by closing; resent first at each reconnect, it holds the queue
up). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .state import OutgoingMessage, Phase

__all__ = ["HeadCloses", "oldest_publish"]


def oldest_publish(inflight: Iterable[int], outgoing: Mapping[int, OutgoingMessage]
                   ) -> int | None:
    """The seq of the oldest message in flight whose PUBLISH (not PUBREL) awaits its ack."""
    return min((s for s in inflight if (m := outgoing.get(s)) is not None
                and m.phase is not Phase.AWAIT_PUBCOMP), default=None)


class HeadCloses:
    """Counts the connections that ended with no PUBACK / PUBREC / PUBCOMP received while
    the same message was the oldest PUBLISH in flight."""

    def __init__(self) -> None:
        self.acked = False  # an ack came on the current connection
        self.seq = 0  # the oldest PUBLISH in flight when the last connections ended
        self.count = 0  # how many in a row

    def closed(self, seq: int | None) -> int:
        """A connection ended, ``seq`` the oldest PUBLISH in flight (None: none); how many
        connections in a row ended with it so and no ack (0: not this one's)."""
        if self.acked or seq is None:
            self.seq, self.count = 0, 0
        elif seq == self.seq:
            self.count += 1
        else:
            self.seq, self.count = seq, 1
        self.acked = False
        return self.count
