"""``Options`` / ``TlsOptions``: defaults, MQTTSESSION_* environment variables, precedence, and
errors that name their source. No network."""

from __future__ import annotations

import dataclasses
import ssl

import pytest

from mqttsession import Options, TlsOptions, UsageError
from mqttsession.client import TlsSettings
from mqttsession.options import parse_address

ENV_NAMES = [
    "MQTTSESSION_ADDRESS", "MQTTSESSION_REQUEST_TIMEOUT", "MQTTSESSION_TLS_CERTS_PATH",
    "MQTTSESSION_TLS_CLIENT_CERT", "MQTTSESSION_TLS_CLIENT_KEY", "MQTTSESSION_TLS_ENABLED",
    "MQTTSESSION_USERNAME", "MQTTSESSION_PASSWORD", "MQTTSESSION_KEEP_ALIVE",
    "MQTTSESSION_PROTOCOL_VERSION", "MQTTSESSION_TRANSPORT", "MQTTSESSION_WS_PATH",
    "MQTTSESSION_WS_HEADERS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    o = Options()
    assert o.address == "localhost:1883" and (o.host, o.port) == ("localhost", 1883)
    assert o.request_timeout_seconds == 30.0
    assert o.tls_options == TlsOptions() and not o.tls_options.enabled
    assert o.username is None and o.password is None
    assert o.keep_alive == 60 and o.protocol_version == 4
    assert Options.from_env() == o


def test_frozen_and_password_hidden() -> None:
    o = Options(username="u", password="secret")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.address = "x:1"  # type: ignore[misc]
    assert "secret" not in repr(o)
    assert o.with_(address="h:2").address == "h:2" and o.address == "localhost:1883"


def test_plain_constructor_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "broker.example:1999")
    assert Options().address == "localhost:1883"
    assert Options.from_env().address == "broker.example:1999"


def test_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "127.0.0.3:8883")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "2.5")
    monkeypatch.setenv("MQTTSESSION_TLS_CERTS_PATH", "/ca.pem")
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_CERT", "/client.pem")
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_KEY", "/client.key")
    monkeypatch.setenv("MQTTSESSION_USERNAME", "alice")
    monkeypatch.setenv("MQTTSESSION_PASSWORD", "pw")
    monkeypatch.setenv("MQTTSESSION_KEEP_ALIVE", "15")
    monkeypatch.setenv("MQTTSESSION_PROTOCOL_VERSION", "5")
    o = Options.from_env()
    assert (o.host, o.port) == ("127.0.0.3", 8883)
    assert o.request_timeout_seconds == 2.5
    assert o.tls_options == TlsOptions(True, "/ca.pem", "/client.pem", "/client.key")
    assert (o.username, o.password, o.keep_alive, o.protocol_version) == ("alice", "pw", 15, 5)


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "env-host:1")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "abc")  # never parsed: overridden
    monkeypatch.setenv("MQTTSESSION_USERNAME", "env-user")
    monkeypatch.setenv("MQTTSESSION_PASSWORD", "env-pw")
    tls = TlsOptions(True, "/mine.pem")
    o = Options.from_env(address="arg-host:2", request_timeout_seconds=1, tls_options=tls,
                         username=None, password=None)
    assert o.address == "arg-host:2" and o.request_timeout_seconds == 1.0
    assert o.tls_options is tls
    assert o.username is None and o.password is None  # an explicit None wins too


def test_environ_mapping_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "ignored:1")
    assert Options.from_env(environ={"MQTTSESSION_ADDRESS": "h:7"}).address == "h:7"


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "")
    assert Options.from_env() == Options()


@pytest.mark.parametrize(
    "present, enabled",
    [
        (("CERTS_PATH", "CLIENT_CERT", "CLIENT_KEY"), True),
        (("CERTS_PATH", "CLIENT_CERT"), False),
        (("CERTS_PATH",), False),
        ((), False),
    ],
)
def test_tls_turns_on_only_with_all_three(
    monkeypatch: pytest.MonkeyPatch, present: tuple[str, ...], enabled: bool
) -> None:
    for suffix in present:
        monkeypatch.setenv(f"MQTTSESSION_TLS_{suffix}", f"/{suffix.lower()}")
    tls = Options.from_env().tls_options
    assert tls.enabled is enabled
    if "CERTS_PATH" in present:
        assert tls.ca_cert_path == "/certs_path"  # each path is taken even when TLS stays off


def test_tls_enabled_variable_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_TLS_CERTS_PATH", "/ca.pem")
    monkeypatch.setenv("MQTTSESSION_TLS_ENABLED", "true")
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "broker")
    o = Options.from_env()
    assert o.tls_options == TlsOptions(True, "/ca.pem")
    assert (o.host, o.port) == ("broker", 8883)  # no port given: the TLS default
    monkeypatch.setenv("MQTTSESSION_TLS_ENABLED", "maybe")
    with pytest.raises(UsageError, match="MQTTSESSION_TLS_ENABLED"):
        Options.from_env()


@pytest.mark.parametrize(
    "name, value",
    [
        ("MQTTSESSION_REQUEST_TIMEOUT", "abc"),
        ("MQTTSESSION_REQUEST_TIMEOUT", "0"),
        ("MQTTSESSION_REQUEST_TIMEOUT", "-3"),
        ("MQTTSESSION_REQUEST_TIMEOUT", "inf"),
        ("MQTTSESSION_ADDRESS", "host:port"),
        ("MQTTSESSION_ADDRESS", "host:0"),
        ("MQTTSESSION_ADDRESS", ":1883"),
        ("MQTTSESSION_ADDRESS", "::1:1883"),
        ("MQTTSESSION_KEEP_ALIVE", "soon"),
        ("MQTTSESSION_KEEP_ALIVE", "70000"),
        ("MQTTSESSION_PROTOCOL_VERSION", "3"),
        ("MQTTSESSION_PASSWORD", "pw-without-user"),
        ("MQTTSESSION_TLS_CLIENT_KEY", "/key-without-cert"),
    ],
)
def test_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=name):
        Options.from_env()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"address": "nohost:"}, "address"),
        ({"address": ""}, "address"),
        ({"request_timeout_seconds": 0}, "request_timeout_seconds"),
        ({"request_timeout_seconds": "30"}, "request_timeout_seconds"),
        ({"keep_alive": -1}, "keep_alive"),
        ({"protocol_version": 3}, "protocol_version"),
        ({"session_expiry_interval": -1}, "session_expiry_interval"),
        ({"inbound_queue_size": 0}, "inbound_queue_size"),
        ({"password": "pw"}, "username"),
        ({"tls_options": "yes"}, "tls_options"),
    ],
)
def test_bad_argument_is_named(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(UsageError, match=word):
        Options(**kwargs)  # type: ignore[arg-type]


def test_tls_options_fit_the_client_protocol() -> None:
    tls: TlsSettings = TlsOptions(True, "/ca.pem", "/c.pem", "/c.key")
    assert tls.enabled and tls.client_key_path == "/c.key"
    with pytest.raises(UsageError, match="client_cert_path"):
        TlsOptions(True, client_key_path="/c.key")


@pytest.mark.parametrize(
    "address, tls, expected",
    [
        ("h:1", False, ("h", 1)),
        ("h", False, ("h", 1883)),
        ("h", True, ("h", 8883)),
        ("[::1]:1884", False, ("::1", 1884)),
        ("[::1]", True, ("::1", 8883)),
        (" 127.0.0.1:1883 ", False, ("127.0.0.1", 1883)),
    ],
)
def test_parse_address(address: str, tls: bool, expected: tuple[str, int]) -> None:
    assert parse_address(address, tls=tls) == expected


def test_inbound_queue_size() -> None:
    assert Options().inbound_queue_size == 100
    assert Options.from_env(environ={}, inbound_queue_size=5).inbound_queue_size == 5


def test_websockets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Options().transport == "tcp" and Options().websocket_path == "/mqtt"
    monkeypatch.setenv("MQTTSESSION_TRANSPORT", "WebSockets")
    monkeypatch.setenv("MQTTSESSION_WS_PATH", "/broker")
    monkeypatch.setenv("MQTTSESSION_WS_HEADERS", '{"Authorization": "Bearer x"}')
    o = Options.from_env()
    assert (o.transport, o.websocket_path) == ("websockets", "/broker")
    assert dict(o.websocket_headers or {}) == {"Authorization": "Bearer x"}
    assert Options.from_env(transport="tcp", websocket_headers=None).websocket_headers is None


@pytest.mark.parametrize("name,value", [
    ("MQTTSESSION_TRANSPORT", "quic"),
    ("MQTTSESSION_WS_PATH", "mqtt"),
    ("MQTTSESSION_WS_HEADERS", "Authorization: x"),
    ("MQTTSESSION_WS_HEADERS", '["a"]'),
    ("MQTTSESSION_WS_HEADERS", '{"X-A": 1}'),
    ("MQTTSESSION_WS_HEADERS", '{"X-A": "a\\r\\nX-B: b"}'),
])
def test_bad_transport_variable_is_named(monkeypatch: pytest.MonkeyPatch, name: str,
                                         value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=name):
        Options.from_env()


def test_websocket_header_values_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WebSocket header often holds a token (``Authorization``): it was in ``repr(Options)``
    and in the ``UsageError`` of a bad header (a token read from a file with its newline), and
    a bad ``MQTTSESSION_WS_HEADERS`` was echoed whole (a security hunt)."""
    from mqttsession import Client

    secret = "Bearer s3cr3t-t0k3n"
    o = Options(transport="websockets", websocket_headers={"Authorization": secret},
                username="u", password="pw-s3cr3t")
    assert secret not in repr(o) and "pw-s3cr3t" not in repr(o)
    for make in (lambda: Options(websocket_headers={"Authorization": secret + "\n"}),
                 lambda: Options(websocket_headers={"Authorization: " + secret: ""}),  # (curl's)
                 lambda: Client(transport="websockets",
                                websocket_headers={"Authorization": secret + "\n"})):
        with pytest.raises(UsageError, match="'Authorization'") as raised:
            make()
        assert "s3cr3t" not in str(raised.value)
    monkeypatch.setenv("MQTTSESSION_WS_HEADERS", '{"Authorization": "' + secret + '"')  # (no })
    with pytest.raises(UsageError, match="MQTTSESSION_WS_HEADERS") as raised:
        Options.from_env()
    assert "s3cr3t" not in str(raised.value)


def test_websocket_headers_are_a_read_only_copy() -> None:
    given = {"X-A": "1"}
    o = Options(transport="websockets", websocket_headers=given)
    given["X-A"] = "2"
    assert o.websocket_headers is not None and o.websocket_headers["X-A"] == "1"
    with pytest.raises(TypeError):
        o.websocket_headers["X-A"] = "3"  # type: ignore[index]


def test_tls_context() -> None:
    ctx = ssl.create_default_context()
    t = TlsOptions(context=ctx)
    assert t.enabled and t.context is ctx
    assert Options(address="broker", tls_options=t).port == 8883
    with pytest.raises(UsageError, match="not both"):
        TlsOptions(True, "ca.pem", context=ctx)
    with pytest.raises(UsageError, match="SSLContext"):
        TlsOptions(context="ca.pem")  # type: ignore[arg-type]


def test_client_transport_settings_are_checked() -> None:
    from mqttsession import Client
    with pytest.raises(UsageError, match="transport"):
        Client(transport="quic")
    with pytest.raises(UsageError, match="websocket_path"):
        Client(transport="websockets", websocket_path="mqtt")
    with pytest.raises(UsageError, match="tls_context"):
        Client(tls_context="ca.pem")  # type: ignore[arg-type]
    c = Client(transport="websockets", websocket_headers={"X-A": "1"})
    assert (c.transport, c.websocket_path, c.websocket_headers) == ("websockets", "/mqtt", {"X-A": "1"})


# --------------------------------------------------------------------------- mutation-hunt pins


@pytest.mark.parametrize(("address", "expected"), [
    ("h:1", ("h", 1)), ("h:65535", ("h", 65535)), ("[::1]:65535", ("::1", 65535)),
])
def test_port_bounds_are_inclusive(address: str, expected: tuple[str, int]) -> None:
    """Ports 1 and 65535 are both valid."""
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["[::1]x", "[::1]1883", "[::1]x:1"])
def test_text_after_an_ipv6_bracket_must_be_a_port(address: str) -> None:
    """After ``]`` comes nothing or ``:port``; anything else is refused, never the default port."""
    with pytest.raises(UsageError, match="host:port"):
        parse_address(address)


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"request_timeout_seconds": True}, "request_timeout_seconds"),
    ({"keep_alive": True}, "keep_alive"),
    ({"keep_alive": False}, "keep_alive"),
    ({"inbound_queue_size": True}, "inbound_queue_size"),
    ({"protocol_version": 4.0}, "protocol_version"),
    ({"protocol_version": 5.0}, "protocol_version"),
    ({"session_expiry_interval": 0x100000000}, "session_expiry_interval"),
    ({"websocket_path": "/a b"}, "websocket_path"),
    ({"websocket_path": "/a\nb"}, "websocket_path"),
])
def test_arguments_of_the_wrong_type_or_shape_are_refused(kwargs: dict[str, object],
                                                          word: str) -> None:
    """Booleans are not numbers, 4.0 is not protocol 4, a path has no spaces or line breaks."""
    with pytest.raises(UsageError, match=word):
        Options(**kwargs)  # type: ignore[arg-type]


def test_range_ends_of_the_integer_arguments_are_accepted() -> None:
    o = Options(keep_alive=0, session_expiry_interval=0xFFFFFFFF, inbound_queue_size=1)
    assert (o.keep_alive, o.session_expiry_interval, o.inbound_queue_size) == (0, 0xFFFFFFFF, 1)
    assert Options(keep_alive=65535, session_expiry_interval=0).keep_alive == 65535


@pytest.mark.parametrize("value", ["0", "65535"])
def test_keep_alive_variable_range_ends_are_accepted(monkeypatch: pytest.MonkeyPatch,
                                                     value: str) -> None:
    monkeypatch.setenv("MQTTSESSION_KEEP_ALIVE", value)
    assert Options.from_env().keep_alive == int(value)


def test_context_with_a_key_path_is_refused_as_both() -> None:
    """A context and any certificate path (the key's too) is the "not both" error."""
    with pytest.raises(UsageError, match="not both"):
        TlsOptions(context=ssl.create_default_context(), client_key_path="k.pem")


def test_path_like_tls_paths_become_str() -> None:
    import pathlib
    t = TlsOptions(True, pathlib.Path("/ca.pem"), pathlib.Path("/c.pem"), pathlib.Path("/k.pem"))
    assert (t.ca_cert_path, t.client_cert_path, t.client_key_path) == ("/ca.pem", "/c.pem", "/k.pem")
    assert all(type(p) is str for p in (t.ca_cert_path, t.client_cert_path, t.client_key_path))


@pytest.mark.parametrize(("flag", "enabled"), [
    ("1", True), ("true", True), ("yes", True), ("on", True), (" On ", True), ("TRUE", True),
    ("0", False), ("false", False), ("no", False), ("off", False), (" Off ", False),
])
def test_every_tls_enabled_word(monkeypatch: pytest.MonkeyPatch, flag: str, enabled: bool) -> None:
    """MQTTSESSION_TLS_ENABLED takes 1/true/yes/on and 0/false/no/off, any case, spaces
    around; it wins over the three-paths rule either way."""
    for suffix in ("CERTS_PATH", "CLIENT_CERT", "CLIENT_KEY"):
        monkeypatch.setenv(f"MQTTSESSION_TLS_{suffix}", f"/{suffix.lower()}")
    monkeypatch.setenv("MQTTSESSION_TLS_ENABLED", flag)
    assert Options.from_env().tls_options.enabled is enabled


def test_empty_tls_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty TLS_ENABLED is unset (the three-paths rule decides); an empty path is no path."""
    monkeypatch.setenv("MQTTSESSION_TLS_ENABLED", "")
    monkeypatch.setenv("MQTTSESSION_TLS_CERTS_PATH", "")
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_CERT", "/c.pem")
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_KEY", "/k.pem")
    assert Options.from_env().tls_options == TlsOptions(False, None, "/c.pem", "/k.pem")


def test_a_client_cert_without_key_variable_keeps_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTTSESSION_TLS_CLIENT_CERT", "/c.pem")
    assert Options.from_env().tls_options == TlsOptions(False, None, "/c.pem", None)


def test_variables_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces around MQTTSESSION_ADDRESS / WS_PATH values are dropped, not kept in the value."""
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "  h:7 ")
    monkeypatch.setenv("MQTTSESSION_WS_PATH", " /ws ")
    o = Options.from_env()
    assert o.address == "h:7" and o.websocket_path == "/ws"


def test_same_server_needs_the_same_port() -> None:
    """A recorded ``host:port`` names a peer only with its port too (numeric: no lookup)."""
    from mqttsession.options import same_server
    assert same_server("127.0.0.1:1883", ("127.0.0.1", 1883), resolve=False)
    assert not same_server("127.0.0.1:1883", ("127.0.0.1", 1884), resolve=False)
    assert not same_server("127.0.0.1:1883", ("127.0.0.2", 1883), resolve=False)
    assert not same_server("127.0.0.1:1883", None, resolve=False)
