"""The exceptions mqttsession raises.

Kept apart by whose fault it is: the caller's misuse (``MQTTSessionError`` and its
``UsageError`` family), the broker's (``ConnectError``), the state data's (``StateError``).
"""

from __future__ import annotations

__all__ = [
    "MQTTSessionError",
    "StateError",
    "StateLockedError",
    "UsageError",
    "TransitionError",
    "PacketIdsExhausted",
    "ConnectError",
    "PersistenceError",
    "ProtocolViolation",
    "QueueFullError",
    "PublishManyError",
]


class MQTTSessionError(Exception):
    """Base class of every error mqttsession raises."""


class StateError(MQTTSessionError):
    """Session state data or a state file is corrupt, unsupported or invalid."""


class StateLockedError(StateError):
    """The state file is owned by another live process."""


class NewerFormatError(StateError):
    """The state was written by a newer mqttsession: refused, its files left as they are."""


class UsageError(MQTTSessionError, ValueError):
    """The caller asked for something invalid (bad topic, QoS, setting, client id)."""


class TransitionError(MQTTSessionError):
    """A protocol transition that is illegal in the current session state.

    The state is left unchanged when this is raised.
    """


class PacketIdsExhausted(MQTTSessionError):
    """All 65535 packet identifiers are held by unacknowledged messages."""


class ConnectError(MQTTSessionError):
    """The broker refused the connection, or it could not be made in time."""

    def __init__(self, description: str, status_code: int = -1) -> None:
        super().__init__(description)
        self.status_code = status_code
        self.description = description


class PersistenceError(MQTTSessionError, OSError):
    """Writing the state file failed; the message was not accepted."""


class ProtocolViolation(MQTTSessionError):
    """The broker broke the MQTT protocol; ``code`` is the MQTT 5 reason code that says so
    (0x81 Malformed Packet, 0x82 Protocol Error)."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code


class QueueFullError(MQTTSessionError):
    """``publish_*`` found the outgoing queue at MaxQueuedMessages / MaxQueuedBytes with
    QueueFullPolicy=reject (or nothing it may drop): nothing was stored."""

    pending: tuple[object, ...] = ()  # (the engine's actions of its search for room, to run)


class PublishManyError(MQTTSessionError):
    """``Gateway.publish_many`` (or ``AsyncGateway``'s) could not store some of its messages;
    the others are durable and go out. ``ids``: every packet id in order, None for each that
    failed; ``errors``: each failure by its index."""

    def __init__(self, ids: list[int | None], errors: dict[int, Exception]) -> None:
        first = min(errors)
        super().__init__(f"{len(errors)} of {len(ids)} messages not stored; the first (index"
                         f" {first}): {errors[first]}")
        self.ids = ids
        self.errors = errors
