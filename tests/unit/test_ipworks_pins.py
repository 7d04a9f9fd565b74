"""IPWorks-fidelity pins, no broker needed: claims of the IPWorks IoT MQTT component's session
surface (``shared/reference/IPWORKS-API.md`` beside the project) that no other test proved. Each docstring
names the reference's claim; the CONNECT a client sends is read by a one-shot loopback socket
that answers it with a CONNACK. Where mqttsession differs, README says so
("Where this library decides") and the test pins what it does."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mqttsession import Client, UsageError
from mqttsession import _wire as wire


def _connect_packet(c: Client) -> wire.Packet:
    """``c.connect()`` to a loopback socket that reads one CONNECT, answers CONNACK; the CONNECT."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[wire.Packet] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            buf = b""
            while (found := wire.split(buf)) is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            got.append(wire.decode_packet(buf[:found[1]]))
            conn.sendall(wire.encode_connack())
            conn.recv(4096)  # (until the client's DISCONNECT / close)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        c.connect("127.0.0.1", srv.getsockname()[1], timeout=5)
        assert c.connected
    finally:
        c.close()
        t.join(5)
        srv.close()
    assert len(got) == 1
    return got[0]


def test_defaults_of_client_id_clean_session_and_connected() -> None:
    """Reference: ``client_id`` defaults to ""; ``clean_session`` to True; ``connected`` to
    False."""
    with Client() as c:
        assert c.client_id == ""
        assert c.clean_session is True
        assert c.connected is False


def test_save_session_overwrites_the_state_file(tmp_path: Path) -> None:
    """Reference: ``save_session()`` writes the state to ``SessionStateFile``, "creating or
    overwriting it": a second save replaces what the first wrote."""
    path = tmp_path / "gw.state"
    with Client(client_id="ipw-overwrite", clean_session=False) as c:
        c.config(f"SessionStateFile={path}")
        c.restore_session("")
        c.publish_message("ipw/a", 1, "first")
        first = c.save_session()
        assert path.read_text(encoding="utf-8") == first
        c.publish_message("ipw/a", 2, "second")
        second = c.save_session()
        assert second != first
        assert path.read_text(encoding="utf-8") == second


def test_keep_alive_interval_goes_in_connect_and_zero_disables_it() -> None:
    """Reference: ``keep_alive_interval`` is sent in CONNECT; 0 disables keep-alive (the CONNECT
    carries 0, so neither side expects PINGREQs)."""
    assert _connect_packet(Client(client_id="ipw-ka0", keep_alive_interval=0)).keepalive == 0
    assert _connect_packet(Client(client_id="ipw-ka7", keep_alive_interval=7)).keepalive == 7


def test_no_will_when_will_topic_is_empty() -> None:
    """Reference: ``will_topic`` / ``will_message``: "no Will when will_topic is empty" (a
    message alone is no Will)."""
    c = Client(client_id="ipw-nowill", will_topic="", will_message=b"unused")
    packet = _connect_packet(c)
    assert packet.will is None


def test_will_topic_message_qos_and_retain_go_in_connect() -> None:
    """Reference: ``will_topic`` / ``will_message`` with the ``WillQOS`` and ``WillRetain``
    settings make the CONNECT's Will."""
    c = Client(client_id="ipw-will", will_topic="ipw/will", will_message=b"gone")
    c.config("WillQOS=1")
    c.config("WillRetain=True")
    will = _connect_packet(c).will
    assert will is not None
    assert (will.topic, will.payload, will.qos, will.retain) == ("ipw/will", b"gone", 1, True)


@pytest.mark.parametrize("name", ["ConnectProperties", "WillProperties"])
def test_ipworks_settings_left_out_are_refused_by_name(name: str) -> None:
    """IPWorks' ``ConnectProperties`` and ``WillProperties`` are left out (README, "Where
    this library decides"; the arguments ``connect_properties`` / ``will_properties``): code
    written for IPWorks gets ``UsageError`` naming the setting, never a silent no-op."""
    c = Client(client_id="ipw-cfg", protocol_version=5)
    try:
        with pytest.raises(UsageError, match=name):
            c.config(name)
        with pytest.raises(UsageError, match=name):
            c.config(f"{name}=1")
    finally:
        c.close()


@pytest.mark.parametrize(("value", "read"), [("4", "4"), ("0x04", "4"), ("0x98", "152"),
                                             (" 0 ", "0"), ("129", "129")])
def test_disconnect_reason_code_takes_a_code_a_client_may_send(value: str, read: str) -> None:
    c = Client(client_id="drc")
    assert c.config("DisconnectReasonCode") == "0"
    c.config(f"DisconnectReasonCode={value}")
    assert c.config("DisconnectReasonCode") == read
    c.close()


@pytest.mark.parametrize("value", ["5", "0x8E", "256", "-1", "will", "", "4.0"])
def test_disconnect_reason_code_refuses_what_a_client_may_not_send(value: str) -> None:
    """0x8E (Session taken over) and the others only a server sends [MQTT-3.14.2-1]."""
    c = Client(client_id="drc")
    with pytest.raises(UsageError, match="DisconnectReasonCode"):
        c.config(f"DisconnectReasonCode={value}")
    assert c.config("DisconnectReasonCode") == "0"
    c.close()


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("10", True), ("65535", True),
                                           ("65536", False), ("-1", False), ("x", False)])
def test_client_topic_alias_max_takes_0_to_65535(value: str, ok: bool) -> None:
    c = Client(client_id="ctam", protocol_version=5)
    try:
        assert c.config("ClientTopicAliasMax") == "0"
        if ok:
            c.config(f"ClientTopicAliasMax={value}")
            assert c.config("ClientTopicAliasMax") == value
        else:
            with pytest.raises(UsageError, match="ClientTopicAliasMax"):
                c.config(f"ClientTopicAliasMax={value}")
            assert c.config("ClientTopicAliasMax") == "0"
    finally:
        c.close()
