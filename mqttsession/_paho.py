"""The one module that touches paho-mqtt internals.

paho keeps QoS 1/2 session state in memory only (``_out_messages``, ``_in_messages``) and sends
PUBREC before it stores an incoming QoS 2 message. ``PahoConnection`` subclasses paho's Client
and takes the session part away from it: every PUBLISH/PUBACK/PUBREC/PUBREL/PUBCOMP/CONNACK is
decoded here and handed to a ``Hooks`` object (the mqttsession Client) BEFORE the dependent
packet is written, and QoS>0 PUBLISH/PUBREL go out with the packet ids the session model chose.
paho's own ``_out_messages`` / ``_in_messages`` stay empty.

Every private paho access is tagged ``# noqa: SLF001`` so the coupling is greppable.
Verified against paho-mqtt 2.2.0 (``paho/mqtt/client.py`` and ``paho/mqtt/_packet.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Final, Protocol

import paho.mqtt.client as mqtt
try:
    from paho.mqtt import _packet  # noqa: SLF001  (paho's packet decoders, 2.2+)
except ImportError as _exc:  # paho-mqtt 2.0 / 2.1
    raise ImportError("mqttsession needs paho-mqtt>=2.2,<3 (paho.mqtt._packet is missing)") from _exc
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.enums import _ConnectionState  # noqa: SLF001
from paho.mqtt.client import MalformedPacket  # type: ignore[attr-defined]
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ProtocolViolation

__all__ = [
    "Hooks", "PahoConnection", "pack_properties", "unpack_properties", "connect_properties",
    "disconnect_properties", "CLEAN_START_FIRST_ONLY",
]

CLEAN_START_FIRST_ONLY: Final = mqtt.MQTT_CLEAN_START_FIRST_ONLY

log = logging.getLogger(__name__)

_CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
_NAMES: Final = {
    _CONNACK: "CONNACK", _PUBLISH: "PUBLISH", _PUBACK: "PUBACK", _PUBREC: "PUBREC",
    _PUBREL: "PUBREL", _PUBCOMP: "PUBCOMP",
}
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_DROP = MQTTErrorCode.MQTT_ERR_CONN_LOST  # closes the connection without the ack; paho reconnects
_READ_BATCH: Final = 64  # packets read per network-loop round at most
_CLOSED_ON_PURPOSE: Final = (  # paho states after disconnect()
    _ConnectionState.MQTT_CS_DISCONNECTING, _ConnectionState.MQTT_CS_DISCONNECTED,
)


class Hooks(Protocol):
    """What the connection calls on the network thread, each BEFORE the dependent packet."""

    def hook_connack(
        self, rc: int, reason: str, session_present: bool, receive_maximum: int,
        maximum_packet_size: int | None,
    ) -> None: ...

    def hook_publish_in(
        self,
        packet_id: int,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        properties: bytes,
    ) -> bool: ...  # QoS 1: True to send the PUBACK now, False when ``ack()`` sends it

    def hook_pubrel_in(self, packet_id: int) -> bool: ...  # True: PUBCOMP with the read batch

    def hook_puback(self, packet_id: int, reason_code: int) -> None: ...

    def hook_pubrec(self, packet_id: int, reason_code: int) -> bool: ...

    def hook_pubcomp(self, packet_id: int, reason_code: int) -> None: ...

    def hook_connection_reset(self) -> None: ...

    def hook_acks_due(self) -> None: ...

    def hook_packet_id_in_use(self, packet_id: int) -> bool: ...

    def hook_failure(self, exc: Exception, context: str) -> None: ...


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


def _text(topic: bytes | str) -> str:
    return topic if isinstance(topic, str) else topic.decode("utf-8")


_ACK_DECODERS: Final[dict[int, Callable[..., Any]]] = {
    _PUBACK: _packet.decode_puback, _PUBREC: _packet.decode_pubrec,
    _PUBREL: _packet.decode_pubrel, _PUBCOMP: _packet.decode_pubcomp,
}


def _ack(cmd: int, hdr: int, body: bytes | bytearray, proto: Any) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK / PUBREC / PUBREL / PUBCOMP.

    The usual ack is the packet id alone: MQTT 3.1.1 always, MQTT 5 on success without
    properties [MQTT 5 3.4.2.1]. That is read here directly; paho's decoder would build a
    ReasonCode and a Properties object for every ack (a third of its cost per message).
    """
    if len(body) == 2:
        return body[0] << 8 | body[1], 0
    ack = _ACK_DECODERS[cmd](hdr, body, proto)
    return int(ack.mid), int(ack.reason.value)


class PahoConnection(mqtt.Client):
    """paho's Client with the session moved out to ``hooks``."""

    def __init__(
        self,
        hooks: Hooks,
        client_id: str,
        protocol_version: int,
        clean_session: bool,
    ) -> None:
        proto = MQTTProtocolVersion.MQTTv5 if protocol_version == 5 else MQTTProtocolVersion.MQTTv311
        super().__init__(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if protocol_version == 5 else clean_session,
            protocol=proto,
            reconnect_on_failure=True,
        )
        self.hooks = hooks
        # a backstop: an exception in one of our callbacks is logged by paho, never raised
        # into its network thread (which would end it: no reconnect, no events)
        self.suppress_exceptions = True
        # PUBREL / PUBREC / PUBCOMP answered during a read batch, written at its end after
        # hooks.hook_acks_due() (one fsync covers the records of the whole batch)
        self._acks_due: list[tuple[int, int]] = []
        self._clean_start_sent = clean_session  # the flag of the last CONNECT written
        self._connack_seen = False  # on this network connection
        self.enable_logger(logging.getLogger("mqttsession.paho"))

    # ------------------------------------------------------------------ sending

    def send_publish(
        self,
        packet_id: int,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        properties: bytes,
    ) -> bool:
        """Queue a PUBLISH with our packet id and DUP flag; False when there is no socket."""
        props = unpack_properties(properties) if self._protocol == mqtt.MQTTv5 else None  # noqa: SLF001
        rc = self._send_publish(  # noqa: SLF001
            packet_id, topic.encode("utf-8"), payload, qos, retain, dup, None, props
        )
        return rc == _OK

    def send_pubrel(self, packet_id: int) -> bool:
        return self._send_pubrel(packet_id) == _OK  # noqa: SLF001

    def send_puback(self, packet_id: int) -> bool:
        """Queue a PUBACK from any thread (paho's packet queue is a deque and the network
        thread is woken through its socket pair, as for ``publish``)."""
        return self._send_puback(packet_id) == _OK  # noqa: SLF001

    def send_pubcomp(self, packet_id: int) -> bool:
        """Queue a PUBCOMP from any thread (see ``send_puback``)."""
        return self._send_pubcomp(packet_id) == _OK  # noqa: SLF001

    def _ssl_wrap_socket(self, tcp_sock: Any) -> Any:  # noqa: SLF001
        # paho leaves the TCP socket to the garbage collector when the TLS handshake fails
        try:
            return super()._ssl_wrap_socket(tcp_sock)  # noqa: SLF001
        except BaseException:
            tcp_sock.close()
            raise

    def release(self) -> None:
        """Close every socket paho still holds (it leaves its wake-up pair to ``__del__``)."""
        self._reset_sockets()  # noqa: SLF001

    def set_auto_reconnect(self, on: bool) -> None:
        """Whether paho's network thread reconnects after a lost connection."""
        self._reconnect_on_failure = on  # noqa: SLF001

    def in_network_thread(self) -> bool:
        return threading.current_thread() is self._thread  # noqa: SLF001

    def _mid_generate(self) -> int:  # noqa: SLF001  (SUBSCRIBE/UNSUBSCRIBE ids)
        while True:
            mid = super()._mid_generate()  # noqa: SLF001
            if not self.hooks.hook_packet_id_in_use(mid):
                return mid

    def reconnect(self) -> MQTTErrorCode:
        # paho drops unwritten packets here (_out_packet.clear()); the session resends them
        self.hooks.hook_connection_reset()
        self._acks_due.clear()  # for the old connection: the session resends what is needed
        self._connack_seen = False
        return super().reconnect()

    def _send_connect(self, keepalive: int) -> MQTTErrorCode:  # noqa: SLF001
        # the Clean Start / CleanSession flag exactly as paho writes it (it may be "first only")
        if self._protocol == mqtt.MQTTv5:  # noqa: SLF001
            self._clean_start_sent = bool(
                self._clean_start is True  # noqa: SLF001
                or (self._clean_start == CLEAN_START_FIRST_ONLY  # noqa: SLF001
                    and self._mqttv5_first_connect)  # noqa: SLF001
            )
        else:
            self._clean_start_sent = bool(self._clean_session)  # noqa: SLF001
        return super()._send_connect(keepalive)  # noqa: SLF001

    def _violation(self, code: int, what: str) -> MQTTErrorCode:
        """The broker broke the protocol: close the connection (MQTT 5: a DISCONNECT with
        ``code`` first [MQTT-4.13.1-1]), report it, and leave the session as it was."""
        sock = self._sock  # noqa: SLF001
        if self._protocol == mqtt.MQTTv5 and sock is not None:  # noqa: SLF001
            try:
                sock.send(bytes((0xE0, 0x01, code)))  # DISCONNECT, reason code, no properties
            except OSError:
                pass
        self._hook_failed(ProtocolViolation(code, what), "a protocol violation by the broker")
        return _DROP

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:  # noqa: SLF001
        # After a requested DISCONNECT paho closes the socket, and loop_forever calls _loop
        # once more unless loop_stop() came first: paho then logs "Client is not connected"
        # at ERROR. Nothing is wrong then; end the loop the same way, without that record.
        if self._sock is None and self._state in _CLOSED_ON_PURPOSE:  # noqa: SLF001
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        return super()._loop(timeout)  # noqa: SLF001

    # ------------------------------------------------------------------ receiving

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet that is waiting (up to a bound), not just one per round; then
        write the acks that wait for the batch's records to be durable.

        paho sizes its read batch by ``_out_messages`` + ``_in_messages``, which stay empty
        here, so it would read one packet per select() round.
        """
        rc = self._read_batch(max_packets)
        if not self._acks_due:
            return rc
        acks, self._acks_due = self._acks_due, []
        try:
            self.hooks.hook_acks_due()
        except Exception as exc:
            self._hook_failed(exc, "making the session records of received packets durable")
            return self._loop_rc_handle(_DROP) if self._sock is not None else rc  # noqa: SLF001
        if rc == _OK:
            send = {
                _PUBREC: self._send_pubrec,  # noqa: SLF001
                _PUBREL: self._send_pubrel,  # noqa: SLF001
                _PUBCOMP: self._send_pubcomp,  # noqa: SLF001
            }
            for kind, mid in acks:
                send[kind](mid)
        return rc

    def _read_batch(self, max_packets: int) -> MQTTErrorCode:
        for _ in range(max(max_packets, _READ_BATCH)):
            if self._sock is None:  # noqa: SLF001
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()  # noqa: SLF001
            if rc > 0:
                return self._loop_rc_handle(rc)  # noqa: SLF001
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return _OK
        return _OK

    def _packet_handle(self) -> MQTTErrorCode:  # noqa: SLF001
        pkt = self._in_packet  # noqa: SLF001
        hdr: int = pkt["command"]
        body: bytes | bytearray = pkt["packet"]
        proto = self._protocol  # noqa: SLF001
        cmd = hdr & 0xF0
        if cmd != _CONNACK and not self._connack_seen:
            return self._violation(0x82, f"a {_NAMES.get(cmd, f'type {hdr >> 4}')} packet before"
                                         " CONNACK [MQTT-3.2.0-1]: not an MQTT broker there?")
        if cmd not in (_CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP):
            return super()._packet_handle()  # noqa: SLF001
        if cmd == _PUBLISH and hdr & 0x06 == 0x06:
            return self._violation(0x81, "PUBLISH with QoS bits 11 [MQTT-3.3.1-4]")
        if cmd == _CONNACK:
            if self._connack_seen:
                return self._violation(0x82, "a second CONNACK on one connection")
            self._connack_seen = True
            if len(body) >= 2 and body[0] & 0xFE:
                return self._violation(0x81, "CONNACK with reserved flag bits set (MQTT 5 [MQTT-3.2.2-1])")
            if len(body) >= 2 and body[0] & 0x01 and self._clean_start_sent:
                return self._violation(0x82, "CONNACK with SessionPresent=1 answering Clean Start 1"
                                             " (3.1.1 [MQTT-3.2.2-1], 5.0 [MQTT-3.2.2-2])")
        try:
            if cmd == _PUBLISH:
                return self._session_publish_in(_packet.decode_publish(hdr, body, proto))
            if cmd != _CONNACK:
                mid, code = _ack(cmd, hdr, body, proto)
                if cmd == _PUBACK:
                    self.hooks.hook_puback(mid, code)
                elif cmd == _PUBCOMP:
                    self.hooks.hook_pubcomp(mid, code)
                elif cmd == _PUBREC:
                    if self.hooks.hook_pubrec(mid, code):
                        self._acks_due.append((_PUBREL, mid))  # after "released" is durable
                elif self.hooks.hook_pubrel_in(mid):
                    self._acks_due.append((_PUBCOMP, mid))  # after delivery + durable removal
                return _OK
            c = _packet.decode_connack(hdr, body, proto)
            rc = int(c.rc)  # 3.1.1: the return code 0..5; 5.0: the reason code
            recv_max, max_packet = 65535, None
            if c.properties is not None and hasattr(c.properties, "ReceiveMaximum"):
                recv_max = int(c.properties.ReceiveMaximum)
            if c.properties is not None and hasattr(c.properties, "MaximumPacketSize"):
                max_packet = int(c.properties.MaximumPacketSize)
            reason = str(c.reason) if c.reason is not None else mqtt.connack_string(c.rc)
            if rc != 0:
                # refused: skip paho's handler (it would silently downgrade to MQTT 3.1);
                # SessionPresent is 0 on a refusal [MQTT-3.2.2-4] (5.0: [MQTT-3.2.2-6]).
                self.hooks.hook_connack(rc, reason, False, recv_max, max_packet)
                return MQTTErrorCode.MQTT_ERR_CONN_REFUSED
            # paho's CONNACK handling (state, keepalive) runs first; the hook then fires
            # on_connected and sends the resume plan before anything else is written.
            result = super()._packet_handle()  # noqa: SLF001
            self.hooks.hook_connack(0, reason, bool(c.flags & 0x01), recv_max, max_packet)
            return result
        except MalformedPacket:
            raise
        except Exception as exc:  # a hook must never kill paho's network thread
            self._hook_failed(exc, f"handling a {_NAMES.get(cmd, hex(hdr))} packet")
            return _DROP

    def _hook_failed(self, exc: Exception, context: str) -> None:
        """Report a failed hook; the caller drops the connection without the dependent ack."""
        log.debug("session hook failed: %s", context, exc_info=True)
        try:
            self.hooks.hook_failure(exc, context)
        except Exception:  # pragma: no cover - reporting must not kill the thread either
            log.exception("reporting a failed session hook failed")

    def _session_publish_in(self, r: Any) -> MQTTErrorCode:
        topic = _text(r.topic)
        props = pack_properties(r.properties)
        ack_now = self.hooks.hook_publish_in(
            int(r.mid), topic, bytes(r.payload), int(r.qos), bool(r.retain), bool(r.dup), props
        )
        if r.qos == 1:
            if not ack_now:
                return _OK  # the application acknowledges it later (ManualAck)
            return self._send_puback(r.mid)  # noqa: SLF001  (after delivery: at least once)
        if r.qos == 2:
            self._acks_due.append((_PUBREC, int(r.mid)))  # after the stored message is durable
        return _OK
