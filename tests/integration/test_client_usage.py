"""The public contract's edges (API.md): bad input, the state file, the context manager.

* ``restore_session`` with junk raises ``StateError`` and leaves the client as it was
  (outgoing_messages, client_id, clean_session, subscriptions);
* an empty client_id with clean_session False: connect() raises an ``MQTTSessionError`` subclass
  and nothing reaches the broker [MQTT-3.1.3-7]; with clean_session True an id is generated;
* QoS 3 and topics with wildcards [MQTT-3.3.2-2] raise ``MQTTSessionError`` subclasses and send
  nothing; an unknown config name raises;
* ``config("SessionStateFile=...")`` then ``save_session()`` writes a mode 0600 file holding
  exactly the returned text; ``restore_session("ignored")`` reads the file; a missing file is an
  empty session;
* ``with Client(...) as c`` disconnects cleanly on exit: a DISCONNECT on the wire and
  ``on_disconnected`` with status_code 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import MQTTSessionError, StateError, load_state

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

unique = _procs.unique


def _signed(state: dict[str, Any]) -> str:
    """A state text with a VALID checksum around ``state`` (to reach the semantic checks)."""
    body = json.dumps(state, separators=(",", ":"))
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f'{{"format":"mqttsession","version":3,"sha256":"{digest}","state":{body}}}'


def _saved_with_message(client_id: str) -> str:
    c = mqttsession.Client(client_id=client_id, clean_session=False)
    c.publish_message("mqs/usage", 1, "held")
    return c.save_session()


def _snapshot(c: mqttsession.Client) -> tuple[Any, ...]:
    return (c.client_id, c.clean_session, c.protocol_version, c.outgoing_messages,
            c.incoming_messages, c.connected, c.config("SessionPresent"),
            dict(load_state(c.save_session()).subscriptions))


def _junk(own_id: str) -> dict[str, str]:
    valid = _saved_with_message(own_id)
    doc = json.loads(valid)
    state = doc["state"]
    bad_phase = json.loads(json.dumps(state))
    bad_phase["outgoing"][0][7] = "await_pubcomp"  # QoS 1 has no such phase
    bad_qos = json.loads(json.dumps(state))
    bad_qos["outgoing"][0][4] = 3  # an outgoing message is an array (codec.OUTGOING_ROW)
    return {
        "empty": "",
        "blank": "   \n",
        "not json": "junk",
        "json null": "null",
        "json list": "[]",
        "empty object": "{}",
        "no state": '{"format":"mqttsession","version":1}',
        "other format": valid.replace('"format":"mqttsession"', '"format":"something"', 1),
        "newer version": valid.replace('"version":3', '"version":4', 1),
        "truncated": valid[: len(valid) // 2],
        "tampered": valid.replace('"mqs/usage"', '"mqs/usagf"', 1),
        "bad phase": _signed(bad_phase),
        "bad qos": _signed(bad_qos),
        "other client": _saved_with_message(unique("other")),
    }


def test_restore_junk_raises_state_error_and_changes_nothing() -> None:
    own = unique("junk")
    c = mqttsession.Client(client_id=own, clean_session=True, protocol_version=5)
    c.subscribe("mqs/usage/#", 1)  # works while disconnected; part of the state
    before = _snapshot(c)
    assert before[1] is True
    for name, junk in _junk(own).items():
        with pytest.raises(StateError):
            c.restore_session(junk)
        assert _snapshot(c) == before, f"restore_session({name}) changed the client"
    # and the client is still usable: its own good state restores
    good = _saved_with_message(own)
    c.restore_session(good)
    assert c.clean_session is False
    assert [m.message for m in c.outgoing_messages] == [b"held"]


def test_restore_junk_on_a_client_holding_messages_changes_nothing() -> None:
    """restore_session on a client that already holds messages is refused (this project raises
    UsageError for that before it reads the input; for junk input either refusal is fine), and
    the held messages stay."""
    own = unique("junk")
    c = mqttsession.Client(client_id=own, clean_session=False)
    ids = [c.publish_message("mqs/usage", q, f"m{q}") for q in (1, 2)]
    before = _snapshot(c)
    for junk in ("junk", "", _saved_with_message(unique("other"))):
        with pytest.raises(MQTTSessionError):
            c.restore_session(junk)
        assert _snapshot(c) == before
    assert [m.packet_id for m in c.outgoing_messages] == ids


def test_empty_client_id_with_persistent_session_refuses_to_connect(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    c = mqttsession.Client(client_id="", clean_session=False)
    with pytest.raises(MQTTSessionError):
        c.connect(proxy.host, proxy.port, timeout=5)
    assert not c.connected
    assert proxy.accepted == 0  # [MQTT-3.1.3-7] refused before anything is sent
    # the failed connect left nothing half open: with an id it connects
    c.client_id = unique("gw")
    try:
        c.connect(proxy.host, proxy.port, timeout=5)
        assert c.connected
    finally:
        c.close()

    # clean_session True: an id is generated (IPWorks) and used
    g = mqttsession.Client(client_id="", clean_session=True)
    try:
        g.connect(proxy.host, proxy.port, timeout=5)
        assert g.client_id
        assert proxy.packets("c2s", "CONNECT")[-1].client_id == g.client_id
    finally:
        g.close()


def test_bad_qos_and_wildcard_topics_raise_and_send_nothing(
    mosquitto: Any, mqtt_proxy_factory: Any
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    c = mqttsession.Client(client_id=unique("gw"))
    log = _procs.EventLog(c)
    try:
        c.connect(proxy.host, proxy.port)
        for qos in (3, -1, True, 1.0, "1"):
            with pytest.raises(MQTTSessionError):
                c.publish_message("mqs/usage", qos, "x")  # type: ignore[arg-type]
            with pytest.raises(MQTTSessionError):
                c.publish_data("mqs/usage", qos, b"x")  # type: ignore[arg-type]
            with pytest.raises(MQTTSessionError):
                c.subscribe("mqs/usage", qos)  # type: ignore[arg-type]
        for topic in ("mqs/+/x", "mqs/#", "#", "+", "mqs/a+", "", "mqs/\x00"):
            for qos in (0, 1, 2):
                with pytest.raises(MQTTSessionError):
                    c.publish_message(topic, qos, "x")
        for bad_filter in ("mqs/a#", "mqs/#/x", "mqs/a+/b", ""):
            with pytest.raises(MQTTSessionError):
                c.subscribe(bad_filter, 1)
        assert c.outgoing_messages == ()
        assert dict(load_state(c.save_session()).subscriptions) == {}
        # a good one after all the refusals goes through: the connection is fine
        c.publish_message("mqs/usage/ok", 1, "ok")
        assert c.flush(_procs.TIMEOUT)
        c.disconnect()
    finally:
        c.close()
    assert [r.topic for r in proxy.packets("c2s", "PUBLISH")] == ["mqs/usage/ok"]
    assert proxy.packets("c2s", "SUBSCRIBE") == []
    assert [e for e in log.of("on_message_out")][0].topic == "mqs/usage/ok"


def test_config_names_and_values() -> None:
    c = mqttsession.Client(client_id=unique("cfg"))
    for setting in ("NoSuchSetting", "NoSuchSetting=1", "", "=1"):
        with pytest.raises(MQTTSessionError):
            c.config(setting)
    with pytest.raises(MQTTSessionError):
        c.config("SessionPresent=True")  # read-only
    assert c.config("SessionPresent") == "False"
    assert c.config("sessionpresent") == "False"  # IPWorks names are case-insensitive
    for bad in ("-1", "4294967296", "abc"):
        with pytest.raises(MQTTSessionError):
            c.config(f"SessionExpInterval={bad}")
    assert c.config("SessionExpInterval=4294967295") == ""
    assert c.config("SessionExpInterval") == "4294967295"
    with pytest.raises(MQTTSessionError):
        c.config("ProtocolVersion=3")
    assert c.config("ProtocolVersion=5") == "" and c.protocol_version == 5
    with pytest.raises(MQTTSessionError):
        c.config("SessionSync=sometimes")
    assert c.config("SessionSync") == "always"  # the documented default


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_file_holds_exactly_the_saved_text(tmp_path: Path) -> None:
    path = tmp_path / "gw.state"
    client_id = unique("sf")
    c = mqttsession.Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={path}")
    assert c.config("SessionStateFile") == str(path)
    ids = [c.publish_message("mqs/usage", q, f"m{q}") for q in (1, 2)]
    text = c.save_session()
    assert path.read_text(encoding="utf-8") == text
    assert _mode(path) == 0o600
    held = c.outgoing_messages
    c.close()

    # restore_session reads the file and ignores its argument
    r = mqttsession.Client(client_id=client_id)
    r.config(f"SessionStateFile={path}")
    try:
        r.restore_session("ignored: this is not state text at all")
        assert r.clean_session is False
        assert r.outgoing_messages == held
        assert [m.packet_id for m in r.outgoing_messages] == ids
    finally:
        r.close()


def test_missing_state_file_is_an_empty_session(tmp_path: Path) -> None:
    path = tmp_path / "never-written.state"
    c = mqttsession.Client(client_id=unique("sf"))
    c.config(f"SessionStateFile={path}")
    try:
        c.restore_session("ignored")
        assert c.outgoing_messages == () and c.incoming_messages == ()
        assert c.clean_session is False
    finally:
        c.close()


def test_state_file_while_connected_and_context_manager(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path
) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    path = tmp_path / "connected.state"
    client_id = unique("ctx")
    with mqttsession.Client(client_id=client_id, clean_session=False) as c:
        log = _procs.EventLog(c)
        c.config(f"SessionStateFile={path}")
        c.connect(proxy.host, proxy.port)
        c.subscribe("mqs/ctx", 1)
        log.wait("on_subscribed")
        c.publish_message("mqs/ctx/out", 2, "x")
        assert c.flush(_procs.TIMEOUT)
        text = c.save_session()
        assert path.read_text(encoding="utf-8") == text
        assert _mode(path) == 0o600
        assert dict(load_state(text).subscriptions) == {"mqs/ctx": 1}
        assert c.connected
    assert not c.connected
    # a clean close: DISCONNECT on the wire, on_disconnected once with status 0
    proxy.wait_for("c2s", "DISCONNECT")
    disconnected = log.of("on_disconnected")
    assert [e.status_code for e in disconnected] == [0]
    # on exit the session was saved to the file (with the disconnect time) and the file released
    view = load_state(path.read_text(encoding="utf-8"))
    assert view.disconnected_at is not None and dict(view.subscriptions) == {"mqs/ctx": 1}
    again = mqttsession.Client(client_id=client_id)
    again.config(f"SessionStateFile={path}")
    try:
        again.restore_session("ignored")  # would raise StateLockedError if still owned
        assert again.clean_session is False
    finally:
        again.close()


def test_plain_disconnect_reports_status_0(mosquitto: Any) -> None:
    c = mqttsession.Client(client_id=unique("gw"), protocol_version=5)
    log = _procs.EventLog(c)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        c.disconnect()
        assert not c.connected
        assert [(e.status_code, e.description) for e in log.of("on_disconnected")][0][0] == 0
        assert len(log.of("on_disconnected")) == 1
    finally:
        c.close()


def test_connect_while_a_disconnect_is_under_way_says_so() -> None:
    """``connect()`` in ``on_disconnected`` during ``disconnect()`` (the network thread is
    being stopped): it said "already connected; call disconnect() first" to a client that was
    not connected and had just called ``disconnect()``."""
    from mqttsession.testing.fake_broker import FakeBroker

    fake = FakeBroker()
    said: list[str] = []
    c = mqttsession.Client(client_id="under-way", clean_session=True)

    def again(_e: Any) -> None:
        try:
            c.connect(fake.host, fake.port, 5)
        except mqttsession.UsageError as exc:
            said.append(str(exc))

    try:
        c.connect(fake.host, fake.port, 5)
        c.on_disconnected = again
        c.disconnect()
        assert len(said) == 1 and "already connected" not in said[0], said
        assert "under way" in said[0]
    finally:
        c.close()
        fake.stop()


def test_connect_after_a_lost_link_without_auto_reconnect_says_so(mosquitto: Any) -> None:
    """``AutoReconnect=False``, the link cut: ``connect()`` names the lost link and the way out
    (before: "a connect, reconnect ... is under way", though nothing was); after
    ``disconnect()`` the connect works and the session is the same."""
    from mqttsession.testing.proxy import MQTTProxy

    c = mqttsession.Client(client_id=unique("cut"), clean_session=False)
    c.config("AutoReconnect=False")
    try:
        with MQTTProxy(mosquitto.host, mosquitto.port) as proxy:
            c.connect(proxy.host, proxy.port, 5)
            proxy.cut()
            _procs.wait_until(lambda: not c.connected, 5)
            with pytest.raises(mqttsession.UsageError, match="AutoReconnect is off") as raised:
                c.connect(proxy.host, proxy.port, 5)
            assert "under way" not in str(raised.value)
            c.disconnect()
            c.connect(proxy.host, proxy.port, 5)
            assert c.connected
    finally:
        c.close()
