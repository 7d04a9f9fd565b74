"""A failed connect in words that name the cause (``refusals``): a TLS client at a plain
listener and a plain client at a TLS one are told so (a defect hunt: before, raw
``Connection reset by peer`` and ``WRONG_VERSION_NUMBER``); a connect ended by ``close()``
says so."""

from __future__ import annotations

import ssl

from mqttsession.refusals import describe_connect_error, refusal_message


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
