"""Event objects passed, one each, to the Client's ``on_*`` callbacks, and message views.

Each ``on_*`` attribute of ``Client`` takes a callable with ONE argument, its own event class
(``Callable[[MessageEvent], None] | None`` ...; None: no callback). Callbacks never run under
the session's lock, so they may call back into the client (``publish_*``, ``subscribe``,
``ack``, ``config``), but not ``flush()`` (it raises there) and they should not block: most of
them run on the **network thread**, the one that reads the socket and writes the
acknowledgements (paho's thread for a ``Client``; the event loop's thread for an
``AsyncSession``, whose socket is driven by the loop). While a callback runs, no other packet
of that connection is processed.

========================  =========================  ====================================================
attribute                 event                      thread
========================  =========================  ====================================================
``on_connected``          ``ConnectedEvent``         network thread (``connect()`` waits for it)
``on_disconnected``       ``DisconnectedEvent``      network thread, on a clean close too
                                                     (``disconnect()`` / ``close()`` wait for it; an
                                                     ``AsyncSession``'s: the loop's thread or an
                                                     executor thread)
``on_message_in``         ``MessageEvent``           network thread
``on_message_out``        ``MessageEvent``           network thread (QoS 1/2: on the final ack); QoS 0:
                                                     the thread calling ``publish_*``
``on_message_ack``        ``MessageAckEvent``        network thread; with ManualAck, ``DIRECTION_SERVER``
                                                     fires in the thread calling ``ack()``
``on_subscribed``         ``SubscribedEvent``        network thread
``on_unsubscribed``       ``UnsubscribedEvent``      network thread
``on_session_lost``       ``SessionLostEvent``       network thread, after ``on_connected``
``on_message_dropped``    ``MessageDroppedEvent``    where the queue moved on: the network thread, or
                                                     the thread calling ``publish_*`` (always for
                                                     ``queue-full``; for a disk-queue batch of
                                                     several threads, the one that stored it)
``on_error``              ``ErrorEvent``             where the fault was found: the network thread, a
                                                     publisher, the ``mqttsession-sync`` timer thread
                                                     (``SessionSync=interval`` while disconnected), or
                                                     the ``mqttsession-acksync`` thread (a read batch's
                                                     sync that failed after its connection was lost)
========================  =========================  ====================================================

A callback that raises is logged (``mqttsession`` logger, with its traceback) and reported
through ``on_error``; the session goes on (SystemExit and KeyboardInterrupt too, except in the
main thread, where they end the program as ever). An ``on_message_in`` that raises has still taken its
message: without ManualAck it is acknowledged all the same (not delivered again); to have it
again, use ManualAck and ``ack()`` only what was handled.
"""

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
    """``on_connected``: a CONNACK arrived. Network thread.

    ``status_code``: 0 accepted, else the broker's refusal (MQTT 3.1.1 return code or MQTT 5
    reason code); ``session_present``: the broker still held the session (SessionPresent=1);
    ``server``: the ``host:port`` that answered (with ``FailoverServers``, whichever did).
    Calling ``restore_session`` here resumes a saved session on this connection.
    """

    status_code: int
    description: str
    session_present: bool
    server: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    """``on_disconnected``: the connection ended; ``status_code`` 0 for a clean close
    (``disconnect()``), else why it was lost (the client reconnects by itself unless
    ``AutoReconnect=False``). Network thread, or the thread that closed it."""

    status_code: int  # 0 for a clean close
    description: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageEvent:
    """``on_message_in`` (a message received: QoS 0/1 on PUBLISH, QoS 2 on PUBREL, before its
    acknowledgement) / ``on_message_out`` (a message sent and fully acknowledged, not
    refused; QoS 0 once written). ``packet_id`` is -1 for QoS 0 (IPWorks). Network thread (``on_message_out`` for
    QoS 0: the publishing thread). ``duplicate``: received, the PUBLISH's DUP flag; sent
    (``on_message_out``, ``outgoing_messages``), the message went out before, so a PUBLISH of
    it written again carries DUP=1 (in ``on_message_out`` always True for QoS 1 / 2)."""

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
    """``on_message_ack``: a QoS 1/2 flow ended. ``direction``: ``DIRECTION_CLIENT`` (0, a
    message this client sent: PUBACK or PUBCOMP received, ``response_code`` the broker's reason
    code) or ``DIRECTION_SERVER`` (1, a message received, acknowledged by this client). Network
    thread; with ManualAck, ``DIRECTION_SERVER`` fires in the thread calling ``ack()``."""

    packet_id: int
    direction: int  # DIRECTION_CLIENT or DIRECTION_SERVER
    response_code: int


@quick_init
@dataclass(frozen=True, slots=True)
class SubscribedEvent:
    """``on_subscribed``: one filter of a SUBACK (a SUBSCRIBE with several filters gives one
    event each). ``response_code``: the granted QoS 0-2, or 0x80 and above for a refusal.
    Network thread."""

    topic_filter: str
    qos: int
    response_code: int  # 0-2 granted QoS, 128+ failure


@quick_init
@dataclass(frozen=True, slots=True)
class UnsubscribedEvent:
    """``on_unsubscribed``: one filter of an UNSUBACK (``response_code``: MQTT 5 reason code,
    0 on MQTT 3.1.1). Network thread."""

    topic_filter: str
    response_code: int


@quick_init
@dataclass(frozen=True, slots=True)
class SessionLostEvent:
    """The broker answered SessionPresent=0 while the client held session state that a
    broker accepted before (never for a session's first accepted connection).

    republished: sent but unconfirmed, published again as new messages (new packet ids, DUP=0);
    possible_duplicates: those of them that were past PUBREC (``ReleasedOnSessionLost=republish``:
    a broker that delivered them on PUBLISH delivers them twice; one that delivers on PUBREL
    would otherwise have lost them); dropped: given up (``RepublishOnSessionLost=False``, or
    past PUBREC with ``ReleasedOnSessionLost=drop``); queued: never sent, sent as usual;
    delivered_incoming: QoS 2 messages received and awaiting PUBREL, handed to
    ``on_message_in`` since the broker will not send them again; resubscribed: the
    subscriptions sent again.

    Network thread, after ``on_connected`` and before anything is sent on the new connection.
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
    """``on_error``: a fault the session handled (a state file write that failed, a protocol
    violation by the broker, a refused subscription, a callback that raised...).
    ``error_code``: an errno, an MQTT reason code, or -1. The thread that found it: the network
    thread, a publisher, the ``mqttsession-sync`` timer thread (interval, disconnected), or the
    ``mqttsession-acksync`` thread (a read batch's sync that failed once its connection was gone)."""

    error_code: int
    description: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageDroppedEvent:
    """``on_message_dropped``: a QoS 1/2 message left the session without being delivered.

    ``reason``: ``queue-full`` (QueueFullPolicy=drop-oldest made room), ``expired``,
    ``too-large`` (over the broker's Maximum Packet Size), ``session-lost`` (the broker forgot
    the session and the settings drop what it may have had), ``unsupported`` (over the
    broker's Maximum QoS, or retained where it takes no retained messages: MQTT 5 CONNACK) or
    ``refused`` (an MQTT 5 PUBACK / PUBREC reason code of 0x80 or more). ``seq``: the message's sequence
    number in the session. Where the queue moved on: the network thread, or the thread calling
    ``publish_*`` (always for ``queue-full``)."""

    topic: str
    qos: int
    seq: int
    reason: str


@quick_init
@dataclass(frozen=True, slots=True)
class QueueStats:
    """``Client.queue_stats()``: the outgoing QoS 1/2 messages the session holds.

    ``bytes``: their payloads, topics and properties; ``oldest_age``: seconds since the oldest
    was published, counted across clock jumps as its expiry is (None with none held, or when
    its publish time is unknown: a file older than publish times); ``dropped`` / ``expired``:
    removed without delivery since the client was made or restored (``dropped`` also counts
    messages lost to a damaged disk-queue segment, once the queue reaches it)."""

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
