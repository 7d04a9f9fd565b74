"""What the session engine returns (its actions), its connection states and its settings.

The driver carries a list of actions out in order; see ``engine`` for what the order means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Union

from ._wire import PacketType
from .events import MessageEvent
from .records import quick_init
from .state import Record

__all__ = ["PACKET_COST", "Action", "ConnState", "Deliver", "EngineSettings", "Notify", "Persist",
           "Write"]

# the memory a queued packet takes beside its bytes (paho's queue entry and its info: ~250;
# QoS0BacklogBytes counts it)
PACKET_COST: Final = 256


@quick_init
@dataclass(frozen=True, slots=True)
class Persist:
    """Make ``records`` durable. ``records`` empty: make those written so far durable
    (``sync``) or write the lazy ones (``sync`` False). ``force``: synced at once even where
    the driver defers a publish's sync (SessionSync=interval: a packet-id reservation).
    ``ack``: only the acknowledgements after it depend on it (points 2, 3, 4): a PUBLISH
    written after it in a read batch need not wait for its sync. ``batched``: nothing but
    those acknowledgements does (no delivery): in a read batch it may wait in memory for the
    batch's sync, which writes the batch's such records with one ``write``."""

    records: tuple[Record, ...]
    sync: bool = False
    lazy: bool = False
    force: bool = False
    ack: bool = False
    batched: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class Write:
    """One encoded MQTT packet for the current connection."""

    packet: bytes
    kind: PacketType
    packet_id: int = 0
    qos: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class Deliver:
    """A received message for ``on_message_in``."""

    message: MessageEvent


@quick_init
@dataclass(frozen=True, slots=True)
class Notify:
    """An ``on_*`` event (``name`` is the callback attribute)."""

    name: str
    event: object


Action = Union[Persist, Write, Deliver, Notify]


class ConnState(enum.Enum):
    """Where the connection stands: one value instead of a set of flags."""

    DISCONNECTED = "disconnected"  # no connection, none being made
    CONNECTING = "connecting"  # a connection is being made or remade (no CONNACK yet)
    RESUMING = "resuming"  # CONNACK accepted; on_connected runs, the resume plan is not sent
    CONNECTED = "connected"  # resumed: messages flow
    CLOSING = "closing"  # disconnect() asked for it


@dataclass
class EngineSettings:
    """The settings the engine reads (the Client's ``config()`` writes them)."""

    receive_maximum: int = 0  # MQTT 5: incoming QoS 1/2 flows the CONNECT let the broker
    # leave open (0: not checked)
    max_inflight: int = 20  # mosquitto's default max_inflight_messages: beyond it a 3.1.1
    # broker may discard a QoS 1 message yet PUBACK it (3.1.1 PUBACK has no reason code)
    republish_interval: float = 0.0  # MQTT 3.1.1: resend unacknowledged messages after this
    republish_on_session_lost: bool = True
    released_on_session_lost: str = "republish"  # or "drop": QoS 2 past PUBREC, SessionPresent 0
    # after moving to another server: the last this many QoS 1 messages the one before
    # acknowledged are published again (a cluster node that died with them; 0: off)
    failover_republish: int = 0
    max_message_size: int = 0  # the largest PUBLISH packet accepted, in bytes; 0: MQTT's limit
    max_queued_messages: int = 0  # held outgoing QoS 1/2 messages at most; 0: no limit
    max_queued_bytes: int = 256 * 1024 * 1024  # their payloads, topics, properties (0: none)
    # QoS 0 PUBLISH bytes queued for a link that is behind (a stall); past it they are dropped
    qos0_backlog_bytes: int = 64 * 1024 * 1024  # (0: no bound, as plain paho)
    queue_full_policy: str = "reject"  # or "drop-oldest" (the oldest never sent goes)
    drain_rate_limit: int = 0  # new PUBLISHes per second at most (0: no limit)
    queue_in_memory: int = 1000  # never-sent messages held in memory; more go to the disk
    # queue of the state file (0: all in memory)
    # SessionSync=interval with a state file: packet ids are handed out from reservations of
    # this many, each synced before its ids leave (``state.Reserved``); 0: off
    reserve_packet_ids: int = 0
