"""Event objects passed, one each, to the Client's ``on_*`` callbacks, and message views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import quick_init
from .state import IncomingMessage, OutgoingMessage, SessionLost

__all__ = [
    "Message",
    "ConnectedEvent",
    "DisconnectedEvent",
    "MessageEvent",
    "MessageAckEvent",
    "SubscribedEvent",
    "UnsubscribedEvent",
    "SessionLostEvent",
    "ErrorEvent",
    "MessageDroppedEvent",
    "QueueStats",
    "PublishRequest",
    "DIRECTION_CLIENT",
    "DIRECTION_SERVER",
]

DIRECTION_CLIENT = 0  # the ack was for a message the client sent (IPWorks: 0)
DIRECTION_SERVER = 1  # the ack was for a message the server sent (IPWorks: 1)


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    """An item of ``incoming_messages`` / ``outgoing_messages``."""

    packet_id: int
    topic: str
    qos: int
    message: bytes
    retained: bool
    duplicate: bool
    properties: bytes = b""
    """MQTT 5 properties, packed as on the wire (``b""``: none); read them with
    ``mqttsession.unpack_properties``."""

    @classmethod
    def outgoing(cls, m: OutgoingMessage) -> Message:
        return cls(m.packet_id, m.topic, m.qos, m.payload, m.retain, m.sent, m.properties)

    @classmethod
    def incoming(cls, m: IncomingMessage) -> Message:
        return cls(m.packet_id, m.topic, m.qos, m.payload, m.retain, m.dup, m.properties)


@quick_init
@dataclass(frozen=True, slots=True)
class ConnectedEvent:
    """``on_connected``: the CONNACK's code (0: accepted), its description, SessionPresent,
    and the server (``host:port``) that answered (with ``FailoverServers``, whichever did)."""

    status_code: int
    description: str
    session_present: bool
    server: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    status_code: int  # 0 for a clean close
    description: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageEvent:
    """``on_message_in`` / ``on_message_out``; packet_id is -1 for QoS 0 (IPWorks)."""

    packet_id: int
    topic: str
    qos: int
    message: bytes
    retained: bool
    duplicate: bool
    properties: bytes = b""
    """MQTT 5 properties, packed as on the wire (``b""``: none); ``mqttsession.unpack_properties``
    makes them a paho ``Properties``."""


@quick_init
@dataclass(frozen=True, slots=True)
class MessageAckEvent:
    packet_id: int
    direction: int  # DIRECTION_CLIENT or DIRECTION_SERVER
    response_code: int


@quick_init
@dataclass(frozen=True, slots=True)
class SubscribedEvent:
    topic_filter: str
    qos: int
    response_code: int  # 0-2 granted QoS, 128+ failure


@quick_init
@dataclass(frozen=True, slots=True)
class UnsubscribedEvent:
    topic_filter: str
    response_code: int


@quick_init
@dataclass(frozen=True, slots=True)
class SessionLostEvent:
    """The broker answered SessionPresent=0 while the client held session state.

    republished: sent but unconfirmed, published again as new messages (new packet ids, DUP=0);
    possible_duplicates: those of them that were past PUBREC (``ReleasedOnSessionLost=republish``:
    a broker that delivered them on PUBLISH delivers them twice; one that delivers on PUBREL
    would otherwise have lost them); dropped: given up (``RepublishOnSessionLost=False``, or
    past PUBREC with ``ReleasedOnSessionLost=drop``); queued: never sent, sent as usual;
    delivered_incoming: QoS 2 messages received and awaiting PUBREL, handed to
    ``on_message_in`` since the broker will not send them again; resubscribed: the
    subscriptions sent again.
    """

    republished: tuple[Message, ...]
    dropped: tuple[Message, ...]
    queued: tuple[Message, ...]
    delivered_incoming: tuple[Message, ...]
    resubscribed: tuple[tuple[str, int], ...]
    expired: bool  # the client's clock judged the saved session expired (and the broker agreed)
    possible_duplicates: tuple[Message, ...] = ()

    @classmethod
    def of(cls, lost: SessionLost, expired: bool) -> SessionLostEvent:
        return cls(
            tuple(Message.outgoing(m) for m in lost.republished),
            tuple(Message.outgoing(m) for m in lost.dropped),
            tuple(Message.outgoing(m) for m in lost.queued),
            tuple(Message.incoming(m) for m in lost.delivered_incoming),
            lost.resubscribed,
            expired,
            tuple(Message.outgoing(m) for m in lost.possible_duplicates),
        )


@quick_init
@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error_code: int
    description: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageDroppedEvent:
    """``on_message_dropped``: a QoS 1/2 message left the session without being delivered.

    ``reason``: ``queue-full`` (QueueFullPolicy=drop-oldest made room), ``expired``,
    ``too-large`` (over the broker's Maximum Packet Size) or ``session-lost`` (the broker forgot
    the session and the settings drop what it may have had)."""

    topic: str
    qos: int
    seq: int
    reason: str


@quick_init
@dataclass(frozen=True, slots=True)
class QueueStats:
    """``Client.queue_stats()``: the outgoing QoS 1/2 messages the session holds.

    ``bytes``: their payloads, topics and properties; ``oldest_age``: seconds since the oldest
    was published (None with none held, or when it was published before this process restored
    the session); ``dropped`` / ``expired``: removed without delivery since the client was made
    or restored."""

    messages: int
    bytes: int
    oldest_age: float | None
    dropped: int
    expired: int


@dataclass(frozen=True)
class PublishRequest:
    """One message for ``publish_many`` (a ``(topic, qos, data)`` tuple works too):
    ``retain`` None takes the ``Retain`` setting; ``properties`` (MQTT 5) a paho
    ``Properties(PacketTypes.PUBLISH)``."""

    topic: str
    qos: int
    payload: bytes | str
    retain: bool | None = None
    properties: Any = None
