"""A failed connect in words that name the cause (``refusals``): a TLS client at a plain
listener and a plain client at a TLS one are told so (a defect hunt: before, raw
``Connection reset by peer`` and ``WRONG_VERSION_NUMBER``); a connect ended by ``close()``
says so."""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
import pytest

from mqttsession.refusals import PahoLog, describe_connect_error, refusal_message


def test_a_tls_client_at_a_plain_listener() -> None:
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
    assert "does not speak TLS there" in describe_connect_error(wrong)
    reset = describe_connect_error(ConnectionResetError(104, "Connection reset by peer"))
    assert reset.startswith("Connection reset by peer") and "TLS client on a plain" in reset


def test_a_plain_client_at_a_tls_listener() -> None:
    text = refusal_message("h:8883", -2, "paho: Unspecified error", False, False)
    assert "a TLS listener (turn TLS on)" in text


def test_a_connect_ended_by_close() -> None:
    assert refusal_message("h:1883", -4, "close()", False, False) == \
        "connect() to h:1883 ended by close()"


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1000)")
    exc.reason = reason  # (as the ssl module sets it on a handshake's)
    return exc


@pytest.mark.parametrize("reason", ["CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"])
def test_a_broker_wanting_a_client_certificate_is_named(reason: str) -> None:
    """Both alerts of a TLS listener that requires a client certificate say so."""
    text = describe_connect_error(_ssl_error(reason))
    assert text == f"TLS handshake refused: the broker wants a client certificate ({reason})"


@pytest.mark.parametrize("reason", ["TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"])
def test_a_client_certificate_the_broker_does_not_trust_is_named(reason: str) -> None:
    """Both alerts of a refused client certificate say the broker does not trust it."""
    text = describe_connect_error(_ssl_error(reason))
    assert text == ("TLS handshake refused: the broker does not trust our client certificate"
                    f" ({reason})")


def test_an_unexpected_eof_in_the_handshake_suggests_a_plain_listener() -> None:
    """UNEXPECTED_EOF_WHILE_READING (as WRONG_VERSION_NUMBER): a server not speaking TLS."""
    text = describe_connect_error(_ssl_error("UNEXPECTED_EOF_WHILE_READING"))
    assert "does not speak TLS there" in text


def test_an_ssl_errors_reason_is_told_not_its_whole_text() -> None:
    """An SSLError with a ``reason`` is told by it; without one, by its text."""
    assert describe_connect_error(_ssl_error("NO_CIPHERS_AVAILABLE")) == \
        "TLS error: NO_CIPHERS_AVAILABLE"
    assert describe_connect_error(ssl.SSLError(1, "odd")) == "TLS error: odd"


def test_a_certificate_verification_failure_names_its_reason() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    assert describe_connect_error(exc) == \
        "the broker's TLS certificate was not accepted (self-signed certificate)"


def test_a_websocket_handshake_failure_suggests_its_causes() -> None:
    """paho's WebsocketConnectionError: not a WebSockets listener, wss, or path/headers."""
    text = describe_connect_error(mqtt.WebsocketConnectionError("WebSocket handshake error"))
    assert text.startswith("WebSocket handshake error (not a WebSockets listener there")


def test_a_refused_tcp_connect_says_no_broker_listens() -> None:
    text = describe_connect_error(ConnectionRefusedError(111, "Connection refused"))
    assert text == "connection refused (no broker listening there?)"


def test_an_error_without_text_is_named_by_its_type() -> None:
    """An exception whose text is empty is told by its type name (never an empty cause)."""
    assert describe_connect_error(TimeoutError()) == "TimeoutError"
    assert describe_connect_error(OSError("boom")) == "boom"


def test_a_session_fault_on_connack_is_told_as_connected() -> None:
    """rc -3: the broker accepted; the session failed on its CONNACK."""
    assert refusal_message("h:1883", -3, "the state file failed", False, False) == \
        "connected to h:1883, but the state file failed"


def test_closed_before_connack_hints_by_tls_and_client_certificate() -> None:
    """rc -2 under TLS: no client certificate -> one is required; with one -> not accepted."""
    without = refusal_message("h:8883", -2, "lost", True, False)
    assert without.endswith("a TLS listener that requires a client certificate does this")
    given = refusal_message("h:8883", -2, "lost", True, True)
    assert given.endswith("a TLS listener that does not accept our client certificate does this")


@pytest.mark.parametrize("rc", [4, 5, 0x86, 0x87])
def test_bad_credentials_refusals_hint_at_them(rc: int) -> None:
    """3.1.1 return codes 4, 5 and MQTT 5 reason codes 0x86, 0x87 suggest the credentials."""
    assert refusal_message("h:1883", rc, "Not authorized", False, False) == \
        "h:1883 refused the connection: Not authorized (wrong username or password?)"


@pytest.mark.parametrize("rc", [1, 2, 3, 0x80, 0x88])
def test_other_refusals_have_no_credentials_hint(rc: int) -> None:
    assert refusal_message("h:1883", rc, "No", False, False) == "h:1883 refused the connection: No"


@pytest.mark.parametrize("msg", ["failed to receive on socket: [Errno 104] reset",
                                 "timeout on socket: [Errno 110] timed out"])
def test_paho_lost_connection_lines_are_logged_at_info(
        msg: str, caplog: pytest.LogCaptureFixture) -> None:
    """paho's ERROR for a lost connection is INFO (the session handles it); others keep theirs."""
    adapter = PahoLog(logging.getLogger("mqttsession.paho"), {})
    with caplog.at_level(logging.DEBUG, logger="mqttsession.paho"):
        adapter.log(logging.ERROR, msg)
        adapter.log(logging.ERROR, "something else broke")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == \
        [(logging.INFO, msg), (logging.ERROR, "something else broke")]
