"""The public ``Client``: the IPWorks-style facade (properties, ``config()``, events).

The session itself is ``engine.Engine`` (pure), carried out by ``driver.Driver`` on paho and
the state file (``store.StateFile``). User callbacks never run under the session lock, so they
may call back into the client.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol

from . import codec
from .lifecycle import call_back, close_client, closed_text, configure, live
from .publishing import check_message, store_many, together
from .statelock import forks
from ._config import CONFIG, ClientSettings
from .driver import ConnectParams, Driver
from .durability import since_boot
from .engine import Action, EngineSettings
from .errors import QueueFullError, UsageError
from .options import DEFAULT_WS_PATH, check_transport, check_ws_headers, check_ws_path
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
from .state import Accepted, validate_qos
from .validation import split_filters, text_payload, validate_subscribe_filter

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

__all__ = ["Client", "TlsSettings"]

log = logging.getLogger("mqttsession")


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


def _tls_context_of(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The ``ssl.SSLContext`` a ``TlsOptions`` carries (other ``TlsSettings``: none)."""
    ctx = getattr(tls, "context", None)
    return ctx if isinstance(ctx, ssl.SSLContext) else None


class _Listening:
    """The events a Client has a callback for (the engine builds no others)."""

    def __init__(self, client: weakref.ref[Client]) -> None:
        self._client = client

    def __contains__(self, name: object) -> bool:
        c = self._client()
        return c is not None and isinstance(name, str) and getattr(c, name, None) is not None


def _filters(topic_filter: str, delimiter: str) -> list[str]:
    """The filters of a ``subscribe`` / ``unsubscribe`` string, each checked."""
    if not isinstance(topic_filter, str):
        raise UsageError(f"topic filter must be str, got {type(topic_filter).__name__}")
    return [validate_subscribe_filter(f) for f in split_filters(topic_filter, delimiter)]


def _timeout(timeout: float | None) -> float | None:
    if timeout is not None and (type(timeout) not in (int, float) or not timeout >= 0):
        raise UsageError(f"timeout must be None or seconds >= 0, got {timeout!r}")
    return None if timeout is not None and timeout > 1e9 else timeout  # (inf: no time_t)


def _ackable(message: MessageEvent | int) -> MessageEvent | int:
    if not isinstance(message, MessageEvent) and type(message) is not int:
        raise UsageError(f"ack takes an on_message_in event or its packet id, got"
                         f" {type(message).__name__}")
    return message


def _target(host: object, port: object, timeout: object) -> tuple[str, int, float]:
    """``connect()``'s arguments, checked (``UsageError``: a raw TypeError from the socket
    layer would leave the client half set up)."""
    if not isinstance(host, str) or not host:
        raise UsageError(f"host must be a non-empty str, got {host!r}")
    if type(port) is not int or not 0 < port < 65536:
        raise UsageError(f"port must be an int 1-65535, got {port!r}")
    if type(timeout) not in (int, float) or not 0 < timeout <= 1e9:  # type: ignore[operator]
        raise UsageError(f"timeout must be a positive number of seconds (at most 1e9),"
                         f" got {timeout!r}")
    return host, port, float(timeout)  # type: ignore[arg-type]


def _connect_params(c: Client) -> ConnectParams:
    """What ``connect`` hands the driver: the Client's connection settings."""
    if not isinstance(c.username, (str, type(None))) or not isinstance(c.password,
                                                                      (str, bytes, type(None))):
        raise UsageError("username must be str (or None), password str or bytes (or None)")
    tls = c.tls_options
    on = tls is not None and tls.enabled
    ctx = c._tls_context or (_tls_context_of(tls) if on else None)
    paths = on and tls is not None and ctx is None
    return ConnectParams(
        c._keep_alive, c.username, c.password, c.will_topic, c.will_message, c.will_properties,
        c.connect_properties,
        tls.ca_cert_path if paths and tls else None,
        tls.client_cert_path if paths and tls else None,
        tls.client_key_path if paths and tls else None, on or ctx is not None,
        ctx, c._transport, c._ws_path,
        dict(c._ws_headers) if c._ws_headers is not None else None)


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
        will_properties: Properties | None = None, connect_properties: Properties | None = None,
        tls_options: TlsSettings | None = None,
        tls_context: ssl.SSLContext | None = None,
        transport: str = "tcp",
        websocket_path: str = DEFAULT_WS_PATH,
        websocket_headers: Mapping[str, str] | None = None,
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
        self._closed = False  # close() (or the with block's end) was called: for good
        self._closer = 0  # the thread whose close() has not begun its work yet (interrupted)
        self._born = forks()  # (made before a fork(): the parent's, ``lifecycle.foreign``)
        #: MQTT username (None: none sent).
        self.username = username
        #: MQTT password (needs ``username``).
        self.password = password
        #: TLS settings (``TlsOptions``, or anything with its four attributes); None: plain TCP
        #: unless ``tls_context`` is set.
        self.tls_options = tls_options
        self.tls_context = tls_context
        self.transport = transport
        self.websocket_path = websocket_path
        self.websocket_headers = websocket_headers
        #: Topic of the will message ("": no will); ``WillQOS`` / ``WillRetain`` in ``config``.
        self.will_topic = will_topic
        #: Payload of the will message.
        self.will_message = will_message
        #: MQTT 5: the will's ``Properties(PacketTypes.WILLMESSAGE)``, and CONNECT's besides
        #: the session's own, ``Properties(PacketTypes.CONNECT)`` (README: what is refused).
        self.will_properties, self.connect_properties = will_properties, connect_properties
        self.keep_alive_interval = keep_alive_interval
        self.protocol_version = protocol_version
        self.client_id = client_id
        self.clean_session = clean_session

        # the events: each called with ONE event object (``mqttsession.events``), on the
        # thread named there; None: no callback
        #: ``on_connected(ConnectedEvent)``: a CONNACK arrived (network thread).
        self.on_connected: Callable[[ConnectedEvent], None] | None = None
        #: ``on_disconnected(DisconnectedEvent)``: the connection ended.
        self.on_disconnected: Callable[[DisconnectedEvent], None] | None = None
        #: ``on_message_in(MessageEvent)``: a message received (network thread).
        self.on_message_in: Callable[[MessageEvent], None] | None = None
        #: ``on_message_out(MessageEvent)``: a message sent and acknowledged.
        self.on_message_out: Callable[[MessageEvent], None] | None = None
        #: ``on_message_ack(MessageAckEvent)``: a QoS 1/2 flow ended.
        self.on_message_ack: Callable[[MessageAckEvent], None] | None = None
        #: ``on_subscribed(SubscribedEvent)``: one filter of a SUBACK.
        self.on_subscribed: Callable[[SubscribedEvent], None] | None = None
        #: ``on_unsubscribed(UnsubscribedEvent)``: one filter of an UNSUBACK.
        self.on_unsubscribed: Callable[[UnsubscribedEvent], None] | None = None
        #: ``on_session_lost(SessionLostEvent)``: the broker lost the session.
        self.on_session_lost: Callable[[SessionLostEvent], None] | None = None
        #: ``on_message_dropped(MessageDroppedEvent)``: a message left undelivered.
        self.on_message_dropped: Callable[[MessageDroppedEvent], None] | None = None
        #: ``on_error(ErrorEvent)``: a fault the session handled.
        self.on_error: Callable[[ErrorEvent], None] | None = None

    # ================================================================== properties

    @property
    def client_id(self) -> str:
        """The MQTT client id (empty: one is made at connect, for a clean session only)."""
        return self._engine.state.client_id

    @client_id.setter
    def client_id(self, value: str) -> None:
        if not isinstance(value, str):
            raise UsageError(f"client_id must be str, got {type(value).__name__}")
        configure(self, "client_id", client_id=value)

    @property
    def clean_session(self) -> bool:
        """CleanSession (MQTT 5: Clean Start); ``restore_session`` sets it False."""
        return self._engine.state.clean_session

    @clean_session.setter
    def clean_session(self, value: bool) -> None:
        if type(value) is not bool:  # ("False" would be True: a clean session, silently)
            raise UsageError(f"clean_session must be a bool, got {value!r}")
        if value and self._driver.file.shared is not None:
            raise UsageError("a gateway's sessions are persistent (its store keeps them)")
        configure(self, "clean_session", clean_session=value)

    @property
    def protocol_version(self) -> int:
        """4 (MQTT 3.1.1, the default) or 5."""
        return self._engine.state.protocol_version

    @protocol_version.setter
    def protocol_version(self, value: int) -> None:
        if value not in (4, 5):
            raise UsageError(f"protocol_version must be 4 (MQTT 3.1.1) or 5, got {value!r}")
        if value == 4 and self._engine.holds_properties():
            raise UsageError("the session holds MQTT 5 messages with properties: it stays"
                             " protocol_version=5 until they are delivered")
        configure(self, "protocol_version", protocol_version=value)

    @property
    def keep_alive_interval(self) -> int:
        """Keep-alive in seconds, 0..65535 (default 60); set while connected, it applies from
        the next ``connect()`` (a reconnect asks for the one its connect() did)."""
        return self._keep_alive

    @keep_alive_interval.setter
    def keep_alive_interval(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= 65535:
            raise UsageError(f"keep_alive_interval must be 0..65535 seconds, got {value!r}")
        self._keep_alive = value

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """An ``ssl.SSLContext`` for TLS (it turns TLS on; ``tls_options`` paths then unused);
        None: TLS as ``tls_options`` says."""
        return self._tls_context

    @tls_context.setter
    def tls_context(self, value: ssl.SSLContext | None) -> None:
        if value is not None and not isinstance(value, ssl.SSLContext):
            raise UsageError(f"tls_context must be an ssl.SSLContext, got {type(value).__name__}")
        self._tls_context = value

    @property
    def transport(self) -> str:
        """``"tcp"`` (the default) or ``"websockets"`` (MQTT over WebSockets; wss with TLS)."""
        return self._transport

    @transport.setter
    def transport(self, value: str) -> None:
        self._transport = check_transport(value, "transport")

    @property
    def websocket_path(self) -> str:
        """The path of the WebSocket upgrade request (``/mqtt``)."""
        return self._ws_path

    @websocket_path.setter
    def websocket_path(self, value: str) -> None:
        self._ws_path = check_ws_path(value, "websocket_path")

    @property
    def websocket_headers(self) -> Mapping[str, str] | None:
        """Extra HTTP headers of the WebSocket upgrade request (e.g. ``Authorization``)."""
        return self._ws_headers

    @websocket_headers.setter
    def websocket_headers(self, value: Mapping[str, str] | None) -> None:
        self._ws_headers = None if value is None else check_ws_headers(value, "websocket_headers")

    @property
    def connected(self) -> bool:
        """Whether a connection is up (read-only)."""
        return self._engine.connected

    @property
    def incoming_messages(self) -> tuple[Message, ...]:
        """Received QoS>0 messages not yet fully acknowledged."""
        live(self, "incoming_messages")  # (before a lock: a fork()'s child may never get it)
        return self._driver.incoming_messages()

    @property
    def outgoing_messages(self) -> tuple[Message, ...]:
        """QoS>0 messages accepted by publish_* and not fully acknowledged, in publish order
        (the disk queue's read from it, packet id 0: ``queue_stats()`` counts without reading)."""
        live(self, "outgoing_messages")
        with self._lock:
            return tuple(map(Message.outgoing, self._file.outgoing(self._engine.state)))

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
        live(self, "config")
        with self._lock:
            setter(self, value)
        f = self._file
        f.max_journal_bytes = self._settings.journal_max_bytes
        f.segment_bytes = self._settings.queue_segment_bytes
        if f.journal is not None:  # an open state file too (a gateway's session opens at once)
            f.journal.max_journal_bytes = f.max_journal_bytes
        return ""

    # ================================================================== connecting

    def _require_open(self, what: str) -> None:
        """``UsageError`` once ``close()`` released the client (and its state file)."""
        if self._closed or self._born != forks():  # (closed, or the parent's: ``foreign``)
            raise UsageError(closed_text(self, what))

    def connect(self, host: str = "localhost", port: int = 1883, timeout: float = 30.0) -> None:
        """Connect and block until CONNACK; the network loop then runs in a background thread.

        Raises ``ConnectError`` on refusal, an unreachable broker or no CONNACK (and
        ``on_connected`` returned) within ``timeout`` s; ``UsageError`` for an empty client_id
        with clean_session False, or after ``close()``. The servers of ``FailoverServers``
        (``config("FailoverServers=host:port,...")``) are tried after this one, in order, each
        once (``timeout`` each); ``ConnectError`` only when none accepted (naming each
        failure). A lost connection then goes to the next in that list, round robin.
        """
        self._require_open("connect")
        self._driver.connect(*_target(host, port, timeout), _connect_params(self))

    def disconnect(self) -> None:
        """A clean DISCONNECT, its time recorded in the session; the state file is compacted."""
        live(self, "disconnect")
        self._driver.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        close_client(self)

    def close(self) -> None:
        """Disconnect and release the state file, for good (``UsageError`` from any call after
        it; idempotent). ``PersistenceError``: what waited could not be put on disk."""
        self.__exit__(None, None, None)

    # ================================================================== publishing

    def publish_message(self, topic: str, qos: int, message: str, *, retain: bool | None = None,
                        properties: Properties | None = None) -> int:
        """Publish text (UTF-8); returns the packet id (0: see ``publish_data``)."""
        if not isinstance(message, str):
            raise UsageError(f"message must be str, got {type(message).__name__}")
        return self.publish_data(topic, qos, text_payload(message), retain=retain,
                                 properties=properties)

    def publish_data(self, topic: str, qos: int, data: bytes, *, retain: bool | None = None,
                     properties: Properties | None = None) -> int:
        """Publish bytes; returns the packet id (0 for QoS 0, while all ids are taken, or
        while it waits in the disk queue).

        QoS 1/2 messages are part of the session before this returns (durable with a
        SessionStateFile); while disconnected they wait and go out on connect, in order.
        ``retain``: None takes the ``Retain`` setting; ``properties`` (MQTT 5): a paho
        ``Properties(PacketTypes.PUBLISH)``, kept packed and durable with the message.
        ``QueueFullError`` when MaxQueuedMessages / MaxQueuedBytes leave no room;
        ``UsageError`` after ``close()``.
        """
        if self._born != forks():  # (before a lock: a fork()'s child may never get it)
            live(self, "publish")
        d = self._driver
        if not qos:  # nothing to make durable: no turn to take
            return self._publish_begin(topic, qos, data, retain, properties, group=False)[0]
        turns = d.turns  # (counts QoS 1/2 publishes only: a turn gathers those)
        counted = False
        try:
            with turns.count_lock:  # (counted in the ``try``: an interrupt leaks no count)
                turns.publishers, counted = turns.publishers + 1, True
            if turns.publishers > 1 and d.group_commit():  # publishers in several threads
                pid, token = together(self, topic, qos, data, retain, properties)
            else:
                pid, token = self._publish_begin(topic, qos, data, retain, properties,
                                                 group=turns.publishers > 1)
            if token is not None:
                d.settle(token)  # the group commit: durable before this returns
        except BaseException:
            d.finish_stashed()
            raise
        finally:
            if counted:
                with turns.count_lock:
                    turns.publishers -= 1
        return pid

    def _publish_begin(self, topic: str, qos: int, data: bytes, retain: bool | None,
                       properties: Properties | None, group: bool = True
                       ) -> tuple[int, tuple[int, int, int] | None]:
        """The locked half of a publish; a token when its record still has to reach the
        disk (``SessionSync=always``: publishers in several threads share the fdatasync;
        ``Driver.settle`` waits for it, or ``wait_durable`` + ``release`` in two steps)."""
        payload, props = check_message(self, topic, qos, data, properties)
        with self._lock:
            (pid, rest), token = self._publish_locked(topic, qos, payload, retain, props, group)
        self._driver.finish(rest)
        return pid, token

    def _publish_locked(self, topic: str, qos: int, payload: bytes, retain: bool | None,
                        props: bytes, group: bool
                        ) -> tuple[tuple[int, list[Action]], tuple[int, int, int] | None]:
        """A publish, lock held: (packet id, callbacks for ``finish``) and the group commit's
        token (None: durable already, or QoS 0)."""
        self._require_open("publish")
        token = None
        if not qos:
            group = False
        if qos:
            self._file.open(self._engine.state)  # with a state file: durable from the first
            self._file.compact_before_publish(self._engine.state)
            # only while other publishes are under way: alone, the sync under the lock
            # costs less than handing it over
            group = group and self._driver.group_commit()
        try:
            pid, actions = self._engine.publish(
                topic, payload, qos, self._settings.retain if retain is None else bool(retain),
                props, time.time(), hold=group, mono=since_boot())
        except QueueFullError as exc:
            self._driver.run_refused(exc)
            raise
        rec = self._engine.accepted
        group = group and type(rec) is Accepted
        # persistence point 1: the record written; with a group commit its fsync (and so
        # its PUBLISH) follows outside the lock
        rest = self._driver.run(actions, rec, deferred=group)
        if group and rec is not None:
            token = self._driver.hold(rec.message.seq)
        return (pid, rest), token

    def publish_many(self, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest]
                     ) -> list[int]:
        """Publish several messages with ONE write and ONE sync of the state file; returns
        their packet ids in order (0 for QoS 0, or while they wait in the disk queue).

        ``messages``: ``(topic, qos, data)`` tuples (text is UTF-8) or ``PublishRequest``
        values (with ``retain`` / ``properties``). All or nothing: a bad message raises before
        any is stored (``UsageError``; ``QueueFullError`` when the limits leave no room for
        all of them; ``PersistenceError`` when the record cannot be written).
        """
        return store_many(self, messages, group=False)[0]

    def queue_stats(self) -> QueueStats:
        """The outgoing QoS 1/2 messages held: how many, their bytes, the oldest's age, and
        how many were dropped or expired since the client was made or restored."""
        live(self, "queue_stats")
        with self._lock:
            return self._engine.queue_stats(time.time(), since_boot())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until ``outgoing_messages`` is empty; False on timeout.

        Not from an event callback: those run on the thread that processes the acks.
        """
        live(self, "flush")
        return self._driver.flush(_timeout(timeout))

    # ================================================================== subscriptions

    def subscribe(self, topic_filter: str, qos: int) -> None:
        """Subscribe to one filter or a TopicDelimiter-separated list; works while disconnected."""
        validate_qos(qos)
        filters = _filters(topic_filter, self._settings.topic_delimiter)
        live(self, "subscribe")
        with self._lock:
            self._require_open("subscribe")
            self._file.open(self._engine.state)
            rest = self._driver.run(self._engine.subscribe(filters, qos))
        self._driver.finish(rest)

    def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe from one filter or a TopicDelimiter-separated list."""
        filters = _filters(topic_filter, self._settings.topic_delimiter)
        self._require_open("unsubscribe")
        self._driver.do(lambda: self._engine.unsubscribe(filters))

    def ack(self, message: MessageEvent | int) -> bool:
        """ManualAck: the application has taken ``message`` (an ``on_message_in`` event, or
        its packet id). QoS 1: its PUBACK goes out, after those of the messages received
        before it [MQTT-4.6.0-2]; QoS 2: its removal is made durable, then PUBCOMP goes out.

        False when nothing waited: QoS 0, acknowledged before, or owed to a connection that
        has dropped since (the broker sends that message again). Any thread, and callbacks.
        """
        live(self, "ack")
        return self._driver.ack(_ackable(message))

    # ================================================================== save / restore

    def save_session(self) -> str:
        """The whole session state as text; also written atomically to SessionStateFile.
        ``UsageError`` after ``close()``: the file is no longer this client's to write."""
        live(self, "save_session")
        with self._lock:
            self._require_open("save_session")
            text = self._driver.save()
            st = self._engine.state
            # the disk queue's messages are in the file's queue; the text holds them all
            return codec.encode(self._file.with_queue(st)) if st.spooled else text

    def restore_session(self, state_data: str) -> None:
        """Load a saved session and set clean_session False.

        With SessionStateFile set, the file is read and ``state_data`` ignored (a missing file
        is an empty session). Bad input raises ``StateError`` and changes nothing. Called from
        ``on_connected`` it resumes the session on that connection.
        """
        live(self, "restore_session")
        with self._lock:
            self._require_open("restore_session")
            self._engine.check_restorable()
            path = self._settings.session_state_file
            cid = self._engine.state.client_id
            state = self._file.load(cid) if path else codec.decode(state_data)
            if not path:
                state.spool_last = 0  # (the disk queue of another file)
            try:
                records = self._engine.restore(state, time.time(), since_boot())
            except BaseException:
                if path:  # not taken: it waits, never written over (``StateFile.settle``)
                    self._file.unrestored = state
                raise
            if path:  # the file holds the rest already; a due compaction waits (a read only)
                self._file.note_restore(records, state)
        self._driver.finish([])  # (its record not written, a full disk: on_error)
        if path and state_data:  # (a gateway's session has a file too): never silently
            self._driver.error(0, f"restore_session: the session was read from {path}; the"
                                  f" state text given ({len(state_data)} characters) was ignored")

    # ================================================================== events

    _fire = call_back  # an event to its callback (``lifecycle.call_back``)
