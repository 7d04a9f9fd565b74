"""The broker matrix (``mqttsession compat --matrix``) and its brokers.

* the report: the README table from a run, every FAIL listed with its spec statement and
  reason, a broker that could not run listed with the reason; the README has the markers and the
  rewrite keeps what lies outside them;
* the fast brokers (mosquitto, amqtt, aedes as two nodes sharing Redis) start and answer the
  scenarios every run (the aedes one skips only without Node.js);
* the slow ones (ejabberd, RabbitMQ, ActiveMQ; 1-15 s to start each) behind the opt-in marker
  ``slow_brokers`` (``python3 -m pytest -m slow_brokers tests/compat/test_matrix.py``): each
  starts on 127.0.0.1, listens on nothing but loopback, answers the scenarios, and stops by pid.
  Where one is not installed it is skipped with what to install.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import ConnectError
from mqttsession.compat import find_scenarios
from mqttsession.compat.matrix import (
    BROKERS,
    FAST_BROKERS,
    MARK_END,
    MARK_START,
    BrokerRun,
    broker_spec,
    format_rst,
    readme_path,
    run_broker,
    update_readme,
)
from mqttsession.compat.scenarios import Result, Status
from mqttsession.testing.pytest_plugin import require_aedes

# a few quick scenarios that every broker of the matrix should answer (the full runs are
# tests/compat/test_compat.py's for mosquitto and amqtt, and `compat --matrix`'s)
QUICK = find_scenarios(["session-present-new", "session-present-resumed", "offline-queue-qos1"])


def _run(status: Status, reason: str = "") -> Result:
    return Result("session-present-resumed", "MQTT-3.2.2-2", status, reason)


def test_report_lists_every_fail_with_spec_and_reason_and_the_brokers_not_run() -> None:
    ok = BrokerRun("mosquitto", version="mosquitto 2.0.11", start_seconds=0.1,
                   results={4: [_run(Status.PASS)], 5: [_run(Status.PASS)]})
    bad = BrokerRun("activemq", version="ActiveMQ 5.17.2", start_seconds=4.2,
                    results={4: [_run(Status.FAIL, "SessionPresent=0 on reconnect")]},
                    refused={5: "the broker at 127.0.0.1:4242 refused an MQTT 5 CONNECT; try --protocol 4"})
    missing = BrokerRun("ejabberd", skipped="ejabberd not installed (apt-get install -y ejabberd)")
    text = format_rst([ok, bad, missing], when="2026-12-01")
    assert "**1** mosquitto 2.0.11, MQTT 3.1.1; **2** mosquitto 2.0.11, MQTT 5; **3** ActiveMQ 5.17.2, MQTT 3.1.1" in text
    row = next(line for line in text.splitlines() if line.startswith("session-present-resumed"))
    assert row.split() == ["session-present-resumed", "pass", "pass", "FAIL"]
    assert ("- 3 activemq 3.1.1, ``session-present-resumed`` (MQTT-3.2.2-2): SessionPresent=0 on reconnect"
            in text)
    assert "- ActiveMQ 5.17.2, MQTT 5: the broker at 127.0.0.1:PORT refused an MQTT 5 CONNECT" in text
    assert "try --protocol" not in text
    assert "- ejabberd: ejabberd not installed (apt-get install -y ejabberd)" in text
    assert "mosquitto 0.10 s, activemq 4.2 s" in text


def test_readme_has_the_markers_and_the_rewrite_keeps_the_rest(tmp_path: Path) -> None:
    text = readme_path().read_text(encoding="utf-8")
    assert text.count(MARK_START) == 1 and text.count(MARK_END) == 1
    copy = tmp_path / "README.rst"
    copy.write_text(text, encoding="utf-8")
    update_readme(copy, "NEW TABLE\n")
    new = copy.read_text(encoding="utf-8")
    before, rest = text.split(MARK_START)
    after = rest.split(MARK_END)[1]
    assert new == f"{before}{MARK_START}\n\nNEW TABLE\n\n{MARK_END}{after}"
    update_readme(copy, "NEW TABLE\n")  # idempotent
    assert copy.read_text(encoding="utf-8") == new


def test_the_command_refuses_matrix_options_without_matrix() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mqttsession", "compat", "--fast"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(readme_path().parent)})
    assert done.returncode == 2
    assert "go with --matrix" in done.stderr


def _check(run: BrokerRun, protocols: set[int]) -> None:
    assert not run.skipped, run.skipped
    assert set(run.results) == protocols, (run.results.keys(), run.refused)
    for protocol in protocols:
        statuses = {r.name: r.status for r in run.results[protocol]}
        assert statuses["session-present-new"] is Status.PASS


@pytest.mark.integration
@pytest.mark.parametrize("name", FAST_BROKERS)
def test_fast_brokers_start_and_answer(name: str) -> None:
    spec = broker_spec(name)
    if name == "aedes":
        require_aedes(redis=True)
    elif (reason := spec.unavailable()) is not None:
        pytest.skip(reason)
    run = run_broker(spec, scenarios=QUICK)
    # aedes and amqtt answer MQTT 5 with CONNACK 1: refused, not a scenario failure
    _check(run, {4, 5} if name == "mosquitto" else {4})
    assert set(run.refused) == (set() if name == "mosquitto" else {5})
    assert all(r.status is Status.PASS for r in run.results[4]), run.results[4]


@pytest.mark.integration
def test_aedes_runs_failover_resume_on_its_second_node() -> None:
    require_aedes(redis=True)
    run = run_broker(broker_spec("aedes"), scenarios=find_scenarios(["failover-resume"]))
    [result] = run.results[4]
    assert result.status is Status.PASS, result.reason


def test_report_shows_informative_values_and_why_a_scenario_was_not_applicable() -> None:
    point = Result("qos2-delivery-point", "4.3.3", Status.INFO, "delivers QoS 2 on PUBLISH: ...",
                   value="on PUBLISH")
    na = Result("qos2-dedupe-connection", "MQTT-4.3.3-2", Status.NA,
                "the broker answered the QoS 2 PUBLISH with PUBACK")
    cluster = Result("failover-resume", "MQTT-3.1.2-4/4.4.0-1", Status.NA, "needs --failover HOST:PORT")
    flag = Result("offline-queue-qos1", "MQTT-3.1.2-5", Status.PASS,
                  "SessionPresent=0 on reconnect (session); judged by what the broker did")
    run = BrokerRun("rabbitmq", version="RabbitMQ 3.10.8", results={4: [point, na, cluster, flag]})
    text = format_rst([run], when="2026-12-01")
    row = next(line for line in text.splitlines() if line.startswith("qos2-delivery-point"))
    assert row.split() == ["qos2-delivery-point", "on", "PUBLISH"]
    assert "- 1 rabbitmq 3.1.1, ``qos2-dedupe-connection``: the broker answered the QoS 2 PUBLISH with PUBACK" in text
    assert "failover-resume``:" not in text  # n/a without a cluster: not listed
    assert "- 1 rabbitmq 3.1.1, ``offline-queue-qos1``: SessionPresent=0 on reconnect (session)" in text
    totals = next(line for line in text.splitlines() if line.startswith("passed"))
    assert totals.split() == ["passed", "1/1"]  # informative and n/a rows are not counted


SLOW = [name for name in BROKERS if name not in FAST_BROKERS]


@pytest.mark.integration
@pytest.mark.slow_brokers
@pytest.mark.xdist_group("slow_brokers")  # (one worker: one slow broker at a time)
@pytest.mark.parametrize("name", SLOW)
def test_slow_brokers_start_and_answer(name: str) -> None:
    spec = broker_spec(name)
    reason = spec.unavailable()
    if reason is not None:
        pytest.skip(reason)
    run = run_broker(spec, scenarios=QUICK)
    # ejabberd speaks MQTT 5 too; RabbitMQ 3.10 and ActiveMQ 5.17 only 3.1.1
    _check(run, {4, 5} if name == "ejabberd" else {4})


@pytest.mark.integration
@pytest.mark.slow_brokers
@pytest.mark.xdist_group("slow_brokers")  # (one worker: one slow broker at a time)
@pytest.mark.parametrize("name", SLOW)
def test_slow_brokers_bind_loopback_only_and_stop_by_pid(name: str) -> None:
    from mqttsession.testing import server_brokers as sb

    classes = {"ejabberd": sb.EjabberdBroker, "rabbitmq": sb.RabbitMQBroker, "activemq": sb.ActiveMQBroker}
    reason = broker_spec(name).unavailable()
    if reason is not None:
        pytest.skip(reason)
    broker = classes[name]()
    try:
        broker.start()
        pids = {broker.pid}
        if isinstance(broker, sb.RabbitMQBroker):
            pids.add(broker.epmd.pid)
        listening = _listening(pids)
        assert listening, f"no listening socket found for {pids}"
        assert all(addr.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")) for addr in listening), listening
        assert f"127.0.0.1:{broker.port}" in listening or f"[::ffff:127.0.0.1]:{broker.port}" in listening
        broker.stop()
        assert not broker.running
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
    finally:
        broker.cleanup()


def _listening(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (``ss -ltnp``)."""
    done = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip("ss (iproute2) not available to list listening sockets")
    found = set()
    for line in done.stdout.splitlines():
        fields = line.split()
        if any(f"pid={pid}," in line for pid in pids):
            found.add(fields[3])
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


# ------------------------------------------------------------------------------------------------
# the client's answers to what the slow brokers do (README "Brokers")


@contextlib.contextmanager
def _started(name: str) -> Iterator[Any]:
    """The slow broker ``name`` started (the test skipped, with the reason, where it cannot
    run); stopped and its files removed at the end."""
    from mqttsession.testing import server_brokers as sb

    if (reason := broker_spec(name).unavailable()) is not None:
        pytest.skip(reason)
    classes = {"ejabberd": sb.EjabberdBroker, "rabbitmq": sb.RabbitMQBroker,
               "activemq": sb.ActiveMQBroker}
    broker = classes[name]()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        broker.cleanup()


@pytest.mark.integration
@pytest.mark.slow_brokers
@pytest.mark.xdist_group("slow_brokers")  # (one worker: one slow broker at a time)
def test_rabbitmq_puback_for_qos2_completes_the_message_and_is_counted() -> None:
    with _started("rabbitmq") as broker:
        c = mqttsession.Client(client_id=f"msc{secrets.token_hex(4)}gw", clean_session=True)
        try:
            c.connect(broker.host, broker.port)
            for n in range(3):
                c.publish_message("mqttsession-compat/q2", 2, f"m{n}")
            assert c.flush(10), "QoS 2 messages answered with PUBACK were not completed"
            assert c.config("MismatchedAcks") == "3"
        finally:
            c.close()


@pytest.mark.integration
@pytest.mark.slow_brokers
@pytest.mark.xdist_group("slow_brokers")  # (one worker: one slow broker at a time)
def test_ejabberd_needs_a_user_name_and_a_password() -> None:
    from mqttsession.testing.server_brokers import EjabberdBroker

    with _started("ejabberd") as broker:
        bare = mqttsession.Client(client_id=f"msc{secrets.token_hex(4)}a", clean_session=True)
        try:
            with pytest.raises(ConnectError):
                bare.connect(broker.host, broker.port)
        finally:
            bare.close()
        user, password = EjabberdBroker.credentials
        c = mqttsession.Client(client_id=f"msc{secrets.token_hex(4)}b", clean_session=True,
                               username=user, password=password)
        try:
            c.connect(broker.host, broker.port)
            c.publish_message("mqttsession-compat/e", 1, "x")
            assert c.flush(10)
        finally:
            c.close()


@pytest.mark.integration
@pytest.mark.slow_brokers
@pytest.mark.xdist_group("slow_brokers")  # (one worker: one slow broker at a time)
def test_activemq_session_present_0_turns_a_held_qos2_message_into_a_duplicate() -> None:
    """README "Brokers", ActiveMQ: the client believes SessionPresent=0 and hands out the QoS 2
    message it held (PUBREC sent, PUBREL not yet come); ActiveMQ kept the session and sends that
    PUBLISH again (DUP=1, same packet id), which the client then takes for a new message."""
    from mqttsession.compat.raw import RawClient
    from mqttsession.testing.proxy import MQTTProxy

    tag = secrets.token_hex(4)
    topic = f"mqttsession-compat/{tag}/q2"
    cond = threading.Condition()
    got: list[bytes] = []
    lost: list[object] = []

    def add(target: list[Any], item: Any) -> None:
        with cond:
            target.append(item)
            cond.notify_all()

    with _started("activemq") as broker, MQTTProxy(broker.host, broker.port) as proxy:
        proxy.drop("s2c", "PUBREL")  # the client will hold the message: PUBREC sent, no PUBREL
        c = mqttsession.Client(client_id=f"msc{tag}s", clean_session=False)
        c.config("ReconnectDelayMin=1")
        c.config("ReconnectDelayMax=1")
        c.on_message_in = lambda ev: add(got, ev.message)
        c.on_session_lost = lambda ev: add(lost, ev)
        try:
            c.connect(proxy.host, proxy.port)
            c.subscribe(topic, 2)
            proxy.wait_for("s2c", "SUBACK")
            with RawClient(broker.host, broker.port) as p:
                p.connect(f"msc{tag}p", clean=True)
                p.publish(topic, b"once", 2)
                p.disconnect()
            proxy.wait_for("c2s", "PUBREC")
            proxy.clear_drops()
            proxy.cut()  # the client reconnects through the proxy: SessionPresent=0
            with cond:
                assert cond.wait_for(lambda: len(got) >= 2 and lost, 20), (got, lost, proxy.log_text())
            assert got == [b"once", b"once"]
            resent = [r for r in proxy.packets("s2c", "PUBLISH") if r.dup]
            assert resent, proxy.log_text()  # ActiveMQ's resend of the PUBLISH, DUP=1
        finally:
            c.close()
