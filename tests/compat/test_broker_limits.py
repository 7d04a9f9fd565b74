"""``mqttsession compat`` against brokers that limit their clients, where the checker must tell
its own limits apart from the broker's faults (real mosquitto brokers on 127.0.0.1):

* CONNACK Maximum QoS 1 (MQTT 5): nothing is published at QoS 2, a scenario that needs it is
  n/a with the reason, never a FAIL for the broker's (correct) DISCONNECT 0x9B;
* CONNACK Maximum Packet Size: a bigger packet is never sent;
* an ACL that keeps the user off ``mqttsession-compat/#``: ``check_broker`` says so in one line
  (the command exits 2) instead of 13-16 FAILs; ``clean-discards-session`` has a positive
  control, so it cannot pass on absences alone;
* a QoS 0 delivery the broker drops (``max_queued_bytes``): allowed, a note, not a FAIL of
  MQTT-3.8.4-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mqttsession
from mqttsession.compat import (
    SCENARIOS,
    TOPIC_ROOT,
    BrokerUnavailable,
    Scenario,
    Status,
    Target,
    check_broker,
    run_all,
    run_scenario,
)
from mqttsession.compat.raw import BeyondServerLimit, RawClient
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.pytest_plugin import MosquittoFactory

pytestmark = pytest.mark.integration

TIMEOUT = 2.0
_REPO = Path(mqttsession.__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "mqttsession", *args], capture_output=True, text=True,
                          timeout=90, env=env, check=False)


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


# ------------------------------------------------------------------------------ Maximum QoS


def test_maximum_qos_1_makes_the_qos2_scenarios_not_applicable(mosquitto_factory: MosquittoFactory) -> None:
    """Before: six scenarios published QoS 2 anyway and FAILed on mosquitto's DISCONNECT 0x9B."""
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_qos 1")
    results = {r.name: r for r in run_all(Target(broker.host, broker.port, 5, timeout=TIMEOUT))}
    failed = {n: r.reason for n, r in results.items() if r.status is Status.FAIL}
    assert not failed, failed
    reason = "CONNACK Maximum QoS 1: a client must not publish at QoS 2 [MQTT-3.2.2-11]"
    for name in ("offline-queue-qos2", "qos2-publish-pubrec", "qos2-dedupe-connection",
                 "qos2-delivery-point", "qos2-dedupe-reconnect"):
        assert (results[name].status, results[name].reason) == (Status.NA, reason), results[name]
    # what can still be checked without QoS 2 is
    assert results["session-present-unsubscribed"].status is Status.PASS
    qos_min = results["delivered-qos-min"]
    assert qos_min.status is Status.PASS, qos_min
    assert "CONNACK Maximum QoS 1: nothing published above it" in qos_min.reason


def test_maximum_packet_size_is_never_exceeded(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_packet_size 200")
    with RawClient(broker.host, broker.port, protocol=5, timeout=TIMEOUT) as c:
        c.connect("msclimitsize", clean=True)
        assert c.max_packet_size == 200
        with pytest.raises(BeyondServerLimit, match=r"Maximum Packet Size 200: .* 315-byte PUBLISH"):
            c.publish("limit/t", b"x" * 300, 1)
        assert c.publish("limit/t", b"small", 1) is not None  # nothing was sent: still connected
        c.disconnect()


# ------------------------------------------------------------------------------ ACL


@pytest.fixture()
def acl_broker(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> MosquittoBroker:
    """Anonymous clients may use app/# only (mosquitto acl_file, lines before any 'user')."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite app/#\n", encoding="utf-8")
    # user root (as broker_conf/mosquitto-auth.conf): started as root, mosquitto reads the file
    # after dropping to user mosquitto, which cannot enter pytest's 0700 tmp_path
    return mosquitto_factory("mosquitto.conf", extra_config=f"user root\nacl_file {acl}")


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_a_user_kept_off_the_topic_tree_is_told_so_before_any_scenario(acl_broker: MosquittoBroker, protocol: int) -> None:
    """Before: every scenario ran and 13-16 of them FAILed ("did not arrive", PUBACK 0x87),
    blaming the broker for an ACL; now check_broker stops the run with one line, exit 2."""
    host, port = acl_broker.host, acl_broker.port
    with pytest.raises(BrokerUnavailable) as caught:
        check_broker(Target(host, port, protocol, timeout=TIMEOUT))
    assert str(caught.value).startswith(f"not allowed to use {TOPIC_ROOT}/# (the topics of every"
                                        f" scenario) at {host}:{port}: "), caught.value
    # 3.1.1: the PUBLISH is dropped silently; 5: PUBACK 0x87 (not authorized)
    assert ("within 2.0 s" if protocol == 4 else "rc=0x87") in str(caught.value)
    out = run_cli("compat", "--broker", f"{host}:{port}", "--protocol", str(protocol))
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    assert out.stderr.startswith(f"mqttsession compat: not allowed to use {TOPIC_ROOT}/#")
    assert len(out.stderr.splitlines()) == 1


def test_clean_discards_session_cannot_pass_on_absences_alone(acl_broker: MosquittoBroker) -> None:
    """Before: with every message dropped, nothing arrived where nothing should, and the
    scenario passed. Its control message to a live subscription must arrive first."""
    host, port = acl_broker.host, acl_broker.port
    result = run_scenario(_scenario("clean-discards-session"),
                          Target(host, port, 4, timeout=TIMEOUT))
    assert result.status is Status.FAIL
    assert result.reason.startswith("control: a QoS 1 message to the clean session's own"
                                    " subscription did not arrive"), result.reason


def test_topic_check_passes_on_a_broker_without_acl(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory("mosquitto.conf")
    for protocol in (4, 5):
        check_broker(Target(broker.host, broker.port, protocol, timeout=TIMEOUT))


# ------------------------------------------------------------------------------ QoS 0 dropped


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_a_dropped_qos0_delivery_is_a_note_not_a_fail(mosquitto_factory: MosquittoFactory,
                                                      protocol: int) -> None:
    """mosquitto with max_queued_bytes 3 drops the two deliveries due at QoS 0 (allowed: at most
    once) and delivers the QoS 1 / 2 ones at the right QoS. Before: FAIL of MQTT-3.8.4-6."""
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_queued_bytes 3")
    result = run_scenario(_scenario("delivered-qos-min"),
                          Target(broker.host, broker.port, protocol, timeout=TIMEOUT))
    assert result.status is Status.PASS, result.reason
    assert result.reason.startswith("not delivered, allowed at QoS 0 (at most once): QoS 0 to a"
                                    " QoS 2 subscription (granted 2), QoS 2 to a QoS 0"
                                    " subscription (granted 0)"), result.reason


def test_a_311_broker_limited_to_qos_1_is_named_as_the_likely_cause(
        mosquitto_factory: MosquittoFactory) -> None:
    """MQTT 3.1.1 has no Maximum QoS in CONNACK: mosquitto with ``max_qos 1`` closes the
    connection at a QoS 2 PUBLISH, and the QoS 2 scenarios FAIL; their reason names that
    likely cause (a helper's README audit found the bare "broker closed the connection")."""
    broker = mosquitto_factory("mosquitto.conf", extra_config="max_qos 1")
    for name in ("offline-queue-qos2", "qos2-publish-pubrec"):
        result = run_scenario(next(s for s in SCENARIOS if s.name == name),
                              Target(broker.host, broker.port, 4, timeout=TIMEOUT))
        assert result.status is Status.FAIL
        assert "closed the connection while waiting for PUBREC" in result.reason
        assert "takes QoS 1 at most" in result.reason and "max_qos 1" in result.reason
