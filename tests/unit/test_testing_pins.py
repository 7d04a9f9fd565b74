"""Pins on the test tools of ``mqttsession.testing`` found by a mutation hunt, with no broker,
no socket server and no subprocess:

* ``brokers``: ``free_port`` binds loopback only; ``find_binary``'s order (an unusable
  ``$ENV`` path is not used, a non-executable candidate is skipped); where configuration
  templates come from (``$MQTTSESSION_BROKER_CONF``, the checkout's ``broker_conf/``, the
  built-in copies and what they must say); the configuration a mosquitto gets (listener on
  127.0.0.1, the persistence prefix, ``extra_config``); the log tail of a start error; the log
  of the latest run; the amqtt child's ``PYTHONPATH``;
* ``pytest_plugin``: ``in_ci``, the skip-or-fail of a missing mosquitto, the markers given by
  fixture, the log sections of a failing test's report, stopping every broker of a factory;
* ``node_brokers`` / ``server_brokers``: the argument lists (every listener on 127.0.0.1) and
  the errors when a broker cannot run here.
"""

from __future__ import annotations

import os
import socket
import types
from pathlib import Path
from typing import Any

import pytest

import mqttsession.testing.brokers as brokers
import mqttsession.testing.server_brokers as server_brokers
from mqttsession.testing import pytest_plugin
from mqttsession.testing.brokers import AmqttProcess, MosquittoBroker, find_binary, load_template
from mqttsession.testing.node_brokers import AedesBroker, AedesCluster, RedisServer

# ------------------------------------------------------------------------------ brokers.py


def test_free_port_binds_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``free_port()`` looks for a port on 127.0.0.1, never on every interface."""
    bound: list[Any] = []
    real = socket.socket

    class Recording(real):  # type: ignore[misc, valid-type]
        def bind(self, address: Any) -> None:
            bound.append(address)
            super().bind(address)

    monkeypatch.setattr(brokers.socket, "socket", Recording)
    port = brokers.free_port()
    assert bound == [("127.0.0.1", 0)]
    assert 0 < port < 65536


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_find_binary_env_path_not_executable_is_none(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``$ENV`` naming a file that cannot run gives None (not that path, not PATH's)."""
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    monkeypatch.setenv("MQTTSESSION_PIN_BIN", str(plain))
    assert find_binary("MQTTSESSION_PIN_BIN", "sh") is None
    monkeypatch.setenv("MQTTSESSION_PIN_BIN", str(_executable(tmp_path / "x")))
    assert find_binary("MQTTSESSION_PIN_BIN", "sh") == str(tmp_path / "x")


def test_find_binary_skips_candidates_that_cannot_run(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates are tried in order, and only an executable one is returned."""
    monkeypatch.delenv("MQTTSESSION_PIN_BIN", raising=False)
    plain = tmp_path / "plain"
    plain.write_text("")
    good = _executable(tmp_path / "good")
    found = find_binary("MQTTSESSION_PIN_BIN", "mqttsession-no-such-binary",
                        (str(tmp_path / "missing"), str(plain), str(good)))
    assert found == str(good)


def test_start_error_tail_keeps_the_end_of_the_log() -> None:
    """A long log is cut at its start: the end (where the broker's error is) is kept."""
    text = "a" * 10 + "b" * 10
    assert brokers._tail(text, limit=10) == "...\n" + "b" * 10
    assert brokers._tail(text, limit=20) == text


def test_builtin_templates_bind_loopback_and_set_persistence(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a ``broker_conf/`` (installed wheel), the built-in templates listen on 127.0.0.1
    only, and say persistence off / on (saved in the given dir, only at shutdown)."""
    monkeypatch.setenv("MQTTSESSION_BROKER_CONF", str(tmp_path))  # an empty directory
    text, origin = load_template("mosquitto.conf")
    assert origin == "<built-in mosquitto.conf>"
    lines = text.splitlines()
    assert lines[0] == "listener {port} 127.0.0.1"
    assert "persistence false" in lines and "allow_anonymous true" in lines
    text, _ = load_template("mosquitto-persist.conf")
    lines = text.splitlines()
    assert lines[0] == "listener {port} 127.0.0.1"
    for line in ("persistence true", "persistence_location {persistence_dir}",
                 "autosave_interval 0"):
        assert line in lines
    text, _ = load_template("amqtt.yaml")
    assert 'bind: "127.0.0.1:{port}"' in text


def test_templates_come_from_the_conf_dir_by_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``$MQTTSESSION_BROKER_CONF/NAME`` wins over the built-in copy of NAME."""
    (tmp_path / "mosquitto.conf").write_text("listener {port} 127.0.0.1\n# mine\n")
    monkeypatch.setenv("MQTTSESSION_BROKER_CONF", str(tmp_path))
    assert load_template("mosquitto.conf") == ("listener {port} 127.0.0.1\n# mine\n",
                                               str(tmp_path / "mosquitto.conf"))


def test_empty_conf_env_means_the_checkouts_broker_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MQTTSESSION_BROKER_CONF=""`` is unset, not the current directory."""
    monkeypatch.setenv("MQTTSESSION_BROKER_CONF", "")
    assert brokers.broker_conf_dir() == brokers._PACKAGE_DIR.parent / "broker_conf"


def _rendered_mosquitto(**kwargs: Any) -> tuple[MosquittoBroker, str]:
    broker = MosquittoBroker(mosquitto_bin="/nonexistent/mosquitto", **kwargs)
    broker._port = 18830  # as start() would have chosen; nothing is started
    broker._prepare()
    return broker, broker.config_path.read_text()


def test_mosquitto_config_listens_on_loopback_with_the_chosen_port() -> None:
    """The rendered mosquitto.conf has ``listener PORT 127.0.0.1`` and no other listener."""
    broker, text = _rendered_mosquitto()
    try:
        listeners = [line for line in text.splitlines() if line.startswith(("listener", "port"))]
        assert listeners == ["listener 18830 127.0.0.1"]
        assert "persistence false" in text.splitlines()
    finally:
        broker.cleanup()


def test_mosquitto_persistence_location_is_a_created_dir_with_trailing_separator(
        tmp_path: Path) -> None:
    """mosquitto treats ``persistence_location`` as a prefix: it must end with the separator, and
    the directory must exist before the broker starts."""
    where = tmp_path / "not" / "yet"
    broker, text = _rendered_mosquitto(conf_template="mosquitto-persist.conf",
                                       persistence_dir=where)
    try:
        assert f"persistence_location {where.resolve()}{os.sep}" in text.splitlines()
        assert where.is_dir()
    finally:
        broker.cleanup()


def test_mosquitto_extra_config_lines_are_appended_on_lines_of_their_own(tmp_path: Path) -> None:
    """``extra_config`` goes after the template, on its own lines, even after a template whose
    last line has no newline."""
    template = tmp_path / "t.conf"
    template.write_text("listener {port} 127.0.0.1")  # no final newline
    broker, text = _rendered_mosquitto(conf_template=template,
                                       extra_config="max_inflight_messages 3\nmax_queued_messages 9\n\n")
    try:
        lines = text.splitlines()
        assert lines[1:] == ["listener 18830 127.0.0.1", "# extra_config",
                             "max_inflight_messages 3", "max_queued_messages 9"]
    finally:
        broker.cleanup()


def test_log_since_start_is_the_latest_runs_output() -> None:
    """``log_since_start()`` leaves out what earlier runs logged."""
    broker = MosquittoBroker(mosquitto_bin="/nonexistent/mosquitto")
    try:
        broker.log_path.write_text("first run\nsecond run\n")
        broker._log_offset = len("first run\n")
        assert broker.log_since_start() == "second run\n"
        assert broker.log_text() == "first run\nsecond run\n"
    finally:
        broker.cleanup()


def test_amqtt_child_imports_this_mqttsession_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The amqtt child's PYTHONPATH starts with this checkout, before the caller's own."""
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    broker = AmqttProcess()
    try:
        path = broker._env()["PYTHONPATH"].split(os.pathsep)
        assert path == [str(brokers._PACKAGE_DIR.parent), "/somewhere/else"]
    finally:
        broker.cleanup()


# ------------------------------------------------------------------------------ pytest_plugin.py


@pytest.mark.parametrize(("value", "expected"), [
    ("", False), ("0", False), ("false", False), ("False", False), (" NO ", False), ("off", False),
    ("1", True), ("true", True), ("yes", True),
])
def test_in_ci_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    """``CI`` is true unless empty, 0, false, no or off (any case, blanks ignored)."""
    monkeypatch.setenv("CI", value)
    assert pytest_plugin.in_ci() is expected


def test_missing_mosquitto_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mosquitto: the test is skipped, or failed when ``CI`` is set."""
    monkeypatch.setattr(pytest_plugin, "find_mosquitto", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mosquitto binary not found"):
        pytest_plugin.require_mosquitto()
    monkeypatch.setenv("CI", "1")
    # a skip here must fail this test, not skip it: catch both and check which
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match="CI is set") as info:
        pytest_plugin.require_mosquitto()
    assert info.type is pytest.fail.Exception


class _Item:
    """What ``pytest_collection_modifyitems`` and ``_log_sources`` read of a test item."""

    def __init__(self, fixturenames: tuple[str, ...] = (), funcargs: dict[str, Any] | None = None):
        self.fixturenames = fixturenames
        self.funcargs = funcargs or {}
        self.markers: list[str] = []

    def add_marker(self, mark: Any) -> None:
        self.markers.append(mark.name)


@pytest.mark.parametrize(("fixture", "markers"), [
    ("mosquitto", ["integration", "mosquitto"]),
    ("mosquitto_factory", ["integration", "mosquitto"]),
    ("amqtt_factory", ["integration"]),
    ("embedded_amqtt", ["integration"]),
    ("mqtt_proxy_factory", ["integration"]),
    ("aedes_cluster", ["integration", "aedes"]),
    ("tmp_path", []),
])
def test_broker_fixtures_mark_their_tests(fixture: str, markers: list[str]) -> None:
    """A test using a broker fixture gets ``integration`` (and ``mosquitto`` / ``aedes``)."""
    item = _Item(("request", fixture))
    pytest_plugin.pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert item.markers == markers


class _Source:
    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text

    def describe(self) -> str:
        return self.name

    def log_text(self) -> str:
        return self.text


def test_report_section_leaves_out_what_earlier_tests_logged() -> None:
    """A shared broker's section starts where the previous test's ended; offset 0 adds no note."""
    source = _Source("mosquitto 127.0.0.1:1", "old lines\nnew lines\n")
    assert pytest_plugin._section(source, 0) == ("mosquitto 127.0.0.1:1 log", "old lines\nnew lines\n")
    title, text = pytest_plugin._section(source, len("old lines\n"))
    assert title == "mosquitto 127.0.0.1:1 log"
    assert text == "[10 characters logged before this test left out]\nnew lines\n"
    assert pytest_plugin._section(_Source("b", ""), 0) == ("b log", "<empty>\n")


def test_report_section_keeps_the_end_of_a_long_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the limit, the section keeps the log's last characters (the failure is near them)."""
    monkeypatch.setattr(pytest_plugin, "_MAX_SECTION_CHARS", 5)
    _, text = pytest_plugin._section(_Source("b", "0123456789"), 0)
    assert text == "[first 5 characters left out]\n56789"


class _Outcome:
    def __init__(self, report: Any) -> None:
        self.report = report

    def get_result(self) -> Any:
        return self.report


def _make_report(item: _Item, when: str, failed: bool) -> Any:
    report = types.SimpleNamespace(failed=failed, sections=[])
    hook = pytest_plugin.pytest_runtest_makereport(item, types.SimpleNamespace(when=when))  # type: ignore[arg-type]
    next(hook)
    with pytest.raises(StopIteration):
        hook.send(_Outcome(report))
    return report


def test_only_a_failing_report_gets_log_sections() -> None:
    """A failing phase's report carries each broker's log; a passing one's carries none."""
    source = _Source("mosquitto 127.0.0.1:1", "line\n")
    item = _Item(funcargs={"mosquitto": _Factory([source])})
    assert _make_report(item, "call", failed=False).sections == []
    assert _make_report(item, "call", failed=True).sections == [("mosquitto 127.0.0.1:1 log", "line\n")]


def test_a_shared_brokers_log_mark_is_set_after_teardown() -> None:
    """What a test's teardown logs is still that test's: the next test's section starts at the
    log's length when the teardown, not the call, ended."""
    source = _Source("mosquitto 127.0.0.1:1", "first test\n")
    item = _Item(funcargs={"mosquitto": _Factory([source])})
    _make_report(item, "call", failed=False)
    assert source not in pytest_plugin._LOG_MARKS
    source.text += "its teardown\n"
    _make_report(item, "teardown", failed=False)
    assert pytest_plugin._LOG_MARKS[source] == len("first test\nits teardown\n")


class _Factory:
    def __init__(self, sources: list[Any]) -> None:
        self.sources = sources

    def log_sources(self) -> list[Any]:
        return list(self.sources)


def test_report_names_each_log_source_once() -> None:
    """A broker reachable from two fixtures gets one report section."""
    shared, other = _Source("a", ""), _Source("b", "")
    item = _Item(funcargs={"f1": _Factory([shared]), "f2": _Factory([shared, other]), "n": 3})
    assert pytest_plugin._log_sources(item) == [shared, other]  # type: ignore[arg-type]


class _Stoppable:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.calls: list[str] = []

    def stop(self) -> None:
        self.calls.append("stop")
        if self.fails:
            raise RuntimeError("would not stop")

    def kill(self) -> None:
        self.calls.append("kill")


def test_factory_teardown_kills_a_broker_that_would_not_stop_and_reports_it() -> None:
    """Teardown stops every broker; one whose stop raised is killed, and the error is raised."""
    bad, good = _Stoppable(True), _Stoppable(False)
    with pytest.raises(RuntimeError, match="would not stop"):
        pytest_plugin._stop_all([bad, good])  # type: ignore[list-item]
    assert bad.calls == ["stop", "kill"]
    assert good.calls == ["stop"]


def test_mosquitto_factory_passes_its_binary_on() -> None:
    """The factory's brokers run the binary the factory was given."""
    factory = pytest_plugin.MosquittoFactory("/opt/pin/mosquitto")
    broker = factory(start=False)
    try:
        assert broker.mosquitto_bin == "/opt/pin/mosquitto"
        assert factory.brokers == [broker]
    finally:
        factory.close()
        broker.cleanup()


# ------------------------------------------------------------------------------ node / server


def test_redis_and_aedes_arguments_bind_loopback() -> None:
    """Redis listens on 127.0.0.1 without saving; aedes nodes listen on 127.0.0.1 and reach their
    Redis there, with their id and verbosity passed on."""
    redis = RedisServer(redis_bin="/opt/pin/redis-server")
    node = AedesBroker(redis, node_id="B", verbose=True, node_bin="/opt/pin/node")
    try:
        redis._port, node._port = 16379, 11883
        assert redis._command() == [
            "/opt/pin/redis-server", "--port", "16379", "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(redis.workdir), "--protected-mode", "yes"]
        assert node._command() == [
            "/opt/pin/node", str(node.script), "--host", "127.0.0.1", "--port", "11883",
            "--redis-host", "127.0.0.1", "--redis-port", "16379", "--id", "B", "--verbose"]
    finally:
        node.cleanup()
        redis.cleanup()


def test_aedes_without_node_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No usable Node.js: making an aedes node says so (FileNotFoundError), a cluster of 0 nodes
    is refused."""
    monkeypatch.setenv("NODE_BIN", "/nonexistent/node")
    with pytest.raises(FileNotFoundError, match="Node.js not found"):
        AedesBroker()
    with pytest.raises(ValueError, match="at least one node"):
        AedesCluster(0)


def test_epmd_listens_on_loopback() -> None:
    """RabbitMQ's own epmd binds 127.0.0.1 and its free port."""
    epmd = server_brokers.EpmdServer()
    try:
        epmd._port = 14369
        assert epmd._command()[1:] == ["-port", "14369", "-address", "127.0.0.1"]
    finally:
        epmd.cleanup()


def test_ejabberd_needs_both_erlang_and_its_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """Erlang without ejabberd's application (or the reverse) is not enough."""
    monkeypatch.setattr(server_brokers, "_find_erl", lambda: "/usr/bin/erl")
    monkeypatch.setattr(server_brokers, "_ejabberd_lib", lambda: None)
    assert server_brokers.ejabberd_unavailable() == "ejabberd not installed (apt-get install -y ejabberd)"
    monkeypatch.setattr(server_brokers, "_find_erl", lambda: None)
    monkeypatch.setattr(server_brokers, "_ejabberd_lib", lambda: Path("/usr/lib/x"))
    assert server_brokers.ejabberd_unavailable() is not None


def test_activemq_names_the_missing_mqtt_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ActiveMQ without libmqtt-client-java's jars is unavailable, naming the missing ones."""
    home, share = tmp_path / "activemq", tmp_path / "java"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "activemq.jar").write_text("")
    share.mkdir()
    (share / "mqtt-client.jar").write_text("")
    monkeypatch.setattr(server_brokers, "_ACTIVEMQ_HOME", home)
    monkeypatch.setattr(server_brokers, "_JAVA_SHARE", share)
    monkeypatch.setattr(server_brokers.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert server_brokers.activemq_unavailable() == (
        "ActiveMQ's MQTT connector needs hawtdispatch.jar, hawtdispatch-transport.jar:"
        " apt-get install -y libmqtt-client-java")


def test_rabbitmq_without_its_mqtt_plugin_is_unavailable(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """rabbitmq-server alone, without the rabbitmq_mqtt plugin, cannot run the broker."""
    monkeypatch.setattr(server_brokers, "_RABBITMQ_SERVER", _executable(tmp_path / "rabbitmq-server"))
    monkeypatch.setattr(server_brokers.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(server_brokers.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert server_brokers.rabbitmq_unavailable() == "RabbitMQ's rabbitmq_mqtt plugin not found"

