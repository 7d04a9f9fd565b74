"""Connection options in the Coherence style: an immutable ``Options`` value with env defaults.

``Options(...)`` is a plain value: every field not given takes the documented default and the
environment is never read. ``Options.from_env(**overrides)`` builds one from the defaults, then the
``MQTTSESSION_*`` environment variables, then the explicit ``overrides`` (which always win). The
library's entry points that take ``options=None`` (``AsyncSession.create()``, ``Connection()``)
use ``Options.from_env()``.

=================================  =========================================================
variable                           field
=================================  =========================================================
``MQTTSESSION_ADDRESS``            ``address`` (``host:port``, or ``host:port,host:port``: a server
                                   list, tried in turn, see ``Options``)
``MQTTSESSION_REQUEST_TIMEOUT``    ``request_timeout_seconds`` (a number > 0)
``MQTTSESSION_TLS_CERTS_PATH``     ``tls_options.ca_cert_path``
``MQTTSESSION_TLS_CLIENT_CERT``    ``tls_options.client_cert_path``
``MQTTSESSION_TLS_CLIENT_KEY``     ``tls_options.client_key_path``
``MQTTSESSION_TLS_ENABLED``        ``tls_options.enabled``; when unset, TLS is on exactly when
                                   all three ``MQTTSESSION_TLS_*`` paths above are set
``MQTTSESSION_USERNAME``           ``username``
``MQTTSESSION_PASSWORD``           ``password``
``MQTTSESSION_KEEP_ALIVE``         ``keep_alive`` (seconds, 0..65535)
``MQTTSESSION_PROTOCOL_VERSION``   ``protocol_version`` (4 or 5)
``MQTTSESSION_TRANSPORT``          ``transport``: ``tcp`` or ``websockets``
``MQTTSESSION_WS_PATH``            ``websocket_path`` (the HTTP path of the upgrade request)
``MQTTSESSION_WS_HEADERS``         ``websocket_headers``: a JSON object of header names to
                                   values, e.g. ``{"Authorization": "Bearer t0k3n"}``
=================================  =========================================================

An empty variable counts as unset. A bad value raises ``UsageError`` naming the variable.
An ``ssl.SSLContext`` (``TlsOptions(context=...)``) has no environment form: pass it as an
argument (``Options.from_env(tls_options=TlsOptions(context=ctx))``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import ssl
from collections.abc import Mapping
from types import MappingProxyType
from dataclasses import dataclass, field
from typing import Final

from .errors import UsageError
from .expiry import DEFAULT_INTERVAL

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_REQUEST_TIMEOUT",
    "ENV_ADDRESS",
    "ENV_KEEP_ALIVE",
    "ENV_PASSWORD",
    "ENV_PROTOCOL_VERSION",
    "ENV_REQUEST_TIMEOUT",
    "ENV_TLS_CERTS_PATH",
    "ENV_TLS_CLIENT_CERT",
    "ENV_TLS_CLIENT_KEY",
    "ENV_TLS_ENABLED",
    "ENV_TRANSPORT",
    "ENV_USERNAME",
    "ENV_WS_HEADERS",
    "ENV_WS_PATH",
    "TRANSPORTS",
    "Options",
    "TlsOptions",
    "format_address",
    "parse_address",
    "parse_addresses",
]

DEFAULT_ADDRESS: Final = "localhost:1883"
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
DEFAULT_SESSION_EXPIRY: Final = DEFAULT_INTERVAL  # the Client's default too
DEFAULT_INBOUND_QUEUE_SIZE: Final = 100

ENV_ADDRESS: Final = "MQTTSESSION_ADDRESS"
ENV_REQUEST_TIMEOUT: Final = "MQTTSESSION_REQUEST_TIMEOUT"
ENV_TLS_CERTS_PATH: Final = "MQTTSESSION_TLS_CERTS_PATH"
ENV_TLS_CLIENT_CERT: Final = "MQTTSESSION_TLS_CLIENT_CERT"
ENV_TLS_CLIENT_KEY: Final = "MQTTSESSION_TLS_CLIENT_KEY"
ENV_TLS_ENABLED: Final = "MQTTSESSION_TLS_ENABLED"
ENV_USERNAME: Final = "MQTTSESSION_USERNAME"
ENV_PASSWORD: Final = "MQTTSESSION_PASSWORD"
ENV_KEEP_ALIVE: Final = "MQTTSESSION_KEEP_ALIVE"
ENV_PROTOCOL_VERSION: Final = "MQTTSESSION_PROTOCOL_VERSION"
ENV_TRANSPORT: Final = "MQTTSESSION_TRANSPORT"
ENV_WS_PATH: Final = "MQTTSESSION_WS_PATH"
ENV_WS_HEADERS: Final = "MQTTSESSION_WS_HEADERS"

TRANSPORTS: Final = ("tcp", "websockets")  # paho's transports (MQTT over TCP, over WebSockets)
DEFAULT_WS_PATH: Final = "/mqtt"


class _Unset:
    """The "not given" marker of ``Options.from_env`` (None is a real value there)."""

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Final = _Unset()


def parse_address(address: str, *, tls: bool = False, source: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, or ``"host"``: port 1883, 8883 with TLS) -> (host, port)."""
    if not isinstance(address, str) or not address.strip():
        raise UsageError(f"{source} must be 'host:port', got {address!r}")
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"{source} must be 'host:port', got {address!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise UsageError(f"{source} has no port after ':': {address!r}")
    elif ":" not in text:
        host, port_text = text, ""
    else:
        raise UsageError(f"{source}: write an IPv6 address as '[addr]:port', got {address!r}")
    if not host:
        raise UsageError(f"{source} has no host: {address!r}")
    if not port_text:
        return host, 8883 if tls else 1883
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{source} has a bad port: {address!r}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"{source} port must be 1..65535, got {address!r}")
    return host, port


def same_server(recorded: str, peer: tuple[str, int] | None, resolve: bool = True) -> bool:
    """Whether ``recorded`` (``"host:port"``) names the server at ``peer`` (a connection's
    IP address and port): the same port, its host that address or (``resolve``: a name
    lookup, which may wait for DNS) resolving to it."""
    try:
        host, port = parse_address(recorded)
        if peer is None or port != peer[1]:
            return False
        flags = 0 if resolve else socket.AI_NUMERICHOST
        return any(a[4][0] == peer[0] for a in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=flags))
    except (OSError, UsageError, ValueError, UnicodeError):
        return False


def parse_addresses(text: str, *, tls: bool = False, source: str = "address"
                    ) -> list[tuple[str, int]]:
    """A comma-separated server list ``"host:port,host:port"`` -> [(host, port), ...], in order.

    Each entry as ``parse_address`` reads it (``[v6]:port``, a bare host takes the default
    port); an empty entry or list, or a bad one, raises ``UsageError`` naming the entry.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{source} must be 'host:port' or 'host:port,host:port', got {text!r}")
    entries = text.split(",")
    out: list[tuple[str, int]] = []
    for i, entry in enumerate(entries, 1):
        where = source if len(entries) == 1 else f"{source} (entry {i} of {len(entries)})"
        if not entry.strip():
            raise UsageError(f"{where} is empty: {text!r}")
        if len(entry.split()) > 1:
            raise UsageError(f"{where} has a space in it: separate servers with ',',"
                             f" got {entry.strip()!r}")
        out.append(parse_address(entry, tls=tls, source=where))
    return out


def format_address(host: str, port: int) -> str:
    """``(host, port)`` as ``"host:port"`` (``"[v6]:port"`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_timeout(value: object, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{source} must be a number of seconds > 0, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{source} must be finite, got {value!r}")
    return float(value)


def _check_int(value: object, source: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise UsageError(f"{source} must be an integer {lo}..{hi}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS settings; satisfies ``mqttsession.client.TlsSettings`` (``Client.tls_options``).

    ``ca_cert_path`` None means the system's trusted CAs; ``client_cert_path`` is for brokers that
    require a client certificate (its key in ``client_key_path``, or in the same file).
    ``context``: an ``ssl.SSLContext`` made by the application instead of the three paths (its
    CAs, client certificate, ciphers, ALPN...); it turns TLS on, and no path may be given with it.
    """

    enabled: bool = False
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    context: ssl.SSLContext | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.context is not None:
            if not isinstance(self.context, ssl.SSLContext):
                raise UsageError(
                    f"tls_options.context must be an ssl.SSLContext, got {type(self.context).__name__}")
            if self.ca_cert_path or self.client_cert_path or self.client_key_path:
                raise UsageError("tls_options: give an ssl.SSLContext or certificate paths, not"
                                 " both (load the files into the context)")
            object.__setattr__(self, "enabled", True)
        for name in ("ca_cert_path", "client_cert_path", "client_key_path"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise UsageError(f"tls_options.{name} must be a path, got {type(v).__name__}")
            if isinstance(v, os.PathLike):
                object.__setattr__(self, name, os.fspath(v))
        if self.client_key_path and not self.client_cert_path:
            raise UsageError("tls_options.client_key_path is set but client_cert_path is not")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsOptions:
        """From ``MQTTSESSION_TLS_*``: on when all three paths are set (or as TLS_ENABLED says)."""
        env = os.environ if environ is None else environ
        ca = env.get(ENV_TLS_CERTS_PATH) or None
        cert = env.get(ENV_TLS_CLIENT_CERT) or None
        key = env.get(ENV_TLS_CLIENT_KEY) or None
        flag = env.get(ENV_TLS_ENABLED) or None
        if flag is None:
            enabled = ca is not None and cert is not None and key is not None
        else:
            enabled = _env_bool(ENV_TLS_ENABLED, flag)
        try:
            return cls(enabled, ca, cert, key)
        except UsageError as exc:
            raise UsageError(f"{ENV_TLS_CLIENT_KEY} is set but {ENV_TLS_CLIENT_CERT} is not") from exc


def _env_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """Where and how to connect. Immutable; ``dataclasses.replace`` or ``with_`` derive others.

    ``session_expiry_interval`` (seconds) is sent with MQTT 5 persistent sessions so the broker
    keeps them between connections; MQTT 3.1.1 has no such field (the broker decides).
    ``inbound_queue_size``: how many received messages ``AsyncSession`` / ``Session`` hold
    for the application; when full, a ``Session``'s network thread waits for room, and an
    ``AsyncSession`` stops reading its socket until the application has taken half of them.
    ``transport``: ``"tcp"`` (the default) or ``"websockets"`` (MQTT over WebSockets, paho's
    transport; with TLS it is ``wss``), with ``websocket_path`` (default ``/mqtt``) and extra
    HTTP ``websocket_headers`` for the upgrade request.
    ``address`` may list several servers, ``"host:port,host:port"``: the session connects to
    the first that answers, in that order, and after a lost connection moves on to the next
    (the Client's ``FailoverServers``); ``host`` / ``port`` are the first one's.
    """

    address: str = DEFAULT_ADDRESS
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT
    tls_options: TlsOptions = field(default_factory=TlsOptions)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keep_alive: int = 60
    protocol_version: int = 4
    session_expiry_interval: int = DEFAULT_SESSION_EXPIRY
    inbound_queue_size: int = DEFAULT_INBOUND_QUEUE_SIZE
    transport: str = "tcp"
    websocket_path: str = DEFAULT_WS_PATH
    websocket_headers: Mapping[str, str] | None = field(default=None, repr=False)  # (tokens)

    def __post_init__(self) -> None:
        check_transport(self.transport, "transport")
        check_ws_path(self.websocket_path, "websocket_path")
        if self.websocket_headers is not None:
            object.__setattr__(self, "websocket_headers", MappingProxyType(
                check_ws_headers(self.websocket_headers, "websocket_headers")))
        if not isinstance(self.tls_options, TlsOptions):
            raise UsageError(
                f"tls_options must be a TlsOptions, got {type(self.tls_options).__name__}"
            )
        parse_addresses(self.address, tls=self.tls_options.enabled)
        object.__setattr__(
            self, "request_timeout_seconds",
            _check_timeout(self.request_timeout_seconds, "request_timeout_seconds"),
        )
        _check_int(self.keep_alive, "keep_alive", 0, 65535)
        if self.protocol_version not in (4, 5) or type(self.protocol_version) is not int:
            raise UsageError(
                f"protocol_version must be 4 (MQTT 3.1.1) or 5, got {self.protocol_version!r}"
            )
        _check_int(self.session_expiry_interval, "session_expiry_interval", 0, 0xFFFFFFFF)
        _check_int(self.inbound_queue_size, "inbound_queue_size", 1, 2**31)
        for name in ("username", "password"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise UsageError(f"{name} must be str or None, got {type(v).__name__}")
        if self.password is not None and self.username is None:
            raise UsageError("password is set but username is not")

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """Every server of ``address``, in order."""
        return tuple(parse_addresses(self.address, tls=self.tls_options.enabled))

    @property
    def host(self) -> str:
        return self.servers[0][0]

    @property
    def port(self) -> int:
        return self.servers[0][1]

    def with_(self, **changes: object) -> Options:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        address: str | _Unset = _UNSET,
        request_timeout_seconds: float | _Unset = _UNSET,
        tls_options: TlsOptions | _Unset = _UNSET,
        username: str | None | _Unset = _UNSET,
        password: str | None | _Unset = _UNSET,
        keep_alive: int | _Unset = _UNSET,
        protocol_version: int | _Unset = _UNSET,
        session_expiry_interval: int | _Unset = _UNSET,
        inbound_queue_size: int | _Unset = _UNSET,
        transport: str | _Unset = _UNSET,
        websocket_path: str | _Unset = _UNSET,
        websocket_headers: Mapping[str, str] | None | _Unset = _UNSET,
    ) -> Options:
        """Defaults, overlaid by ``MQTTSESSION_*`` variables, overlaid by the arguments given.

        ``environ`` replaces ``os.environ`` (for tests). Passing ``username=None`` explicitly
        ignores ``MQTTSESSION_USERNAME``; any argument given wins over its variable.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        if isinstance(address, _Unset):
            raw = get(ENV_ADDRESS)
            address = DEFAULT_ADDRESS if raw is None else raw.strip()
            if raw is not None:
                parse_addresses(address, source=ENV_ADDRESS)
        if isinstance(request_timeout_seconds, _Unset):
            raw = get(ENV_REQUEST_TIMEOUT)
            request_timeout_seconds = DEFAULT_REQUEST_TIMEOUT
            if raw is not None:
                try:
                    value = float(raw.strip())
                except ValueError:
                    raise UsageError(
                        f"{ENV_REQUEST_TIMEOUT} must be a number of seconds, got {raw!r}"
                    ) from None
                request_timeout_seconds = _check_timeout(value, ENV_REQUEST_TIMEOUT)
        if isinstance(tls_options, _Unset):
            tls_options = TlsOptions.from_env(env)
        if isinstance(username, _Unset):
            username = get(ENV_USERNAME)
        if isinstance(password, _Unset):
            password = get(ENV_PASSWORD)
            if password is not None and username is None:
                raise UsageError(f"{ENV_PASSWORD} is set but no username ({ENV_USERNAME})")
        if isinstance(keep_alive, _Unset):
            keep_alive = _env_int(get(ENV_KEEP_ALIVE), ENV_KEEP_ALIVE, 60, 0, 65535)
        if isinstance(protocol_version, _Unset):
            protocol_version = _env_int(get(ENV_PROTOCOL_VERSION), ENV_PROTOCOL_VERSION, 4, 4, 5)
        if isinstance(session_expiry_interval, _Unset):
            session_expiry_interval = DEFAULT_SESSION_EXPIRY
        if isinstance(inbound_queue_size, _Unset):
            inbound_queue_size = DEFAULT_INBOUND_QUEUE_SIZE
        if isinstance(transport, _Unset):
            raw = get(ENV_TRANSPORT)
            transport = "tcp" if raw is None else check_transport(raw.strip().lower(), ENV_TRANSPORT)
        if isinstance(websocket_path, _Unset):
            raw = get(ENV_WS_PATH)
            websocket_path = DEFAULT_WS_PATH if raw is None else check_ws_path(raw.strip(),
                                                                                ENV_WS_PATH)
        if isinstance(websocket_headers, _Unset):
            raw = get(ENV_WS_HEADERS)
            websocket_headers = None if raw is None else _env_headers(raw)
        return cls(
            address=address,
            request_timeout_seconds=request_timeout_seconds,
            tls_options=tls_options,
            username=username,
            password=password,
            keep_alive=keep_alive,
            protocol_version=protocol_version,
            session_expiry_interval=session_expiry_interval,
            inbound_queue_size=inbound_queue_size,
            transport=transport,
            websocket_path=websocket_path,
            websocket_headers=websocket_headers,
        )


def _env_int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UsageError(f"{name} must be an integer {lo}..{hi}, got {raw!r}") from None
    return _check_int(value, name, lo, hi)


def check_transport(value: object, source: str) -> str:
    """``"tcp"`` or ``"websockets"``; ``UsageError`` naming ``source`` otherwise."""
    if value not in TRANSPORTS:
        raise UsageError(f"{source} must be 'tcp' or 'websockets', got {value!r}")
    return str(value)


def check_ws_path(value: object, source: str) -> str:
    """A WebSocket request path: text starting with ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or any(
            c in value for c in " \r\n"):
        raise UsageError(f"{source} must be a path starting with '/', got {value!r}")
    return value


def check_ws_headers(value: object, source: str) -> dict[str, str]:
    """Extra HTTP headers for the WebSocket upgrade: a mapping of str to str (no line breaks)."""
    if not isinstance(value, Mapping):
        raise UsageError(f"{source} must be a mapping of header names to values,"
                         f" got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or any(
                c in k + v for c in "\r\n") or ":" in k:
            name = (k.split(":")[0].splitlines() or [""])[0] if isinstance(k, str) else k
            what = "its name must be text without ':' or line breaks" if name != k or not k \
                or not isinstance(k, str) else "its value (not shown: it may be a secret) must" \
                " be text without line breaks"
            raise UsageError(f"{source}: bad header {name if isinstance(k, str) else type(k)!r}:"
                             f" {what}")
        out[k] = v
    return out


def _env_headers(raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise UsageError(f"{ENV_WS_HEADERS} must be a JSON object of header names to values;"
                         f" its {len(raw)} characters are not JSON (not shown: they may hold a"
                         " secret)") from None
    return check_ws_headers(value, ENV_WS_HEADERS)
