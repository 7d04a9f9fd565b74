"""Connection failures told: in words that name their cause (TLS, WebSockets, refusals), and
paho's log of a lost connection at INFO."""

from __future__ import annotations

import logging
import ssl
from typing import Any, Final

import paho.mqtt.client as mqtt

__all__ = ["PahoLog", "describe_connect_error", "refusal_message"]


def describe_connect_error(exc: BaseException) -> str:
    """A connect failure in words that name the cause."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)  # (not every SSLError has one)
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return f"TLS handshake refused: the broker wants a client certificate ({reason})"
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return f"TLS handshake refused: the broker does not trust our client certificate ({reason})"
        if "WRONG_VERSION_NUMBER" in reason or "UNEXPECTED_EOF" in reason:
            return f"TLS error: {reason} (the server does not speak TLS there: a plain listener?)"
        return f"TLS error: {reason}"
    if isinstance(exc, mqtt.WebsocketConnectionError):
        return (f"{exc} (not a WebSockets listener there, a TLS one (wss), or it refused the"
                " path or the headers)")
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no broker listening there?)"
    if isinstance(exc, ConnectionResetError):
        return (f"{exc.strerror or exc} while connecting (a TLS client on a plain listener? or"
                " the server refused us)")
    return str(exc) or type(exc).__name__


def refusal_message(where: str, rc: int, reason: str, tls_enabled: bool, client_cert: bool) -> str:
    """Why ``connect()`` failed after the TCP connection: rc -3 a session fault on CONNACK,
    -2 closed before CONNACK, -4 ended by ``close()``, else the broker's refusal code."""
    if rc == -4:
        return f"connect() to {where} ended by {reason}"
    if rc == -3:
        return f"connected to {where}, but {reason}"
    if rc == -2:
        if not tls_enabled:
            hint = ("not an MQTT broker there, a TLS listener (turn TLS on), it stopped, or it"
                    " refused something in the CONNECT (a will topic too deep or too long?)")
        elif not client_cert:
            hint = "a TLS listener that requires a client certificate does this"
        else:  # TLS 1.3: a refused client certificate shows only after the handshake
            hint = "a TLS listener that does not accept our client certificate does this"
        return f"{where} closed the connection before CONNACK ({reason}); {hint}"
    hint = " (wrong username or password?)" if rc in (4, 5, 0x86, 0x87) else ""
    return f"{where} refused the connection: {reason}{hint}"


_CONNECTION_LOSS: Final = ("failed to receive on socket", "timeout on socket")


class PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only in typeshed
    """paho's log (``mqttsession.paho``), with a lost connection at INFO: paho logs it at
    ERROR, but the session handles it (reconnects, resumes) and the driver says so."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and isinstance(msg, str) and msg.startswith(_CONNECTION_LOSS):
            level = logging.INFO
        if not self.isEnabledFor(level):
            return
        if args and isinstance(msg, str):  # (paho's "%s" of a broker's reason strings and
            try:  # properties: their newlines and escapes would forge log lines)
                msg, args = msg % args, ()
            except (TypeError, ValueError):
                pass
        if isinstance(msg, str) and not msg.isprintable():
            msg = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in msg)
        super().log(level, msg, *args, **kwargs)
