"""Server lists and MQTT 5 server redirection, without a network: parsing ``FailoverServers`` /
``Options.address`` lists (errors name the entry), Server References (MQTT 5 4.11), and the
rotation connect() and the automatic reconnect follow (round robin, bounded redirections)."""

from __future__ import annotations

import logging

import pytest

from mqttsession import Client, Options, UsageError
from mqttsession.engine import Engine, EngineSettings, Notify
from mqttsession.events import ConnectedEvent, ErrorEvent
from mqttsession.failover import (MAX_REDIRECTS, SERVER_MOVED, USE_ANOTHER_SERVER,
                                  ServerRotation, parse_server_reference)
from mqttsession.mesh import new_client
from mqttsession.options import format_address, parse_addresses


@pytest.mark.parametrize(("text", "tls", "expected"), [
    ("a:1", False, [("a", 1)]),
    ("a:1,b:2", False, [("a", 1), ("b", 2)]),
    (" a:1 , b:2 ,c", False, [("a", 1), ("b", 2), ("c", 1883)]),
    ("a,b", True, [("a", 8883), ("b", 8883)]),
    ("[::1]:1884,127.0.0.1:1885", False, [("::1", 1884), ("127.0.0.1", 1885)]),
    ("[fe80::1]", False, [("fe80::1", 1883)]),
])
def test_parse_addresses(text: str, tls: bool, expected: list[tuple[str, int]]) -> None:
    assert parse_addresses(text, tls=tls) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("a:1,", "FailoverServers (entry 2 of 2) is empty"),
    ("a:1,,b:2", "FailoverServers (entry 2 of 3) is empty"),
    ("a:1,b:x", "FailoverServers (entry 2 of 2) has a bad port: 'b:x'"),
    ("a:1,b:0", "FailoverServers (entry 2 of 2) port must be 1..65535"),
    ("::1:1883", "FailoverServers: write an IPv6 address as '[addr]:port'"),
    ("a:1,:5", "FailoverServers (entry 2 of 2) has no host"),
    ("  ", "FailoverServers must be 'host:port' or 'host:port,host:port'"),
    ("a:1 b:2", "FailoverServers has a space in it: separate servers with ','"),
])
def test_parse_addresses_errors_name_the_entry(text: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_addresses(text, source="FailoverServers")
    assert says in str(err.value)


def test_format_address() -> None:
    assert format_address("h", 1) == "h:1"
    assert format_address("::1", 1883) == "[::1]:1883"


def test_config_failover_servers() -> None:
    c = Client(client_id="fo")
    assert c.config("FailoverServers") == ""
    c.config("FailoverServers= a:1 , [::1]:2 ")
    assert c.config("FailoverServers") == "a:1,[::1]:2"
    with pytest.raises(UsageError, match=r"FailoverServers \(entry 2 of 2\) has a bad port"):
        c.config("FailoverServers=a:1,b:port")
    assert c.config("FailoverServers") == "a:1,[::1]:2"  # a refused value changes nothing
    c.config("FailoverServers=")
    assert c.config("FailoverServers") == ""
    assert c.config("FollowServerReference") == "False"
    c.config("FollowServerReference=true")
    assert c.config("FollowServerReference") == "True"
    with pytest.raises(UsageError, match="FollowServerReference must be True or False"):
        c.config("FollowServerReference=maybe")
    assert c.config("ConnectedServer") == ""
    with pytest.raises(UsageError, match="read-only"):
        c.config("ConnectedServer=a:1")
    c.close()


def test_options_address_list() -> None:
    o = Options(address="h1:1884, h2:1885")
    assert (o.host, o.port) == ("h1", 1884)
    assert o.servers == (("h1", 1884), ("h2", 1885))
    assert Options(address="h1,h2", tls_options=Options().tls_options).servers == (
        ("h1", 1883), ("h2", 1883))
    with pytest.raises(UsageError, match=r"address \(entry 2 of 2\) is empty"):
        Options(address="h1:1,")
    c = new_client(Options(address="h1:1884,[::1]:1885,h3"), "x", True)
    assert c.config("FailoverServers") == "[::1]:1885,h3:1883"
    c.close()
    c = new_client(Options(address="h1:1884"), "x", True)
    assert c.config("FailoverServers") == ""
    c.close()


def test_options_from_env_address_list() -> None:
    o = Options.from_env(environ={"MQTTSESSION_ADDRESS": "a:1,b:2"})
    assert o.servers == (("a", 1), ("b", 2))
    with pytest.raises(UsageError, match=r"MQTTSESSION_ADDRESS \(entry 2 of 2\) has a bad port"):
        Options.from_env(environ={"MQTTSESSION_ADDRESS": "a:1,b:x"})


@pytest.mark.parametrize(("ref", "tls", "expected"), [
    ("other:1884", False, ("other", 1884)),
    ("other", False, ("other", 1883)),
    ("other", True, ("other", 8883)),
    ("  a:1   b:2 ", False, ("a", 1)),  # a space-separated list: the first
    ("[fe80::1]:1883 x:1", False, ("fe80::1", 1883)),
    ("", False, None),
    ("a:b c:1", False, None),  # the first cannot be read: none
])
def test_parse_server_reference(ref: str, tls: bool, expected: tuple[str, int] | None) -> None:
    assert parse_server_reference(ref, tls=tls) == expected


def test_rotation_round_robin_and_duplicates() -> None:
    r = ServerRotation([("a", 1), ("b", 2), ("a", 1), ("c", 3)])
    assert r.servers == [("a", 1), ("b", 2), ("c", 3)]
    assert r.current == ("a", 1)
    assert [r.next() for _ in range(4)] == [("b", 2), ("c", 3), ("a", 1), ("b", 2)]
    assert r.current == ("b", 2)


def test_rotation_redirect_once_then_the_list() -> None:
    r = ServerRotation([("a", 1), ("b", 2)])
    assert r.redirect(USE_ANOTHER_SERVER, "x:9 y:8", "a:1") == ("x", 9)
    assert r.redirect_pending
    assert r.next() == ("x", 9)
    assert not r.redirect_pending
    assert r.next() == ("b", 2)  # the list goes on from where it was
    assert r.next() == ("a", 1)  # 0x9C Use another server: the list is unchanged


def test_rotation_server_moved_replaces_the_entry() -> None:
    r = ServerRotation([("a", 1), ("b", 2)])
    assert r.redirect(SERVER_MOVED, "x:9", "a:1") == ("x", 9)
    assert r.next() == ("x", 9)
    assert r.servers == [("x", 9), ("b", 2)]  # "permanently use another server"
    assert [r.next(), r.next()] == [("b", 2), ("x", 9)]


def test_rotation_redirects_bounded_until_accepted(caplog: pytest.LogCaptureFixture) -> None:
    r = ServerRotation([("a", 1)])
    caplog.set_level(logging.INFO, "mqttsession")
    for hop in range(MAX_REDIRECTS):
        assert r.redirect(USE_ANOTHER_SERVER, "a:1", "a:1") == ("a", 1), hop
        r.next()
    assert r.redirect(USE_ANOTHER_SERVER, "a:1", "a:1") is None
    assert not r.redirect_pending
    assert any(rec.levelno == logging.WARNING and "redirections were followed in a row"
               in rec.getMessage() for rec in caplog.records)
    assert sum("redirects to a:1" in rec.getMessage() and rec.levelno == logging.INFO
               for rec in caplog.records) == MAX_REDIRECTS
    r.accepted()
    assert r.redirect(USE_ANOTHER_SERVER, "a:1", "a:1") == ("a", 1)


def test_rotation_ignores_what_is_not_a_redirect(caplog: pytest.LogCaptureFixture) -> None:
    r = ServerRotation([("a", 1)])
    assert r.redirect(0x88, "x:1", "a:1") is None  # Server unavailable: no redirection
    assert r.redirect(USE_ANOTHER_SERVER, None, "a:1") is None
    assert r.redirect(SERVER_MOVED, "   ", "a:1") is None
    assert not r.redirect_pending and r.hops == 0
    assert "no Server Reference that names a server" in caplog.text


def test_engine_connack_names_the_server_and_a_followed_redirect_is_no_error() -> None:
    e = Engine(EngineSettings())
    e.connecting("fake:1")
    refused = e.connack(0x9C, "Use another server", False, 65535, None, 0.0)
    assert refused[0] == Notify("on_connected", ConnectedEvent(
        0x9C, "Use another server", False, "fake:1"))
    assert [type(a.event) for a in refused[1:] if isinstance(a, Notify)] == [ErrorEvent]
    followed = e.connack(0x9C, "Use another server", False, 65535, None, 0.0, "real:2")
    assert followed == [Notify("on_connected", ConnectedEvent(
        0x9C, "Use another server: redirected to real:2", False, "fake:1"))]
    e.connecting("real:2")
    accepted = [a for a in e.connack(0, "Success", False, 65535, None, 0.0)
                if isinstance(a, Notify)]
    assert accepted == [Notify("on_connected", ConnectedEvent(0, "Success", False, "real:2"))]


def test_connects_attempts_leave_out_a_server_a_redirection_went_to() -> None:
    """Before: a Server Reference target that is also in the list got a second CONNECT in the
    same ``connect()`` (README: each server once)."""
    r = ServerRotation([("a", 1), ("b", 2), ("c", 3)])
    got = []
    for server in r.attempts():
        got.append(server)
        if server == ("a", 1):
            r.redirect(USE_ANOTHER_SERVER, "c:3", "a:1")  # a refuses, naming c
    assert got == [("a", 1), ("c", 3), ("b", 2)]
