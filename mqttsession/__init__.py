"""mqttsession: durable MQTT sessions on paho-mqtt."""

from __future__ import annotations

import time

from .aio import AsyncSession
from .properties import unpack_properties
from .client import Client
from .codec import SavedState, load_state
from .errors import (
    ConnectError,
    MQTTSessionError,
    NewerFormatError,
    PacketIdsExhausted,
    PersistenceError,
    PublishManyError,
    QueueFullError,
    StateError,
    StateLockedError,
    TransitionError,
    UsageError,
)
from .events import (
    ConnectedEvent,
    DisconnectedEvent,
    ErrorEvent,
    Message,
    MessageAckEvent,
    MessageDroppedEvent,
    MessageEvent,
    PublishRequest,
    QueueStats,
    SessionLostEvent,
    SubscribedEvent,
    UnsubscribedEvent,
)
from .gateway import AsyncGateway, Gateway
from .mesh import Connection, Session, SessionNotFoundError
from .options import Options, TlsOptions

__all__ = [
    "Client",
    "ConnectError",
    "MQTTSessionError",
    "NewerFormatError",
    "PacketIdsExhausted",
    "PersistenceError",
    "PublishManyError",
    "QueueFullError",
    "SavedState",
    "StateError",
    "StateLockedError",
    "TransitionError",
    "UsageError",
    "ConnectedEvent",
    "DisconnectedEvent",
    "ErrorEvent",
    "Message",
    "MessageAckEvent",
    "MessageDroppedEvent",
    "MessageEvent",
    "unpack_properties",
    "QueueStats",
    "PublishRequest",
    "SessionLostEvent",
    "SubscribedEvent",
    "UnsubscribedEvent",
    "load_state",
    "session_expired",
    "Options",
    "TlsOptions",
    "Connection",
    "Session",
    "SessionNotFoundError",
    "AsyncSession",
    "Gateway",
    "AsyncGateway",
]

__version__ = "0.1.0"


def session_expired(state_data: str, now: float | None = None) -> bool | None:
    """MQTT 5 client-side expiry of a saved session: True, False, or None when unknowable.

    None for MQTT 3.1.1 and when the clock reads earlier than the recorded disconnect.
    ``StateError`` on bad state data. An estimate: it uses the interval the session holds,
    which a restart that set another ``SessionExpInterval`` and never connected has already
    changed (the broker still applies the one it last got); SessionPresent decides.
    """
    return load_state(state_data).expired(time.time() if now is None else now)
