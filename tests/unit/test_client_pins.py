"""Pins from a mutation hunt over ``mqttsession/client.py`` (the public ``Client``), no broker
needed: argument checks and the ``UsageError`` they raise, the property setters' ranges, what
``connect`` hands the driver, and the state checks of ``subscribe`` / ``restore_session``. Each
test failed with one mutant of ``client.py`` applied (named in its docstring)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, UsageError
from mqttsession.client import _connect_params


def _offline(cid: str = "pin", **kwargs: object) -> Client:
    return Client(client_id=cid, clean_session=False, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("call", [
    lambda c: c.subscribe(123, 1),  # type: ignore[arg-type]
    lambda c: c.unsubscribe(None),  # type: ignore[arg-type]
    lambda c: c.subscribe("t/#", 3),
    lambda c: c.publish_message("t", 1, b"bytes"),  # type: ignore[arg-type]
    lambda c: c.flush(True),
    lambda c: c.ack(True),
    lambda c: c.config(5),  # type: ignore[arg-type]
], ids=["subscribe-int", "unsubscribe-none", "subscribe-qos3", "message-bytes", "flush-bool",
        "ack-bool", "config-int"])
def test_arguments_of_the_wrong_kind_are_usage_errors(call: Callable[[Client], object]) -> None:
    """A filter that is no str, QoS 3 [MQTT-3.8.3-4], ``bytes`` as a text message, a bool
    for a timeout or a packet id, a setting that is no str: ``UsageError`` (mutants: each
    check dropped, or ``isinstance`` letting a bool through); nothing held after it."""
    with _offline() as c:
        with pytest.raises(UsageError):
            call(c)
        assert not c.outgoing_messages
        assert not c._engine.state.subscriptions


def test_flush_takes_a_zero_timeout() -> None:
    """``flush(0)``: a look, never an error (mutant: ``timeout >= 0`` -> ``timeout > 0``)."""
    with _offline() as c:
        assert c.flush(0) is True  # nothing held
        c.publish_data("t", 1, b"held")  # offline: it waits
        assert c.flush(0) is False
        assert c.flush(0.0) is False


def test_connect_refuses_port_65536_and_a_password_that_is_no_text() -> None:
    """Port 65536 and ``password=5``: ``UsageError`` before any socket (mutants: ``port <
    65536`` -> ``<=``; the password's type check dropped)."""
    with _offline() as c:
        with pytest.raises(UsageError, match="port must be an int 1-65535"):
            c.connect("127.0.0.1", 65536, timeout=1)
        c.username, c.password = "u", 5  # type: ignore[assignment]
        with pytest.raises(UsageError, match="password str or bytes"):
            c.connect("127.0.0.1", 1, timeout=1)
        assert not c.connected


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("name, value", [
    ("client_id", 5), ("client_id", b"id"), ("protocol_version", 3),
    ("keep_alive_interval", 65536), ("keep_alive_interval", True),
])
def test_property_setters_refuse_what_is_out_of_range(name: str, value: object) -> None:
    """client_id is str; protocol_version 4 or 5; keep-alive a 16-bit int of seconds (a
    two-byte field of CONNECT): ``UsageError``, the old value kept (mutants: ``<= 65536``,
    ``isinstance`` letting True in; client_id and protocol_version are checked again by the
    session state, so their checks here dropped change nothing seen)."""
    with _offline() as c:
        before = getattr(c, name)
        with pytest.raises(UsageError):
            setattr(c, name, value)
        assert getattr(c, name) == before


def test_keep_alive_zero_and_the_maximum_are_taken() -> None:
    """0 (keep-alive off) and 65535 are valid (mutant: ``0 < value``)."""
    with _offline() as c:
        c.keep_alive_interval = 0
        assert c.keep_alive_interval == 0 and _connect_params(c).keep_alive == 0
        c.keep_alive_interval = 65535
        assert c.keep_alive_interval == 65535


def test_empty_websocket_headers_read_back_as_given() -> None:
    """``websocket_headers = {}`` reads back ``{}``, not None (mutant: ``value is None`` ->
    ``not value``)."""
    with _offline() as c:
        c.websocket_headers = {}
        assert c.websocket_headers == {}
        c.websocket_headers = None
        assert c.websocket_headers is None


def test_protocol_version_5_may_be_set_again_while_properties_are_held() -> None:
    """Holding MQTT 5 messages with properties only refuses a switch to 4; setting 5 again
    is fine (mutant: ``value == 4 and`` dropped)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "text/plain"
    with _offline(protocol_version=5) as c:
        c.publish_data("t", 1, b"x", properties=props)
        c.protocol_version = 5
        assert c.protocol_version == 5
        with pytest.raises(UsageError, match="stays protocol_version=5"):
            c.protocol_version = 4


def test_a_gateway_session_may_be_set_persistent_again(tmp_path: Path) -> None:
    """A gateway's session refuses ``clean_session = True`` only; ``False`` is what it is
    already (mutant: ``value and`` dropped: False refused too)."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("pin-gw", clean_session=False)
        c.clean_session = False
        assert c.clean_session is False
        with pytest.raises(UsageError, match="persistent"):
            c.clean_session = True
        assert c.clean_session is False


# ------------------------------------------------------------------ connect parameters


@dataclass
class _DuckTls:
    """A ``TlsSettings`` of the application's own, switched off, that carries a context."""

    enabled: bool = False
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    context: ssl.SSLContext | None = None


def test_tls_settings_switched_off_give_plain_tcp_whatever_they_carry() -> None:
    """``tls_options`` with ``enabled`` False: no TLS, its context unused (mutant: the
    context taken whether enabled or not)."""
    with _offline(tls_options=_DuckTls(context=ssl.create_default_context())) as c:
        p = _connect_params(c)
        assert p.tls is False and p.tls_context is None and p.tls_ca is None


def test_the_clients_tls_context_wins_and_leaves_the_paths_unused() -> None:
    """``Client.tls_context`` is used before a context of ``tls_options``, and with a context
    no certificate path is passed on ("tls_options paths then unused") (mutants: the two
    contexts swapped; ``ctx is None`` dropped from ``paths``)."""
    mine, theirs = ssl.create_default_context(), ssl.create_default_context()
    with _offline(tls_options=_DuckTls(True, context=theirs), tls_context=mine) as c:
        p = _connect_params(c)
        assert p.tls and p.tls_context is mine
        c.tls_options = _DuckTls(True, "/ca.pem", "/c.pem", "/c.key")
        p = _connect_params(c)
        assert p.tls and p.tls_context is mine
        assert (p.tls_ca, p.tls_cert, p.tls_key) == (None, None, None)


def test_a_context_attribute_that_is_no_ssl_context_is_not_used() -> None:
    """Only an ``ssl.SSLContext`` found as ``tls_options.context`` is taken; anything else
    there leaves the certificate paths in use (mutant: ``_tls_context_of`` returned it as is)."""
    tls = _DuckTls(True, "/ca.pem", context="not a context")  # type: ignore[arg-type]
    with _offline(tls_options=tls) as c:
        p = _connect_params(c)
        assert p.tls and p.tls_context is None and p.tls_ca == "/ca.pem"


def test_websocket_headers_are_copied_for_the_connection() -> None:
    """The headers ``connect`` takes are a copy: changing the dict the property returns
    later does not change those of that connection's reconnects (mutant: no ``dict()``)."""
    with _offline(transport="websockets", websocket_headers={"X-A": "1"}) as c:
        p = _connect_params(c)
        headers = c.websocket_headers
        assert headers is not None
        headers["X-B"] = "2"  # type: ignore[index]
        assert p.ws_headers == {"X-A": "1"}


# ------------------------------------------------------------------ config


def test_config_names_may_have_spaces_around_them() -> None:
    """``config(" Retain = true ")``: the name is trimmed, like the value (mutant: no
    ``strip()`` of the name: an unknown setting)."""
    with _offline() as c:
        assert c.config(" Retain =true") == ""
        assert c.config(" retain ") == c.config("Retain")
        assert c.config("Retain").lower() in ("true", "1", "yes", "on")


def test_journal_max_bytes_applies_to_a_journal_already_open(tmp_path: Path) -> None:
    """``JournalMaxBytes`` set after the state file opened reaches its journal (mutant: only
    the file's setting changed, the open journal kept the old bound)."""
    with _offline() as c:
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.restore_session("")
        c.publish_data("t", 1, b"x")  # (the journal open)
        assert c._file.journal is not None
        c.config("JournalMaxBytes=65536")
        assert c._file.journal.max_journal_bytes == 65536


# ------------------------------------------------------------------ publishing


def test_retain_false_overrides_the_retain_setting_and_a_flag_is_a_bool() -> None:
    """``retain=False`` wins over ``config("Retain=true")``; ``retain=1`` is stored as True
    (mutants: ``retain is None`` -> ``not retain``; no ``bool()``)."""
    with _offline() as c:
        c.config("Retain=true")
        c.publish_data("t/a", 1, b"no", retain=False)
        c.publish_data("t/b", 1, b"yes", retain=None)
        c.publish_data("t/c", 1, b"one", retain=1)  # type: ignore[arg-type]
        flags = [(m.topic, m.retained) for m in c.outgoing_messages]
        assert flags == [("t/a", False), ("t/b", True), ("t/c", True)]
        assert all(type(m.retained) is bool for m in c.outgoing_messages)


# ------------------------------------------------------------------ state


def test_subscribe_first_opens_the_state_file(tmp_path: Path) -> None:
    """A ``subscribe`` before any publish opens the state file, so its directory is checked
    there and the subscription is on disk before ``close()``; a bad QoS is refused before
    (mutants: no ``file.open``; ``validate_qos`` dropped: the engine refused it, after the
    file was made)."""
    where = tmp_path / "missing"
    with _offline() as c:
        c.config(f"SessionStateFile={tmp_path / 's'}")
        with pytest.raises(UsageError, match="qos must be"):  # [MQTT-3.8.3-4]
            c.subscribe("t/#", 3)
        assert list(tmp_path.iterdir()) == []  # a refused subscribe opens nothing
    with _offline() as c:
        c.config(f"SessionStateFile={where / 's'}")
        with pytest.raises(UsageError, match="does not exist"):
            c.subscribe("t/#", 1)
    with _offline() as c:
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.subscribe("t/#", 1)
        assert (tmp_path / "s").exists() or list(tmp_path.glob("s.*"))


def test_restore_over_held_messages_is_refused_and_keeps_them(tmp_path: Path) -> None:
    """``restore_session`` while the client holds messages: ``UsageError`` and nothing changed:
    the held messages kept, and with a state file nothing read from it and left waiting as
    "unrestored" (mutant: ``check_restorable`` dropped: the engine refused it after the file
    was loaded, and close() then put the file aside as not restored)."""
    with _offline("other") as d:
        saved = d.save_session()
    with _offline() as c:
        c.publish_data("t", 1, b"held")
        with pytest.raises(UsageError, match="would replace"):
            c.restore_session(saved)
        assert [m.message for m in c.outgoing_messages] == [b"held"]
        assert c.client_id == "pin"
    with _offline() as c:
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.restore_session("")
        c.publish_data("t", 1, b"held")
        with pytest.raises(UsageError, match="would replace"):
            c.restore_session("")
        assert [m.message for m in c.outgoing_messages] == [b"held"]
        c.publish_data("t", 1, b"after")  # (the same file goes on)
    with _offline() as c:
        c.config(f"SessionStateFile={tmp_path / 's'}")
        c.restore_session("")
        assert [m.message for m in c.outgoing_messages] == [b"held", b"after"]
    assert not [p.name for p in tmp_path.iterdir() if "unrestored" in p.name]


def test_a_fork_child_cannot_connect_or_unsubscribe(tmp_path: Path) -> None:
    """In a child of fork() ``connect`` and ``unsubscribe`` (which do not check first in
    ``live``) are ``UsageError`` naming fork(), nothing of the parent's file written (mutant:
    ``_require_open`` without its fork check)."""
    c = _offline("pin-fork")
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.restore_session("")
    c.subscribe("t/#", 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without pytest
        code = 1
        try:
            for call in (lambda: c.unsubscribe("t/#"),
                         lambda: c.connect("127.0.0.1", 1, timeout=1)):
                try:
                    call()
                    os.write(write, b"returned\n")
                except Exception as exc:  # noqa: BLE001
                    os.write(write, f"{type(exc).__name__}: {exc}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        lines = f.read().splitlines()
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(lines) == 2 and all(s.startswith("UsageError") and "fork()" in s
                                   for s in lines), lines
    assert list(c._engine.state.subscriptions) == ["t/#"]
    c.close()
    d = _offline("pin-fork")
    d.config(f"SessionStateFile={tmp_path / 's'}")
    d.restore_session("")
    assert list(d._engine.state.subscriptions) == ["t/#"]
    d.close()


# ------------------------------------------------------------------ clocks and queue limits


class _Clock:
    """The wall and monotonic clocks ``client.py`` reads, set by the test."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_800_000_000.0, 5_000.0

    def time(self) -> float:
        return self.wall


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    import mqttsession.client as client_mod  # noqa: PLC0415

    clk = _Clock()
    monkeypatch.setattr(client_mod, "time", clk)
    monkeypatch.setattr(client_mod, "since_boot", lambda: clk.mono)
    return clk


def test_queue_stats_count_the_age_across_a_wall_clock_jump(clock: _Clock) -> None:
    """The oldest message's age follows the monotonic clock: a wall clock set a year ahead
    (NTP) adds nothing (mutant: ``queue_stats`` without ``since_boot()``: a year old)."""
    with _offline() as c:
        c.publish_data("t", 1, b"held")
        clock.wall += 365 * 86400.0
        clock.mono += 60.0
        age = c.queue_stats().oldest_age
        assert age is not None and abs(age - 60.0) < 1.0, age


@pytest.mark.parametrize("call", ["publish_data", "publish_many"])
def test_a_refused_publish_still_reports_the_expired_message_it_dropped(
        clock: _Clock, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """``QueueFullError`` after the search for room dropped an expired message: that drop is
    carried out and reported (``on_message_dropped``, "expired") before the error, on both
    store paths: ``publish_data``'s and ``publish_many``'s (``publishing.store_checked``)
    (mutant: either ``run_refused`` dropped: the drop never written, never reported)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    import mqttsession.publishing as publishing_mod  # noqa: PLC0415
    from mqttsession import PublishRequest, QueueFullError

    monkeypatch.setattr(publishing_mod, "time", clock)
    monkeypatch.setattr(publishing_mod, "since_boot", lambda: clock.mono)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 10
    dropped: list[tuple[str, str]] = []
    with _offline(protocol_version=5) as c:
        def publish(topic: str, data: bytes, properties: Any = None) -> None:
            if call == "publish_data":
                c.publish_data(topic, 1, data, properties=properties)
            else:
                c.publish_many([PublishRequest(topic, 1, data, properties=properties)])

        c.on_message_dropped = lambda e: dropped.append((e.topic, e.reason))
        c.config("MaxQueuedBytes=3000")
        publish("t/short", b"s", props)
        publish("t/big", b"b" * 2000)
        clock.wall += 20.0
        clock.mono += 20.0
        with pytest.raises(QueueFullError):
            publish("t/huge", b"h" * 2000)
        assert dropped == [("t/short", "expired")]
        assert [m.topic for m in c.outgoing_messages] == ["t/big"]


def test_unsubscribe_splits_at_the_topic_delimiter_too() -> None:
    """``TopicDelimiter=;``: ``unsubscribe("a;b/#")`` ends both filters ``subscribe`` took
    from the same string (mutant: ``unsubscribe`` split at the default ``,``)."""
    with _offline() as c:
        c.config("TopicDelimiter=;")
        c.subscribe("a;b/#", 1)
        assert sorted(c._engine.state.subscriptions) == ["a", "b/#"]
        c.unsubscribe("a;b/#")
        assert not c._engine.state.subscriptions


def test_a_space_is_a_topic_delimiter_as_given() -> None:
    """``config("TopicDelimiter= ")``: the value is handed to its setting as given (a space
    splits the list), never trimmed to nothing (mutant: ``setter(self, value.strip())``)."""
    with _offline() as c:
        assert c.config("TopicDelimiter= ") == ""
        assert c.config("TopicDelimiter") == " "
        c.subscribe("a b/#", 1)
        assert sorted(c._engine.state.subscriptions) == ["a", "b/#"]
