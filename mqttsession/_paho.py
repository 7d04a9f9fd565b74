"""The one module that touches paho-mqtt internals: an adapter between paho and the engine.

paho keeps the socket, TLS, keep-alive, CONNECT and DISCONNECT. Session packets are decoded by
``_wire`` and handed to ``Hooks``; the engine's are queued as ``_wire``'s bytes (``write``) or
sent by the publishing thread when nothing waits (``_send_now``): paho's ``_out_messages`` /
``_in_messages`` stay empty. Bytes are read with few large ``recv`` calls and split here. Acks
written during a read batch wait for its end, after ``Hooks._hook_batch_end`` made their records
durable, or for that sync's future on a loop (``batching``). Private accesses are tagged
``# noqa: SLF001``; verified against paho-mqtt 2.2.0 (``paho/mqtt/client.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import re
import socket
import threading
import time
from typing import Any, Callable, Final

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.enums import _ConnectionState  # noqa: SLF001
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from . import _wire, dialing
from .actions import PACKET_COST
from .batching import ReadBatches
from ._wire import AliasFault, MalformedPacket, Packet, PacketType, TopicAliases
from .errors import ProtocolViolation
from .hooks import Future, Hooks, Sync
from .refusals import PahoLog, describe_connect_error
from .tcpinfo import PingWait

__all__ = ["CLEAN_START_FIRST_ONLY", "Hooks", "PahoConnection"]

# what this adapter was written against (setup.cfg): an older paho fails here, by name, not
# later inside its internals
if (_m := re.match(r"(\d+)\.(\d+)", getattr(paho.mqtt, "__version__", ""))) is not None \
        and (int(_m[1]), int(_m[2])) < (2, 2):
    raise ImportError(f"mqttsession needs paho-mqtt>=2.2,<3; this is paho-mqtt"
                      f" {paho.mqtt.__version__}")

CLEAN_START_FIRST_ONLY: Final = mqtt.MQTT_CLEAN_START_FIRST_ONLY

log = logging.getLogger(__name__)

_SESSION_PACKETS: Final = frozenset({PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC,
                                     PacketType.PUBREL, PacketType.PUBCOMP, PacketType.SUBACK,
                                     PacketType.UNSUBACK})
_PAHO_PACKETS: Final = frozenset({PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT,
                                  PacketType.AUTH})  # paho's to handle; any other: a violation
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_DROP = MQTTErrorCode.MQTT_ERR_CONN_LOST  # closes the connection without the ack; paho reconnects
_PUBLISH_CMD: Final = int(PacketType.PUBLISH) << 4
_READ_BATCH: Final = 64  # packets read per network-loop round at most (a whole recv more)
_RECV_BYTES: Final = 65536  # asked of one recv call
_time_func: Final = getattr(mqtt, "time_func", time.monotonic)  # paho's keep-alive clock
_CLOSED_ON_PURPOSE: Final = (_ConnectionState.MQTT_CS_DISCONNECTING,  # paho's states after
                             _ConnectionState.MQTT_CS_DISCONNECTED)  # disconnect()


def _out_packet(kind: int, packet: bytes, packet_id: int, qos: int,
                info: mqtt.MQTTMessageInfo | None) -> Any:
    """An entry of paho's ``_out_packet`` queue, as its ``_packet_queue`` makes one."""
    return {"command": kind << 4, "mid": packet_id, "qos": qos, "pos": 0,
            "to_process": len(packet), "packet": packet, "info": info}


def _in_packet(first: int, body: bytes, have: int) -> Any:
    """paho's ``_in_packet``, as its reader leaves it with a whole packet (or none) read."""
    return {"command": first, "have_remaining": have, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}


_JOIN_BYTES: Final = 65536  # bytes joined into one send at most
_ALONE: Final = frozenset({int(PacketType.DISCONNECT) << 4})


def _joinable(p: Any) -> bool:
    """A queued packet that may share a ``send``: unstarted, not QoS 0 or DISCONNECT."""
    cmd = p["command"] & 0xF0
    return (p["pos"] == 0 and p["info"] is None and cmd not in _ALONE
            and not (cmd == _PUBLISH_CMD and p["qos"] == 0))


class _Unsent(mqtt.MQTTMessageInfo):
    """A QoS 0 PUBLISH's info: its bytes count in ``PahoConnection.unsent_qos0`` until paho
    wrote it, or dropped it at a reconnect (``_set_as_published``: once either way). Never
    handed out, so never waited for: no Condition (paho's makes one a message: ~1 KB and
    ~1 µs), which the memory a stalled link holds is mostly made of."""

    __slots__ = ("_conn", "_size")

    def __init__(self, conn: PahoConnection, size: int, counted: bool) -> None:  # noqa: D107
        self.mid, self.rc, self._published = 0, _OK, False  # noqa: SLF001  (paho's, no Condition)
        self._conn, self._size = conn, size
        if not counted:  # (``counted``: since it was held in a read batch)
            conn.count_unsent(size)

    def _set_as_published(self) -> None:  # noqa: SLF001
        size, self._size, self._published = self._size, 0, True  # noqa: SLF001
        self._conn.count_unsent(-size)


class PahoConnection(ReadBatches, mqtt.Client):
    """paho's Client with the session moved out to ``hooks``."""

    def __init__(self, hooks: Hooks, client_id: str, protocol_version: int,
                 clean_session: bool, transport: str = "tcp") -> None:
        proto = MQTTProtocolVersion.MQTTv5 if protocol_version == 5 else MQTTProtocolVersion.MQTTv311
        super().__init__(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
            clean_session=None if protocol_version == 5 else clean_session, protocol=proto,
            transport="websockets" if transport == "websockets" else "tcp",
            reconnect_on_failure=True)
        self.hooks = hooks
        self._level = protocol_version
        self.suppress_exceptions = True  # a backstop: our callbacks never end its thread
        self._start_batches()  # (``batching``)
        self.reading_paused = False  # AsyncioPump back-pressure: read no further packet
        self._rbuf = bytearray()  # bytes received and not handled yet (a partial packet)
        self._rsock: Any = None  # the socket they came from
        self.loop_thread: threading.Thread | None = None  # an AsyncioPump's, in its own thread
        self.wake_writer: Callable[[], None] | None = None  # an AsyncioPump's (coalesced)
        self._write_due = False  # the network thread queued packets without a wake-up
        self._send_lock = threading.RLock()  # others send on plain TCP (``_send_now``) under it
        self._direct = False  # connected (CONNACK handled) on a socket that allows it
        self._clean_start_sent = clean_session  # the flag of the last CONNECT written
        self._connack_seen = False  # on this network connection
        self._early: list[tuple[int, bytes]] = []  # PUBLISHes before it (aedes): after it
        self._aliases = TopicAliases()  # the broker's, this network connection's (MQTT 5)
        self._new_sock: Any = None  # the socket being set up by _create_socket
        self._was_connected = self.clean_first_only = False  # a CONNACK came; MQTT 5: clean till one
        # disconnect(), loop_stop() ran; a PINGRESP late behind an upload the broker is taking
        self.ended, self._life_lock, self._ping_wait = False, threading.Lock(), PingWait()
        self.enable_logger(PahoLog(logging.getLogger("mqttsession.paho"), {}))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ sending

    def _synced(self, done: Sync) -> None:
        """A sync off the loop done: the packets of every batch synced, in order, written."""
        gone = None if done.cancelled() else done.exception()  # (read: never "not retrieved")
        with self._batch_lock:  # dropped: its connection is gone, or an earlier sync failed
            dropped = all(f is not done for f, _held in self._after_sync)
        if dropped or not self.in_network_thread():  # (a sync thread's: ``loop_misc`` writes)
            if dropped and isinstance(gone, Exception):  # (the session resends what is needed)
                self._hook_failed(gone, "making the session records of received packets durable")
            return
        while True:
            with self._batch_lock:
                if not self._after_sync or not self._after_sync[0][0].done():
                    return
                fut, held = self._after_sync[0]
                exc = None if fut.cancelled() else fut.exception()
                if (failed := exc is not None or fut.cancelled()):  # (_release clears held)
                    self._uncount([p for _f, h in self._after_sync for p in h])
                    self._after_sync.clear()
                elif held:  # stays first while it is written: what comes meanwhile follows
                    self._after_sync[0] = (fut, [])
                else:
                    self._after_sync.pop(0)
                    self._publish_held &= bool(self._after_sync or self._batch)
                    continue
            if failed:
                err = exc if isinstance(exc, Exception) else ConnectionError("sync cancelled")
                self._hook_failed(err, "making the session records of received packets durable")
                if self._sock is not None:  # noqa: SLF001
                    self._loop_rc_handle(_DROP)  # noqa: SLF001
                return
            for kind, packet, packet_id, qos in held:
                self._queue(kind, packet, packet_id, qos, counted=True)
            if self._write_due:
                self._write_due = False
                self.loop_write()

    def _queue_publishes(self, keep: bool) -> None:
        """The batch's PUBLISHes not held, in paho's queue ahead of any written from now."""
        with self._batch_lock:
            for kind, packet, packet_id, qos in self._batch_publishes or ():
                info = _Unsent(self, len(packet) + PACKET_COST, True) if not qos else None
                self._out_packet.append(_out_packet(kind, packet, packet_id, qos, info))  # noqa: SLF001
                self._write_due = True
            self._batch_publishes = [] if keep and self._batch is not None else None

    def _queue(self, kind: int, packet: bytes, packet_id: int, qos: int,
               counted: bool = False) -> None:
        me = threading.current_thread()
        thread = self._thread  # noqa: SLF001  (None once loop_stop() ran: paho writes then)
        if self._direct and kind != PacketType.DISCONNECT and thread is not None \
                and me is not thread and self._send_now(kind, packet, packet_id, qos, counted):
            return
        # paho marks a QoS 0 PUBLISH's info "published" once written: one, counting it
        info = _Unsent(self, len(packet) + PACKET_COST, counted) \
            if not qos and kind == PacketType.PUBLISH else None
        if self._batch_thread is not None and me is self._thread:  # noqa: SLF001
            # the network thread writes it at this round's end (loop_read): no wake-up byte
            self._out_packet.append(_out_packet(kind, packet, packet_id, qos, info))  # noqa: SLF001
            self._write_due = True
            return
        if self.wake_writer is not None and me is not self.loop_thread:
            # another thread than the loop's: queued, one wake-up makes the loop write them all
            self._out_packet.append(_out_packet(kind, packet, packet_id, qos, info))  # noqa: SLF001
            self.wake_writer()
            return
        if me is self.loop_thread and self._in_callback_mutex.acquire(False):  # noqa: SLF001
            # the loop, outside paho's callbacks: written now (the rest: paho's writer's)
            self._in_callback_mutex.release()  # noqa: SLF001
            self._out_packet.append(_out_packet(kind, packet, packet_id, qos, info))  # noqa: SLF001
            self.loop_write()
            return
        self._packet_queue(kind << 4, packet, packet_id, qos, info)  # noqa: SLF001

    def _send_now(self, kind: int, packet: bytes, packet_id: int, qos: int,
                  counted: bool) -> bool:
        """Another thread sends ``packet`` itself when nothing is queued and no one sends
        (plain TCP; QoS 0 too: no wake-up byte, no hand-over); the rest queued, the network
        thread woken. False: queue it as paho."""
        lock = self._send_lock
        if not lock.acquire(False):
            return False
        try:
            sock = self._sock  # noqa: SLF001
            if not self._direct or sock is None or self._out_packet:  # noqa: SLF001
                return False
            try:
                sent = sock.send(packet)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False  # the network thread finds out, and reconnects
            if sent:
                with self._msgtime_mutex:  # noqa: SLF001  (paho's keep-alive reads it)
                    self._last_msg_out = mqtt.time_func()  # noqa: SLF001
            if sent == len(packet):
                if counted:  # (held with a read batch: counted since)
                    self.count_unsent(-len(packet) - PACKET_COST)
                return True
            info = _Unsent(self, len(packet) + PACKET_COST, counted) \
                if not qos and kind == PacketType.PUBLISH else None
            rest = _out_packet(kind, packet, packet_id, qos, info)
            rest["pos"], rest["to_process"] = sent, len(packet) - sent
            self._out_packet.append(rest)  # noqa: SLF001
        finally:
            lock.release()
        self.wake()  # the network thread writes the rest
        return True

    def wake(self) -> None:
        """Wake paho's network thread from its select() (packets to write, a new timer)."""
        if self._sockpairW is not None:  # noqa: SLF001
            with contextlib.suppress(OSError):
                self._sockpairW.send(b"0")  # noqa: SLF001

    def tcp(self) -> Any:
        """The TCP (or TLS) socket, also under paho's websocket wrapper (None: none)."""
        return getattr(self._sock, "_socket", self._sock)  # noqa: SLF001

    def drop(self) -> None:
        """End the connection from any thread: paho's loop finds it lost and reconnects."""
        with contextlib.suppress(OSError):  # (no socket, or closed meanwhile: nothing to end)
            getattr(self.tcp(), "shutdown", lambda _how: None)(socket.SHUT_RDWR)

    def peer(self) -> tuple[str, int] | None:
        """The server's address (IP, port) this connection reached; None: none."""
        with contextlib.suppress(AttributeError, OSError):
            return self.tcp().getpeername()[:2]  # type: ignore[no-any-return]
        return None

    def _sock_send(self, buf: Any) -> int:  # noqa: SLF001
        n: int = super()._sock_send(buf)  # noqa: SLF001
        if n == 0 and buf and getattr(self._sock, "_sendbuffer", None):  # noqa: SLF001
            # paho's WebSocket wrapper sent part of a frame (paho would drop the packet): again
            self._call_socket_register_write()  # noqa: SLF001
            raise BlockingIOError
        return n

    def _sock_close(self) -> None:  # noqa: SLF001
        with self._send_lock:  # not while another thread sends on it
            self._direct = False
            super()._sock_close()  # noqa: SLF001

    def _packet_write(self) -> MQTTErrorCode:  # noqa: SLF001
        # the packets at the queue's head joined into one send (QoS 0 PUBLISH, DISCONNECT: alone)
        with self._send_lock:
            return self._write_queued()

    def _queued(self) -> int:  # bytes queued, not in the socket yet
        return sum(int(p["to_process"]) for p in list(self._out_packet))  # noqa: SLF001

    def _write_queued(self) -> MQTTErrorCode:
        out = self._out_packet  # noqa: SLF001  (appended to by other threads, at the right)
        if len(out) > 1 and _joinable(out[0]) and _joinable(out[1]):
            taken, size = [], 0
            while out and size < _JOIN_BYTES and _joinable(out[0]):
                p = out.popleft()
                taken.append(p)
                size += len(p["packet"])
            if len(taken) == 1:
                out.appendleft(taken[0])
            else:  # the first one's kind: paho looks at it only for QoS 0 PUBLISH / DISCONNECT
                joined = b"".join([p["packet"] for p in taken])
                out.appendleft({**taken[0], "to_process": len(joined), "packet": joined})
        return super()._packet_write()  # noqa: SLF001

    def _create_socket_connection(self) -> Any:  # noqa: SLF001
        # the socket known before its TCP connect: abort_setup ends that connect at once
        if self._get_proxy():  # noqa: SLF001
            self._new_sock = super()._create_socket_connection()  # noqa: SLF001
            return self._new_sock
        return dialing.connect_tcp(self._host, self._port, self._connect_timeout,  # noqa: SLF001
                                   (self._bind_address, self._bind_port), self._track)  # noqa: SLF001

    def _track(self, sock: Any) -> None:
        self._new_sock = sock
        if self.ended:  # (disconnect() came before: its abort_setup missed this socket)
            raise ConnectionAbortedError(errno.ECONNABORTED, "the connect was ended")

    def _create_socket(self) -> Any:  # noqa: SLF001
        # closed when a handshake fails (paho: not); a handshake cut at the connect timeout
        self._new_sock = None
        if self._ssl_context and not isinstance(self._ssl_context, dialing.TrackedContext):  # noqa: SLF001
            self._ssl_context = dialing.TrackedContext(self._ssl_context, self._track)  # type: ignore[assignment]  # noqa: SLF001
        what = "WebSocket" if self._transport == "websockets" else "TLS" if self._ssl else None  # noqa: SLF001
        try:
            with dialing.handshake_deadline(self._connect_timeout, self.abort_setup, what):  # noqa: SLF001
                return super()._create_socket()  # noqa: SLF001
        except BaseException:
            if self._new_sock is not None:
                self._new_sock.close()
            raise
        finally:
            self._new_sock = None

    def abort_setup(self) -> None:
        """End a connection attempt still in its TCP connect or handshakes (any thread)."""
        with contextlib.suppress(AttributeError, OSError):
            self._new_sock.shutdown(socket.SHUT_RDWR)

    def disconnect(self, *args: Any, **kwargs: Any) -> MQTTErrorCode:
        self.ended = True  # (for good: a connection is not connected again once ended)
        self.abort_setup()  # (an attempt in progress: not waited for)
        return super().disconnect(*args, **kwargs)

    def loop_start(self) -> MQTTErrorCode:
        with self._life_lock:  # (a loop_stop in another thread: before or after, not between)
            if self.ended:
                raise ConnectionAbortedError(errno.ECONNABORTED, "disconnected before its start")
            try:
                return super().loop_start()
            except RuntimeError as exc:  # no thread to be had: not left "started"
                self._thread = None  # noqa: SLF001
                raise OSError(errno.EAGAIN, f"cannot start the network thread: {exc}") from exc

    def loop_stop(self) -> MQTTErrorCode:
        with self._life_lock:
            self.ended = True
        return super().loop_stop()

    def release(self) -> None:
        """Close every socket paho still holds (it leaves its wake-up pair to ``__del__``)."""
        self._reset_sockets()  # noqa: SLF001

    def set_auto_reconnect(self, on: bool) -> None:
        """Whether paho's network thread reconnects after a lost connection."""
        self._reconnect_on_failure = on  # noqa: SLF001

    def in_network_thread(self) -> bool:
        """Whether the caller runs this connection (paho's thread, or a Gateway's loop's)."""
        me = threading.current_thread()
        return me is self._thread or me is self.loop_thread  # noqa: SLF001

    def lost_for_good(self) -> bool:
        """The connection was lost (not closed on purpose) and auto-reconnect is off."""
        return not self._reconnect_on_failure and self._state not in _CLOSED_ON_PURPOSE  # noqa: SLF001

    def wants_reconnect(self) -> bool:
        """The connection was lost (not closed on purpose) and auto-reconnect is on."""
        return bool(self._reconnect_on_failure) and self._state not in _CLOSED_ON_PURPOSE  # noqa: SLF001

    def reconnect(self) -> MQTTErrorCode:
        # paho drops unwritten packets here (_out_packet.clear()); the session resends them
        try:
            server = self.hooks._hook_connection_reset()
        except Exception as exc:  # never into paho's thread: reconnect to the same server
            self._hook_failed(exc, "choosing the server to reconnect to")
            server = None
        if server is not None:  # FailoverServers / a followed Server Reference; a dead server
            self._host, self._port = server  # noqa: SLF001  (paho's reconnect() reads them)
            self._connect_timeout = min(5.0, self._connect_timeout)  # noqa: SLF001 (holds no thread long)
        self._connack_seen, self._early = False, []  # (paho's reconnect closes the socket)
        self._drop_held()
        try:
            return super().reconnect()
        except (OSError, ValueError) as exc:  # ValueError: a host name IDNA refuses; paho's
            if self._was_connected:  # thread retries an OSError only (a first connect()
                log.log(logging.WARNING if type(exc).__module__ == "ssl" else logging.INFO,
                        "reconnecting to %s:%s failed: %s", self._host,  # noqa: SLF001
                        self._port, describe_connect_error(exc))  # raises ConnectError);
                # WARNING: a TLS refusal needs attention (a certificate changed)
            raise exc if isinstance(exc, OSError) else OSError(errno.EINVAL, str(exc))
        except Exception as exc:  # never into paho's thread: an OSError, which it retries
            self._hook_failed(exc, "reconnecting")
            raise OSError(errno.EIO, f"reconnecting: {exc!r}") from exc

    def _send_connect(self, keepalive: int) -> MQTTErrorCode:  # noqa: SLF001
        # the Clean Start / CleanSession flag exactly as paho writes it (it may be "first only")
        if self._protocol == mqtt.MQTTv5:  # noqa: SLF001
            first = self._clean_start == CLEAN_START_FIRST_ONLY  # noqa: SLF001
            self._clean_start_sent = self._clean_start is True or bool(  # noqa: SLF001
                first and self._mqttv5_first_connect)  # noqa: SLF001
            # the properties of now at a reconnect too (a SessionExpInterval set meanwhile)
            self._connect_properties = self.hooks._hook_connect_properties()  # noqa: SLF001
            # each network connection starts with no Topic Alias set [MQTT-3.3.2-7]
            self._aliases = TopicAliases(getattr(self._connect_properties,  # noqa: SLF001
                                                 "TopicAliasMaximum", 0))
        else:  # (3.1.1: a forgotten id's old session ended first, ``end_old_session``)
            self._clean_start_sent = bool(self._clean_session)  # noqa: SLF001
        # the keep-alive asked for at every reconnect too (not a CONNACK's Server Keep Alive)
        self._keepalive = keepalive = self._asked_keepalive = getattr(  # noqa: SLF001
            self, "_asked_keepalive", keepalive)
        return super()._send_connect(keepalive)  # noqa: SLF001

    def _violation(self, code: int, what: str) -> MQTTErrorCode:
        """The broker broke the protocol: the connection closed, reported, the session kept."""
        self._hook_failed(ProtocolViolation(code, what), "a protocol violation by the broker")
        return _DROP

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:  # noqa: SLF001
        # no socket: paho would log at ERROR; select() waits until the next timer at most
        if self._sock is None:  # noqa: SLF001
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        return super()._loop(self.hooks._hook_wait(timeout))  # noqa: SLF001

    def loop_misc(self) -> MQTTErrorCode:
        """paho's keep-alive check (``tcpinfo.PingWait``), then the session's timers."""
        if self._ping_wait.behind(self.tcp(), bool(self._ping_t), self._queued):  # noqa: SLF001
            with self._msgtime_mutex:  # noqa: SLF001
                self._ping_t = self._last_bytes_received = _time_func()  # noqa: SLF001
        if self._after_sync and isinstance(s := self._after_sync[0][0], Future) and s.done():
            self._synced(s)  # a sync thread's sync done: the packets after it written
        rc = super().loop_misc()
        if rc == _OK:
            try:
                self.hooks._hook_tick()
            except Exception as exc:  # never into paho's thread
                self._hook_failed(exc, "the session's timers")
        return rc

    # ------------------------------------------------------------------ receiving

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet waiting (up to a bound), then write those its records held."""
        with self._batch_lock:
            self._batch, self._batch_publishes = [], []
        self._batch_thread = threading.current_thread()
        try:
            rc = self._read_batch(max_packets)
        except MemoryError as exc:  # (a huge packet under a memory limit): never into paho's
            self._drop_held()  # thread; the connection dropped, the session resends
            self._hook_failed(exc, "reading a packet")
            return self._loop_rc_handle(_DROP)  # noqa: SLF001
        except BaseException:
            self._drop_held()
            raise
        if rc != _OK:
            self._drop_held()  # the connection is gone: the session resends what is needed
            return rc
        return self._end_batch(rc)

    def _end_batch(self, rc: MQTTErrorCode) -> MQTTErrorCode:
        """The batch's records made durable (one sync), then its packets written."""
        self._queue_publishes(keep=False)
        if self._write_due and self.hooks._hook_batch_waits():  # on their way while the disk
            self._write_due = False  # works
            self.loop_write()
        try:
            waiting = self.hooks._hook_batch_end()
        except Exception as exc:
            self._drop_held()
            self._hook_failed(exc, "making the session records of received packets durable")
            return self._loop_rc_handle(_DROP) if self._sock is not None else rc  # noqa: SLF001
        self._wait_sync(waiting) if waiting is not None else self._release()
        if self._write_due:
            self._write_due = False
            return self.loop_write()  # what this round queued (paho's _loop checks only later)
        return rc

    def as_batch(self, fn: Callable[[], None]) -> None:
        """``fn`` on the thread that reads this connection, between read batches, as one: its
        records' syncs become one at its end, the packets that depend on them wait for it."""
        with self._batch_lock:
            nested = self._batch is not None  # within a read batch: its end does it
            if not nested:
                self._batch, self._batch_publishes = [], []
        if nested:
            fn()
            return
        self._batch_thread = threading.current_thread()
        try:
            fn()
        finally:
            self._end_batch(_OK)

    def _drop_held(self) -> None:
        with self._batch_lock:
            self._uncount([*(self._batch or ()), *(self._batch_publishes or ()),
                           *(p for _f, h in self._after_sync for p in h)])
            self._batch = self._batch_publishes = None
            self._publish_held = False
            gone, self._after_sync = self._after_sync, []
        for fut in (f for f, _held in gone if isinstance(f, Future)):  # a sync thread's: its
            fut.add_done_callback(self._synced)  # failure reported all the same (a review)

    def _read_batch(self, max_packets: int) -> MQTTErrorCode:
        """Read with few large ``recv`` calls (paho's: three a packet), handle each packet."""
        sock = self._sock  # noqa: SLF001
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._rsock is not sock:  # a new network connection: nothing of the old one's
            self._rsock, self._rbuf = sock, bytearray()
        bound, handled, drained = max(max_packets, _READ_BATCH), 0, False
        # a plain TCP socket that gave less than asked for is empty for now (TLS and WebSocket
        # layers may hold bytes select() does not see)
        plain = type(sock) is socket.socket
        while True:
            if self._rbuf:
                rc, n = self._handle_buffered(sock)
                handled += n
                if rc != _OK:
                    return self._loop_rc_handle(rc)  # noqa: SLF001
                if self._sock is not sock:  # noqa: SLF001  (a handler closed it)
                    return _OK
            if self.reading_paused or handled >= bound or drained:
                return _OK
            try:
                data = self._sock_recv(_RECV_BYTES)  # noqa: SLF001
            except BlockingIOError:  # (a WebSocket PING answered: a TLS layer may hold more)
                if plain or not getattr(sock, "pending", lambda: 0)():
                    return _OK
                continue
            except OSError as err:  # TimeoutError, ConnectionError (no socket) among them
                log.debug("failed to receive on socket: %s", err)
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
            if not data:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # noqa: SLF001
            with self._msgtime_mutex:  # noqa: SLF001  (paho's keep-alive reads it)
                self._last_bytes_received = _time_func()  # noqa: SLF001
            self._rbuf += data
            drained = plain and len(data) < _RECV_BYTES

    def _handle_buffered(self, sock: Any) -> tuple[MQTTErrorCode, int]:
        """Handle the whole packets at the read buffer's head (a partial one stays)."""
        buf = self._rbuf
        pos, end, n, rc = 0, len(buf), 0, _OK
        try:
            while True:
                try:
                    frame = _wire.split(buf, pos)
                except MalformedPacket as exc:  # [MQTT-1.5.5-1]
                    return self._violation(0x81, f"a Remaining Length: {exc}"), n
                if frame is None:
                    return rc, n  # the rest is still on its way
                first, i, length = buf[pos], pos + frame[0], frame[1] - frame[0]
                # the usual ack, no general decode; the flow acks after it go with it (one
                # hold of the session lock); a PUBREL (it may deliver, pause reading) alone
                run = _wire.ack_run(buf, first, i, end) if length == 2 and self._connack_seen \
                    else None
                if run is not None:
                    acks, pos = run
                    n += len(acks)
                    try:
                        if len(acks) == 1:
                            self.hooks._hook_ack(*acks[0])
                        else:
                            self.hooks._hook_acks(acks)
                    except Exception as exc:  # a hook must never kill paho's network thread
                        self._hook_failed(exc, f"handling a {acks[0][0].name} packet")
                        return _DROP, n
                else:
                    pos = i + length
                    n += 1
                    rc = self._handle(first, bytes(buf[i:pos]))
                    if rc != _OK:
                        return rc, n
                if self._sock is not sock or self.reading_paused:  # noqa: SLF001
                    return rc, n
        finally:
            if self._sock is not sock:  # noqa: SLF001
                self._rbuf = bytearray()
            elif pos:
                del buf[:pos]

    def _packet_handle(self) -> MQTTErrorCode:  # noqa: SLF001
        pkt = self._in_packet  # noqa: SLF001  (paho's reader, unused: ours is _read_batch)
        return self._handle(pkt["command"], bytes(pkt["packet"]))

    def _handle(self, first: int, body: bytes) -> MQTTErrorCode:
        """One whole packet received: the session's to the hooks, the rest to paho."""
        kind = first >> 4
        if kind != PacketType.CONNACK and not self._connack_seen:
            if kind == PacketType.PUBLISH and len(self._early) < 64:  # aedes 1.2 sends queued
                self._early.append((first, body))  # ones first at times: handled after CONNACK
                return _OK
            name = PacketType(kind).name if kind else f"type {kind}"
            return self._violation(0x82, f"a {name} packet before CONNACK [MQTT-3.2.0-1]:"
                                         " not an MQTT broker there?")
        try:
            if kind != PacketType.CONNACK and kind not in _SESSION_PACKETS:
                fault = (0x82, f"a packet of type {kind} from a broker") if kind not in \
                    _PAHO_PACKETS else _wire.paho_packet_fault(first, body, self._level)
                return self._violation(*fault) if fault else self._paho_handle(first, body)
            p = _wire.decode(first, body, self._level)
            if kind == PacketType.PUBLISH and self._aliases.maximum:
                topic, props = self._aliases.resolve(p.topic or "", p.properties)
                p = dataclasses.replace(p, topic=topic, properties=props)
        except AliasFault as exc:
            return self._violation(exc.code, str(exc))
        except MalformedPacket as exc:
            return self._violation(0x81, str(exc))
        except Exception as exc:  # a hook must never kill paho's network thread
            self._hook_failed(exc, f"handling a {PacketType(kind).name} packet")
            return _DROP
        if p.type is PacketType.CONNACK:
            return self._connack(p, first, body)
        try:
            self.hooks._hook_packet(p)
        except Exception as exc:  # a hook must never kill paho's network thread
            self._hook_failed(exc, f"handling a {p.type.name} packet")
            return _DROP
        return _OK

    def _paho_handle(self, first: int, body: bytes) -> MQTTErrorCode:
        """paho's handler for a packet not the session's, given as paho's reader leaves it."""
        self._in_packet = _in_packet(first, body, 1)  # noqa: SLF001
        try:
            return super()._packet_handle()  # noqa: SLF001
        finally:
            self._in_packet = _in_packet(0, b"", 0)  # noqa: SLF001

    def _connack(self, c: Packet, first: int, body: bytes) -> MQTTErrorCode:
        again, self._connack_seen = self._connack_seen, True
        if (fault := _wire.connack_fault(c, self._level, again, self._clean_start_sent)):
            return self._violation(*fault)
        self._was_connected = True
        rc = c.reason_code or 0  # 3.1.1: the return code 0..5; 5.0: the reason code
        reason = str(ReasonCode(PacketTypes.CONNACK, identifier=rc)) \
            if self._level == 5 and c.properties else mqtt.connack_string(rc)
        try:
            if rc != 0:
                # refused: not paho's handler (it would downgrade to 3.1); SessionPresent 0
                # 3.1.1 [MQTT-3.2.2-4], 5 [MQTT-3.2.2-6]; MQTT 5 4.11: 0x9C/0x9D name another server
                ref = c.prop(_wire.SERVER_REFERENCE) if self._level == 5 else None
                self.hooks._hook_connack(rc, reason, False, 65535, None,
                                         ref if isinstance(ref, str) else None)
                return MQTTErrorCode.MQTT_ERR_CONN_REFUSED
            # paho's handling (state, keepalive) first; then on_connected, the resume plan
            result = self._paho_handle(first, body)
            self.hooks._hook_connack(0, reason, bool(c.session_present), *_wire.connack_limits(c))
            # the resume plan is queued: other threads may send themselves from now on
            self._direct = (self._thread is not None and not self._ssl  # noqa: SLF001
                            and self._transport == "tcp" and self._sock is not None)  # noqa: SLF001
            for f, b in self._early:  # as if they came after it (emptied at the next connect)
                result = self._handle(f, b) if result == _OK else result
            return result
        except Exception as exc:  # a hook must never kill paho's network thread
            self._hook_failed(exc, "handling a CONNACK packet")
            return _DROP

    def _hook_failed(self, exc: Exception, context: str) -> None:
        """Report a failed hook; the caller drops the connection without the dependent ack (a
        ``ProtocolViolation``: MQTT 5 after a DISCONNECT with its code, 4.13.1 (a SHOULD))."""
        log.debug("session hook failed: %s", context, exc_info=True)
        sock = self._sock  # noqa: SLF001
        if isinstance(exc, ProtocolViolation) and self._level == 5 and sock is not None:
            with contextlib.suppress(OSError):
                sock.send(_wire.encode_disconnect(exc.code, protocol=5))
        try:
            self.hooks._hook_failure(exc, context)
        except Exception:  # pragma: no cover - reporting must not kill the thread either
            log.exception("reporting a failed session hook failed")
