"""Pins on ``mqttsession/cli.py`` found by a mutation hunt, with no broker, socket or subprocess:

* the demo's tally (driven by a fake paho subscriber, a fake publisher child and a fake state
  file): a lost message, a QoS 1 repeat and a QoS 2 duplicate are each counted as what they are,
  the exit code and the RESULT line follow, and the amqtt notes are said only when they apply;
* the demo's publisher child alternates QoS 1 and 2, restores before it connects, and flushes
  before it disconnects;
* the argument types' bounds (``--jobs``, ``--count``, ``--timeout``), ``--brokers``' list, the
  ``--failover`` same-node check, the compat password / user name sources, and the exit codes
  ``main`` maps errors to.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import types
from typing import Any

import pytest

import mqttsession.client
import mqttsession.compat
import mqttsession.testing
import mqttsession.testing.brokers
from mqttsession import cli
from mqttsession.compat import SCENARIOS, BrokerUnavailable, Target
from mqttsession.compat import matrix as matrix_mod
from mqttsession.errors import MQTTSessionError

# ------------------------------------------------------------------------------ the demo's tally


class _FastEvent(threading.Event):
    """An Event whose waits are bounded to 0.05 s (the demo waits 10 s for a tally never full)."""

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(0.05 if timeout is None else min(timeout, 0.05))


class _Rc:
    def __init__(self, value: int = 0) -> None:
        self.value, self.is_failure = value, value >= 0x80

    def __str__(self) -> str:
        return "Bad user name or password" if self.value == 0x86 else "Success"


class _FakeSub:
    """A paho client stand-in: CONNACK ``rc`` at once, SUBACK at once; ``deliver`` hands the
    tally its messages."""

    made: list[_FakeSub] = []
    rc = 0
    connect_error: Exception | None = None

    def __init__(self, *_a: Any, **_k: Any) -> None:
        self.on_connect: Any = None
        self.on_disconnect: Any = None
        self.on_message: Any = None
        self.on_subscribe: Any = None
        _FakeSub.made.append(self)

    def connect(self, host: str, port: int) -> None:
        if _FakeSub.connect_error is not None:
            raise _FakeSub.connect_error

    def loop_start(self) -> None:
        self.on_connect(self, None, None, _Rc(_FakeSub.rc), None)

    def subscribe(self, topic: str, qos: int) -> None:
        self.on_subscribe(self, None, None, None, None)

    def deliver(self, payloads: list[int]) -> None:
        for n in payloads:
            self.on_message(self, None, types.SimpleNamespace(payload=str(n).encode()))

    def loop_stop(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class _FakeEmbedded:
    host, port, address = "127.0.0.1", 1, "127.0.0.1:1"

    def start(self) -> _FakeEmbedded:
        return self

    def stop(self) -> None:
        pass


def _run_demo(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              delivered: list[int], *, argv: list[str] | None = None, inflight: int = 1,
              left: int = 0, in_flight: int = 1, never_sent: int = 0, on_disk: int = 0,
              amqtt: bool = False, children: list[list[str]] | None = None
              ) -> tuple[int, str]:
    """Run ``demo`` with fakes: the second publisher child's run delivers ``delivered`` (the
    payload numbers, in order) to the tally; returns (exit code, stdout)."""
    import paho.mqtt.client as mqtt

    _FakeSub.made, _FakeSub.rc, _FakeSub.connect_error = [], 0, None
    monkeypatch.setattr(mqtt, "Client", _FakeSub)
    monkeypatch.setattr(cli, "threading", types.SimpleNamespace(Event=_FastEvent, Lock=threading.Lock))
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(sleep=lambda _s: None))
    calls: list[list[str]] = [] if children is None else children

    def run_child(args: list[str]) -> tuple[int, int]:
        calls.append(list(args))
        if "--crash" in args:
            return 0, inflight
        _FakeSub.made[-1].deliver(delivered)
        return in_flight + never_sent + on_disk, left

    saved = types.SimpleNamespace(outgoing=[object()] * (in_flight + never_sent), on_disk=on_disk,
                                  in_flight=[object()] * in_flight, never_sent=[object()] * never_sent)
    monkeypatch.setattr(cli, "_run_child", run_child)
    monkeypatch.setattr(cli, "_read_state", lambda _path: (saved, None))
    if amqtt:
        monkeypatch.setattr(mqttsession.testing.brokers, "find_mosquitto", lambda: None)
        monkeypatch.setattr(mqttsession.testing.brokers, "amqtt_missing", lambda *_a: None)
        monkeypatch.setattr(mqttsession.testing, "EmbeddedAmqtt", _FakeEmbedded)
    code = cli.main(argv or ["demo", "--broker", "127.0.0.1:1883", "--count", "10"])
    return code, capsys.readouterr().out


def test_demo_tally_all_once_is_a_pass(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every message once: exit 0, nothing missing, no repeat, no duplicate."""
    code, out = _run_demo(monkeypatch, capsys, list(range(10)))
    assert code == 0, out
    assert ("sent 10, received 10 distinct, missing 0, QoS 1 repeats 0 (allowed: at least once),"
            " QoS 2 duplicates 0") in out, out
    assert "RESULT: nothing lost, no QoS 2 duplicate" in out, out
    assert "it restored 1 message(s); 0 left unacknowledged" in out and "had not finished" not in out
    code, out = _run_demo(monkeypatch, capsys, list(range(10)), left=2)
    assert code == 0 and "(the broker had not finished those flows within 15 s" in out, out


def test_demo_tally_counts_qos1_repeats_as_allowed(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Message 0 (QoS 1) three times: two QoS 1 repeats, no QoS 2 duplicate, still a pass."""
    code, out = _run_demo(monkeypatch, capsys, [0, 0, *range(10)])
    assert "missing 0, QoS 1 repeats 2 (allowed: at least once), QoS 2 duplicates 0" in out, out
    assert code == 0, out


def test_demo_tally_counts_every_qos2_duplicate(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Message 3 (QoS 2) three times: two QoS 2 duplicates, only [3] named, exit 1."""
    code, out = _run_demo(monkeypatch, capsys, [*range(10), 3, 3])
    assert "missing 0, QoS 1 repeats 0 (allowed: at least once), QoS 2 duplicates 2" in out, out
    assert "RESULT: FAILED (missing [], QoS 2 duplicates [3])" in out, out
    assert code == 1, out


def test_demo_tally_counts_the_last_message_lost(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The last message (9) never delivered: missing 1, named, exit 1."""
    code, out = _run_demo(monkeypatch, capsys, list(range(9)))
    assert "received 9 distinct, missing 1," in out, out
    assert "RESULT: FAILED (missing [9], QoS 2 duplicates [])" in out, out
    assert code == 1, out


def test_demo_kills_the_publisher_half_way(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--count 10: the first child sends 0..4 and crashes, the second 5..9."""
    children: list[list[str]] = []
    _run_demo(monkeypatch, capsys, list(range(10)), children=children)
    first, second = children
    assert first[first.index("--first") + 1:first.index("--last") + 2] == ["0", "--last", "5"]
    assert "--crash" in first and "--crash" not in second
    assert second[second.index("--first") + 1:second.index("--last") + 2] == ["5", "--last", "10"]


def test_demo_file_count_includes_the_disk_queue_and_notes_a_stale_count(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The file's count is its messages plus its disk queue's; the "(not the last count" note
    shows only when it differs from the killed process's own count."""
    _, out = _run_demo(monkeypatch, capsys, list(range(10)), inflight=4, in_flight=1,
                       never_sent=1, on_disk=2)
    assert "publisher.session holds 4 message(s) to finish (1 sent and unconfirmed, 3 never sent," in out
    assert "(not the last count" not in out, out
    _, out = _run_demo(monkeypatch, capsys, list(range(10)), inflight=3, in_flight=1)
    assert "(not the last count" in out, out


def test_demo_amqtt_notes_only_where_they_apply(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Against the embedded amqtt: a QoS 2 duplicate with nothing missing is blamed on the
    broker with the note; a loss with nothing left unacknowledged is "acknowledged, never
    delivered"; a loss with flows left open is a plain FAILED; the PUBREL note only with
    flows left; "(mosquitto is not installed)" only for --embedded auto."""
    code, out = _run_demo(monkeypatch, capsys, [*range(10), 1], amqtt=True, argv=["demo", "--count", "10"])
    assert code == 1 and "its own amqtt broker on 127.0.0.1:1 (mosquitto is not installed)" in out
    assert "RESULT: FAILED because of the broker: QoS 2 message(s) [1] delivered twice" in out, out
    assert cli.AMQTT_QOS2_NOTE in out and "does not answer a PUBREL" not in out, out
    code, out = _run_demo(monkeypatch, capsys, list(range(9)), amqtt=True,
                          argv=["demo", "--count", "10", "--embedded", "amqtt"])
    assert code == 1 and "(mosquitto is not installed)" not in out, out
    assert "RESULT: FAILED because of the broker: acknowledged, never delivered (missing [9]" in out
    code, out = _run_demo(monkeypatch, capsys, [*range(9), 1], amqtt=True, left=1,
                          argv=["demo", "--count", "10"])
    assert code == 1 and "does not answer a PUBREL" in out, out
    assert "RESULT: FAILED (missing [9], QoS 2 duplicates [1])" in out, out
    assert cli.AMQTT_QOS2_NOTE not in out, out


def test_demo_auto_uses_mosquitto_when_installed(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--embedded auto with mosquitto found starts mosquitto, not amqtt."""
    monkeypatch.setattr(mqttsession.testing.brokers, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    monkeypatch.setattr(mqttsession.testing, "MosquittoBroker", _FakeEmbedded)
    code, out = _run_demo(monkeypatch, capsys, list(range(10)), argv=["demo", "--count", "10"])
    assert code == 0 and "mqttsession demo against its own mosquitto broker on 127.0.0.1:1\n" in out


def test_demo_embedded_amqtt_missing_or_failing_is_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """amqtt not installed: its message, exit 2; amqtt failing to start: one line naming
    both ways out, exit 2."""
    from mqttsession.testing import BrokerStartError

    monkeypatch.setattr(mqttsession.testing.brokers, "amqtt_missing", lambda *_a: "no amqtt here")
    assert cli.main(["demo", "--embedded", "amqtt"]) == 2
    assert capsys.readouterr().err == "no amqtt here\n"

    class Failing(_FakeEmbedded):
        def start(self) -> _FakeEmbedded:
            raise BrokerStartError("boom")

    monkeypatch.setattr(mqttsession.testing.brokers, "amqtt_missing", lambda *_a: None)
    monkeypatch.setattr(mqttsession.testing, "EmbeddedAmqtt", Failing)
    assert cli.main(["demo", "--embedded", "amqtt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mqttsession demo: starting the embedded amqtt broker failed: boom;"), err
    assert err.endswith(" (or pass --broker HOST:PORT of a running broker)\n"), err


def test_demo_refusal_hint_for_bad_credentials(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """CONNACK 0x86 (bad user name or password) also gets the "sends no user name" hint."""
    import paho.mqtt.client as mqtt

    monkeypatch.setattr(mqtt, "Client", _FakeSub)
    _FakeSub.rc, _FakeSub.connect_error = 0x86, None
    try:
        assert cli.main(["demo", "--broker", "127.0.0.1:1883"]) == 2
    finally:
        _FakeSub.rc = 0
    assert "(the demo sends no user name or password)" in capsys.readouterr().err


def test_demo_connect_value_error_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """paho's ValueError from connect (a host it will not take) is said in one line, exit 2."""
    import paho.mqtt.client as mqtt

    monkeypatch.setattr(mqtt, "Client", _FakeSub)
    _FakeSub.connect_error = ValueError("Invalid host.")
    try:
        assert cli.main(["demo", "--broker", "127.0.0.1:1883"]) == 2
    finally:
        _FakeSub.connect_error = None
    assert capsys.readouterr().err.startswith("mqttsession demo: cannot connect to 127.0.0.1:1883")


class _Crashed(Exception):
    pass


class _FakeClient:
    log: list[Any] = []

    def __init__(self, **_k: Any) -> None:
        self.outgoing_messages: list[int] = []

    def config(self, text: str) -> None:
        _FakeClient.log.append(("config", text))

    def restore_session(self, text: str) -> None:
        _FakeClient.log.append("restore")

    def connect(self, host: str, port: int, timeout: float) -> None:
        _FakeClient.log.append("connect")

    def publish_message(self, topic: str, qos: int, payload: str) -> None:
        _FakeClient.log.append((payload, qos))

    def flush(self, timeout: float) -> None:
        _FakeClient.log.append("flush")

    def disconnect(self) -> None:
        _FakeClient.log.append("disconnect")


def _publisher_args(crash: bool) -> argparse.Namespace:
    return argparse.Namespace(client_id="p", state="/nonexistent/p.session", broker=("h", 1),
                              first=2, last=6, topic="t", crash=crash)


def test_demo_publisher_alternates_qos_restores_first_and_flushes(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The child: restore before connect, n sent at QoS 1 + n % 2, flush before disconnect; with
    --crash it ends (os._exit) without flushing or disconnecting."""
    monkeypatch.setattr(mqttsession.client, "Client", _FakeClient)
    _FakeClient.log = []
    assert cli._demo_publisher(_publisher_args(crash=False)) == 0
    assert _FakeClient.log[1:] == ["restore", "connect", ("2", 1), ("3", 2), ("4", 1), ("5", 2),
                                   "flush", "disconnect"], _FakeClient.log
    assert capsys.readouterr().out == "0 0\n"

    def exit_(code: int) -> None:
        raise _Crashed(code)

    monkeypatch.setattr(cli.os, "_exit", exit_)
    _FakeClient.log = []
    with pytest.raises(_Crashed):
        cli._demo_publisher(_publisher_args(crash=True))
    assert "flush" not in _FakeClient.log and "disconnect" not in _FakeClient.log


def test_run_child_reads_held_then_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's last line is "HELD IN_FLIGHT"."""
    done = types.SimpleNamespace(returncode=0, stdout="3 1\n", stderr="")
    monkeypatch.setattr(cli.subprocess, "run", lambda *_a, **_k: done)
    assert cli._run_child(["x"]) == (3, 1)


def test_run_child_failure_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher child that exits non-zero is an MQTTSessionError with its stderr."""
    done = types.SimpleNamespace(returncode=1, stdout="0 0\n", stderr="boom")
    monkeypatch.setattr(cli.subprocess, "run", lambda *_a, **_k: done)
    with pytest.raises(MQTTSessionError, match="boom"):
        cli._run_child(["x"])


# ------------------------------------------------------------------------------ argument types


def test_argument_bounds_are_inclusive() -> None:
    """--jobs 1..32, --count 2..1000000, --timeout (0, 60]: each end given is taken."""
    assert cli._jobs("1") == 1 and cli._jobs("32") == 32
    assert cli._count("2") == 2 and cli._count("1000000") == 1_000_000
    assert cli._positive("60") == 60.0
    for bad in ("0", "33"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._jobs(bad)
    for bad in ("0", "-1", "60.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._positive(bad)


def test_brokers_list_drops_empty_names() -> None:
    assert cli._brokers("mosquitto, ,amqtt,") == ["mosquitto", "amqtt"]


def test_same_node_needs_the_same_port_and_an_address_in_common() -> None:
    """Unresolvable names compare as text; different ports or addresses are other nodes."""
    assert cli._same_node(("nosuch.invalid", 1883), ("nosuch.invalid", 1883))
    assert not cli._same_node(("127.0.0.1", 1883), ("127.0.0.1", 1884))
    assert not cli._same_node(("127.0.0.1", 1883), ("127.0.0.2", 1883))


# ------------------------------------------------------------------------------ compat


def _compat_target(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   *argv: str, stdin: str = "") -> tuple[int, list[Target]]:
    """Run ``compat`` with check_broker failing: the Targets it was asked to check."""
    seen: list[Target] = []

    def check(target: Target) -> None:
        seen.append(target)
        raise BrokerUnavailable("nope")

    monkeypatch.setattr(mqttsession.compat, "check_broker", check)
    monkeypatch.setattr(cli.sys, "stdin", io.StringIO(stdin))
    code = cli.main(["compat", "--broker", "127.0.0.1:1883", *argv])
    capsys.readouterr()
    return code, seen


def test_compat_takes_credentials_timeout_and_failover(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """User name and password from the environment, --timeout passed on; --password - reads a
    line of stdin (its spaces kept); a dead --failover node is exit 2 too."""
    monkeypatch.setenv("MQTTSESSION_USERNAME", "env-user")
    monkeypatch.setenv("MQTTSESSION_PASSWORD", "env-pw")
    code, (t,) = _compat_target(monkeypatch, capsys, "--timeout", "7")
    assert code == 2 and (t.username, t.password, t.timeout) == ("env-user", "env-pw", 7.0)
    _, (t,) = _compat_target(monkeypatch, capsys, "--password", "-", stdin=" s p \n")
    assert t.password == " s p "
    calls: list[Target] = []

    def check(target: Target) -> None:
        calls.append(target)
        if target.port == 1884:
            raise BrokerUnavailable("dead failover")

    monkeypatch.setattr(mqttsession.compat, "check_broker", check)
    assert cli.main(["compat", "--broker", "127.0.0.1:1883", "--failover", "127.0.0.2:1884"]) == 2
    assert [c.port for c in calls] == [1883, 1884]


@pytest.mark.parametrize("argv,stdin", [(["--password-prompt", "--password", "x"], "pw\n"),
                                        (["--password-prompt"], "")])
def test_compat_password_prompt_misuse_is_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], stdin: str) -> None:
    """--password-prompt with a --password, or with nothing on stdin: a usage error."""
    code, seen = _compat_target(monkeypatch, capsys, *argv, stdin=stdin)
    assert code == 2 and seen == []


def test_compat_runs_with_the_jobs_asked_and_titles_the_protocol(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--jobs is passed on to run_all; --protocol 5 titles the table "MQTT 5"."""
    asked: list[int] = []

    def run_all(_target: Target, _scenarios: Any, jobs: int = 0) -> list[Any]:
        asked.append(jobs)
        return []

    monkeypatch.setattr(mqttsession.compat, "check_broker", lambda _t: None)
    monkeypatch.setattr(mqttsession.compat, "run_all", run_all)
    assert cli.main(["compat", "--broker", "127.0.0.1:1883", "--jobs", "2", "--protocol", "5"]) == 0
    assert asked == [2]
    assert capsys.readouterr().out.startswith("mqttsession compat: 127.0.0.1:1883, MQTT 5")


def test_compat_list_json_has_no_311_spec_for_mqtt5_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compat", "--list", "--json"]) == 0
    doc = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    only5 = [s for s in SCENARIOS if 4 not in s.protocols]
    assert only5 and all(doc[s.name]["spec_3_1_1"] is None for s in only5)


def test_compat_matrix_exit_code_and_broker_names(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--fast runs the fast brokers; an unknown name is exit 2 before any runs; a skipped
    broker makes the exit code 2."""
    asked: list[list[str]] = []

    def run_matrix(names: list[str], **_k: Any) -> list[matrix_mod.BrokerRun]:
        asked.append(list(names))
        return [matrix_mod.BrokerRun(name=n, skipped="not here" if n == "aedes" else "")
                for n in names]

    monkeypatch.setattr(matrix_mod, "run_matrix", run_matrix)
    monkeypatch.setattr(matrix_mod, "format_text", lambda _runs: "")
    monkeypatch.setattr(matrix_mod, "update_readme", lambda *_a: pytest.fail("README.rst rewritten"))
    assert cli.main(["compat", "--matrix", "--fast", "--json"]) == 2
    assert asked == [list(matrix_mod.FAST_BROKERS)]
    assert cli.main(["compat", "--matrix", "--brokers", "mosquitto"]) == 0
    assert cli.main(["compat", "--matrix", "--brokers", "mosquitto,nosuch"]) == 2
    assert len(asked) == 2
    assert cli.main(["compat", "--matrix", "--scenario", "x"]) == 2 and len(asked) == 2
    checked: list[Target] = []

    def check(target: Target) -> None:
        checked.append(target)
        raise BrokerUnavailable("nope")

    monkeypatch.setattr(mqttsession.compat, "check_broker", check)
    assert cli.main(["compat", "--broker", "127.0.0.1:1883", "--update-readme"]) == 2
    assert checked == []
    monkeypatch.setattr(cli.os, "access", lambda *_a: False)  # (root may write a 0o444 file)
    assert cli.main(["compat", "--matrix", "--update-readme", "--brokers", "mosquitto"]) == 2
    assert len(asked) == 2 and "not writable" in capsys.readouterr().err


# ------------------------------------------------------------------------------ main


@pytest.mark.parametrize("exc,code", [(cli._BadArguments("bad"), 2), (KeyboardInterrupt(), 130),
                                      (MQTTSessionError("x"), 1)])
def test_main_exit_codes(monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int) -> None:
    def boom(_args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(cli, "_inspect", boom)
    assert cli.main(["inspect", "x"]) == code
