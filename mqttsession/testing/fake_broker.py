"""A small raw-socket MQTT broker that can break the protocol on purpose, for tests.

:class:`FakeBroker` listens on 127.0.0.1 (a free port) and answers one client connection at a
time like a minimal broker: CONNACK, PUBACK / PUBREC / PUBCOMP, SUBACK, UNSUBACK, PINGRESP. What
a real broker would never do is set per test:

* ``session_present``: the SessionPresent flag of every CONNACK (also against Clean Start 1);
* ``qos1_ack`` / ``qos2_ack``: how a QoS 1 / QoS 2 PUBLISH is answered: ``"puback"``,
  ``"pubrec"`` or ``"none"`` (``qos2_ack="puback"`` is what RabbitMQ 3.x does);
* ``suback_code``: the SUBACK return/reason code for every filter (0x80: refused);
* ``closes_on_subscribe``: filters whose SUBSCRIBE is answered by closing the connection, no
  SUBACK (RabbitMQ 3.x does this when the queue behind a subscription cannot be declared);
* ``receive_maximum`` / ``maximum_packet_size``: CONNACK properties (MQTT 5);
* ``connack_reason`` / ``server_reference``: refuse every CONNECT with that reason code, and
  (MQTT 5) name another server in the CONNACK's Server Reference, e.g. 0x9C Use another server
  (MQTT 5 4.11: a broker redirecting its clients); :meth:`disconnect` sends a DISCONNECT with a
  reason code and a Server Reference to the connected client;
* :meth:`send_raw`: any bytes to the connected client (a second CONNACK, a PUBLISH with QoS
  bits 11, ...).

Every packet received is logged as a :class:`~mqttsession.testing.proxy.PacketRecord`, as the
proxy logs it; every packet is encoded and decoded by :mod:`mqttsession._wire`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from mqttsession import _wire as wire
from mqttsession._wire import PacketType
from mqttsession.testing.brokers import LOCALHOST
from mqttsession.testing.proxy import C2S, PacketRecord, parse_packet

__all__ = ["FakeBroker", "encode_packet", "varint"]

log = logging.getLogger(__name__)

varint = wire.encode_varint
encode_packet = wire.encode_packet


class FakeBroker:
    """A scriptable loopback MQTT broker speaking just enough of 3.1.1 and 5 (see module doc)."""

    def __init__(
        self,
        *,
        session_present: bool = False,
        qos1_ack: str = "puback",
        qos2_ack: str = "pubrec",
        suback_code: int | None = None,
        receive_maximum: int | None = None,
        maximum_packet_size: int | None = None,
        connack_reason: int = 0,
        server_reference: str | None = None,
    ) -> None:
        self.session_present = session_present
        self.qos1_ack = qos1_ack
        self.qos2_ack = qos2_ack
        self.suback_code = suback_code
        self.receive_maximum = receive_maximum
        self.maximum_packet_size = maximum_packet_size
        self.connack_reason = connack_reason
        self.server_reference = server_reference
        self.closes_on_subscribe: set[str] = set()
        self.on_packet: Callable[[FakeBroker, PacketRecord], None] | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)  # (here: a broker stopped at once closed it already)
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._level = 4
        self._records: list[PacketRecord] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def packets(self, type_name: str | None = None) -> list[PacketRecord]:
        """Packets received from clients, in order (of one type, if named)."""
        with self._lock:
            return [r for r in self._records if type_name is None or r.type == type_name]

    def wait_for(self, type_name: str, count: int = 1, timeout: float = 10.0) -> list[PacketRecord]:
        """Wait until ``count`` packets of ``type_name`` arrived; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.packets(type_name)
            if len(got) >= count:
                return got
            time.sleep(0.01)
        raise TimeoutError(f"fake broker: {count} x {type_name} not received; got {self.packets()}")

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake broker: {count} connections not seen ({self.connections})")
            time.sleep(0.01)

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the connected client as it is."""
        with self._lock:
            conn = self._conn
        if conn is None:
            raise RuntimeError("fake broker: no client connected")
        conn.sendall(data)

    def connack(self, session_present: bool = False, reason: int = 0) -> bytes:
        """A CONNACK for the current connection's protocol level."""
        props: list[wire.Property] = []
        if self._level == 5 and self.receive_maximum is not None:
            props.append((wire.RECEIVE_MAXIMUM, self.receive_maximum))
        if self._level == 5 and self.maximum_packet_size is not None:
            props.append((wire.MAXIMUM_PACKET_SIZE, self.maximum_packet_size))
        if self._level == 5 and self.server_reference is not None:
            props.append((wire.SERVER_REFERENCE, self.server_reference))
        return wire.encode_connack(session_present, reason, protocol=self._level, properties=props)

    def disconnect(self, reason: int, server_reference: str | None = None) -> None:
        """Send an MQTT 5 DISCONNECT with ``reason`` (and a Server Reference) to the connected
        client, which closes the connection on it (MQTT 5 3.14.4); a close from this side
        right away could reset the connection before the client has read the packet."""
        props: list[wire.Property] = []
        if server_reference is not None:
            props.append((wire.SERVER_REFERENCE, server_reference))
        self.send_raw(wire.encode_disconnect(reason, protocol=5, properties=props))

    def ack(self, kind: int, packet_id: int) -> bytes:
        """PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP (0x70) with success."""
        return wire.encode_ack(PacketType(kind >> 4), packet_id)

    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int = 0, *,
                flags: int | None = None) -> bytes:
        """A PUBLISH; ``flags`` overrides the fixed header's low nibble (e.g. QoS bits 11)."""
        with_id = qos or (flags is not None and flags & 0x06)
        return wire.encode_publish(topic, payload, qos=qos, packet_id=packet_id if with_id else None,
                                   protocol=self._level, flags=flags)

    def close_client(self) -> None:
        """Drop the client's connection abruptly."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.close_client()
        self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.close_client()  # one client at a time: a new connection takes over
            with self._lock:
                self._conn = conn
                self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        seq = 0
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while (split := wire.split(buf)) is not None:
                header_len, total = split
                packet, buf = bytes(buf[:total]), buf[total:]
                seq += 1
                rec = parse_packet(packet, header_len, seq=seq, conn=self.connections,
                                   direction=C2S, protocol_level=self._level, dropped=False)
                if rec.type == "CONNECT" and rec.protocol_level is not None:
                    self._level = rec.protocol_level
                with self._lock:
                    self._records.append(rec)
                try:
                    self._answer(conn, rec)
                except OSError:
                    return

    def _answer(self, conn: socket.socket, rec: PacketRecord) -> None:
        if self.on_packet is not None:
            self.on_packet(self, rec)
        pid = rec.packet_id or 0
        if rec.type == "CONNECT":
            conn.sendall(self.connack(self.session_present and not self.connack_reason,
                                      self.connack_reason))
        elif rec.type == "PUBLISH" and rec.qos in (1, 2):
            answer = self.qos1_ack if rec.qos == 1 else self.qos2_ack
            if answer != "none":
                conn.sendall(self.ack(0x40 if answer == "puback" else 0x50, pid))
        elif rec.type == "PUBREL":
            conn.sendall(self.ack(0x70, pid))
        elif rec.type == "SUBSCRIBE":
            filters = rec.filters or ()
            if self.closes_on_subscribe.intersection(filters):
                self.close_client()
                return
            code = self.suback_code if self.suback_code is not None else 1
            conn.sendall(wire.encode_suback(pid, [code] * len(filters), protocol=self._level))
        elif rec.type == "UNSUBSCRIBE":
            codes = [0] * len(rec.filters or ()) if self._level == 5 else []
            conn.sendall(wire.encode_unsuback(pid, codes, protocol=self._level))
        elif rec.type == "PINGREQ":
            conn.sendall(wire.encode_pingresp())
