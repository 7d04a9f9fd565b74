"""The public ``Client``: the IPWorks-style facade (properties, ``config()``, events).

The session itself is ``engine.Engine`` (pure), carried out by ``driver.Driver`` on paho and
the state file (``store.StateFile``). User callbacks never run under the session lock, so they
may call back into the client.
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from . import codec
from ._config import CONFIG, ClientSettings, parse_bool, parse_int
from .driver import ConnectParams, Driver
from ._paho import pack_properties
from .engine import EngineSettings
from .errors import UsageError
from .events import ErrorEvent, Message, MessageEvent, PublishRequest, QueueStats
from .state import MAX_EXPIRY, Accepted, validate_filter, validate_qos, validate_topic

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

__all__ = ["Client", "TlsSettings"]

log = logging.getLogger("mqttsession")

Callback = Callable[[Any], None]


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


class _Listening:
    """The events a Client has a callback for (the engine builds no others)."""

    def __init__(self, client: weakref.ref[Client]) -> None:
        self._client = client

    def __contains__(self, name: object) -> bool:
        c = self._client()
        return c is not None and isinstance(name, str) and getattr(c, name, None) is not None


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
        self._settings = ClientSettings()
        self._engine_settings = EngineSettings()
        me = weakref.WeakMethod(self._fire)  # no cycle: a dropped Client frees its state file

        def fire(name: str, event: object) -> None:
            f = me()
            if f is not None:
                f(name, event)

        self._driver = d = Driver(fire, self._settings, self._engine_settings)
        d.engine.listeners = _Listening(weakref.ref(self))
        self._lock, self._engine, self._file = d.lock, d.engine, d.file
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
        self.on_message_dropped: Callback | None = None
        self.on_error: Callback | None = None

    # ================================================================== properties

    def _configure(self, what: str, **change: Any) -> None:
        with self._lock:
            self._require_disconnected(what)
            st = self._engine.state
            if any(getattr(st, k) != v for k, v in change.items()):
                self._file.append([st.configure(**change)], st)

    @property
    def client_id(self) -> str:
        return self._engine.state.client_id

    @client_id.setter
    def client_id(self, value: str) -> None:
        if not isinstance(value, str):
            raise UsageError(f"client_id must be str, got {type(value).__name__}")
        self._configure("client_id", client_id=value)

    @property
    def clean_session(self) -> bool:
        return self._engine.state.clean_session

    @clean_session.setter
    def clean_session(self, value: bool) -> None:
        self._configure("clean_session", clean_session=bool(value))

    @property
    def protocol_version(self) -> int:
        return self._engine.state.protocol_version

    @protocol_version.setter
    def protocol_version(self, value: int) -> None:
        if value not in (4, 5):
            raise UsageError(f"protocol_version must be 4 (MQTT 3.1.1) or 5, got {value!r}")
        self._configure("protocol_version", protocol_version=value)

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
        return self._engine.connected

    @property
    def incoming_messages(self) -> tuple[Message, ...]:
        """Received QoS>0 messages not yet fully acknowledged."""
        with self._lock:
            owed = [Message(e.packet_id, e.topic, 1, e.message, e.retained, e.duplicate)
                    for e in self._engine.owed_messages() if e.packet_id not in self._driver.delivering]
            held = [Message.incoming(m) for m in self._engine.state.incoming.values()]
            return tuple(list(self._driver.delivering.values()) + owed + held)

    @property
    def outgoing_messages(self) -> tuple[Message, ...]:
        """QoS>0 messages accepted by publish_* and not fully acknowledged, in publish order."""
        with self._lock:
            return tuple(Message.outgoing(m) for m in self._engine.state.outgoing.values())

    # ================================================================== config

    def config(self, setting: str) -> str:
        """``"Name=Value"`` sets (returns ""), ``"Name"`` reads; names are case-insensitive."""
        if not isinstance(setting, str):
            raise UsageError("config takes a string: 'Name' or 'Name=Value'")
        name, eq, value = setting.partition("=")
        entry = CONFIG.get(name.strip().lower())
        if entry is None:
            raise UsageError(f"unknown config setting {name.strip()!r}")
        getter, setter = entry
        if not eq:
            return getter(self)
        if setter is None:
            raise UsageError(f"config setting {name.strip()!r} is read-only")
        with self._lock:
            setter(self, value)
        self._file.max_journal_bytes = self._settings.journal_max_bytes
        self._file.segment_bytes = self._settings.queue_segment_bytes
        return ""

    def _set_state_file(self, value: str) -> None:
        self._file.set_path(value.strip())
        self._settings.session_state_file = value.strip()

    def _set_expiry(self, value: str) -> None:
        interval = parse_int("SessionExpInterval", value, 0, MAX_EXPIRY)
        st = self._engine.state
        self._file.append([st.configure(session_expiry_interval=interval)], st)

    def _set_protocol(self, value: str) -> None:
        self.protocol_version = parse_int("ProtocolVersion", value, 4, 5)

    def _set_released(self, value: str) -> None:
        v = value.strip().lower()
        if v not in ("republish", "drop"):
            raise UsageError(f"ReleasedOnSessionLost must be 'republish' or 'drop', got {value!r}")
        self._engine_settings.released_on_session_lost = v

    def _set_manual_ack(self, value: str) -> None:
        on = parse_bool("ManualAck", value)
        if on != self._settings.manual_ack:
            self._require_disconnected("ManualAck")
        self._settings.manual_ack = on

    def _set_sync(self, value: str) -> None:
        v = value.strip().lower()
        if v not in ("always", "none", "interval"):
            raise UsageError(f"SessionSync must be 'always', 'none' or 'interval', got {value!r}")
        self._settings.session_sync = v
        self._file.set_sync(v != "none")  # interval: the driver defers a publish's fsync

    # ================================================================== connecting

    def _require_disconnected(self, what: str) -> None:
        self._driver.require_disconnected(what)

    def connect(self, host: str = "localhost", port: int = 1883, timeout: float = 30.0) -> None:
        """Connect and block until CONNACK; the network loop then runs in a background thread.

        Raises ``ConnectError`` on refusal, an unreachable broker or no CONNACK within
        ``timeout`` seconds; ``UsageError`` for an empty client_id with clean_session False.
        With ``config("FailoverServers=host:port,...")`` the servers listed are tried after
        this one, in order, each once (``timeout`` per server); ``ConnectError`` only when none
        accepted (naming each one's failure). A lost connection then reconnects to the next
        server in that list, round robin.
        """
        self._driver.connect(host, port, timeout, self._connect_params())

    def _connect_params(self) -> ConnectParams:
        tls = self.tls_options
        on = tls is not None and tls.enabled
        return ConnectParams(
            self._keep_alive, self.username, self.password, self.will_topic, self.will_message,
            tls.ca_cert_path if on and tls else None, tls.client_cert_path if on and tls else None,
            tls.client_key_path if on and tls else None, on)

    def disconnect(self) -> None:
        """A clean DISCONNECT; the disconnect time is recorded in the session state, and the
        state file, if any, is compacted."""
        self._driver.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._driver.cancel_sync_timer()  # SessionSync=interval: what waits goes to disk now
        compacted = self._driver.disconnect() and self._file.journal is not None
        if self._settings.session_state_file and not compacted:
            self._save()  # (a disconnect that compacted wrote the same snapshot)
        with self._lock:
            self._file.close()

    def close(self) -> None:
        """Disconnect and release the state file."""
        self.__exit__(None, None, None)

    # ================================================================== publishing

    def publish_message(self, topic: str, qos: int, message: str, *, retain: bool | None = None,
                        properties: Properties | None = None) -> int:
        """Publish text (UTF-8); returns the packet id (0 for QoS 0)."""
        if not isinstance(message, str):
            raise UsageError(f"message must be str, got {type(message).__name__}")
        return self.publish_data(topic, qos, message.encode("utf-8"), retain=retain,
                                 properties=properties)

    def publish_data(self, topic: str, qos: int, data: bytes, *, retain: bool | None = None,
                     properties: Properties | None = None) -> int:
        """Publish bytes; returns the packet id (0 for QoS 0, or while all ids are taken).

        QoS 1/2 messages are part of the session before this returns (durable with a
        SessionStateFile); while disconnected they wait and go out on connect, in order.
        ``retain``: None takes the ``Retain`` setting; ``properties`` (MQTT 5): a paho
        ``Properties(PacketTypes.PUBLISH)``, kept packed and durable with the message.
        ``QueueFullError`` when MaxQueuedMessages / MaxQueuedBytes leave no room.
        """
        d = self._driver
        with d.count_lock:
            d.publishers += 1
        try:
            pid, token = self._publish_begin(topic, qos, data, retain, properties,
                                             group=d.publishers > 1)
            if token is not None:
                d.settle(token)  # the group commit: durable before this returns
        finally:
            with d.count_lock:
                d.publishers -= 1
        return pid

    def _checked(self, topic: str, qos: int, data: object,
                 properties: Properties | None) -> tuple[bytes, bytes]:
        """A message's payload and packed properties, its topic and QoS checked
        (``UsageError``)."""
        validate_topic(topic)
        validate_qos(qos)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"data must be bytes, got {type(data).__name__}")
        props = b""
        if properties is not None:
            if self.protocol_version != 5:
                raise UsageError("properties need MQTT 5 (protocol_version=5)")
            props = pack_properties(properties)
        return bytes(data), props

    def _publish_begin(self, topic: str, qos: int, data: bytes, retain: bool | None,
                       properties: Properties | None, group: bool = True
                       ) -> tuple[int, tuple[int, int, int] | None]:
        """The locked half of a publish; a token when its record still has to reach the
        disk (``SessionSync=always``: publishers in several threads share the fdatasync;
        ``Driver.settle`` waits for it, or ``wait_durable`` + ``release`` in two steps)."""
        payload, props = self._checked(topic, qos, data, properties)
        token = None
        with self._lock:
            if not qos:
                group = False
            if qos:
                self._file.open(self._engine.state)  # with a state file: durable from the first
                self._file.compact_before_publish(self._engine.state)
                # only while other publishes are under way: alone, the sync under the lock
                # costs less than handing it over
                group = group and self._driver.group_commit()
            pid, actions = self._engine.publish(
                topic, payload, qos, self._settings.retain if retain is None else bool(retain),
                props, time.time(), hold=group)
            rec = self._engine.accepted
            group = group and type(rec) is Accepted
            # persistence point 1: the record written; with a group commit its fsync (and so
            # its PUBLISH) follows outside the lock
            rest = self._driver.run(actions, rec, deferred=group)
            if group and rec is not None:
                token = self._driver.hold(rec.message.seq)
        self._driver.finish(rest)
        return pid, token

    def publish_many(self, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest]
                     ) -> list[int]:
        """Publish several messages with ONE write and ONE sync of the state file; returns
        their packet ids in order (0 for QoS 0, or while they wait in the disk queue).

        ``messages``: ``(topic, qos, data)`` tuples (text is UTF-8) or ``PublishRequest``
        values (with ``retain`` / ``properties``). All or nothing: a bad message raises before
        any is stored (``UsageError``; ``QueueFullError`` when the limits leave no room for
        all of them; ``PersistenceError`` when the record cannot be written).
        """
        items: list[tuple[str, bytes, int, bool, bytes]] = []
        for m in messages:
            if isinstance(m, PublishRequest):
                topic, qos, data, retain, props = m.topic, m.qos, m.payload, m.retain, m.properties
            elif isinstance(m, tuple) and len(m) == 3:
                (topic, qos, data), retain, props = m, None, None
            else:
                raise UsageError(f"publish_many takes (topic, qos, data) tuples or PublishRequest"
                                 f" values, got {type(m).__name__}")
            payload, packed = self._checked(
                topic, qos, data.encode("utf-8") if isinstance(data, str) else data, props)
            items.append((topic, payload, qos,
                          self._settings.retain if retain is None else bool(retain), packed))
        if not items:
            return []
        with self._lock:
            if any(i[2] for i in items):
                self._file.open(self._engine.state)
                self._file.compact_before_publish(self._engine.state)
            ids, actions = self._engine.publish_many(items, time.time())
            rest = self._driver.run(actions, self._engine.accepted_many)  # point 1, all of them
        self._driver.finish(rest)
        return ids

    def queue_stats(self) -> QueueStats:
        """The outgoing QoS 1/2 messages held: how many, their bytes, the oldest's age, and
        how many were dropped or expired since the client was made or restored."""
        with self._lock:
            return self._engine.queue_stats(time.time())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until ``outgoing_messages`` is empty; False on timeout.

        Not from an event callback: those run on the thread that processes the acks.
        """
        conn = self._driver.conn
        if conn is not None and conn.in_network_thread():
            raise UsageError("flush() inside an event callback would wait forever")
        with self._driver.changed:
            return self._driver.changed.wait_for(
                lambda: not (self._engine.state.outgoing or self._engine.state.spooled), timeout)

    # ================================================================== subscriptions

    def _filters(self, topic_filter: str) -> list[str]:
        if not isinstance(topic_filter, str):
            raise UsageError(f"topic filter must be str, got {type(topic_filter).__name__}")
        return [validate_filter(f.strip()) for f in topic_filter.split(self._settings.topic_delimiter)]

    def subscribe(self, topic_filter: str, qos: int) -> None:
        """Subscribe to one filter or a TopicDelimiter-separated list; works while disconnected."""
        validate_qos(qos)
        filters = self._filters(topic_filter)
        with self._lock:
            self._file.open(self._engine.state)
            rest = self._driver.run(self._engine.subscribe(filters, qos))
        self._driver.finish(rest)

    def unsubscribe(self, topic_filter: str) -> None:
        filters = self._filters(topic_filter)
        self._driver.do(lambda: self._engine.unsubscribe(filters))

    def ack(self, message: MessageEvent | int) -> bool:
        """ManualAck: the application has taken ``message`` (an ``on_message_in`` event, or
        its packet id). QoS 1: its PUBACK goes out, after those of the messages received
        before it [MQTT-4.6.0-2]; QoS 2: its removal is made durable, then PUBCOMP goes out.

        False when nothing waited: QoS 0, acknowledged before, or owed to a connection that
        has dropped since (the broker sends that message again). Any thread, and callbacks.
        """
        return self._driver.ack(message)

    # ================================================================== save / restore

    def _save(self) -> str:
        """The state file's snapshot (the disk queue by reference), written; its text."""
        with self._lock:
            if self._engine.connected:
                self._engine.state.activity(time.time())  # part of the snapshot written below
            text = codec.encode(self._engine.state)
            self._file.save(self._engine.state, text)
            return text

    def save_session(self) -> str:
        """The whole session state as text; also written atomically to SessionStateFile."""
        with self._lock:
            text = self._save()
            st = self._engine.state
            if not st.spooled:
                return text
            # the disk queue's messages are in the file's queue; the text holds them all
            whole = copy.copy(st)
            whole.outgoing = {**st.outgoing, **{m.seq: m for m in self._file.queued_messages()}}
            whole.spooled = whole.spooled_bytes = 0
            return codec.encode(whole)

    def restore_session(self, state_data: str) -> None:
        """Load a saved session and set clean_session False.

        With SessionStateFile set, the file is read and ``state_data`` ignored (a missing file
        is an empty session). Bad input raises ``StateError`` and changes nothing. Called from
        ``on_connected`` it resumes the session on that connection.
        """
        with self._lock:
            self._engine.check_restorable()
            path = self._settings.session_state_file
            cid = self._engine.state.client_id
            state = self._file.load(cid) if path else codec.decode(state_data)
            rec = self._engine.restore(state, time.time())
            if path:  # the journal is open; the file holds the rest already. A due compaction
                # waits for the next record: restoring stays a read of the file
                self._file.append([rec], state, sync=True)

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
