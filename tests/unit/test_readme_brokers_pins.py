"""README "Broker compatibility" and "The broker matrix": claims about the ``compat`` command,
the matrix runner and the broker fixtures that no test held, checked without a broker (a README
behaviour audit):

* ``--timeout`` defaults to 3 s and ``--jobs`` to 4; ``--scenario`` is repeatable; the command
  gives the scenarios no restart hook (it never restarts a broker it did not start);
* the matrix starts each broker after the one before was stopped;
* the ActiveMQ fixture runs from a private home whose ``lib`` links ActiveMQ's jars and
  libmqtt-client-java's (nothing under /usr changes);
* aedes 1.2 and its Redis packages are pinned in ``brokers/aedes/package-lock.json``, the broker
  needs Node.js 20+, and amqtt comes with the ``test`` extra.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from typing import Any

import pytest

import mqttsession
import mqttsession.compat
from mqttsession import cli
from mqttsession.compat import Target
from mqttsession.compat import matrix as matrix_mod
from mqttsession.compat.matrix import BrokerSpec, run_matrix
from mqttsession.compat.scenarios import Result, Status

ROOT = Path(__file__).resolve().parents[2]


def _compat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *argv: str) -> tuple[int, list[tuple[Target, list[str], int]]]:
    """Run ``compat --broker 127.0.0.1:1883 ARGV`` with the broker check passing and run_all
    recording (target, scenario names, jobs)."""
    ran: list[tuple[Target, list[str], int]] = []

    def run_all(target: Target, scenarios: Any = None, jobs: int = 0) -> list[Result]:
        ran.append((target, [s.name for s in scenarios], jobs))
        return [Result(s.name, s.spec4, Status.PASS) for s in scenarios]

    monkeypatch.setattr(mqttsession.compat, "check_broker", lambda _t: None)
    monkeypatch.setattr(mqttsession.compat, "run_all", run_all)
    code = cli.main(["compat", "--broker", "127.0.0.1:1883", *argv])
    capsys.readouterr()
    return code, ran


def test_compat_waits_3_s_for_a_packet_and_runs_4_scenarios_at_a_time_by_default(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """README: "``--timeout SECONDS`` is how long a packet that should come is waited for
    (default 3), ``--jobs N`` how many scenarios run at a time (1..32, default 4)"."""
    code, [(target, names, jobs)] = _compat(monkeypatch, capsys)
    assert code == 0
    assert target.timeout == 3.0 and jobs == 4
    assert names == [s.name for s in mqttsession.compat.SCENARIOS]


def test_compat_scenario_is_repeatable(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """README: "``--scenario NAME`` (repeatable) runs only those scenarios"."""
    code, [(_, names, _)] = _compat(monkeypatch, capsys, "--scenario", "takeover",
                                    "--scenario", "session-present-new")
    assert code == 0 and names == ["takeover", "session-present-new"]


def test_compat_gives_the_scenarios_no_restart_hook(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """README: "The command never restarts a broker it did not start": the only way a scenario
    restarts a broker is ``Target.between`` (the test suite's hook), and the command leaves it
    unset, also with --failover."""
    _, [(target, _, _)] = _compat(monkeypatch, capsys)
    assert target.between is None
    _, [(target, _, _)] = _compat(monkeypatch, capsys, "--failover", "127.0.0.2:1884")
    assert target.between is None and target.failover == ("127.0.0.2", 1884)


def test_the_matrix_starts_each_broker_after_the_one_before_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "One command starts every broker this machine has, each ... stopped by pid
    before the next"."""
    events: list[str] = []

    class _Broker:
        def __init__(self, name: str) -> None:
            self.name = name

        def stop(self) -> None:
            events.append(f"stop {self.name}")

    def spec(name: str) -> BrokerSpec:
        def start() -> tuple[Any, str, int]:
            events.append(f"start {name}")
            return _Broker(name), "127.0.0.1", 1883

        return BrokerSpec(name, lambda: None, start, lambda: name)

    def run_all(target: Target, scenarios: Any = None, jobs: int = 4) -> list[Result]:
        events.append(f"run {target.protocol}")
        return []

    monkeypatch.setattr(matrix_mod, "broker_spec", spec)
    monkeypatch.setattr(matrix_mod, "check_broker", lambda _t: None)
    monkeypatch.setattr(matrix_mod, "run_all", run_all)
    run_matrix(["a", "b", "c"])
    assert events == [e for n in "abc" for e in (f"start {n}", "run 4", "run 5", f"stop {n}")]


def test_the_activemq_fixture_links_the_mqtt_jars_into_a_private_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "ActiveMQ's MQTT connector as packaged needs libmqtt-client-java's jars (the
    fixture links them into a private ActiveMQ home)" (a fake /usr/share tree: no ActiveMQ here)."""
    from mqttsession.testing import server_brokers as sb

    home, share = tmp_path / "activemq", tmp_path / "java"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    share.mkdir()
    (home / "bin" / "activemq.jar").write_text("")
    for jar in ("activemq-broker.jar", "activemq-mqtt.jar"):
        (home / "lib" / jar).write_text("")
    for jar in sb._MQTT_CLIENT_JARS:
        (share / jar).write_text("")
    monkeypatch.setattr(sb, "_ACTIVEMQ_HOME", home)
    monkeypatch.setattr(sb, "_JAVA_SHARE", share)
    monkeypatch.setattr(sb.shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None)
    assert sb.activemq_unavailable() is None
    broker = sb.ActiveMQBroker()
    try:
        lib = broker.home / "lib"
        assert broker.home.is_relative_to(broker.workdir)
        linked = {p.name: p.resolve() for p in lib.iterdir()}
        assert all(p.is_symlink() for p in lib.iterdir())
        assert linked == {"activemq-broker.jar": home / "lib" / "activemq-broker.jar",
                          "activemq-mqtt.jar": home / "lib" / "activemq-mqtt.jar",
                          **{jar: share / jar for jar in sb._MQTT_CLIENT_JARS}}
        assert (broker.home / "bin" / "activemq.jar").resolve() == home / "bin" / "activemq.jar"
        assert sorted(p.name for p in (home / "lib").iterdir()) == ["activemq-broker.jar",
                                                                    "activemq-mqtt.jar"]
    finally:
        broker.cleanup()


def test_aedes_and_its_redis_packages_are_pinned_and_amqtt_is_in_the_test_extra() -> None:
    """README: "Node.js 20+ and ``npm ci --prefix brokers/aedes`` (aedes 1.2 and its Redis
    packages, pinned in ``brokers/aedes/package-lock.json``), and amqtt from the ``test``
    extra"."""
    lock = json.loads((ROOT / "brokers" / "aedes" / "package-lock.json").read_text(encoding="utf-8"))
    packages = lock["packages"]
    assert packages["node_modules/aedes"]["version"].startswith("1.2.")
    assert "node_modules/aedes-persistence-redis" in packages
    assert "node_modules/mqemitter-redis" in packages
    package = json.loads((ROOT / "brokers" / "aedes" / "package.json").read_text(encoding="utf-8"))
    assert package["engines"]["node"] == ">=20"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extra = cfg["options.extras_require"]["test"].split()
    assert any(req.startswith("amqtt") for req in extra), extra


def test_a_new_client_republishes_on_session_lost_and_republishes_released_qos2() -> None:
    """README (ActiveMQ): "keep ``RepublishOnSessionLost=true`` (the default ...)"; (mosquitto,
    amqtt): "keep ``ReleasedOnSessionLost=republish`` (the default)"."""
    c = mqttsession.Client()
    try:
        assert c.config("RepublishOnSessionLost") == "True"
        assert c.config("ReleasedOnSessionLost") == "republish"
    finally:
        c.close()


def test_a_held_qos2_flow_resent_with_dup_0_is_recognised_by_its_packet_id() -> None:
    """README (aedes): "It resends unacknowledged messages with DUP=0: nothing to set,
    mqttsession recognises a resent QoS 2 PUBLISH by its packet id, not by DUP": a QoS 2
    message held (PUBREC sent, no PUBREL), sent again after a reconnect with SessionPresent=1
    under its id with DUP=0, is answered PUBREC and stored once; its PUBREL delivers it once."""
    from mqttsession import _wire
    from mqttsession._wire import PacketType
    from mqttsession.engine import Deliver, Engine, EngineSettings, Write
    from mqttsession.state import SessionState

    def publish_in(dup: bool) -> _wire.Packet:
        return _wire.decode_packet(_wire.encode_publish("in", b"once", qos=2, packet_id=7, dup=dup), 4)

    def connect(e: Engine) -> None:
        e.reset()
        e.connecting("broker:1883")
        e.connack(0, "", True, 65535, None, 0.0)
        e.lost_incoming()
        e.resume()

    state = SessionState()
    state.configure(client_id="c", clean_session=False, protocol_version=4)
    e = Engine(EngineSettings(), state)
    connect(e)
    e.receive(publish_in(dup=False))
    e.connection_lost(0.0, 0, "gone")
    connect(e)
    again = e.receive(publish_in(dup=False))  # aedes' resend: DUP=0
    assert not any(isinstance(a, Deliver) for a in again)
    sent = [_wire.decode_packet(a.packet, 4) for a in again if isinstance(a, Write)]
    assert [(p.type, p.packet_id) for p in sent] == [(PacketType.PUBREC, 7)]
    assert list(e.state.incoming) == [7]
    released = e.receive(_wire.decode_packet(_wire.encode_ack(PacketType.PUBREL, 7), 4))
    assert [a.message.message for a in released if isinstance(a, Deliver)] == [b"once"]
