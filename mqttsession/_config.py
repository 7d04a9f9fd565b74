"""``Client.config()``: the settings table (IPWorks names, parsing, ranges).

Each setting is read from and written to one attribute of a settings object: the engine's
(``EngineSettings``) or the Client's own (``ClientSettings``); a few have their own setter on
the Client (it checks the connection or reopens the state file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final

from .errors import UsageError
from .options import parse_addresses

__all__ = ["ClientSettings", "CONFIG", "parse_bool", "parse_int"]

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
    journal_max_bytes: int = 0  # 0: auto (256 KiB, or half the snapshot's size when larger)
    queue_segment_bytes: int = 1024 * 1024  # a disk queue segment is sealed past this
    receive_maximum: int = 20  # MQTT 5 CONNECT: incoming QoS>0 flows the broker may leave open
    manual_ack: bool = False  # PUBACK / PUBCOMP wait for ack()
    failover_servers: str = ""  # "host:port,host:port": tried after connect()'s own, in turn
    follow_server_reference: bool = False  # MQTT 5 4.11: go where 0x9C / 0x9D point


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
    if not x >= lo:
        raise UsageError(f"{name} must be >= {lo}, got {value!r}")
    return x


_INT_RANGES: Final = {"max_inflight": (1, 2**31), "will_qos": (0, 2), "receive_maximum": (1, 65535),
                      "max_queued_messages": (0, 2**62), "max_queued_bytes": (0, 2**62),
                      "queue_in_memory": (0, 2**31), "queue_segment_bytes": (4096, 2**30),
                      "session_sync_interval": (1, 3_600_000)}


def _policy(c: Any, value: str) -> None:
    v = value.strip().lower()
    if v not in ("reject", "drop-oldest"):
        raise UsageError(f"QueueFullPolicy must be 'reject' or 'drop-oldest', got {value!r}")
    c._engine_settings.queue_full_policy = v

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
        name = attr.title().replace("_", "")
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


def _own(attr: str, setter: str | None) -> tuple[Getter, Setter | None]:
    """A setting with a getter / setter method on the Client."""
    return _attr("_settings", attr)[0], (None if setter is None
                                         else lambda c, v: getattr(c, setter)(v))


CONFIG: Final[dict[str, tuple[Getter, Setter | None]]] = {
    "sessionpresent": (lambda c: _show(c._engine.session_present), None),
    "mismatchedacks": (lambda c: str(c._engine.mismatched_acks), None),
    "sessionstatefile": _own("session_state_file", "_set_state_file"),
    "sessionexpinterval": (
        lambda c: "" if c._engine.state.session_expiry_interval is None
        else str(c._engine.state.session_expiry_interval),
        lambda c, v: c._set_expiry(v),
    ),
    "protocolversion": (lambda c: str(c._engine.state.protocol_version),
                        lambda c, v: c._set_protocol(v)),
    "sessionsync": _own("session_sync", "_set_sync"),
    "sessionsyncinterval": _attr("_settings", "session_sync_interval"),
    "retain": _attr("_settings", "retain"),
    "republishinterval": _attr("_engine_settings", "republish_interval"),
    "willqos": _attr("_settings", "will_qos"),
    "willretain": _attr("_settings", "will_retain"),
    "topicdelimiter": _attr("_settings", "topic_delimiter"),
    "autoreconnect": _attr("_settings", "auto_reconnect"),
    "reconnectdelaymin": _attr("_settings", "reconnect_delay_min"),
    "reconnectdelaymax": _attr("_settings", "reconnect_delay_max"),
    "maxinflight": _attr("_engine_settings", "max_inflight"),
    "republishonsessionlost": _attr("_engine_settings", "republish_on_session_lost"),
    "releasedonsessionlost": (lambda c: c._engine_settings.released_on_session_lost,
                              lambda c, v: c._set_released(v)),
    "journalmaxbytes": _attr("_settings", "journal_max_bytes"),
    "queuesegmentbytes": _attr("_settings", "queue_segment_bytes"),
    "maxmessagesize": _attr("_engine_settings", "max_message_size"),
    "receivemaximum": _attr("_settings", "receive_maximum"),
    "manualack": _own("manual_ack", "_set_manual_ack"),
    "maxqueuedmessages": _attr("_engine_settings", "max_queued_messages"),
    "maxqueuedbytes": _attr("_engine_settings", "max_queued_bytes"),
    "queueinmemory": _attr("_engine_settings", "queue_in_memory"),
    "queuefullpolicy": (lambda c: c._engine_settings.queue_full_policy, _policy),
    "drainratelimit": _attr("_engine_settings", "drain_rate_limit"),
    "failoverservers": (lambda c: c._settings.failover_servers, _failover),
    "followserverreference": _attr("_settings", "follow_server_reference"),
    "connectedserver": (lambda c: c._engine.server, None),
}
