"""A session's connections: ``connect()`` to each server in turn (paho's network thread, or an
asyncio loop through ``pump.AsyncioPump``), waiting for CONNACK, and their end (``disconnect()``,
``close()``), which also ends a ``connect()`` under way. The ``Driver``'s base: the hooks the
network thread calls and the actions it carries out stay in ``driver.py``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Callable, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

from ._config import ConnectParams
from ._paho import CLEAN_START_FIRST_ONLY, PahoConnection
from .dialing import client_context
from .durability import Durability, since_boot
from .errors import ConnectError, UsageError
from .expiry import effective_interval
from .failover import ServerRotation, none_accepted
from .options import format_address, parse_addresses
from .pacing import Pacer, gateway_tick
from .properties import (
    checked_properties,
    connect_properties,
    disconnect_properties,
    disconnect_reason,
)
from .pump import AsyncioPump, off_loop
from .refusals import describe_connect_error, refusal_message
from .tcpinfo import cut_when_stalled
from .validation import validate_publish_topic, will_payload

if TYPE_CHECKING:
    from .hooks import Hooks

__all__ = ["Connecting"]

log = logging.getLogger("mqttsession")

_TICK_EVERY = 0.5  # seconds between the engine's timer rounds
#: MQTT 5 reason codes paho gives a 3.1.1 CONNACK's return code as (``on_connect``)
_RETURN_CODES = {0: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


def _dial_settings(c: mqtt.Client, p: ConnectParams) -> None:
    """A connection's WebSocket options, credentials and TLS context (``UsageError`` for TLS
    files that cannot be loaded)."""
    if p.transport == "websockets":
        c.ws_set_options(path=p.ws_path, headers=p.ws_headers)
    if p.username is not None:
        c.username_pw_set(p.username, p.password)
    if p.tls_context is not None:
        c.tls_set_context(p.tls_context)
    elif p.tls:
        try:  # (made once for these files: ``dialing.client_context``)
            c.tls_set_context(client_context(p.tls_ca, p.tls_cert, p.tls_key))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UsageError(f"TLS settings: {exc}") from exc


def end_old_session(client_id: str, host: str, port: int, p: ConnectParams,
                    timeout: float, check: Callable[[], None]) -> None:
    """MQTT 3.1.1 has no Clean Start for one connection: a forgotten client id's old broker
    session is ended by a connection of its own (CleanSession=1 [MQTT-3.1.2-6], CONNACK,
    DISCONNECT), so the session's connection to that server asks for a persistent one
    (CleanSession=0) and the broker keeps what is queued for it should that connection drop
    [MQTT-3.1.2-5].
    ``ConnectError`` when refused or unanswered within ``timeout``, or what ``check`` raises
    (the attempt ended: ``close()``, ``disconnect()``), looked at every 50 ms; ``OSError``
    from the TCP (TLS, WebSocket) connect."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                    protocol=mqtt.MQTTv311, transport=p.transport)  # type: ignore[arg-type]
    _dial_settings(c, p)
    answer: list[int] = []  # (the 3.1.1 return code: paho gives its MQTT 5 form)
    c.on_connect = lambda _c, _u, _f, rc, _p: answer.append(_RETURN_CODES.get(rc.value, 3))
    c.connect_timeout = timeout
    c.connect(host, port, p.keep_alive)
    try:
        end = time.monotonic() + timeout
        while not answer and time.monotonic() < end and c.loop(0.05) == mqtt.MQTT_ERR_SUCCESS:
            check()
        where = f"{format_address(host, port)} (ending the old session of a forgotten id)"
        if not answer:
            raise ConnectError(f"{where}: no CONNACK within {timeout:g} s")
        if answer[0] != 0:
            raise ConnectError(refusal_message(where, answer[0], mqtt.connack_string(
                answer[0]), p.tls or p.tls_context is not None, p.tls_cert is not None),
                answer[0])
        c.disconnect()  # (written at once: no network thread)
    finally:
        sock = c.socket()
        if sock is not None:
            sock.close()


def _late(heard: bool, where: str, timeout: float) -> str:
    """Why a connect attempt timed out: no CONNACK, or ``on_connected`` still running."""
    if heard:
        return (f"{where} accepted the connection, but on_connected (or the resume after it)"
                f" did not return within {timeout} s: connection closed")
    return f"no CONNACK from {where} within {timeout} s"


class Connecting(Durability):
    """``connect()`` and its end, for the ``Driver`` (its attributes are the Driver's)."""

    _connack: threading.Event  # set by a CONNACK (or a failure) a connect() waits for
    _connack_result: tuple[int, str]
    _connack_heard: bool
    _connack_waiter: Callable[[], None] | None  # an asyncio connect()'s wake-up
    _connack_within: float  # a CONNACK's timeout (connect()'s, also a reconnect's)
    _gen: int  # one more at each connect() and disconnect(): an attempt of an older one ends
    _tries: int
    _lost: bool
    _fresh: bool
    connects: Executor | None
    servers: ServerRotation | None
    pacer: Pacer | None
    clean_once: bool  # a forgotten client id's session: a clean start first (``forgotten``)
    _connect_props: Any  # the application's CONNECT properties (MQTT 5), for every CONNECT
    on_clean_start: Callable[[], threading.Thread] | None  # once that start was accepted

    def _paho_on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, props: Any
                            ) -> None:
        raise NotImplementedError  # the Driver's

    def expiry_interval(self) -> int | None:
        """The Session Expiry Interval sent in CONNECT and DISCONNECT (MQTT 5)."""
        st = self.engine.state
        return effective_interval(st.protocol_version, st.clean_session, st.session_expiry_interval)

    def reconnecting(self) -> None:
        """AutoReconnect / ReconnectDelayMin / Max set: the connection's (and its pump's) from
        its next loss on (a wait under way ends as it was), not only the next ``connect()``'s."""
        with self.lock:  # (lost for good: its loop ended; disconnect() + connect() revive it)
            conn, s = self.conn, self._settings
            if conn is None or not self._connack.is_set() or self.lost_for_good():
                return
            conn.set_auto_reconnect(s.auto_reconnect)
            conn.reconnect_delay_set(*s.reconnect_delays())  # type: ignore[arg-type]
            if self.pump is not None:
                self.pump.set_delays(*s.reconnect_delays())

    def _hook_connect_properties(self) -> Any:
        """A CONNECT's MQTT 5 properties as the session is now (each reconnect's too)."""
        return connect_properties(self.expiry_interval(), self.engine.settings.receive_maximum,
                                  self._connect_props, self._settings.client_topic_alias_max)

    def _open(self, host: str, port: int, params: ConnectParams,
              servers: ServerRotation) -> PahoConnection:
        """A new connection for the session (not connected yet)."""
        with self.lock:
            self._refuse_if_busy()
            self.servers = servers
            st = self.engine.state
            if not st.client_id:
                if not st.clean_session:
                    # 3.1.1 [MQTT-3.1.3-7]: an empty id needs CleanSession=1 (IPWorks: error)
                    raise UsageError("client_id must be set when clean_session is False")
                self.file.append([st.configure(client_id=f"mqttsession-{uuid.uuid4().hex[:16]}")], st)
            self.file.open(st)
            if st.protocol_version == 5 and not st.clean_session and self.expiry_interval() == 0:
                log.warning("client %r asks for a persistent session with SessionExpInterval=0:"
                            " the broker ends it at every disconnect", st.client_id)
            conn = self._new_connection(params)
            self.conn = conn
            self._fresh = True
            self.engine.connecting(format_address(host, port))
            self._tries, self._lost = 0, False
            self._connack.clear()
            self._connack_result, self._connack_heard = (-1, ""), False
            return conn

    def _tcp_connect(self, conn: PahoConnection, host: str, port: int, keep_alive: int,
                     gen: int, thread: bool = False, params: ConnectParams | None = None
                     ) -> None:
        """paho's connect: TCP (TLS), CONNECT (blocking); ``thread``: paho's thread started;
        a forgotten id's 3.1.1 session first ends the broker's old one (``params``)."""
        st = self.engine.state
        conn.connect_timeout = self._connack_within or 30.0  # this TCP connect's (a reconnect's:
        try:  # at most paho's 5 s, ``PahoConnection.reconnect``)
            self._check_ended(gen, conn, host, port)  # (a gateway's: waited for its turn)
            if st.protocol_version == 5:
                self.engine.settings.receive_maximum = self._settings.receive_maximum  # checked
                # a persistent session asks with Clean Start 0 also when the clock says it
                # expired (a jump); SessionPresent decides [MQTT-3.1.2-5] [MQTT-3.2.2-5]
                conn.connect(host, port, keep_alive, clean_start=st.clean_session or (
                             CLEAN_START_FIRST_ONLY if conn.clean_first_only else False),
                             properties=self._hook_connect_properties())
            else:
                if self.clean_once and not st.clean_session and params is not None:
                    # (each server of an attempt: done once the session's own CONNACK comes
                    # from the one that was cleared, ``_hook_connack``; a review)
                    end_old_session(st.client_id, host, port, params, conn.connect_timeout,
                                    functools.partial(self._check_ended, gen, conn, host, port))
                    self._check_ended(gen, conn, host, port)
                conn.connect(host, port, keep_alive)
            self._check_ended(gen, conn, host, port)  # (ended in the TCP connect: no thread)
            if thread:
                conn.loop_start()
        except (OSError, ValueError) as exc:
            ended = conn.ended  # (a close() on the loop ended it: ``gen`` is the same)
            self._teardown(conn)
            self._check_ended(gen, None, host, port, ended)  # (torn down: not the session's)
            raise ConnectError(f"cannot connect to {format_address(host, port)}:"
                               f" {describe_connect_error(exc)}") from exc
        except BaseException:  # never left half set up ("already connected" for good)
            self._teardown(conn)  # (this attempt's: a close() may have taken ``self.conn``)
            raise

    def _check_ended(self, gen: int, conn: PahoConnection | None, host: str, port: int,
                     ended: bool = False) -> None:
        """-4 (no next server) once a disconnect() or another connect() came, the attempt's
        connection is no longer the session's, or it was ``ended``."""
        if ended or gen != self._gen or (conn is not None and conn is not self.conn):
            raise ConnectError(f"connect() to {format_address(host, port)} ended by close(),"
                               " disconnect() or another thread's connect()", -4)

    def _connected(self, where: str, params: ConnectParams) -> None:
        """``ConnectError`` (and the connection torn down) unless CONNACK accepted it."""
        rc, reason = self._connack_result
        if rc != 0:
            self._teardown()
            raise ConnectError(refusal_message(where, rc, reason, params.tls,
                                               params.tls and bool(params.tls_cert)), rc)

    def _refuse_if_busy(self) -> None:
        """``UsageError`` while a connection is up or under way (lock held)."""
        conn = self.conn
        if conn is None:
            return
        if self.engine.connected:
            raise UsageError("already connected; call disconnect() first")
        if self.lost_for_good():
            raise UsageError("the connection was lost and AutoReconnect is off: call"
                             " disconnect() first, then connect() again")
        raise UsageError("a connect, reconnect (or disconnect()) is under way: call"
                         " disconnect() first, from outside the client's callbacks")

    def lost_for_good(self) -> bool:
        """The link was lost after its CONNACK and AutoReconnect is off (not closed on purpose:
        disconnect() ends it)."""
        conn = self.conn
        return (conn is not None and self._connack.is_set() and not self.engine.connected
                and conn.lost_for_good())

    def _rotation(self, host: str, port: int, params: ConnectParams, timeout: float
                  ) -> ServerRotation:
        """connect()'s servers: the one given, then FailoverServers (``timeout`` each)."""
        with self.lock:  # (refused before its attempt number ends the one under way)
            self._refuse_if_busy()
            self._connack_within, self._gen = timeout, self._gen + 1
        servers = [(host, port)]
        if self._settings.failover_servers:
            servers += parse_addresses(self._settings.failover_servers, tls=params.tls,
                                       source="FailoverServers")
        return ServerRotation(servers, tls=params.tls)

    def _failed_attempt(self, rot: ServerRotation, target: tuple[str, int],
                        exc: ConnectError, gen: int) -> None:
        if exc.status_code == -4:  # the client closed: no next server
            raise exc
        self._check_ended(gen, None, *target)
        if rot.redirect_pending:  # followed: its INFO line says where (not a failure)
            log.debug("connect: %s (%s); redirected", format_address(*target), exc)
        elif len(rot.servers) > 1:
            log.warning("connect: %s (%s); trying the next server", format_address(*target), exc)

    def connect(self, host: str, port: int, timeout: float, params: ConnectParams) -> None:
        """``Client.connect``: CONNECT to each server in turn until one accepts (``timeout``
        each), then paho's network thread runs it; a gateway's on its loop (``connect_async``)."""
        if self.host is not None:
            self.host.run(self.connect_async(host, port, timeout, params), None)
            return
        rot = self._rotation(host, port, params, timeout)
        gen, failures = self._gen, []
        for target in rot.attempts():
            try:
                self._connect_once(target, rot, timeout, params, gen)
                return
            except ConnectError as exc:
                failures.append((target, exc))
                self._failed_attempt(rot, target, exc, gen)
        raise none_accepted(failures)

    def _connect_once(self, target: tuple[str, int], rot: ServerRotation, timeout: float,
                      params: ConnectParams, gen: int) -> None:
        host, port = target
        conn = self._open(host, port, params, rot)
        self._tcp_connect(conn, host, port, params.keep_alive, gen, thread=True, params=params)
        try:
            got = self._connack.wait(timeout)
        except BaseException:  # Ctrl-C: not left connecting (and connected) in the background
            self._teardown(conn)
            raise
        self._answered(got, gen, conn, target, timeout, params)

    def _answered(self, got: bool, gen: int, conn: PahoConnection, target: tuple[str, int],
                  timeout: float, params: ConnectParams) -> None:
        """The CONNACK wait's end: this attempt's (``ConnectError`` unless accepted)."""
        try:
            self._check_ended(gen, None, *target)  # (a CONNACK seen may be another's)
        except ConnectError:
            self._teardown(conn)
            raise
        if not got:
            self._teardown(conn)
            raise ConnectError(_late(self._connack_heard, format_address(*target), timeout))
        self._connected(format_address(*target), params)

    async def connect_async(self, host: str, port: int, timeout: float,
                            params: ConnectParams) -> None:
        """``connect`` for asyncio (``AsyncioPump``); the TCP connect in ``connects``."""
        rot = self._rotation(host, port, params, timeout)
        gen, failures = self._gen, []
        for target in rot.attempts():
            try:
                await self._connect_once_async(target, rot, timeout, params, gen)
                return
            except ConnectError as exc:
                failures.append((target, exc))
                self._failed_attempt(rot, target, exc, gen)
        raise none_accepted(failures)

    async def _connect_once_async(self, target: tuple[str, int], rot: ServerRotation,
                                  timeout: float, params: ConnectParams, gen: int) -> None:
        host, port = target
        loop = asyncio.get_running_loop()
        connects = self.executor if self.connects is None else self.connects
        if params.tls and params.tls_context is None:  # its CAs loaded off the loop (a hunt:
            with contextlib.suppress(OSError, ValueError, RuntimeError):  # 43 ms each)
                await loop.run_in_executor(connects, client_context, params.tls_ca,
                                           params.tls_cert, params.tls_key)
            self._check_ended(gen, None, host, port)  # (``_open`` reports a failure there)
        conn = self._open(host, port, params, rot)
        s, pacer = self._settings, self.pacer
        tick = _TICK_EVERY if pacer is None else gateway_tick(params.keep_alive, _TICK_EVERY)
        self.pump = AsyncioPump(conn, loop, s.reconnect_delay_min, s.reconnect_delay_max,
                                tick, pacer=pacer, jitter=pacer is not None,
                                loop_thread=threading.current_thread(), executor=connects)
        self.pump.session = self  # (its lock: the loop never waits for it)
        self.file.off_loop = lambda job: off_loop(loop, self.executor, job)  # (a retire)
        done = asyncio.Event()
        def waiter() -> None:
            loop.call_soon_threadsafe(done.set)
        self._connack_waiter = waiter
        if self._connack.is_set():
            done.set()
        try:
            if pacer is not None:  # many sessions: connection attempts spread over time
                await asyncio.sleep(pacer.delay(loop.time()))
            try:
                job = loop.run_in_executor(connects, functools.partial(
                    self._tcp_connect, conn, host, port, params.keep_alive, gen, params=params))
            except RuntimeError:  # (its gateway's threads shut down: its close() came)
                self._check_ended(gen, conn, host, port, ended=conn.ended)
                raise
            await job
            got: bool = await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:  # (the CONNACK may have come as the deadline passed: a
            got = self._connack.is_set()  # loop busy then; 3.12+ lets the timeout win)
        except BaseException:  # cancelled (``wait_for(connect(), t)``): not left half set up
            self._teardown(conn)
            raise
        self._answered(got, gen, conn, target, timeout, params)

    def _new_connection(self, p: ConnectParams) -> PahoConnection:
        s, st = self._settings, self.engine.state
        # (a forgotten id's: until a CONNACK; 3.1.1: ``end_old_session`` first instead)
        clean = st.clean_session or self.clean_once and st.protocol_version == 5
        conn = PahoConnection(cast("Hooks", self), st.client_id, st.protocol_version, clean,
                              transport=p.transport)
        conn.clean_first_only = clean and not st.clean_session
        conn.reconnect_delay_set(*s.reconnect_delays())  # type: ignore[arg-type]  # (fractions)
        _dial_settings(conn, p)
        # (UsageError; kept for each CONNECT of this connection, ``_hook_connect_properties``)
        self._connect_props = checked_properties(p.connect_properties, PacketTypes.CONNECT,
                                                 st.protocol_version)
        if p.will_topic:
            conn.will_set(validate_publish_topic(p.will_topic), will_payload(p.will_message),
                          s.will_qos, s.will_retain, checked_properties(
                              p.will_properties, PacketTypes.WILLMESSAGE, st.protocol_version))
        conn.on_disconnect = self._paho_on_disconnect
        conn.set_auto_reconnect(s.auto_reconnect)
        return conn

    def _teardown(self, conn: PahoConnection | None = None) -> None:
        """Stop the network loop, forget the connection (``conn``: that one); not locked."""
        with self.lock:
            if conn is None or conn is self.conn:
                conn, self.conn = self.conn, None
                self.engine.closed()
        if conn is not None:
            self._stop(conn, None)

    def _stop(self, conn: PahoConnection, props: Any, reason: Any = None) -> None:
        """DISCONNECT, end paho's loop, close its sockets (not locked: loop_stop joins)."""
        conn.set_auto_reconnect(False)
        try:
            conn.disconnect(reasoncode=reason, properties=props)
        except Exception:  # pragma: no cover - best effort on a dead socket
            log.debug("DISCONNECT not sent", exc_info=True)
        pump = self.pump if self.pump is not None and self.pump.conn is conn else None
        if pump is not None:  # asyncio: write the DISCONNECT now, on the loop
            self.pump = None
            def stop() -> None:
                conn.loop_write()
                pump.stop()
                conn.release()
            pump.call(stop)
        elif conn.loop_thread is not None:  # an asyncio attempt whose pump went before
            conn.release()
        elif not conn.in_network_thread():
            # a stalled peer (nothing taken for connect()'s timeout): cut, or paho's thread
            # never ends, the DISCONNECT unsent (the session keeps what was not confirmed)
            watching = cut_when_stalled(conn.tcp, conn.drop, self._connack_within or 30.0)
            conn.loop_stop()
            watching.set()
            conn.release()

    def disconnect(self) -> bool:
        """``Client.disconnect()``; False when there was no connection (nothing compacted)."""
        with self.lock:
            conn = self.conn
            if conn is None or not conn.in_network_thread():  # (in on_connected: connect()
                self._gen += 1  # returns as before) a connect() under way ends
            if conn is None:
                return False
            err: Exception | None = None
            try:
                self.run(self.engine.disconnect(time.time(), since_boot()))
            except Exception as exc:  # (its record not written: the link ends all the same;
                err = exc  # a closed client went on receiving and reconnecting)
            props = disconnect_properties(self.engine.disconnect_expiry())  # (3.1.1: None)
            # MQTT 5 0x04: the broker publishes the will [MQTT-3.14.4-3] (3.1.1: not sent)
            reason = disconnect_reason(self._settings.disconnect_reason_code)
        self._stop(conn, props, reason)
        with self.lock:
            if self.conn is conn:
                self.conn = None
                self.engine.closed()
            if err is None:
                self.file.compact(self.engine.state)
        if not self._connack.is_set():  # a connect() waiting for its CONNACK ends now
            self._end_connect(-4, "close() or disconnect() before a CONNACK")
        if err is not None:
            raise err
        return True

    def _end_connect(self, rc: int, reason: str) -> None:
        """A waiting ``connect()`` returns (rc != 0: it raises; paho must not retry first)."""
        conn = self.conn
        if rc != 0 and conn is not None:
            conn.set_auto_reconnect(False)
        self._connack_result = (rc, reason)
        self._connack.set()
        if self._connack_waiter is not None:
            self._connack_waiter()
