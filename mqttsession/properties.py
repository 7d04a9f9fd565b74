"""MQTT 5 properties through paho's public ``Properties``: packed bytes in and out, and the
CONNECT / DISCONNECT properties the session sets (Session Expiry Interval, Receive Maximum)."""

from __future__ import annotations

from typing import Any, Final

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .errors import UsageError
from .validation import check_sendable_text

__all__ = [
    "checked_properties", "connect_properties", "disconnect_properties", "disconnect_reason",
    "expiry_properties", "pack_properties", "publish_properties", "server_reference",
    "unpack_properties",
]

# PUBLISH properties a client may not put in a message the session stores and resends:
# Subscription Identifier [MQTT-3.3.4-6]; a Topic Alias names a mapping of one connection
# [MQTT-3.3.2-7] and must not exceed that connection's Topic Alias Maximum [MQTT-3.3.2-9]
_NOT_STORABLE: Final = {"SubscriptionIdentifier": "a client must not send it [MQTT-3.3.4-6]",
                        "TopicAlias": "an alias holds for one connection only [MQTT-3.3.2-7],"
                                      " and a stored message is resent on later ones"}


def pack_properties(props: Properties | None) -> bytes:
    """MQTT 5 properties as packed on the wire (b"" for none)."""
    if props is None:
        return b""
    packed = props.pack()  # type: ignore[no-untyped-call]
    return b"" if packed == b"\x00" else bytes(packed)


def publish_properties(props: object) -> bytes:
    """The packed properties of a message to publish: paho ``Properties`` made for PUBLISH,
    without what a stored message cannot carry (``UsageError``)."""
    if not isinstance(props, Properties):
        raise UsageError(f"properties must be paho Properties, got {type(props).__name__}")
    if props.packetType != PacketTypes.PUBLISH:
        kind = PacketTypes.Names[props.packetType] if props.packetType in range(
            len(PacketTypes.Names)) else props.packetType
        raise UsageError(f"properties are for {kind}, not PUBLISH: make them with"
                         " Properties(PacketTypes.PUBLISH)")
    for name, why in _NOT_STORABLE.items():
        if hasattr(props, name):
            raise UsageError(f"a message to publish must not carry a {name}: {why}")
    if getattr(props, "MessageExpiryInterval", None) == 0:  # expired before it was stored
        raise UsageError("MessageExpiryInterval 0: the message would never be sent (leave it"
                         " unset for no expiry)")
    _check_strings(props)
    try:
        return pack_properties(props)
    except Exception as exc:  # a value paho cannot pack (set past its checks)
        raise UsageError(f"properties cannot be packed: {exc}") from None


def _check_strings(props: Properties) -> None:
    """The UTF-8 strings of PUBLISH properties as a broker takes them (mosquitto drops the
    connection over a control character); a Response Topic without wildcards [MQTT-3.3.2-14]."""
    for name in ("ContentType", "ResponseTopic"):
        if hasattr(props, name):
            check_sendable_text(name, getattr(props, name))
    topic = getattr(props, "ResponseTopic", None)
    if isinstance(topic, str) and ("+" in topic or "#" in topic):
        raise UsageError(f"ResponseTopic {topic!r} must not contain wildcards")
    for pair in getattr(props, "UserProperty", ()):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise UsageError(f"a UserProperty must be a (name, value) pair, got {pair!r:.60}")
        for text in pair:
            check_sendable_text("UserProperty", text)


def unpack_properties(data: bytes, packet_type: int = PacketTypes.PUBLISH) -> Properties | None:
    """The inverse of ``pack_properties``."""
    if not data:
        return None
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    props.unpack(data)  # type: ignore[no-untyped-call]
    return props


def expiry_properties(packet_type: int, session_expiry_interval: int | None) -> Properties | None:
    """CONNECT / DISCONNECT properties carrying the Session Expiry Interval (absent means 0)."""
    if session_expiry_interval is None:
        return None
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_interval
    return props


def connect_properties(
    session_expiry_interval: int | None, receive_maximum: int | None = None,
    others: Properties | None = None, topic_alias_maximum: int = 0,
) -> Properties | None:
    """MQTT 5 CONNECT properties: Session Expiry Interval, Receive Maximum (how many
    incoming QoS 1/2 flows the broker may leave unacknowledged at once [MQTT-3.3.4-9]) and
    Topic Alias Maximum, with the application's ``others`` (``Client.connect_properties``,
    checked)."""
    props = expiry_properties(PacketTypes.CONNECT, session_expiry_interval)
    if receive_maximum is not None or others is not None or topic_alias_maximum:
        if props is None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if receive_maximum is not None:
            props.ReceiveMaximum = receive_maximum
        if topic_alias_maximum:  # (``ClientTopicAliasMax``; absent means 0 [MQTT-3.1.2-27])
            props.TopicAliasMaximum = topic_alias_maximum
        for name in _named(others):
            setattr(props, name, getattr(others, name))
    return props


# CONNECT properties the session sets itself, or whose consequences it does not handle
_CONNECT_NOT_TAKEN: Final = {
    "SessionExpiryInterval": "config('SessionExpInterval=...') sets it",
    "ReceiveMaximum": "config('ReceiveMaximum=...') sets it",
    "TopicAliasMaximum": "config('ClientTopicAliasMax=...') sets it",
    "AuthenticationMethod": "enhanced authentication (AUTH packets) is not supported",
    "AuthenticationData": "enhanced authentication (AUTH packets) is not supported",
}


def _named(props: Properties | None) -> list[str]:
    """The attribute names (paho's, without spaces) of the properties set in ``props``."""
    if props is None:
        return []
    return [n for n in (n.replace(" ", "") for n in props.names) if hasattr(props, n)]


def checked_properties(props: object, packet_type: int, protocol_version: int
                       ) -> Properties | None:
    """``Client.will_properties`` (``PacketTypes.WILLMESSAGE``) or ``connect_properties``
    (``PacketTypes.CONNECT``) as paho takes them: ``UsageError`` for anything else, for a
    CONNECT property the session sets or cannot honour, and for properties under 3.1.1."""
    if props is None:
        return None
    will = packet_type == PacketTypes.WILLMESSAGE
    name = "will_properties" if will else "connect_properties"
    if not isinstance(props, Properties) or props.packetType != packet_type:
        raise UsageError(f"{name} must be paho's Properties(PacketTypes."
                         f"{'WILLMESSAGE' if will else 'CONNECT'}), got {props!r}")
    for prop in () if will else _named(props):
        if prop in _CONNECT_NOT_TAKEN:
            raise UsageError(f"{name}: {prop} is not taken: {_CONNECT_NOT_TAKEN[prop]}")
    if protocol_version != 5:
        raise UsageError(f"{name} need MQTT 5 (protocol_version=5)")
    return props


def disconnect_properties(session_expiry_interval: int | None) -> Properties | None:
    return expiry_properties(PacketTypes.DISCONNECT, session_expiry_interval)


def disconnect_reason(code: int) -> ReasonCode | None:
    """A DISCONNECT's paho ``ReasonCode`` (None for 0x00, Normal disconnection, which paho
    sends when given none)."""
    return ReasonCode(PacketTypes.DISCONNECT, identifier=code) if code else None


def server_reference(props: Any) -> str | None:
    """The Server Reference of a DISCONNECT's paho ``Properties`` (MQTT 5 4.11), or None."""
    ref = getattr(props, "ServerReference", None)
    return ref if isinstance(ref, str) else None
