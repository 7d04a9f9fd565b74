"""MQTT 5 properties through paho's public ``Properties``: packed bytes in and out, and the
CONNECT / DISCONNECT properties the session sets (Session Expiry Interval, Receive Maximum)."""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "connect_properties", "disconnect_properties", "expiry_properties", "pack_properties",
    "server_reference", "unpack_properties",
]


def pack_properties(props: Properties | None) -> bytes:
    """MQTT 5 properties as packed on the wire (b"" for none)."""
    if props is None:
        return b""
    packed = props.pack()  # type: ignore[no-untyped-call]
    return b"" if packed == b"\x00" else bytes(packed)


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
    session_expiry_interval: int | None, receive_maximum: int | None = None
) -> Properties | None:
    """MQTT 5 CONNECT properties: Session Expiry Interval and Receive Maximum (how many
    incoming QoS 1/2 flows the broker may leave unacknowledged at once [MQTT-3.3.4-9])."""
    props = expiry_properties(PacketTypes.CONNECT, session_expiry_interval)
    if receive_maximum is not None:
        if props is None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = receive_maximum
    return props


def disconnect_properties(session_expiry_interval: int | None) -> Properties | None:
    return expiry_properties(PacketTypes.DISCONNECT, session_expiry_interval)


def server_reference(props: Any) -> str | None:
    """The Server Reference of a DISCONNECT's paho ``Properties`` (MQTT 5 4.11), or None."""
    ref = getattr(props, "ServerReference", None)
    return ref if isinstance(ref, str) else None
