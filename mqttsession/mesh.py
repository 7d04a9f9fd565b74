"""Sessions in the Volue Mesh style: a thin layer over ``Client``.

A ``Session`` is a persistent MQTT session on the broker; its id is the MQTT client id::

    connection = Connection.insecure("127.0.0.1:1883")
    with connection.create_session() as session:    # opened here, ended on the broker at exit
        session.subscribe("cmd/#")
        session.publish("status", "up")

* ``connection.create_session()`` makes a session with a new id (``uuid4``); ``open()`` connects.
* While open, the session's lifetime is extended in the background: the ``Client`` sends
  keep-alives and reconnects, resuming the same broker session.
* ``close()`` ends the session on the broker too (MQTT 5: Session Expiry Interval 0 on
  DISCONNECT; MQTT 3.1.1: a clean-session connect and disconnect with the same id), so it stops
  holding the broker's resources. ``close(end_session=False)`` only disconnects: the broker keeps
  the session (and queues QoS 1/2 messages for its subscriptions) until it expires.
* ``connection.connect_to_session(session_id)`` attaches to a session the broker still holds and
  returns it open. When the broker no longer has it (closed, expired, never existed) it raises
  ``SessionNotFoundError``, after removing the empty session the attempt created, instead of
  silently starting a new one. ``must_exist=False`` accepts a new session; ``session_present``
  tells which it got.

Incoming messages are queued in the session (at most ``options.inbound_queue_size``; when full,
the network thread waits for room): ``receive(timeout)`` or ``for m in session.messages(timeout):``.
A QoS 1/2 message is acknowledged only once the application has taken it: when it asks for the
next one, calls ``ack()``, or closes the session; one still queued at a crash (or at
``close()``: ``receive`` hands out nothing after it) is sent again, QoS 1 by the broker. A QoS 2
message is received (PUBREC) on its PUBLISH and delivered on its PUBREL: a session without a state
file (this one; ``AsyncSession(state_file=...)`` has one) loses a QoS 2 message still queued at a
crash, since the broker then sends only the PUBREL.
"""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Final

from . import handover
from ._inbox import Slots
from .client import Client
from .errors import MQTTSessionError, UsageError
from .events import MessageEvent, PublishRequest, SubscribedEvent
from .options import Options, TlsOptions, format_address, parse_address
from .validation import split_filters

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

__all__ = ["Connection", "Session", "SessionNotFoundError"]

log = logging.getLogger("mqttsession.mesh")


class SessionNotFoundError(MQTTSessionError, LookupError):
    """``connect_to_session``: the broker holds no session with that id."""

    def __init__(self, session_id: str, address: str) -> None:
        super().__init__(
            f"the broker at {address} holds no session {session_id!r} (it was closed, has"
            " expired, or never existed); nothing was started"
        )
        self.session_id = session_id


class _Closed:
    pass


_CLOSED: Final = _Closed()


def new_client(options: Options, client_id: str, clean_session: bool) -> Client:
    """A ``Client`` configured from ``options`` (not connected)."""
    c = Client(
        client_id=client_id,
        clean_session=clean_session,
        keep_alive_interval=options.keep_alive,
        protocol_version=options.protocol_version,
        username=options.username,
        password=options.password,
        tls_options=options.tls_options if options.tls_options.enabled else None,
        transport=options.transport,
        websocket_path=options.websocket_path,
        websocket_headers=options.websocket_headers,
    )
    if options.protocol_version == 5 and not clean_session:
        c.config(f"SessionExpInterval={options.session_expiry_interval}")
    servers = options.servers
    if len(servers) > 1:  # connect() gets the first: the others are tried after it, in turn
        c.config("FailoverServers=" + ",".join(format_address(h, p) for h, p in servers[1:]))
    return c


def end_session_on_broker(options: Options, client_id: str, last: str | None = None) -> None:
    """Make the broker drop ``client_id``'s session: connect clean, then disconnect. ``last``:
    the server that held it last (``host:port``), tried before the others of the list."""
    c = new_client(options, client_id, clean_session=True)
    servers = list(options.servers)
    if last is not None and len(servers) > 1:
        first = parse_address(last)
        servers = [first, *(s for s in servers if s != first)]
        c.config("FailoverServers=" + ",".join(format_address(h, p) for h, p in servers[1:]))
    try:
        c.connect(*servers[0], options.request_timeout_seconds)
        c.disconnect()
    finally:
        c.close()


class Connection:
    """Where sessions live: a broker address and how to reach it (an ``Options``).

    ``Connection()`` uses ``Options.from_env()``. No network traffic until a session opens.
    """

    def __init__(self, options: Options | None = None) -> None:
        self._options = Options.from_env() if options is None else options

    @classmethod
    def insecure(
        cls,
        address: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        options: Options | None = None,
    ) -> Connection:
        """Plain TCP to ``address`` (default: ``options.address``, else the environment's);
        ``"host:port,host:port"`` lists servers tried in turn (``Options.address``)."""
        base = Options.from_env() if options is None else options
        return cls(base.with_(
            address=base.address if address is None else address,
            tls_options=TlsOptions(),
            username=base.username if username is None else username,
            password=base.password if password is None else password,
        ))

    @classmethod
    def with_tls(
        cls,
        address: str | None,
        ca_cert_path: str | os.PathLike[str] | None = None,
        client_cert_path: str | os.PathLike[str] | None = None,
        client_key_path: str | os.PathLike[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        options: Options | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> Connection:
        """TLS to ``address`` (one server or a ``"host:port,host:port"`` list, each with the
        same TLS settings and credentials), trusting ``ca_cert_path`` (None: the system CAs); a
        client certificate for brokers that require one. ``tls_context``: an ``ssl.SSLContext``
        instead of the paths."""
        base = Options.from_env() if options is None else options
        if tls_context is not None:
            if ca_cert_path is not None or client_cert_path is not None \
                    or client_key_path is not None:
                raise UsageError("with_tls: give tls_context or certificate paths, not both")
            tls = TlsOptions(context=tls_context)
        else:
            tls = TlsOptions(
                True,
                None if ca_cert_path is None else os.fspath(ca_cert_path),
                None if client_cert_path is None else os.fspath(client_cert_path),
                None if client_key_path is None else os.fspath(client_key_path),
            )
        return cls(base.with_(
            address=base.address if address is None else address,
            tls_options=tls,
            username=base.username if username is None else username,
            password=base.password if password is None else password,
        ))

    @property
    def options(self) -> Options:
        return self._options

    def create_session(self) -> Session:
        """A new session (new id), not yet open: ``open()`` it, or use ``with``."""
        return Session(self, str(uuid.uuid4()), attach=False)

    def connect_to_session(self, session_id: str | uuid.UUID, *, must_exist: bool = True) -> Session:
        """Attach to the broker's session ``session_id``; returned open.

        Raises ``SessionNotFoundError`` when the broker no longer has it (``must_exist=False``:
        a new session with that id is kept instead; see ``session.session_present``).
        """
        session = Session(self, str(session_id), attach=must_exist)
        try:
            session.open()
        except BaseException:  # what it took over goes on to the next one (handover.py)
            session.close(end_session=False)
            raise
        return session

    def __repr__(self) -> str:
        return f"Connection({self._options!r})"


class Session:
    """An MQTT session on the broker, identified by ``session_id`` (the MQTT client id).

    Not reusable after ``close()``: attach again with ``connection.connect_to_session(id)``.
    """

    def __init__(self, connection: Connection, session_id: str, *, attach: bool = False) -> None:
        if not session_id:
            raise UsageError("session_id must not be empty")
        self._connection = connection
        self._options = connection.options
        self._id = session_id
        self._attach = attach
        self._client = new_client(self._options, session_id, clean_session=False)
        self._client.config("ManualAck=True")
        self._messages: queue.Queue[MessageEvent | _Closed] = queue.Queue()
        self._slots = Slots(self._options.inbound_queue_size)
        self._handed: list[MessageEvent] = []  # taken by the application, not yet acked
        self._handed_lock = threading.Lock()
        self._subacks: dict[str, list[tuple[threading.Event, list[int]]]] = {}
        self._suback_lock = threading.Lock()
        self._opened = False
        self._closed = False
        self._session_present: bool | None = None
        self._client.on_message_in = self._on_message_in
        self._client.on_subscribed = self._on_subscribed

    # ------------------------------------------------------------------ properties

    @property
    def session_id(self) -> str:
        return self._id

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def client(self) -> Client:
        """The underlying ``Client`` (its ``on_message_in`` and ``on_subscribed`` are ours)."""
        return self._client

    @property
    def session_present(self) -> bool | None:
        """The broker's SessionPresent flag at ``open()`` (None before): did it have the session?"""
        return self._session_present

    @property
    def is_open(self) -> bool:
        return self._opened and not self._closed

    # ------------------------------------------------------------------ lifecycle

    def _check(self, what: str) -> Client:
        """The client; ``UsageError`` once the session is closed."""
        if self._closed:
            raise UsageError(f"{what}: session {self._id} is closed; attach again with"
                             " connection.connect_to_session")
        return self._client

    def open(self) -> None:
        """Connect (block until CONNACK); a no-op when open (connected or reconnecting), a
        connect again after ``client.disconnect()`` or a link lost under AutoReconnect=False.
        ``ConnectError`` on failure."""
        self._check("open")
        again, driver = self._opened, self._client._driver  # noqa: SLF001
        if again and driver.lost_for_good():
            self._client.disconnect()  # (what it holds stays in the session)
        if again and driver.conn is not None:
            return
        o = self._options
        if not again:
            handover.restore(o.address, self._client)  # what one closed before still held
        self._client.connect(o.host, o.port, o.request_timeout_seconds)
        present = self._client.config("SessionPresent") == "True"
        where = self._client.config("ConnectedServer") or o.address  # of a server list: its own
        self._session_present = present
        self._opened = True
        if self._attach and not present and not again:
            # connecting created an empty session on the broker: take it away again
            self._closed = True
            self._slots.close()
            self._end(connected=True)
            self._messages.put(_CLOSED)
            raise SessionNotFoundError(self._id, where)
        log.info("session %s open on %s (SessionPresent=%s)", self._id, where, present)

    def close(self, end_session: bool = True) -> None:
        """Wait (up to ``request_timeout_seconds``) for outgoing messages to be acknowledged,
        then disconnect; ``end_session`` also ends the session on the broker."""
        if self._closed:
            return
        if self._opened and self._client._driver.in_callback():  # noqa: SLF001
            raise UsageError("close() inside an event callback would wait forever for the"
                             " acks it handles: close from another thread")
        self._closed = True
        self._slots.close()  # a network thread waiting for room queues nothing more
        try:
            if self._opened:
                c = self._client
                self.ack()  # taken; those still queued stay unacknowledged
                # (disconnected too: the reconnect under way may still deliver them)
                if not c.flush(self._options.request_timeout_seconds):
                    log.warning("session %s closes with %d unacknowledged messages",
                                self._id, c.queue_stats().messages)
                self.ack()  # one a receive() already waiting handed out meanwhile
                if end_session:
                    self._end(connected=c.connected)
                else:  # what it still holds goes to the session attached next (handover.py)
                    try:
                        c.disconnect()
                        handover.keep(self._options.address, c)
                    finally:
                        c.close()
            else:  # never connected: nothing to end on the broker; what it holds (published
                if not end_session:  # offline, or taken over) goes to the next one
                    handover.keep(self._options.address, self._client)
                self._client.close()
        finally:
            self._messages.put(_CLOSED)
        log.info("session %s closed%s", self._id, " and ended" if end_session else "")

    def _end(self, connected: bool) -> None:
        c = self._client
        if connected and c.protocol_version == 5:
            c.config("SessionExpInterval=0")  # sent in the DISCONNECT: the broker drops it now
            c.close()
            return
        last = c._engine.state.broker  # noqa: SLF001 - the server that held the session last
        c.close()
        end_session_on_broker(self._options, self._id, last)

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ pass-through

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, *,
                retain: bool | None = None, properties: Properties | None = None) -> int:
        """Publish (text is UTF-8); returns the packet id (0: as ``Client.publish_data``).
        QoS 1/2 wait in the session while disconnected. ``UsageError`` once closed."""
        c = self._check("publish")
        if isinstance(payload, str):
            return c.publish_message(topic, qos, payload, retain=retain, properties=properties)
        return c.publish_data(topic, qos, payload, retain=retain, properties=properties)

    def publish_many(self, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest]
                     ) -> list[int]:
        """``Client.publish_many``: all of them in the session with one write and one sync."""
        return self._check("publish_many").publish_many(messages)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe; while connected, wait for the SUBACK (``MQTTSessionError`` if refused),
        unless called inside an event callback."""
        self._check("subscribe")
        delimiter = self._client.config("TopicDelimiter")
        filters = split_filters(topic_filter, delimiter)
        waits: list[tuple[str, threading.Event, list[int]]] = []
        # (inside an event callback: not waited for, the SUBACK comes after it returns)
        if self._client.connected and not self._client._driver.in_callback():  # noqa: SLF001
            with self._suback_lock:
                for f in filters:
                    ev, box = threading.Event(), list[int]()
                    self._subacks.setdefault(f, []).append((ev, box))
                    waits.append((f, ev, box))
        try:
            self._client.subscribe(topic_filter, qos)
        except BaseException:
            self._forget(waits)
            raise
        timeout = self._options.request_timeout_seconds
        for f, ev, box in waits:
            if not ev.wait(timeout):
                self._forget(waits)
                raise MQTTSessionError(f"no SUBACK for {f!r} within {timeout} s")
            if box[0] >= 0x80:
                raise MQTTSessionError(f"the broker refused the subscription to {f!r}")

    def _forget(self, waits: list[tuple[str, threading.Event, list[int]]]) -> None:
        with self._suback_lock:
            for f, ev, box in waits:
                pending = self._subacks.get(f, [])
                if (ev, box) in pending:
                    pending.remove((ev, box))

    def _on_subscribed(self, e: SubscribedEvent) -> None:
        with self._suback_lock:
            pending = self._subacks.get(e.topic_filter)
            if not pending:
                return
            ev, box = pending.pop(0)
        box.append(e.response_code)
        ev.set()

    def unsubscribe(self, topic_filter: str) -> None:
        self._check("unsubscribe").unsubscribe(topic_filter)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every outgoing QoS 1/2 message is acknowledged; False on timeout."""
        return self._client.flush(timeout)

    def _on_message_in(self, e: MessageEvent) -> None:
        """Network thread: queue ``e`` once there is room (not acknowledged yet)."""
        if self._slots.take():
            self._messages.put(e)
        # else closing: never handed out, never acked; the broker sends it again

    def receive(self, timeout: float | None = None) -> MessageEvent | None:
        """The next incoming message; None after ``timeout`` seconds or once closed.

        Acknowledges the messages handed out before (``ack()``) first.
        """
        if self._closed:  # the queued ones were never acknowledged: the broker sends them
            return None  # again, to the session attached next (handed out now: twice)
        self.ack()
        try:
            item = self._messages.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, _Closed):
            self._messages.put(item)  # every later reader sees it too
            return None
        self._slots.give()
        if item.qos > 0:
            with self._handed_lock:
                self._handed.append(item)
        return item

    def ack(self) -> None:
        """Acknowledge the messages handed out so far: PUBACK for QoS 1; QoS 2: the removal
        made durable, then PUBCOMP. ``receive()``, ``messages()`` and ``close()`` call it."""
        with self._handed_lock:
            handed, self._handed = self._handed, []
        for m in handed:
            self._client.ack(m)

    def messages(self, timeout: float | None = None) -> Iterator[MessageEvent]:
        """Incoming messages until the session closes or none arrives for ``timeout`` s."""
        while (m := self.receive(timeout)) is not None:
            yield m

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed" if self._closed else "new"
        return f"<Session {self._id} {state} on {self._options.address}>"
