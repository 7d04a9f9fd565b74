"""``Client.config()``: the settings table (IPWorks names, parsing, ranges).

Each setting is read from and written to one attribute of a settings object: the engine's
(``EngineSettings``) or the Client's own (``ClientSettings``); a few have a setter of their own
here (it checks the connection, reopens the state file or records the change). Also the
Client's CONNECT parameters as the driver takes them (``ConnectParams``).
"""

from __future__ import annotations

import math
import os
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Final

from .errors import StateError, UsageError
from .options import parse_addresses
from .records import MAX_EXPIRY
from .recovery import JOURNAL_SUFFIX, load

__all__ = ["ClientSettings", "CONFIG", "ConnectParams", "parse_bool", "parse_int"]

MIN_RECONNECT_DELAY: Final = 0.05  # seconds (as ``pump.AsyncioPump``'s)
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


@dataclass
class ClientSettings:
    """The ``config()`` settings that are neither session state nor the engine's."""

    session_state_file: str = ""
    session_sync: str = "always"  # or "none", or "interval" (fsync at most this much later:)
    session_sync_interval: int = 1000  # milliseconds (SessionSync=interval)
    retain: bool = False
    will_qos: int = 0
    will_retain: bool = False
    topic_delimiter: str = ","
    auto_reconnect: bool = True
    reconnect_delay_min: float = 1.0
    reconnect_delay_max: float = 30.0
    journal_max_bytes: int = 0  # 0: auto (1 MiB, or half the snapshot's size when larger)
    queue_segment_bytes: int = 1024 * 1024  # a disk queue segment is sealed past this
    receive_maximum: int = 20  # MQTT 5 CONNECT: incoming QoS>0 flows the broker may leave open
    manual_ack: bool = False  # PUBACK / PUBCOMP wait for ack()
    failover_servers: str = ""  # "host:port,host:port": tried after connect()'s own, in turn
    follow_server_reference: bool = False  # MQTT 5 4.11: go where 0x9C / 0x9D point
    disconnect_reason_code: int = 0  # MQTT 5: disconnect()'s DISCONNECT (0x04: send the will)
    client_topic_alias_max: int = 0  # MQTT 5 CONNECT: Topic Aliases the broker may set (0: none)

    def reconnect_delays(self) -> tuple[float, float]:
        """(first, largest) reconnect delay in seconds as paho's backoff takes them: fractions
        kept (its wait is float arithmetic and ``time.sleep``, though annotated ``int``), at
        least 0.05 s (0 would reconnect in a busy loop), the largest at least the first."""
        lo = max(self.reconnect_delay_min, MIN_RECONNECT_DELAY)
        return lo, max(self.reconnect_delay_max, lo)


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"{name} must be True or False, got {value!r}")


def parse_int(name: str, value: str, lo: int, hi: int) -> int:
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
    if not lo <= x < math.inf:  # NaN and inf too: no setting waits forever (or overflows int)
        raise UsageError(f"{name} must be a finite number >= {lo}, got {value!r}")
    return x


_INT_RANGES: Final = {"max_inflight": (1, 2**31), "will_qos": (0, 2), "receive_maximum": (1, 65535),
                      "max_queued_messages": (0, 2**62), "max_queued_bytes": (0, 2**62),
                      "qos0_backlog_bytes": (0, 2**62),
                      "queue_in_memory": (0, 2**31), "queue_segment_bytes": (4096, 2**30),
                      "session_sync_interval": (1, 3_600_000), "failover_republish": (0, 65535),
                      "client_topic_alias_max": (0, 65535)}


# the settings with a setter of their own (``c``: the Client)


RESERVED_IDS: Final = 256  # packet ids a reservation covers (SessionSync=interval): one fsync


def _reserve_ids(c: Any) -> None:
    """SessionSync=interval with a state file: packet ids come from synced reservations
    (``EngineSettings.reserve_packet_ids``); ``always`` and ``none`` need none."""
    s = c._settings
    on = s.session_sync == "interval" and bool(s.session_state_file)
    c._engine_settings.reserve_packet_ids = RESERVED_IDS if on else 0


def _set_state_file(c: Any, value: str) -> None:
    c._file.set_path(value.strip(), c._engine.state, connected=c._driver.conn is not None)
    c._settings.session_state_file = c._file.path  # (absolute: the file in use, also read back)
    _reserve_ids(c)
    _hold_now(c._file, c._engine.state)


def _hold_now(f: Any, state: Any) -> None:
    """A session holding messages given a ``SessionStateFile``: in the file at once, not at
    the next change (a kill -9 before it lost them all), unless the file holds a session of
    its own, or a damaged one: that waits for ``restore_session`` (never written over)."""
    if not f.path or f.shared is not None or f.journal is not None or state.empty:
        return
    if os.path.lexists(f.path) or os.path.lexists(f.path + JOURNAL_SUFFIX):
        try:
            there = load(f.path, state.client_id, StateError, read_only=True)[0]
        except StateError:
            return  # (restore_session says what is wrong, and keeps it)
        if not there.empty or there.reserved_first:
            return
    f.open(state)  # (a queue there without its file: kept aside as "orphaned", told)


def _set_expiry(c: Any, value: str) -> None:
    interval = parse_int("SessionExpInterval", value, 0, MAX_EXPIRY)
    st = c._engine.state
    if c._driver.conn is not None and st.protocol_version == 5 and interval and \
            not c._engine.sent_expiry:  # (what this connection's CONNECT carried)
        raise UsageError("SessionExpInterval cannot go from 0 to more while connected: the"
                         " broker drops the session at the disconnect all the same, and a"
                         " DISCONNECT carrying it is a protocol error (MQTT 5 3.14.2.2.2); set it"
                         " before connect()")
    c._file.append([st.configure(session_expiry_interval=interval)], st)


def _set_protocol(c: Any, value: str) -> None:
    c.protocol_version = parse_int("ProtocolVersion", value, 4, 5)


def _set_released(c: Any, value: str) -> None:
    v = value.strip().lower()
    if v not in ("republish", "drop"):
        raise UsageError(f"ReleasedOnSessionLost must be 'republish' or 'drop', got {value!r}")
    c._engine_settings.released_on_session_lost = v


def _set_manual_ack(c: Any, value: str) -> None:
    on = parse_bool("ManualAck", value)
    if on != c._settings.manual_ack:
        c._driver.require_disconnected("ManualAck")
    c._settings.manual_ack = on


def _set_segment_bytes(c: Any, value: str) -> None:
    """QueueSegmentBytes: for the disk queue already open too (a gateway's session opens its
    file when it is made)."""
    _attr("_settings", "queue_segment_bytes")[1](c, value)
    if c._file.spool is not None:
        c._file.spool.segment_bytes = c._settings.queue_segment_bytes


# Redis's appendfsync names, which users know (``everysec``: ``interval``'s default 1000 ms)
_SYNC_ALIASES: Final = {"everysec": "interval", "no": "none"}


def _set_sync(c: Any, value: str) -> None:
    v = value.strip().lower()
    v = _SYNC_ALIASES.get(v, v)
    if v not in ("always", "none", "interval"):
        raise UsageError(f"SessionSync must be 'always', 'none' or 'interval' (Redis's"
                         f" 'everysec' and 'no' name the last two), got {value!r}")
    c._settings.session_sync = v
    # interval: the driver defers a publish's fsync; none and interval: records not synced at
    # once are mapped (always syncs each publish's: ``Journal.mapped``)
    c._file.set_sync(v != "none", mapped=v != "always", interval=v == "interval")
    _reserve_ids(c)


def _set_sync_interval(c: Any, value: str) -> None:
    lo, hi = _INT_RANGES["session_sync_interval"]
    new = parse_int("SessionSyncInterval", value, lo, hi)
    lowered, c._settings.session_sync_interval = new < c._settings.session_sync_interval, new
    if lowered:  # a sync armed under the old value: due within the new one
        c._driver.rearm_sync_timer()


def _policy(c: Any, value: str) -> None:
    v = value.strip().lower()
    if v not in ("reject", "drop-oldest"):
        raise UsageError(f"QueueFullPolicy must be 'reject' or 'drop-oldest', got {value!r}")
    c._engine_settings.queue_full_policy = v

# the reason codes a client may send in DISCONNECT [MQTT-3.14.2-1] (MQTT 5 table 3-10)
CLIENT_DISCONNECT_CODES: Final = frozenset({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93,
                                            0x94, 0x95, 0x96, 0x97, 0x98, 0x99})


def _disconnect_code(c: Any, value: str) -> None:
    """DisconnectReasonCode: decimal or 0x hex, one a client may send."""
    try:
        code = int(value.strip(), 0)
    except ValueError:
        code = -1
    if code not in CLIENT_DISCONNECT_CODES:
        allowed = ", ".join(f"0x{n:02X}" for n in sorted(CLIENT_DISCONNECT_CODES))
        raise UsageError(f"DisconnectReasonCode must be a reason code a client may send in"
                         f" DISCONNECT ({allowed}), got {value!r}")
    c._settings.disconnect_reason_code = code


def _failover(c: Any, value: str) -> None:
    """FailoverServers: "" (none) or a list checked now; ports are resolved at connect()
    (a bare host takes 1883, or 8883 with TLS)."""
    text = value.strip()
    if text:
        parse_addresses(text, source="FailoverServers")
    c._settings.failover_servers = ",".join(t.strip() for t in text.split(",")) if text else ""


Getter = Callable[[Any], str]
Setter = Callable[[Any, str], None]


def _show(v: object) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _attr(where: str, attr: str) -> tuple[Getter, Setter]:
    """A setting kept in ``client.<where>.<attr>``, parsed by the attribute's type."""

    def get(c: Any) -> str:
        return _show(getattr(getattr(c, where), attr))

    def put(c: Any, value: str) -> None:
        target = getattr(c, where)
        cur = getattr(target, attr)
        key = attr.replace("_", "")  # the setting's own spelling (WillQOS, not WillQos)
        name = SETTING_DOCS[key][0] if key in SETTING_DOCS else attr.title().replace("_", "")
        if isinstance(cur, bool):
            new: object = parse_bool(name, value)
        elif isinstance(cur, int):
            lo, hi = _INT_RANGES.get(attr, (0, 2**31))
            new = parse_int(name, value, lo, hi)
        elif isinstance(cur, float):
            new = _parse_float(name, value, 0.0)
        else:
            new = value
            if attr == "topic_delimiter" and not value:
                raise UsageError("TopicDelimiter must not be empty")
        setattr(target, attr, new)

    return get, put


def _then(setting: tuple[Getter, Setter], after: Callable[[Any], None]) -> tuple[Getter, Setter]:
    """``setting``, then ``after(c)``: a change that reaches the connection (or the engine)
    under way, not only the next ``connect()``."""
    get, put = setting

    def put_then(c: Any, value: str) -> None:
        put(c, value)
        after(c)
    return get, put_then


def _reconnecting(c: Any) -> None:
    """AutoReconnect / ReconnectDelayMin / Max: the live connection's too."""
    c._driver.reconnecting()


def _drain_rate(c: Any) -> None:
    """DrainRateLimit lowered: the bucket's tokens no more than the new rate (a second's)."""
    rate = c._engine_settings.drain_rate_limit
    if rate:
        c._engine._tokens = min(c._engine._tokens, float(rate))


def _own(attr: str, setter: Setter) -> tuple[Getter, Setter]:
    """A setting kept in ``client._settings.<attr>`` with a setter of its own."""
    return _attr("_settings", attr)[0], setter


CONFIG: Final[dict[str, tuple[Getter, Setter | None]]] = {
    "sessionpresent": (lambda c: _show(c._engine.session_present), None),
    "mismatchedacks": (lambda c: str(c._engine.mismatched_acks), None),
    "sessionstatefile": _own("session_state_file", _set_state_file),
    "sessionexpinterval": (
        lambda c: "" if c._engine.state.session_expiry_interval is None
        else str(c._engine.state.session_expiry_interval),
        _set_expiry,
    ),
    "protocolversion": (lambda c: str(c._engine.state.protocol_version), _set_protocol),
    "sessionsync": _own("session_sync", _set_sync),
    "sessionsyncinterval": _own("session_sync_interval", _set_sync_interval),
    "retain": _attr("_settings", "retain"),
    "republishinterval": _attr("_engine_settings", "republish_interval"),
    "willqos": _attr("_settings", "will_qos"),
    "willretain": _attr("_settings", "will_retain"),
    "topicdelimiter": _attr("_settings", "topic_delimiter"),
    "autoreconnect": _then(_attr("_settings", "auto_reconnect"), _reconnecting),
    "reconnectdelaymin": _then(_attr("_settings", "reconnect_delay_min"), _reconnecting),
    "reconnectdelaymax": _then(_attr("_settings", "reconnect_delay_max"), _reconnecting),
    "maxinflight": _attr("_engine_settings", "max_inflight"),
    "republishonsessionlost": _attr("_engine_settings", "republish_on_session_lost"),
    "releasedonsessionlost": (lambda c: c._engine_settings.released_on_session_lost,
                              _set_released),
    "journalmaxbytes": _attr("_settings", "journal_max_bytes"),
    "queuesegmentbytes": (_attr("_settings", "queue_segment_bytes")[0], _set_segment_bytes),
    "maxmessagesize": _attr("_engine_settings", "max_message_size"),
    "receivemaximum": _attr("_settings", "receive_maximum"),
    "manualack": _own("manual_ack", _set_manual_ack),
    "maxqueuedmessages": _attr("_engine_settings", "max_queued_messages"),
    "maxqueuedbytes": _attr("_engine_settings", "max_queued_bytes"),
    "qos0backlogbytes": _attr("_engine_settings", "qos0_backlog_bytes"),
    "queueinmemory": _attr("_engine_settings", "queue_in_memory"),
    "queuefullpolicy": (lambda c: c._engine_settings.queue_full_policy, _policy),
    "drainratelimit": _then(_attr("_engine_settings", "drain_rate_limit"), _drain_rate),
    "failoverservers": (lambda c: c._settings.failover_servers, _failover),
    "followserverreference": _attr("_settings", "follow_server_reference"),
    "failoverrepublish": _attr("_engine_settings", "failover_republish"),
    "connectedserver": (lambda c: c._engine.server, None),
    "disconnectreasoncode": _own("disconnect_reason_code", _disconnect_code),
    "clienttopicaliasmax": _attr("_settings", "client_topic_alias_max"),
}


# What each setting does, for the documentation (``docs/`` builds its config reference from this
# table, the defaults read from a new Client; ``tests/unit/test_docs.py`` checks that every
# setting of ``CONFIG`` has an entry): the name as written, then its description (reST).
SETTING_DOCS: Final[dict[str, tuple[str, str]]] = {
    "sessionpresent": ("SessionPresent", "Read-only, ``True`` / ``False``: the SessionPresent flag"
                       " of the last CONNACK (inside ``on_connected``: of that CONNACK)."),
    "mismatchedacks": ("MismatchedAcks", "Read-only: how many acknowledgements of the wrong kind"
                       " (a PUBACK for QoS 2, a PUBREC for QoS 1) ended a flow as the broker"
                       " meant it."),
    "sessionstatefile": ("SessionStateFile", "Path of the durable session: kept current after"
                         " every change (snapshot, ``FILE.journal``, ``FILE.queue/``); empty: the"
                         " session lives in memory and in ``save_session()``'s text."),
    "sessionexpinterval": ("SessionExpInterval", "MQTT 5 Session Expiry Interval in seconds,"
                           " 0..4294967295. Unset on a persistent session: 3600 is sent."),
    "protocolversion": ("ProtocolVersion", "4 (MQTT 3.1.1) or 5; the same as"
                        " ``Client.protocol_version``."),
    "sessionsync": ("SessionSync", "``always``: fsync before ``publish_*`` returns and before each"
                    " dependent packet leaves; ``interval``: a publish's record reaches the OS at"
                    " once and the disk within ``SessionSyncInterval``; ``none``: the OS decides"
                    " (survives ``kill -9``, not a power cut). Redis's appendfsync names"
                    " ``everysec`` and ``no`` are taken for ``interval`` and ``none`` (read back"
                    " as those). See :doc:`guarantees`."),
    "sessionsyncinterval": ("SessionSyncInterval", "Milliseconds (1..3600000) a publish's record may"
                            " wait for its fsync under ``SessionSync=interval``."),
    "retain": ("Retain", "The RETAIN flag of messages published with ``retain=None``."),
    "republishinterval": ("RepublishInterval", "MQTT 3.1.1: seconds after which an unacknowledged"
                          " message is sent again on the same connection (0: only on"
                          " reconnect; MQTT 5 always resends only on reconnect)."),
    "willqos": ("WillQOS", "QoS (0..2) of the will message (``Client.will_topic``)."),
    "willretain": ("WillRetain", "RETAIN flag of the will message."),
    "clienttopicaliasmax": ("ClientTopicAliasMax", "MQTT 5: how many Topic Aliases (0..65535)"
                            " the broker may set for the PUBLISHes it sends on a connection"
                            " (CONNECT's Topic Alias Maximum; 0: none). Each is resolved as it"
                            " arrives; a message is delivered and stored with its topic name,"
                            " never its alias."),
    "disconnectreasoncode": ("DisconnectReasonCode", "MQTT 5: the reason code ``disconnect()``"
                             " sends in its DISCONNECT, decimal or ``0x`` hex, one a client may"
                             " send (0x00, 0x04, 0x80..0x83, 0x90, 0x93..0x99). ``4`` (Disconnect"
                             " with Will Message) has the broker publish the will, which a"
                             " normal DISCONNECT (``0``) discards. MQTT 3.1.1's DISCONNECT has"
                             " no reason code: it always discards the will."),
    "topicdelimiter": ("TopicDelimiter", "Separates several filters in one ``subscribe`` /"
                       " ``unsubscribe`` string (spaces around each are dropped; a string"
                       " without it is one filter, taken as given)."),
    "autoreconnect": ("AutoReconnect", "Reconnect after a lost connection (with backoff between"
                      " ``ReconnectDelayMin`` and ``ReconnectDelayMax``) and resume the session."),
    "reconnectdelaymin": ("ReconnectDelayMin", "Seconds before the first reconnect attempt: a"
                          " finite number, fractions honoured (e.g. ``0.5``); below 0.05 counts"
                          " as 0.05."),
    "reconnectdelaymax": ("ReconnectDelayMax", "Seconds between attempts at most (the delay"
                          " doubles up to it): a finite number, fractions honoured; below"
                          " ``ReconnectDelayMin`` counts as ``ReconnectDelayMin``."),
    "maxinflight": ("MaxInflight", "Outgoing QoS 1/2 messages sent and not yet acknowledged at"
                    " most (also bounded by the broker's MQTT 5 Receive Maximum)."),
    "republishonsessionlost": ("RepublishOnSessionLost", "When the broker lost the session,"
                               " publish sent-but-unconfirmed messages again as new messages"
                               " (False: drop them, reported through ``on_message_dropped``)."),
    "releasedonsessionlost": ("ReleasedOnSessionLost", "QoS 2 messages past PUBREC when the"
                              " broker lost the session: ``republish`` (listed in"
                              " ``possible_duplicates``) or ``drop``."),
    "journalmaxbytes": ("JournalMaxBytes", "Compact the state file when its journal passes this"
                        " many bytes; 0: 1 MiB or half the snapshot, whichever is larger."),
    "queuesegmentbytes": ("QueueSegmentBytes", "Size (4096..2**30 bytes) at which a disk queue"
                          " segment is sealed and a new one started."),
    "maxmessagesize": ("MaxMessageSize", "The largest PUBLISH packet ``publish_*`` accepts, in"
                       " bytes (0: MQTT's own limit)."),
    "receivemaximum": ("ReceiveMaximum", "MQTT 5: incoming QoS 1/2 flows the broker may leave"
                       " unacknowledged at once (1..65535), sent in CONNECT."),
    "manualack": ("ManualAck", "PUBACK / PUBCOMP of a received message wait for ``ack()``"
                  " instead of going out when ``on_message_in`` returns."),
    "maxqueuedmessages": ("MaxQueuedMessages", "Outgoing QoS 1/2 messages held at most (0: no"
                          " limit); see ``QueueFullPolicy``."),
    "maxqueuedbytes": ("MaxQueuedBytes", "Bytes (payloads, topics, properties) of the held"
                       " outgoing messages at most (0: no limit)."),
    "qos0backlogbytes": ("QoS0BacklogBytes", "Memory the QoS 0 PUBLISH packets waiting for a"
                         " connection that is behind (a stalled link) may take: their bytes"
                         " and 256 a packet; past it a QoS 0 publish is dropped, logged (0: no"
                         " bound, as plain paho)."),
    "queueinmemory": ("QueueInMemory", "Never-sent messages held in memory at most; with a state"
                      " file the rest wait in the disk queue (0: all in memory, once what the"
                      " disk queue holds is read back)."),
    "queuefullpolicy": ("QueueFullPolicy", "``reject`` (``publish_*`` raises ``QueueFullError``)"
                        " or ``drop-oldest`` (the oldest never-sent messages make room, each"
                        " reported through ``on_message_dropped``)."),
    "drainratelimit": ("DrainRateLimit", "New PUBLISHes per second, e.g. to spread a backlog"
                       " after a reconnect (0: no limit): a token bucket that holds one second's"
                       " worth, so after a quiet second that many may go at once."),
    "failoverservers": ("FailoverServers", "More servers (``host:port,host:port``; IPv6 as"
                        " ``[::1]:1883``) tried after the one ``connect()`` names; after a lost"
                        " connection each reconnect goes to the next, round robin. TLS and"
                        " credentials apply to all."),
    "followserverreference": ("FollowServerReference", "MQTT 5: follow a CONNACK or DISCONNECT"
                              " with reason 0x9C / 0x9D and a Server Reference to that server"
                              " (at most 3 redirections in a row)."),
    "failoverrepublish": ("FailoverRepublish", "After a reconnect that lands on another server"
                          " (``FailoverServers``), publish the last this many QoS 1 messages the"
                          " server before acknowledged again, as new messages (0..65535; 0: off)."
                          " For a cluster whose node can die with messages it acknowledged and"
                          " had not handed on (aedes: see the README's broker section): nothing"
                          " lost, at the price of QoS 1 duplicates. Kept in memory only; never"
                          " QoS 2."),
    "connectedserver": ("ConnectedServer", "Read-only: ``host:port`` of the server the current"
                        " connection was accepted by (also inside ``on_connected``); empty"
                        " without one."),
}


@dataclass(frozen=True)
class ConnectParams:
    """What paho needs for CONNECT beyond the session (the Client's properties)."""

    keep_alive: int
    username: str | None
    password: str | None
    will_topic: str
    will_message: bytes | str
    will_properties: Any = None  # paho Properties(WILLMESSAGE), checked at connect
    connect_properties: Any = None  # paho Properties(CONNECT), checked at connect
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls: bool = False
    tls_context: ssl.SSLContext | None = None  # instead of the paths
    transport: str = "tcp"  # or "websockets"
    ws_path: str = "/mqtt"
    ws_headers: dict[str, str] | None = None
