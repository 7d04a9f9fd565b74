"""A loopback TCP proxy that understands MQTT framing, for putting faults between client and broker.

:class:`MQTTProxy` listens on 127.0.0.1 (free port), opens one upstream connection per accepted
client connection and forwards whole MQTT packets both ways from a single ``selectors`` thread. It

* logs every packet (:class:`PacketRecord`): direction, type, flags, dup/qos/retain, packet id,
  topic, CONNACK session present, reason code, and whether it was dropped;
* drops packets on request (:meth:`MQTTProxy.drop`), e.g. ``drop("s2c", "PUBACK")`` keeps a client's
  QoS 1 messages in flight, ``drop("c2s", "PUBREL")`` stalls its QoS 2 flows;
* cuts every connection abruptly (:meth:`MQTTProxy.cut`) while it keeps listening, so the client
  can reconnect through it.

Directions: ``"c2s"`` (client to server/broker) and ``"s2c"``. Packet types by name, e.g.
``"PUBLISH"``. MQTT 3.1.1 and 5 are both parsed (by :mod:`mqttsession._wire`): the protocol level
is read from each connection's CONNECT. A malformed packet is logged (``error`` says why) and
forwarded all the same; bytes that cannot be framed are forwarded unparsed from then on.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

from mqttsession import _wire as wire
from mqttsession._wire import MalformedPacket, PacketType
from mqttsession.testing.brokers import LOCALHOST

# typing.Self is 3.11+; this TypeVar keeps "returns its own type" on 3.10
_P = TypeVar("_P", bound="MQTTProxy")

__all__ = ["C2S", "PACKET_TYPES", "S2C", "MQTTProxy", "PacketRecord", "ProtocolError"]

logger = logging.getLogger(__name__)

Direction = Literal["c2s", "s2c"]
C2S: Direction = "c2s"
S2C: Direction = "s2c"
PACKET_TYPES: dict[int, str] = {t.value: t.name for t in PacketType}
_TYPE_NAMES = frozenset(PACKET_TYPES.values())
_RECV_SIZE = 65536


ProtocolError = MalformedPacket  # bytes that cannot be MQTT (framing or a packet)


@dataclass(frozen=True)
class PacketRecord:
    """One packet seen by the proxy, forwarded or dropped."""

    seq: int
    """Order of arrival at the proxy, over all connections and both directions."""
    time: float
    """``time.monotonic()`` at arrival."""
    conn: int
    """Connection number (1, 2, ...: one per accepted client connection)."""
    direction: Direction
    type: str
    """Packet type name: ``"CONNECT"``, ``"PUBLISH"``, ... (``"RESERVED0"`` for type 0)."""
    flags: int
    """The low 4 bits of the fixed header."""
    length: int
    """Bytes in the whole packet (fixed header included)."""
    dropped: bool
    dup: bool = False
    """PUBLISH only: DUP flag."""
    qos: int = 0
    """PUBLISH only: QoS."""
    retain: bool = False
    """PUBLISH only: RETAIN flag."""
    packet_id: int | None = None
    topic: str | None = None
    """PUBLISH topic name."""
    payload: bytes | None = None
    """PUBLISH application payload."""
    session_present: bool | None = None
    """CONNACK only."""
    reason_code: int | None = None
    """CONNACK return/reason code; MQTT 5 PUBACK/PUBREC/PUBREL/PUBCOMP/DISCONNECT reason code."""
    reason_codes: tuple[int, ...] | None = None
    """SUBACK (and MQTT 5 UNSUBACK) return codes."""
    filters: tuple[str, ...] | None = None
    """SUBSCRIBE / UNSUBSCRIBE topic filters."""
    protocol_level: int | None = None
    """The connection's protocol level from its CONNECT: 3 (3.1), 4 (3.1.1) or 5."""
    client_id: str | None = None
    """CONNECT only."""
    clean_start: bool | None = None
    """CONNECT only: Clean Session (3.1.1) / Clean Start (5)."""
    keepalive: int | None = None
    """CONNECT only."""
    properties: bytes | None = None
    """CONNECT / CONNACK on MQTT 5: the properties as on the wire (length prefix included;
    ``mqttsession.properties.unpack_properties`` reads them)."""
    error: str | None = field(default=None, compare=False)
    """Why the packet is malformed, if it is (the fields after the fixed header are then unset)."""


# ------------------------------------------------------------------------------------------------
# reading packets (the format itself is mqttsession._wire's)


def parse_packet(
    data: bytes,
    header_len: int,
    *,
    seq: int,
    conn: int,
    direction: Direction,
    protocol_level: int | None,
    dropped: bool,
) -> PacketRecord:
    """Describe one complete packet. ``protocol_level`` is the connection's (None before CONNECT).

    A packet ``_wire`` finds malformed is still described from its fixed header, with ``error``.
    """
    first = data[0]
    flags = first & 0x0F
    fields: dict[str, object] = {}
    if first >> 4 == PacketType.PUBLISH:  # the fixed header alone says these
        fields.update(dup=bool(flags & 0x08), qos=(flags >> 1) & 0x03, retain=bool(flags & 0x01))
    level = protocol_level
    try:
        p = wire.decode(first, data[header_len:], protocol_level or 4)
    except MalformedPacket as exc:
        fields["error"] = f"{type(exc).__name__}: {exc}"
    else:
        level = p.protocol_level or level  # a CONNECT's own
        fields.update(packet_id=p.packet_id, topic=p.topic, session_present=p.session_present,
                      reason_code=p.reason_code, reason_codes=p.reason_codes or None,
                      filters=p.filters or None, client_id=p.client_id, clean_start=p.clean_start,
                      keepalive=p.keepalive)
        if p.type is PacketType.PUBLISH:
            fields["payload"] = p.payload
        if p.type in (PacketType.CONNECT, PacketType.CONNACK) and p.properties:
            fields["properties"] = p.properties
    return PacketRecord(
        seq=seq,
        time=time.monotonic(),
        conn=conn,
        direction=direction,
        type=PACKET_TYPES.get(first >> 4, f"RESERVED{first >> 4}"),
        flags=flags,
        length=len(data),
        dropped=dropped,
        protocol_level=level,
        **fields,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------------
# the proxy


@dataclass
class _DropRule:
    direction: Direction
    types: frozenset[str]
    remaining: int | None  # None: forever

    def matches(self, direction: Direction, type_name: str) -> bool:
        return direction == self.direction and type_name in self.types and self.remaining != 0


@dataclass
class _Pair:
    """One client connection and its upstream connection."""

    conn: int
    client: socket.socket
    upstream: socket.socket
    protocol_level: int | None = None
    inbuf: dict[Direction, bytearray] = field(default_factory=lambda: {C2S: bytearray(), S2C: bytearray()})
    outbuf: dict[Direction, bytearray] = field(default_factory=lambda: {C2S: bytearray(), S2C: bytearray()})
    passthrough: dict[Direction, bool] = field(default_factory=lambda: {C2S: False, S2C: False})
    closed: bool = False

    def source(self, direction: Direction) -> socket.socket:
        return self.client if direction == C2S else self.upstream

    def target(self, direction: Direction) -> socket.socket:
        return self.upstream if direction == C2S else self.client


class MQTTProxy:
    """A loopback TCP proxy between MQTT clients and one broker, parsing and logging each packet.

    :param upstream_host: the broker's address (must be a loopback address).
    :param upstream_port: the broker's port.
    :param connect_timeout: seconds to wait for the upstream connection of each client connection.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, connect_timeout: float = 5.0) -> None:
        if not _is_loopback(upstream_host):
            raise ValueError(f"MQTTProxy only connects to loopback addresses, not {upstream_host!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._records: list[PacketRecord] = []
        self._rules: list[_DropRule] = []
        self._seq = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._pairs: dict[int, _Pair] = {}
        self._commands: list[tuple[Callable[[], object], threading.Event]] = []
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._port: int | None = None
        self.accepted = 0
        """Client connections accepted so far."""

    # -- properties --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def active_connections(self) -> int:
        with self._cond:
            return len(self._pairs)

    def describe(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"proxy {LOCALHOST}:{port} -> {self.upstream_host}:{self.upstream_port}"

    def __repr__(self) -> str:
        return f"<MQTTProxy {self.describe()} running={self._running}>"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self: _P) -> _P:
        """Listen on 127.0.0.1 (a free port, or the same port again after stop()) and serve."""
        if self._running:
            raise RuntimeError("proxy already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOCALHOST, self._port or 0))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=f"mqtt-proxy-{self._port}", daemon=True)
        self._thread.start()
        logger.info("started %s", self.describe())
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection (abruptly), and join the thread."""
        if not self._running:
            return
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("proxy thread did not finish within %.1fs", timeout)
        self._thread = None
        logger.info("stopped %s", self.describe())

    def __enter__(self: _P) -> _P:
        if not self._running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------
    def drop(self, direction: str, *packet_types: str, count: int | None = None) -> None:
        """Stop forwarding packets of these types in this direction (``"c2s"`` / ``"s2c"``).

        With ``count``, only the next ``count`` matching packets are dropped. Dropped packets are
        still logged, with ``dropped=True``.
        """
        dir_ = self._check_direction(direction)
        if not packet_types:
            raise ValueError("name at least one packet type")
        types = frozenset(self._check_type(t) for t in packet_types)
        if count is not None and count < 1:
            raise ValueError("count must be positive")
        with self._cond:
            self._rules.append(_DropRule(dir_, types, count))

    def clear_drops(self) -> None:
        """Forward everything again."""
        with self._cond:
            self._rules.clear()

    def cut(self, timeout: float = 5.0) -> int:
        """Abruptly close (RST) every current client/upstream connection pair; keep listening.

        Bytes not yet forwarded are discarded. Returns the number of pairs cut.
        """
        result: list[int] = []

        def do_cut() -> None:
            pairs = list(self._pairs.values())
            for pair in pairs:
                self._close_pair(pair, abort=True, reason="cut")
            result.append(len(pairs))

        self._run_in_loop(do_cut, timeout)
        return result[0] if result else 0

    # -- the packet log ----------------------------------------------------------------------
    def packets(
        self,
        direction: str | None = None,
        type: str | None = None,  # noqa: A002 - the natural name
        *,
        dropped: bool | None = None,
        conn: int | None = None,
    ) -> list[PacketRecord]:
        """Logged packets, in arrival order, filtered by direction / type / dropped / connection."""
        dir_ = self._check_direction(direction) if direction is not None else None
        type_ = self._check_type(type) if type is not None else None
        with self._cond:
            return [r for r in self._records if _match(r, dir_, type_, dropped, conn)]

    def clear_log(self) -> None:
        """Forget all logged packets."""
        with self._cond:
            self._records.clear()

    def wait_for(
        self,
        direction: str | None = None,
        type: str | None = None,  # noqa: A002
        *,
        predicate: Callable[[PacketRecord], bool] | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> PacketRecord:
        """Wait until ``count`` logged packets match; return the ``count``-th. TimeoutError if not."""
        dir_ = self._check_direction(direction) if direction is not None else None
        type_ = self._check_type(type) if type is not None else None

        def matching() -> list[PacketRecord]:
            return [r for r in self._records
                    if _match(r, dir_, type_, None, None) and (predicate is None or predicate(r))]

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = matching()
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.describe()}: no {count} x {direction or '*'} {type or '*'} packet(s)"
                        f" within {timeout}s; log:\n{self._format_log(self._records)}"
                    )
                self._cond.wait(left)

    def log_text(self) -> str:
        """The packet log, one line per packet (for test reports)."""
        with self._cond:
            return self._format_log(self._records)

    @staticmethod
    def _format_log(records: Iterable[PacketRecord]) -> str:
        lines = []
        for r in records:
            parts = [f"#{r.seq}", f"conn={r.conn}", r.direction, r.type]
            if r.type == "PUBLISH":
                parts.append(f"d{int(r.dup)} q{r.qos} r{int(r.retain)}")
            for name in ("packet_id", "topic", "session_present", "reason_code", "reason_codes",
                         "client_id", "clean_start"):
                value = getattr(r, name)
                if value is not None:
                    parts.append(f"{name}={value!r}")
            if r.dropped:
                parts.append("DROPPED")
            if r.error:
                parts.append(f"error={r.error!r}")
            lines.append(" ".join(parts))
        return "\n".join(lines) + ("\n" if lines else "")

    # -- validation --------------------------------------------------------------------------
    @staticmethod
    def _check_direction(direction: str) -> Direction:
        if direction == C2S:
            return C2S
        if direction == S2C:
            return S2C
        raise ValueError(f"direction must be 'c2s' or 's2c', not {direction!r}")

    @staticmethod
    def _check_type(type_name: str) -> str:
        name = type_name.upper()
        if name not in _TYPE_NAMES:
            raise ValueError(f"unknown MQTT packet type {type_name!r}")
        return name

    # -- the loop thread ---------------------------------------------------------------------
    def _wake(self) -> None:
        wake_w = self._wake_w  # read once: the loop thread may clear it while stopping
        if wake_w is not None:
            try:
                wake_w.send(b"x")
            except OSError:
                pass

    def _run_in_loop(self, func: Callable[[], object], timeout: float) -> None:
        if not self._running:
            return
        if threading.current_thread() is self._thread:
            func()
            return
        done = threading.Event()
        with self._cond:
            self._commands.append((func, done))
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError(f"{self.describe()}: loop did not run the command within {timeout}s")

    def _serve(self) -> None:
        assert self._selector is not None
        selector = self._selector
        try:
            while self._running:
                for key, mask in selector.select(timeout=0.5):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        self._drain_wake()
                    else:
                        pair, direction = key.data
                        if pair.closed:
                            continue
                        if mask & selectors.EVENT_WRITE:
                            # ``direction`` names what this socket sends us; it receives the other.
                            out_dir: Direction = S2C if direction == C2S else C2S
                            self._flush(pair, out_dir)
                        if mask & selectors.EVENT_READ and not pair.closed:
                            self._read(pair, direction)
                self._run_commands()
        except Exception:
            logger.exception("%s: loop crashed", self.describe())
        finally:
            self._running = False
            self._run_commands()
            for pair in list(self._pairs.values()):
                self._close_pair(pair, abort=True, reason="proxy stopped")
            for own in (self._listener, self._wake_r, self._wake_w):
                if own is not None:
                    own.close()
            self._listener = self._wake_r = self._wake_w = None
            selector.close()
            self._selector = None

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _run_commands(self) -> None:
        with self._cond:
            commands, self._commands = self._commands, []
        for func, done in commands:
            try:
                func()
            except Exception:
                logger.exception("%s: command failed", self.describe())
            finally:
                done.set()

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            client, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection((self.upstream_host, self.upstream_port), self.connect_timeout)
        except OSError as exc:
            logger.warning("%s: upstream connection failed (%s); closing client %s", self.describe(), exc, peer)
            _abort(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(next(self._conn_ids), client, upstream)
        with self._cond:
            self._pairs[pair.conn] = pair
            self._cond.notify_all()
        self._selector.register(client, selectors.EVENT_READ, (pair, C2S))
        self._selector.register(upstream, selectors.EVENT_READ, (pair, S2C))
        logger.debug("%s: conn %d from %s", self.describe(), pair.conn, peer)

    def _read(self, pair: _Pair, direction: Direction) -> None:
        sock = pair.source(direction)
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_pair(pair, abort=True, reason=f"{direction} read error: {exc}")
            return
        if not data:
            self._close_pair(pair, abort=False, reason=f"{direction} EOF")
            return
        buf = pair.inbuf[direction]
        buf += data
        out = pair.outbuf[direction]
        while buf:
            if pair.passthrough[direction]:
                out += buf
                buf.clear()
                break
            try:
                framed = wire.split(buf)
            except MalformedPacket as exc:
                logger.warning("%s: conn %d %s: %s; forwarding unparsed from now on",
                               self.describe(), pair.conn, direction, exc)
                pair.passthrough[direction] = True
                continue
            if framed is None:
                break
            header_len, total = framed
            packet = bytes(buf[:total])
            del buf[:total]
            if self._on_packet(pair, direction, packet, header_len):
                out += packet
        self._flush(pair, direction)

    def _on_packet(self, pair: _Pair, direction: Direction, packet: bytes, header_len: int) -> bool:
        """Log one packet; True to forward it."""
        type_name = PACKET_TYPES.get(packet[0] >> 4, "")
        with self._cond:
            drop = False
            for rule in self._rules:
                if rule.matches(direction, type_name):
                    drop = True
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    break
            record = parse_packet(
                packet, header_len, seq=next(self._seq), conn=pair.conn, direction=direction,
                protocol_level=pair.protocol_level, dropped=drop,
            )
            if record.type == "CONNECT" and record.protocol_level is not None:
                pair.protocol_level = record.protocol_level
            self._records.append(record)
            self._cond.notify_all()
        if record.error:
            logger.debug("%s: conn %d %s %s: %s", self.describe(), pair.conn, direction, record.type, record.error)
        return not drop

    def _flush(self, pair: _Pair, direction: Direction) -> None:
        """Send what is buffered for ``direction``'s target; watch for writability if it blocks."""
        if pair.closed:
            return
        out = pair.outbuf[direction]
        target = pair.target(direction)
        while out:
            try:
                sent = target.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close_pair(pair, abort=True, reason=f"{direction} write error: {exc}")
                return
            del out[:sent]
        self._set_write_interest(pair, target, bool(out))

    def _set_write_interest(self, pair: _Pair, sock: socket.socket, want: bool) -> None:
        assert self._selector is not None
        key = self._selector.get_key(sock)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        if key.events != events:
            self._selector.modify(sock, events, key.data)

    def _close_pair(self, pair: _Pair, *, abort: bool, reason: str) -> None:
        if pair.closed:
            return
        pair.closed = True
        logger.debug("%s: closing conn %d (%s)", self.describe(), pair.conn, reason)
        for sock, direction in ((pair.upstream, C2S), (pair.client, S2C)):
            if self._selector is not None:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            if abort:
                _abort(sock)
            else:
                # Orderly close: best effort to hand over what is still buffered for this socket.
                pending = pair.outbuf[direction]
                if pending:
                    try:
                        sock.setblocking(True)
                        sock.settimeout(1.0)
                        sock.sendall(pending)
                    except OSError:
                        pass
                sock.close()
        with self._cond:
            self._pairs.pop(pair.conn, None)
            self._cond.notify_all()


def _match(
    record: PacketRecord,
    direction: Direction | None,
    type_name: str | None,
    dropped: bool | None,
    conn: int | None,
) -> bool:
    return ((direction is None or record.direction == direction)
            and (type_name is None or record.type == type_name)
            and (dropped is None or record.dropped == dropped)
            and (conn is None or record.conn == conn))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
