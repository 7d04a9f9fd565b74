"""The public ``Client``: the IPWorks-style session API on paho-mqtt.

Wires the pure session model (``state``), its text form (``codec``), the durable state file
(``journal``) and the paho connection (``_paho``). Threads: the caller's, and paho's network
thread, which runs the ``hook_*`` methods. One re-entrant lock guards the session; user callbacks
run without it where the protocol allows, so they may call back into the client.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Final, Protocol, Sequence

from . import codec
from ._paho import (
    PahoConnection,
    connect_properties,
    disconnect_properties,
)
from .errors import (
    ConnectError,
    MQTTSessionError,
    PersistenceError,
    ProtocolViolation,
    StateError,
    UsageError,
)
from .events import (
    DIRECTION_CLIENT,
    DIRECTION_SERVER,
    ConnectedEvent,
    DisconnectedEvent,
    ErrorEvent,
    Message,
    MessageAckEvent,
    MessageEvent,
    SessionLostEvent,
    SubscribedEvent,
    UnsubscribedEvent,
)
from .expiry import effective_interval
from .expiry import expired as _expired
from .journal import Journal, write_atomic
from .state import (
    MAX_EXPIRY,
    MAX_REMAINING_LENGTH,
    OutgoingMessage,
    Phase,
    Record,
    SessionState,
    publish_packet_size,
    validate_filter,
    validate_qos,
    validate_topic,
)

__all__ = ["Client", "TlsSettings"]

log = logging.getLogger("mqttsession")

Callback = Callable[[Any], None]

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_SUBSCRIBE_TRIES: Final = 3  # connections closed on one SUBSCRIBE before it counts as refused
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"{name} must be True or False, got {value!r}")


def _parse_int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise UsageError(f"{name} must be {lo}..{hi}, got {n}")
    return n


def _parse_float(name: str, value: str, lo: float) -> float:
    try:
        x = float(value.strip())
    except ValueError:
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    if not x >= lo:
        raise UsageError(f"{name} must be >= {lo}, got {value!r}")
    return x


class TlsSettings(Protocol):
    """What ``Client.tls_options`` needs (``mqttsession.options.TlsOptions`` has it)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def ca_cert_path(self) -> str | None: ...
    @property
    def client_cert_path(self) -> str | None: ...
    @property
    def client_key_path(self) -> str | None: ...


def _describe(exc: BaseException) -> str:
    """A connect failure in words that name the cause."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return f"TLS handshake refused: the broker wants a client certificate ({reason})"
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return f"TLS handshake refused: the broker does not trust our client certificate ({reason})"
        return f"TLS error: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no broker listening there?)"
    return str(exc) or type(exc).__name__


@dataclass
class _Settings:
    """The ``config()`` settings that are not session state."""

    session_state_file: str = ""
    session_sync: str = "always"
    retain: bool = False
    republish_interval: float = 0.0
    will_qos: int = 0
    will_retain: bool = False
    topic_delimiter: str = ","
    auto_reconnect: bool = True
    reconnect_delay_min: float = 1.0
    reconnect_delay_max: float = 30.0
    max_inflight: int = 20  # mosquitto's default max_inflight_messages: beyond it a 3.1.1
    # broker may discard a QoS 1 message yet PUBACK it (3.1.1 PUBACK has no reason code)
    republish_on_session_lost: bool = True
    released_on_session_lost: str = "republish"  # or "drop": QoS 2 past PUBREC, SessionPresent 0
    journal_max_bytes: int = 0  # 0: auto (256 KiB, or half the snapshot's size when larger)
    max_message_size: int = 0  # the largest PUBLISH packet accepted, in bytes; 0: MQTT's limit
    receive_maximum: int = 20  # MQTT 5 CONNECT: incoming QoS>0 flows the broker may leave open
    manual_ack: bool = False  # PUBACK / PUBCOMP wait for ack()


@dataclass
class _Owed:
    """ManualAck: a QoS 1 message delivered on this connection whose PUBACK waits for ack()."""

    event: MessageEvent
    acked: bool = False


@dataclass
class _Held:
    """ManualAck: a QoS 2 message delivered (on PUBREL) whose removal and PUBCOMP wait for
    ack(); ``pubcomp_due``: the current connection received its PUBREL."""

    event: MessageEvent
    pubcomp_due: bool


class Client:
    """An MQTT client whose session survives reconnects, broker restarts and crashes.

    All arguments are keyword-only and optional; each is also a read/write property.
    """

    def __init__(
        self,
        *,
        client_id: str = "",
        clean_session: bool = True,
        keep_alive_interval: int = 60,
        protocol_version: int = 4,
        username: str | None = None,
        password: str | None = None,
        will_topic: str = "",
        will_message: bytes | str = b"",
        tls_options: TlsSettings | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = SessionState()
        self._settings = _Settings()
        self._journal: Journal | None = None
        self._unrestored: SessionState | None = None  # the file's session, awaiting restore
        self._conn: PahoConnection | None = None
        self._connected = False  # CONNACK seen and the resume plan sent
        self._resuming = False  # inside CONNACK handling (on_connected may restore_session)
        self._session_present = False
        self._broker: str | None = None
        self._pending: deque[int] = deque()  # seqs to write, in order
        self._inflight: dict[int, float] = {}  # seq -> when written on this connection
        self._window = 65535
        self._sub_mids: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBEs awaiting SUBACK
        self._sub_closes: dict[str, int] = {}  # filter -> connections closed on its SUBSCRIBE
        self._unsub_mids: dict[int, list[str]] = {}
        self._unsent_subs: dict[str, int] = {}
        self._unsent_unsubs: set[str] = set()
        self._incoming_qos1: dict[int, Message] = {}
        self._restored_expired = False  # the client's clock said the restored one expired
        self._owed: deque[_Owed] = deque()  # ManualAck, QoS 1, in arrival order [MQTT-4.6.0-2]
        self._held: dict[int, _Held] = {}  # ManualAck, QoS 2, by packet id
        self._user_disconnect = False
        self._connack = threading.Event()
        self._connack_result: tuple[int, str] = (-1, "")
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._last_activity_record = 0.0
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5 CONNACK)
        self._mismatched_acks = 0  # acknowledgements of the wrong kind, ever
        self._mismatch_logged = False  # on this connection
        self.username = username
        self.password = password
        self.tls_options = tls_options
        self.will_topic = will_topic
        self.will_message = will_message
        self.keep_alive_interval = keep_alive_interval
        self.protocol_version = protocol_version
        self.client_id = client_id
        self.clean_session = clean_session

        self.on_connected: Callback | None = None
        self.on_disconnected: Callback | None = None
        self.on_message_in: Callback | None = None
        self.on_message_out: Callback | None = None
        self.on_message_ack: Callback | None = None
        self.on_subscribed: Callback | None = None
        self.on_unsubscribed: Callback | None = None
        self.on_session_lost: Callback | None = None
        self.on_error: Callback | None = None

    # ================================================================== properties

    @property
    def client_id(self) -> str:
        return self._state.client_id

    @client_id.setter
    def client_id(self, value: str) -> None:
        if not isinstance(value, str):
            raise UsageError(f"client_id must be str, got {type(value).__name__}")
        with self._lock:
            self._require_disconnected("client_id")
            if value != self._state.client_id:
                self._record(self._state.configure(client_id=value))

    @property
    def clean_session(self) -> bool:
        return self._state.clean_session

    @clean_session.setter
    def clean_session(self, value: bool) -> None:
        with self._lock:
            self._require_disconnected("clean_session")
            if bool(value) != self._state.clean_session:
                self._record(self._state.configure(clean_session=bool(value)))

    @property
    def protocol_version(self) -> int:
        return self._state.protocol_version

    @protocol_version.setter
    def protocol_version(self, value: int) -> None:
        if value not in (4, 5):
            raise UsageError(f"protocol_version must be 4 (MQTT 3.1.1) or 5, got {value!r}")
        with self._lock:
            self._require_disconnected("protocol_version")
            if value != self._state.protocol_version:
                self._record(self._state.configure(protocol_version=value))

    @property
    def keep_alive_interval(self) -> int:
        return self._keep_alive

    @keep_alive_interval.setter
    def keep_alive_interval(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= 65535:
            raise UsageError(f"keep_alive_interval must be 0..65535 seconds, got {value!r}")
        self._keep_alive = value

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def incoming_messages(self) -> tuple[Message, ...]:
        """Received QoS>0 messages not yet fully acknowledged."""
        with self._lock:
            held = [Message.incoming(m) for m in self._state.incoming.values()]
            owed = [Message(o.event.packet_id, o.event.topic, 1, o.event.message,
                            o.event.retained, o.event.duplicate) for o in self._owed]
            return tuple(list(self._incoming_qos1.values()) + owed + held)

    @property
    def outgoing_messages(self) -> tuple[Message, ...]:
        """QoS>0 messages accepted by publish_* and not fully acknowledged, in publish order."""
        with self._lock:
            return tuple(Message.outgoing(m) for m in self._state.outgoing.values())

    # ================================================================== config

    def config(self, setting: str) -> str:
        """``"Name=Value"`` sets (returns ""), ``"Name"`` reads; names are case-insensitive."""
        if not isinstance(setting, str):
            raise UsageError("config takes a string: 'Name' or 'Name=Value'")
        name, eq, value = setting.partition("=")
        key = name.strip().lower()
        entry = _CONFIG.get(key)
        if entry is None:
            raise UsageError(f"unknown config setting {name.strip()!r}")
        getter, setter = entry
        if not eq:
            return getter(self)
        if setter is None:
            raise UsageError(f"config setting {name.strip()!r} is read-only")
        with self._lock:
            setter(self, value)
        return ""

    def _set_state_file(self, value: str) -> None:
        path = value.strip()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._settings.session_state_file = path

    def _set_expiry(self, value: str) -> None:
        interval = _parse_int("SessionExpInterval", value, 0, MAX_EXPIRY)
        self._record(self._state.configure(session_expiry_interval=interval))

    def _set_protocol(self, value: str) -> None:
        self.protocol_version = _parse_int("ProtocolVersion", value, 4, 5)

    def _set_released(self, value: str) -> None:
        v = value.strip().lower()
        if v not in ("republish", "drop"):
            raise UsageError(f"ReleasedOnSessionLost must be 'republish' or 'drop', got {value!r}")
        self._settings.released_on_session_lost = v

    def _set_manual_ack(self, value: str) -> None:
        on = _parse_bool("ManualAck", value)
        if on != self._settings.manual_ack:
            self._require_disconnected("ManualAck")
        self._settings.manual_ack = on

    def _set_sync(self, value: str) -> None:
        v = value.strip().lower()
        if v not in ("always", "none"):
            raise UsageError(f"SessionSync must be 'always' or 'none', got {value!r}")
        self._settings.session_sync = v
        if self._journal is not None:
            self._journal.sync = v == "always"

    # ================================================================== connecting

    def _expiry_interval(self) -> int | None:
        """The Session Expiry Interval sent in CONNECT and DISCONNECT (MQTT 5)."""
        st = self._state
        return effective_interval(st.protocol_version, st.clean_session, st.session_expiry_interval)

    def _require_disconnected(self, what: str) -> None:
        if self._conn is not None:
            raise UsageError(f"{what} cannot change while connected")

    def connect(self, host: str = "localhost", port: int = 1883, timeout: float = 30.0) -> None:
        """Connect and block until CONNACK; the network loop then runs in a background thread.

        Raises ``ConnectError`` on refusal, an unreachable broker or no CONNACK within
        ``timeout`` seconds; ``UsageError`` for an empty client_id with clean_session False.
        """
        with self._lock:
            if self._conn is not None:
                raise UsageError("already connected; call disconnect() first")
            if not self._state.client_id:
                if not self._state.clean_session:
                    # [MQTT-3.1.3-7] an empty client id requires CleanSession=1 (IPWorks: error)
                    raise UsageError("client_id must be set when clean_session is False")
                self.client_id = f"mqttsession-{uuid.uuid4().hex[:16]}"
            self._open_journal()
            v5 = self._state.protocol_version == 5
            clean = self._state.clean_session
            interval = self._expiry_interval()
            if v5 and not clean and interval == 0:
                log.warning("client %r asks for a persistent session with SessionExpInterval=0:"
                            " the broker ends it at every disconnect", self._state.client_id)
            conn = PahoConnection(self, self._state.client_id, self._state.protocol_version, clean)
            conn.reconnect_delay_set(
                int(self._settings.reconnect_delay_min), int(self._settings.reconnect_delay_max)
            )
            if self.username is not None:
                conn.username_pw_set(self.username, self.password)
            tls = self.tls_options
            if tls is not None and tls.enabled:
                try:
                    conn.tls_set(ca_certs=tls.ca_cert_path, certfile=tls.client_cert_path,
                                 keyfile=tls.client_key_path)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    raise UsageError(f"TLS settings: {exc}") from exc
            if self.will_topic:
                conn.will_set(
                    validate_topic(self.will_topic),
                    self.will_message,
                    self._settings.will_qos,
                    self._settings.will_retain,
                )
            conn.on_disconnect = self._paho_on_disconnect
            conn.on_subscribe = self._paho_on_subscribe
            conn.on_unsubscribe = self._paho_on_unsubscribe
            conn.set_auto_reconnect(self._settings.auto_reconnect)
            self._conn = conn
            self._broker = f"{host}:{port}"
            self._user_disconnect = False
            self._connack.clear()
            self._connack_result = (-1, "")
        try:
            if v5:
                # a persistent session always asks with Clean Start 0, also when the client's
                # clock says it expired: a clock that jumped must not destroy a session the
                # broker may still hold; SessionPresent decides [MQTT-3.1.2-5] [MQTT-3.2.2-5]
                conn.connect(host, port, self._keep_alive, clean_start=clean,
                             properties=connect_properties(interval,
                                                           self._settings.receive_maximum))
            else:
                conn.connect(host, port, self._keep_alive)
        except (OSError, ValueError) as exc:
            self._teardown()
            raise ConnectError(f"cannot connect to {host}:{port}: {_describe(exc)}") from exc
        conn.loop_start()
        if not self._connack.wait(timeout):
            self._teardown()
            raise ConnectError(f"no CONNACK from {host}:{port} within {timeout} s")
        rc, reason = self._connack_result
        if rc == -3:
            self._teardown()
            raise ConnectError(f"connected to {host}:{port}, but {reason}", rc)
        if rc == -2:
            self._teardown()
            if tls is None or not tls.enabled:
                hint = "not an MQTT broker there, or it stopped?"
            elif not tls.client_cert_path:
                hint = "a TLS listener that requires a client certificate does this"
            else:  # TLS 1.3: a refused client certificate shows only after the handshake
                hint = "a TLS listener that does not accept our client certificate does this"
            raise ConnectError(f"{host}:{port} closed the connection before CONNACK"
                               f" ({reason}); {hint}", rc)
        if rc != 0:
            self._teardown()
            hint = " (wrong username or password?)" if rc in (4, 5, 0x86, 0x87) else ""
            raise ConnectError(f"{host}:{port} refused the connection: {reason}{hint}", rc)
        self._start_ticker()

    def _teardown(self) -> None:
        """Stop the network loop and forget the connection (never under the lock)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._connected = False
            self._inflight.clear()
        if conn is not None:
            self._stop(conn, None)

    def _stop(self, conn: PahoConnection, props: Any) -> None:
        """DISCONNECT, end the ticker and paho's loop, close its sockets (never under the lock:
        loop_stop joins the network thread, which may be waiting for the lock)."""
        conn.set_auto_reconnect(False)
        try:
            conn.disconnect(properties=props)
        except Exception:  # pragma: no cover - best effort on a dead socket
            log.debug("DISCONNECT not sent", exc_info=True)
        self._ticker_stop.set()
        if not conn.in_network_thread():
            conn.loop_stop()
            conn.release()

    def disconnect(self) -> None:
        """A clean DISCONNECT; the disconnect time is recorded in the session state, and the
        state file, if any, is compacted."""
        self._disconnect()

    def _disconnect(self) -> bool:
        """``disconnect()``; False when there was no connection (nothing was compacted)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return False
            self._user_disconnect = True
            if self._connected:
                self._record(self._state.disconnected(time.time()), sync=True)
            self._connected = False
            props = (
                disconnect_properties(self._expiry_interval())
                if self._state.protocol_version == 5 else None
            )
        self._stop(conn, props)
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self._inflight.clear()
            if self._journal is not None:
                self._journal.compact(self._state)
        return True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        compacted = self._disconnect() and self._journal is not None
        if self._settings.session_state_file and not compacted:
            self.save_session()  # (a disconnect that compacted wrote the same snapshot)
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def close(self) -> None:
        """Disconnect and release the state file."""
        self.__exit__(None, None, None)

    # ================================================================== publishing

    def publish_message(self, topic: str, qos: int, message: str) -> int:
        """Publish text (UTF-8); returns the packet id (0 for QoS 0)."""
        if not isinstance(message, str):
            raise UsageError(f"message must be str, got {type(message).__name__}")
        return self.publish_data(topic, qos, message.encode("utf-8"))

    def publish_data(self, topic: str, qos: int, data: bytes) -> int:
        """Publish bytes; returns the packet id (0 for QoS 0, or while all ids are taken).

        QoS 1/2 messages are part of the session before this returns (durable with a
        SessionStateFile); while disconnected they wait and go out on connect, in order.
        """
        validate_topic(topic)
        validate_qos(qos)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"data must be bytes, got {type(data).__name__}")
        size = memoryview(data).nbytes
        limit = self._size_limit(topic, size, qos)
        if limit is not None:
            raise UsageError(f"message to {topic!r} too large to send: {limit}")
        payload = bytes(data)
        with self._lock:
            retain = self._settings.retain
            if qos == 0:
                if self._connected and self._conn is not None:
                    self._conn.publish(topic, payload, 0, retain)
                    self._fire("on_message_out", MessageEvent(-1, topic, 0, payload, retain, False))
                else:
                    log.warning("QoS 0 message to %r dropped: not connected", topic)
                return 0
            self._open_journal()  # with a state file: durable from the first message
            j = self._journal
            if j is not None and j.needs_compaction:
                j.compact(self._state)  # a fault here fails a publish not yet made
            rec = self._state.accept(topic, payload, qos, retain, avoid=self._sub_mids)
            try:
                self._record(rec, sync=True)  # persistence point 1
            except BaseException:
                self._state.retract(rec)
                raise
            self._pending.append(rec.message.seq)
            self._pump()
            return rec.message.packet_id

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until ``outgoing_messages`` is empty; False on timeout.

        Not from an event callback: those run on the thread that processes the acks.
        """
        conn = self._conn
        if conn is not None and conn.in_network_thread():
            raise UsageError("flush() inside an event callback would wait forever")
        with self._changed:
            return self._changed.wait_for(lambda: not self._state.outgoing, timeout)

    def _size_limit(self, topic: str, payload_size: int, qos: int,
                    properties_size: int = 0) -> str | None:
        """Why a PUBLISH of this size cannot be sent (None: it can)."""
        cap, broker = self._settings.max_message_size, self._max_packet
        most = MAX_REMAINING_LENGTH
        bound = min(most, cap or most, broker or most)
        if payload_size + 4 * len(topic) + properties_size + 16 <= bound:
            return None  # fits with room to spare (UTF-8 is at most 4 bytes a character)
        remaining, size = publish_packet_size(topic, payload_size, qos, properties_size,
                                              self._state.protocol_version == 5)
        if remaining > MAX_REMAINING_LENGTH:
            return f"{size} bytes, over MQTT's packet limit (Remaining Length {MAX_REMAINING_LENGTH})"
        if cap and size > cap:
            return f"{size} bytes, over MaxMessageSize={cap}"
        if broker is not None and size > broker:
            # [MQTT-3.2.2-15] never send a packet over the server's Maximum Packet Size
            return f"{size} bytes, over the broker's Maximum Packet Size {broker}"
        return None

    def _pump(self) -> None:
        """Write pending messages while the in-flight window has room [MQTT-3.3.4-7]."""
        conn = self._conn
        if not self._connected or conn is None:
            return
        while self._pending and len(self._inflight) < self._window:
            seq = self._pending[0]
            m = self._state.outgoing.get(seq)
            if m is None or seq in self._inflight:
                self._pending.popleft()
                continue
            if m.phase is not Phase.AWAIT_PUBCOMP:
                why = self._size_limit(m.topic, len(m.payload), m.qos, len(m.properties))
                if why is not None:  # it became unsendable (a smaller broker limit): out
                    self._pending.popleft()
                    self._record(self._state.too_large(seq))
                    self._error(0x95, f"message seq {seq} (packet id {m.packet_id}) to"
                                      f" {m.topic!r} taken out of the session: {why}")
                    if not self._state.outgoing:
                        self._changed.notify_all()
                    continue
            if not self._write(conn, m):
                return  # connection gone: the resume plan rebuilds the queue
            self._pending.popleft()

    def _write(self, conn: PahoConnection, m: OutgoingMessage) -> bool:
        if m.phase is Phase.QUEUED:
            # lazy: if lost, the message is resent as if never sent (same id; DUP=0)
            self._record(self._state.send(m.seq, avoid=self._sub_mids), lazy=True)
            m = self._state.outgoing[m.seq]
            ok = conn.send_publish(m.packet_id, m.topic, m.payload, m.qos, m.retain, False,
                                   m.properties)
        elif m.phase is Phase.AWAIT_PUBCOMP:
            if self._journal is not None:
                self._journal.sync_pending()  # point 2: "released" is durable before this PUBREL
            ok = conn.send_pubrel(m.packet_id)  # [MQTT-4.3.3-6] PUBREL, never the PUBLISH again
        else:
            # [MQTT-4.4.0-1] original packet id, [MQTT-3.3.1-1] DUP=1
            ok = conn.send_publish(m.packet_id, m.topic, m.payload, m.qos, m.retain, True,
                                   m.properties)
        if ok:
            self._inflight[m.seq] = time.monotonic()
        return ok

    # ================================================================== subscriptions

    def _filters(self, topic_filter: str) -> list[str]:
        if not isinstance(topic_filter, str):
            raise UsageError(f"topic filter must be str, got {type(topic_filter).__name__}")
        parts = [f.strip() for f in topic_filter.split(self._settings.topic_delimiter)]
        return [validate_filter(f) for f in parts]

    def subscribe(self, topic_filter: str, qos: int) -> None:
        """Subscribe to one filter or a TopicDelimiter-separated list; works while disconnected."""
        validate_qos(qos)
        filters = self._filters(topic_filter)
        with self._lock:
            self._open_journal()
            for f in filters:
                self._record(self._state.subscribe(f, qos))
                self._unsent_unsubs.discard(f)
            if self._connected and self._conn is not None:
                self._subscribe_now([(f, qos) for f in filters])
            else:
                self._unsent_subs.update((f, qos) for f in filters)

    def unsubscribe(self, topic_filter: str) -> None:
        filters = self._filters(topic_filter)
        with self._lock:
            for f in filters:
                self._record(self._state.unsubscribe(f))
                self._unsent_subs.pop(f, None)
            if self._connected and self._conn is not None:
                rc, mid = self._conn.unsubscribe(filters)
                if rc == 0 and mid is not None:
                    self._unsub_mids[mid] = filters
            else:
                self._unsent_unsubs.update(filters)

    def _subscribe_now(self, subs: Sequence[tuple[str, int]]) -> None:
        """SUBSCRIBE; a filter whose SUBSCRIBE a broker answered by closing the connection goes
        in a packet of its own, so the next close names it alone."""
        assert self._conn is not None
        fresh = [s for s in subs if s[0] not in self._sub_closes]
        batches = ([fresh] if fresh else []) + [[s] for s in subs if s[0] in self._sub_closes]
        for batch in batches:
            rc, mid = self._conn.subscribe(batch)
            if rc == 0 and mid is not None:
                self._sub_mids[mid] = batch
            else:
                self._unsent_subs.update(batch)

    # ================================================================== save / restore

    def save_session(self) -> str:
        """The whole session state as text; also written atomically to SessionStateFile."""
        with self._lock:
            if self._connected:
                self._state.activity(time.time())  # part of the snapshot written below
            text = codec.encode(self._state)
            path = self._settings.session_state_file
            if path:
                if self._journal is not None:
                    self._journal.compact(self._state, text)
                else:
                    write_atomic(path, text, sync=self._settings.session_sync == "always")
            return text

    def restore_session(self, state_data: str) -> None:
        """Load a saved session and set clean_session False.

        With SessionStateFile set, the file is read and ``state_data`` ignored (a missing file
        is an empty session). Bad input raises ``StateError`` and changes nothing. Called from
        ``on_connected`` it resumes the session on that connection.
        """
        with self._lock:
            if self._connected and not self._resuming:
                raise UsageError(
                    "restore_session while connected: call it before connect() or in on_connected"
                )
            if self._state.outgoing or self._state.incoming:
                raise UsageError(
                    f"restore_session would replace {len(self._state.outgoing)} outgoing and"
                    f" {len(self._state.incoming)} incoming messages this client holds"
                )
            path = self._settings.session_state_file
            state = self._load_file(path) if path else codec.decode(state_data)
            if self._state.client_id and state.client_id and state.client_id != self._state.client_id:
                raise StateError(
                    f"the saved session belongs to client id {state.client_id!r},"
                    f" not {self._state.client_id!r}"
                )
            if not state.client_id:
                state.client_id = self._state.client_id
            expired_now = False
            if not self._resuming and state.protocol_version == 5 and not state.empty:
                expired_now = _expired(
                    5, effective_interval(5, False, state.session_expiry_interval),
                    state.connected_at, state.disconnected_at, state.last_activity, time.time(),
                ) is True
            # the client's own settings win over those saved with the session
            settings = state.configure(
                protocol_version=self._state.protocol_version,
                clean_session=False,
                session_expiry_interval=(
                    self._state.session_expiry_interval
                    if self._state.session_expiry_interval is not None
                    else state.session_expiry_interval
                ),
            )
            self._state = state
            self._restored_expired = expired_now
            if expired_now:
                log.info("saved session of %r has expired by this clock (MQTT 5); connecting with"
                         " Clean Start 0 all the same: SessionPresent decides", state.client_id)
            self._unsent_subs.clear()
            if path:  # _load_file left the journal open; the file holds the rest already
                self._record(settings, sync=True, compact=False)  # a due compaction waits for
                # the next record: restoring stays a read of the file

    def _load_file(self, path: str) -> SessionState:
        if self._unrestored is not None:
            state, self._unrestored = self._unrestored, None
            return state
        if self._journal is not None:
            return self._journal.recover()
        j = self._new_journal(path)
        try:
            state = j.recover()
        except BaseException:
            j.close()
            raise
        self._journal = j
        return state

    # ================================================================== persistence

    def _open_journal(self) -> None:
        """Own the state file. A session in it that was not restored is never overwritten: it
        waits for ``restore_session`` (IPWorks procedure 1 calls it in on_connected) and is
        otherwise kept aside (``_settle_unrestored``)."""
        path = self._settings.session_state_file
        if path and self._journal is None:
            j = self._new_journal(path)
            try:
                old = j.recover() if os.path.exists(path) else None
                if old is not None and not old.empty:
                    self._unrestored = old
                else:
                    j.compact(self._state)
            except BaseException:
                j.close()
                raise
            self._journal = j

    def _new_journal(self, path: str) -> Journal:
        return Journal(path, self._state.client_id, sync=self._settings.session_sync == "always",
                       max_journal_bytes=self._settings.journal_max_bytes)

    def _settle_unrestored(self) -> None:
        """The application went on without restoring the file's session: keep it aside."""
        old, self._unrestored = self._unrestored, None
        j = self._journal
        if old is None or j is None:
            return
        aside = j.keep_aside("unrestored")
        self._error(
            0,
            f"{self._settings.session_state_file} held a session ({len(old.outgoing)} outgoing,"
            f" {len(old.incoming)} incoming messages) that was not restored; kept as {aside}",
        )
        j.compact(self._state)

    def _record(self, rec: Record, sync: bool = False, lazy: bool = False,
                compact: bool = True) -> None:
        """A transition already applied in memory: make it durable (if a file is set)."""
        j = self._journal
        if j is None:
            return
        if self._unrestored is not None:
            if self._resuming:
                return  # on_connected may still restore it; compaction will hold this record
            self._settle_unrestored()
            return  # the compaction wrote the whole state, this record included
        j.append(rec, self._state, sync=sync, lazy=lazy)
        if compact and not lazy:
            self._compact_if_due()

    def _compact_if_due(self) -> None:
        """Compact a journal past its bound; a fault is reported, not raised: the records
        are durable, and a failed compaction leaves the files as they were (or marked for a
        full rewrite)."""
        j = self._journal
        if j is not None and j.needs_compaction:
            try:
                j.compact(self._state)
            except MQTTSessionError as exc:
                self._error(getattr(exc, "errno", None) or -1, f"state file compaction failed: {exc}")

    # ================================================================== events

    def _fire(self, name: str, event: object) -> None:
        cb = getattr(self, name)
        if cb is None:
            return
        try:
            cb(event)
        except Exception as exc:
            log.exception("%s callback raised", name)
            if name != "on_error":
                self._fire("on_error", ErrorEvent(-1, f"{name} callback raised: {exc!r}"))

    def _error(self, code: int, description: str) -> None:
        log.warning("%s", description)
        self._fire("on_error", ErrorEvent(code, description))

    # ================================================================== network-thread hooks

    def hook_packet_id_in_use(self, packet_id: int) -> bool:
        with self._lock:
            return self._state.outgoing_by_packet_id(packet_id) is not None

    def hook_failure(self, exc: Exception, context: str) -> None:
        """A hook failed on the network thread (the connection is dropped without the ack
        that depended on it; paho reconnects): report it, and end a waiting ``connect()``."""
        retry = ", reconnecting" if self._connack.is_set() else ""
        if isinstance(exc, ProtocolViolation):
            code = exc.code
            description = f"{context}: {exc}; connection closed{retry}, the session is unchanged"
        else:
            code = getattr(exc, "errno", None) or -1
            what = ("the state file could not be written" if isinstance(exc, PersistenceError)
                    else "the session could not process it")
            description = f"{context}: {what} ({exc}); connection dropped{retry}"
        if not self._connack.is_set():
            self._connack_result = (-3, f"{context}: {exc}")
            conn = self._conn
            if conn is not None:
                conn.set_auto_reconnect(False)  # connect() raises and tears down
            self._connack.set()
        self._error(code, description)

    def _persist_quietly(self, rec: Record, what: str) -> None:
        """``_record`` on the network thread where no ack depends on it: a failure is
        reported through on_error, never raised into paho's thread."""
        try:
            self._record(rec)
        except MQTTSessionError as exc:
            self._error(getattr(exc, "errno", None) or -1, f"{what}: {exc}")

    def hook_connection_reset(self) -> None:
        with self._lock:
            self._connected = False
            self._inflight.clear()
            # acks owed to the old connection are forgotten: the broker resends the QoS 1
            # PUBLISH (DUP) and the QoS 2 PUBREL [MQTT-4.4.0-1]
            self._owed.clear()
            for h in self._held.values():
                h.pubcomp_due = False
            given_up = self._requeue_unanswered()
        for flt, qos in given_up:
            self._fire("on_subscribed", SubscribedEvent(flt, qos, 0x80))
            self._error(0x80, f"the broker closed the connection {_SUBSCRIBE_TRIES} times in"
                              f" answer to SUBSCRIBE {flt!r}: taken as refused (subscribe"
                              " again to retry)")

    def _requeue_unanswered(self) -> list[tuple[str, int]]:
        """SUBSCRIBE / UNSUBSCRIBE left without their ack by a lost connection (lock held): the
        broker may never have seen them, so they go out again on the next one (a SUBSCRIBE
        replaces an equal one [MQTT-3.8.4-3]). The oldest unanswered SUBSCRIBE is the one a
        broker that closes instead of refusing choked on (it reads in order); after
        ``_SUBSCRIBE_TRIES`` such closes in a row its filters count as refused and leave the
        session, so no reconnect loop follows. Returns those."""
        given_up: list[tuple[str, int]] = []
        for i, subs in enumerate(self._sub_mids.values()):
            for flt, qos in subs:
                if self._state.subscriptions.get(flt) is None:
                    continue  # unsubscribed since
                tries = self._sub_closes.get(flt, 0) + (1 if i == 0 else 0)
                if tries >= _SUBSCRIBE_TRIES:
                    del self._sub_closes[flt]
                    self._unsent_subs.pop(flt, None)
                    self._persist_quietly(self._state.unsubscribe(flt),
                                          f"recording the refused subscription {flt!r} failed")
                    given_up.append((flt, qos))
                else:
                    self._sub_closes[flt] = tries
                    self._unsent_subs.setdefault(flt, qos)
        for filters in self._unsub_mids.values():
            self._unsent_unsubs.update(f for f in filters if f not in self._state.subscriptions)
        self._sub_mids.clear()
        self._unsub_mids.clear()
        return given_up

    def hook_connack(self, rc: int, reason: str, session_present: bool, receive_maximum: int,
                     maximum_packet_size: int | None) -> None:
        if rc != 0:
            conn = self._conn
            if conn is not None and not self._connack.is_set():
                # connect() raises and tears down: no background retry to wait out (paho
                # would sleep ReconnectDelayMin before noticing the teardown)
                conn.set_auto_reconnect(False)
            self._connack_result = (rc, reason)
            self._fire("on_connected", ConnectedEvent(rc, reason, False))
            self._error(rc, f"connection refused: {reason}")
            self._connack.set()
            return
        with self._lock:
            self._resuming = True
            self._mismatch_logged = False
            self._session_present = session_present
            self._window = max(1, min(self._settings.max_inflight, receive_maximum))
            self._max_packet = maximum_packet_size
            self._record(self._state.connected(time.time(), self._broker, session_present),
                         sync=True)
        try:
            # IPWorks procedure 1: on_connected reads SessionPresent and may restore_session
            self._fire("on_connected", ConnectedEvent(0, reason, session_present))
            with self._lock:
                if self._unrestored is not None:
                    self._settle_unrestored()
            lost_event = self._resume(session_present)
        finally:
            with self._lock:
                self._resuming = False
        self._connack_result = (0, reason)
        self._connack.set()
        if lost_event is not None:
            self._fire("on_session_lost", lost_event)

    def _resume(self, session_present: bool) -> SessionLostEvent | None:
        with self._lock:
            had_state = not self._state.empty
            reset, plan = self._state.on_connack(
                session_present, republish=self._settings.republish_on_session_lost,
                republish_released=self._settings.released_on_session_lost == "republish",
            )
            lost = plan.lost
        if lost is not None:
            # QoS 2 awaiting PUBREL: the broker will not send them again; deliver, then record
            for im in lost.delivered_incoming:
                with self._lock:
                    if self._held.pop(im.packet_id, None) is not None:
                        continue  # handed out before (ManualAck), not acked yet: not again
                self._fire("on_message_in", MessageEvent(im.packet_id, im.topic, im.qos,
                                                         im.payload, im.retain, im.dup))
        with self._lock:
            if reset is not None:
                self._record(reset, sync=True)
                if not self._state.outgoing:
                    self._changed.notify_all()
            self._pending = deque(m.seq for m in plan.outgoing)
            self._inflight.clear()
            self._connected = True
            if not session_present and had_state and plan.resubscribe:
                self._unsent_subs.update(plan.resubscribe)  # [MQTT-3.2.2-5] the broker forgot them
            if self._unsent_unsubs and self._conn is not None:
                rc, mid = self._conn.unsubscribe(sorted(self._unsent_unsubs))
                if rc == 0 and mid is not None:
                    self._unsub_mids[mid] = sorted(self._unsent_unsubs)
                self._unsent_unsubs.clear()
            subs, self._unsent_subs = dict(self._unsent_subs), {}
            self._subscribe_now(sorted(subs.items()))
            self._pump()  # in seq order [MQTT-4.6.0-1]
            expired = self._restored_expired
            self._restored_expired = False
            if expired and session_present:
                log.info("the broker still held the session this clock said had expired (did"
                         " the clock jump?): resumed")
        if lost is None or (self._state.clean_session and not expired):
            return None  # a clean session expects SessionPresent=0: nothing was lost
        return SessionLostEvent.of(lost, expired)

    def hook_publish_in(self, packet_id: int, topic: str, payload: bytes, qos: int, retain: bool,
                        dup: bool, properties: bytes) -> bool:
        if qos == 0:
            self._fire("on_message_in", MessageEvent(-1, topic, 0, payload, retain, dup))
            return True
        if qos == 1:
            event = MessageEvent(packet_id, topic, 1, payload, retain, dup)
            if self._settings.manual_ack:
                with self._lock:
                    self._owed.append(_Owed(event))  # before delivery: ack() may come at once
                self._fire("on_message_in", event)
                return False  # PUBACK at ack()
            # deliver BEFORE the PUBACK leaves (at least once across a crash)
            msg = Message(packet_id, topic, 1, payload, retain, dup)
            with self._lock:
                self._incoming_qos1[packet_id] = msg
            try:
                self._fire("on_message_in", event)
            finally:
                with self._lock:
                    self._incoming_qos1.pop(packet_id, None)
            self._fire("on_message_ack", MessageAckEvent(packet_id, DIRECTION_SERVER, 0))
            return True
        with self._lock:
            # persistence point 3: stored before PUBREC (written, and synced by hook_acks_due
            # before the PUBREC leaves); a duplicate is not stored or delivered twice
            # [MQTT-4.3.3-10]
            rec = self._state.receive(packet_id, topic, payload, retain, dup, properties)
            if rec is not None:
                self._record(rec)
        return True

    def hook_pubrel_in(self, packet_id: int) -> bool:
        with self._lock:
            held = self._held.get(packet_id)
            if held is not None:
                held.pubcomp_due = True  # handed out before, not acked: PUBCOMP at ack()
                return False
            im = self._state.incoming.get(packet_id)
        if im is None:
            return True  # delivered before (a crash after delivery): PUBCOMP only
        event = MessageEvent(im.packet_id, im.topic, im.qos, im.payload, im.retain, im.dup)
        if self._settings.manual_ack:
            with self._lock:
                self._held[packet_id] = _Held(event, pubcomp_due=True)
            self._fire("on_message_in", event)
            return False  # removal and PUBCOMP at ack()
        # persistence point 4: deliver, record the removal, then PUBCOMP
        self._fire("on_message_in", event)
        with self._lock:
            if packet_id in self._state.incoming:
                _, rec = self._state.release(packet_id)
                # written to the OS at once (a kill -9 from here on cannot repeat it); synced
                # by hook_acks_due before the PUBCOMP leaves (a power cut before that can)
                self._record(rec)
        self._fire("on_message_ack", MessageAckEvent(packet_id, DIRECTION_SERVER, 0))
        return True

    def ack(self, message: MessageEvent | int) -> bool:
        """ManualAck: the application has taken ``message`` (an ``on_message_in`` event, or
        its packet id). QoS 1: its PUBACK goes out, after those of the messages received
        before it [MQTT-4.6.0-2]; QoS 2: its removal is made durable, then PUBCOMP goes out.

        False when nothing waited: QoS 0, acknowledged before, or owed to a connection that
        has dropped since (the broker sends that message again). Any thread, and callbacks.
        """
        by_id = isinstance(message, int)
        pid = message if isinstance(message, int) else message.packet_id
        qos = 0 if isinstance(message, int) else message.qos
        acked = False
        with self._lock:
            if qos in (0, 1):
                for o in self._owed:
                    if not o.acked and (o.event.packet_id == pid if by_id else o.event is message):
                        o.acked = True
                        acked = True
                        break
                conn = self._conn
                while self._owed and self._owed[0].acked:  # in arrival order [MQTT-4.6.0-2]
                    o = self._owed.popleft()
                    if conn is not None:
                        conn.send_puback(o.event.packet_id)
            if not acked and qos in (0, 2):
                h = self._held.get(pid)
                if h is not None and (by_id or h.event is message):
                    del self._held[pid]
                    acked = True
                    if pid in self._state.incoming:
                        _, rec = self._state.release(pid)
                        self._record(rec, sync=True)  # persistence point 4: before PUBCOMP
                    if h.pubcomp_due and self._conn is not None:
                        self._conn.send_pubcomp(pid)
        if acked:
            self._fire("on_message_ack", MessageAckEvent(pid, DIRECTION_SERVER, 0))
        return acked

    def hook_acks_due(self) -> None:
        """The PUBREL / PUBREC / PUBCOMP of a read batch are about to be written: make the
        records they depend on durable first (points 2, 3, 4), with one fsync for them all."""
        with self._lock:
            if self._journal is not None:
                self._journal.sync_pending()

    def _finished(self, m: OutgoingMessage) -> None:
        """An outgoing flow ended (lock held): free the window and fire events after."""
        self._inflight.pop(m.seq, None)
        if not self._state.outgoing:
            self._changed.notify_all()  # flush() waits for exactly this
        self._pump()

    def _after_ack(self, m: OutgoingMessage, reason_code: int) -> None:
        # per acknowledged message on the network thread: build events only for listeners
        if self.on_message_ack is not None:
            self._fire("on_message_ack", MessageAckEvent(m.packet_id, DIRECTION_CLIENT,
                                                         reason_code))
        if self.on_message_out is not None:
            self._fire("on_message_out", MessageEvent(m.packet_id, m.topic, m.qos, m.payload,
                                                      m.retain, m.sent))

    def _mismatched_ack(self, kind: str, m: OutgoingMessage) -> None:
        """An acknowledgement of the wrong kind (lock held): counted, logged once a connection."""
        self._mismatched_acks += 1
        if not self._mismatch_logged:
            self._mismatch_logged = True
            log.warning("the broker answered a QoS %d PUBLISH (packet id %d) with %s: the flow"
                        " ends as the broker meant it (it downgrades QoS 2 to 1, or the reverse);"
                        " config('MismatchedAcks') counts them", m.qos, m.packet_id, kind)

    def hook_puback(self, packet_id: int, reason_code: int) -> None:
        with self._lock:
            m = self._state.outgoing_by_packet_id(packet_id)
            if m is not None and m.phase is Phase.AWAIT_PUBREC:
                self._mismatched_ack("PUBACK", m)  # RabbitMQ 3.x: QoS 2 taken as QoS 1
            elif m is None or m.phase is not Phase.AWAIT_PUBACK:
                log.debug("PUBACK for packet id %d, which awaits none: ignored", packet_id)
                return
            self._record(self._state.puback(packet_id), lazy=True)  # point 5: a lost removal
            # only costs a resend
            self._finished(m)
        self._after_ack(m, reason_code)

    def hook_pubrec(self, packet_id: int, reason_code: int) -> bool:
        with self._lock:
            m = self._state.outgoing_by_packet_id(packet_id)
            if m is None:
                return reason_code < 0x80  # let the broker finish a flow we no longer hold
            if m.phase is Phase.AWAIT_PUBCOMP:
                return True  # a repeated PUBREC: PUBREL again
            if m.phase is Phase.AWAIT_PUBACK:
                self._mismatched_ack("PUBREC", m)  # QoS 1 taken as QoS 2: it has the message
                self._record(self._state.pubrec(packet_id, reason_code), lazy=True)  # point 5
                self._finished(m)
                release = reason_code < 0x80  # PUBREL lets the broker finish its flow
            elif m.phase is Phase.AWAIT_PUBREC:
                # persistence point 2: "released" is durable before PUBREL [MQTT-4.3.3-6]:
                # written now, synced by hook_acks_due (one fsync for the read batch) before
                # PUBREL leaves
                self._record(self._state.pubrec(packet_id, reason_code))
                if reason_code < 0x80:
                    return True
                self._finished(m)  # [MQTT-4.4.0-2] a failed PUBREC ends the flow
                release = False
            else:
                log.debug("PUBREC for packet id %d in phase %s: ignored", packet_id, m.phase.value)
                return False
        self._after_ack(m, reason_code)
        return release

    def hook_pubcomp(self, packet_id: int, reason_code: int) -> None:
        with self._lock:
            m = self._state.outgoing_by_packet_id(packet_id)
            if m is None or m.phase is not Phase.AWAIT_PUBCOMP:
                log.debug("PUBCOMP for packet id %d, which awaits none: ignored", packet_id)
                return
            self._record(self._state.pubcomp(packet_id), lazy=True)  # point 5
            self._finished(m)
        self._after_ack(m, reason_code)

    # ================================================================== paho callbacks

    def _paho_on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._inflight.clear()
            clean = self._user_disconnect
            if was_connected and not clean:
                self._persist_quietly(self._state.disconnected(time.time()),
                                      "recording the disconnect time failed")
        if not was_connected and not self._connack.is_set():
            # closed before any CONNACK (e.g. a TLS client certificate the broker refused
            # after the handshake): connect() fails now rather than at its timeout
            self._connack_result = (-2, f"paho: {reason}")
            self._connack.set()
        if clean:
            self._fire("on_disconnected", DisconnectedEvent(0, "OK"))
        elif was_connected:
            code = int(getattr(reason, "value", reason) or 0) or 0x80
            self._fire("on_disconnected", DisconnectedEvent(code, f"connection lost: {reason}"))

    def _paho_on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _props: Any) -> None:
        with self._lock:
            subs = self._sub_mids.pop(mid, [])
            for flt, _qos in subs:
                self._sub_closes.pop(flt, None)  # answered: the broker did not choke on it
            failed = []
            for (flt, _qos), code in zip(subs, codes):
                value = int(getattr(code, "value", code))
                if value >= 0x80 and self._state.subscriptions.get(flt) is not None:
                    self._persist_quietly(self._state.unsubscribe(flt),
                                          f"recording the refused subscription {flt!r} failed")
                    failed.append(flt)
        for (flt, qos), code in zip(subs, codes):
            value = int(getattr(code, "value", code))
            self._fire("on_subscribed", SubscribedEvent(flt, qos, value))
        for flt in failed:
            self._error(0x80, f"subscription to {flt!r} refused by the broker")

    def _paho_on_unsubscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _props: Any) -> None:
        with self._lock:
            filters = self._unsub_mids.pop(mid, [])
        codes = list(codes) if codes else [0] * len(filters)
        for flt, code in zip(filters, codes):
            self._fire("on_unsubscribed", UnsubscribedEvent(flt, int(getattr(code, "value", code))))

    # ================================================================== background ticker

    def _start_ticker(self) -> None:
        self._ticker_stop = threading.Event()
        t = threading.Thread(target=self._tick_loop, args=(self._ticker_stop,),
                             name=f"mqttsession-{self.client_id}", daemon=True)
        self._ticker = t
        t.start()

    def _tick_loop(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            try:
                self._tick()
            except Exception:  # pragma: no cover - never let the ticker die silently
                log.exception("session ticker failed")

    def _tick(self) -> None:
        """Record activity (bounds the disconnect time after a crash) and republish (3.1.1)."""
        now = time.time()
        with self._lock:
            if not self._connected or self._conn is None:
                return
            if now - self._last_activity_record >= 5.0:
                self._last_activity_record = now
                self._persist_quietly(self._state.activity(now), "recording activity failed")
            if self._journal is not None:
                self._journal.flush()  # lazy records wait at most one tick
            interval = self._settings.republish_interval
            if interval <= 0 or self._state.protocol_version != 4:
                return  # MQTT 5: resend only on reconnect [MQTT-4.4.0-1]
            due = time.monotonic() - interval
            for seq, sent_at in list(self._inflight.items()):
                m = self._state.outgoing.get(seq)
                if m is not None and sent_at <= due:
                    self._write(self._conn, m)


_INT_RANGES: Final = {"max_inflight": (1, 2**31), "will_qos": (0, 2), "receive_maximum": (1, 65535)}


def _str_setting(attr: str) -> tuple[Callable[[Client], str], Callable[[Client, str], None]]:
    def get(c: Client) -> str:
        v = getattr(c._settings, attr)
        if isinstance(v, bool):
            return "True" if v else "False"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    def put(c: Client, value: str) -> None:
        cur = getattr(c._settings, attr)
        name = attr.title().replace("_", "")
        if isinstance(cur, bool):
            new: object = _parse_bool(name, value)
        elif isinstance(cur, int):
            lo, hi = _INT_RANGES.get(attr, (0, 2**31))
            new = _parse_int(name, value, lo, hi)
        elif isinstance(cur, float):
            new = _parse_float(name, value, 0.0)
        else:
            new = value
            if attr == "topic_delimiter" and not value:
                raise UsageError("TopicDelimiter must not be empty")
        setattr(c._settings, attr, new)

    return get, put


_CONFIG: Final[dict[str, tuple[Callable[[Client], str], Callable[[Client, str], None] | None]]] = {
    "sessionpresent": (lambda c: "True" if c._session_present else "False", None),
    "mismatchedacks": (lambda c: str(c._mismatched_acks), None),
    "sessionstatefile": (lambda c: c._settings.session_state_file, Client._set_state_file),
    "sessionexpinterval": (
        lambda c: "" if c._state.session_expiry_interval is None
        else str(c._state.session_expiry_interval),
        Client._set_expiry,
    ),
    "protocolversion": (lambda c: str(c._state.protocol_version), Client._set_protocol),
    "sessionsync": (lambda c: c._settings.session_sync, Client._set_sync),
    "retain": _str_setting("retain"),
    "republishinterval": _str_setting("republish_interval"),
    "willqos": _str_setting("will_qos"),
    "willretain": _str_setting("will_retain"),
    "topicdelimiter": _str_setting("topic_delimiter"),
    "autoreconnect": _str_setting("auto_reconnect"),
    "reconnectdelaymin": _str_setting("reconnect_delay_min"),
    "reconnectdelaymax": _str_setting("reconnect_delay_max"),
    "maxinflight": _str_setting("max_inflight"),
    "republishonsessionlost": _str_setting("republish_on_session_lost"),
    "releasedonsessionlost": (lambda c: c._settings.released_on_session_lost,
                              Client._set_released),
    "journalmaxbytes": _str_setting("journal_max_bytes"),
    "maxmessagesize": _str_setting("max_message_size"),
    "receivemaximum": _str_setting("receive_maximum"),
    "manualack": (_str_setting("manual_ack")[0], Client._set_manual_ack),
}
