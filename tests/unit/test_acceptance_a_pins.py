"""Acceptance pins (audit A) for points of issues 2 and 5 no other test held: the packaging
files, what .ci/run runs, no pickle / eval on the state-reading path, the scenario list issue 5
asks for, and the comments of broker_conf/."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest

from mqttsession.compat import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def _names(block: str) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
            for line in block.splitlines() if line.strip()}


def test_pyproject_holds_only_the_build_backend() -> None:
    """Issue 2, point 1: a minimal pyproject.toml holding only the build backend (the metadata
    is setup.cfg's, declarative)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    tables = re.findall(r"^\[([^\]]+)\]", text, flags=re.M)
    assert tables == ["build-system"], tables
    assert re.search(r'^build-backend\s*=\s*"setuptools\.build_meta"', text, flags=re.M)
    assert "[project]" not in text


def test_setup_cfg_has_the_console_script_the_test_extra_and_py_typed() -> None:
    """Issue 2, point 1: declarative setup.cfg with a ``mqttsession`` console script, a ``test``
    extra bringing pytest and hypothesis (and the brokers' amqtt), and ``py.typed`` shipped."""
    cfg = _setup_cfg()
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "mqttsession = mqttsession.cli:main" in [s.strip() for s in scripts.splitlines()]
    assert {"pytest", "hypothesis", "amqtt"} <= _names(cfg["options.extras_require"]["test"])
    assert "paho-mqtt" in _names(cfg["options"]["install_requires"])
    assert (ROOT / "mqttsession" / "py.typed").is_file()
    assert "py.typed" in cfg["options.package_data"]["mqttsession"]
    assert (ROOT / "README.rst").is_file()


def test_ci_run_installs_brokers_and_extras_and_type_checks_strictly() -> None:
    """Issue 2, point 2 and acceptance: .ci/run installs mosquitto and mosquitto-clients with
    apt-get, the package with its ``test`` extra (pip install -e), and runs
    ``mypy --strict mqttsession`` before the tests."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"apt-get update", ci)
    install = [line for line in ci.splitlines() if "apt-get install" in line]
    assert install and {"mosquitto", "mosquitto-clients"} <= set(install[0].split())
    assert re.search(r'pip install [^\n]*-e "\.\[test[^"]*\]"', ci)
    lines = [line.strip() for line in ci.splitlines()]
    assert "python3 -m mypy --strict mqttsession" in lines
    assert lines.index("python3 -m mypy --strict mqttsession") < lines.index("python3 -m pytest")


STATE_READERS = ["codec.py", "journal.py", "recovery.py", "expiry.py", "state.py",
                 "inspecting.py"]


@pytest.mark.parametrize("module", STATE_READERS)
def test_state_reading_modules_use_no_pickle_and_no_eval(module: str) -> None:
    """Issue 2, point 4 (codec.py): "No pickle, no eval": the modules that read a state text or
    file import no pickle / marshal / shelve and call no eval / exec."""
    tree = ast.parse((ROOT / "mqttsession" / module).read_text(encoding="utf-8"))
    imported: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
    assert not imported & {"pickle", "marshal", "shelve", "dill"}, imported
    assert not called & {"eval", "exec", "compile"}, called


# issue 5, point 2: the scenarios asked for, by name, with the spec statement each checks
WANTED: dict[str, tuple[set[int], str]] = {
    "session-present-new": ({4, 5}, "MQTT-3.2.2-3"),
    "session-present-clean": ({4, 5}, "MQTT-3.2.2-1"),
    "session-present-resumed": ({4, 5}, "MQTT-3.2.2-2"),
    "offline-queue-qos1": ({4, 5}, "MQTT-3.1.2-5"),
    "offline-queue-qos2": ({4, 5}, "MQTT-3.1.2-5"),
    "redelivery-qos1": ({4, 5}, "MQTT-4.4.0-1/3.3.1-1"),
    "redelivery-qos2": ({4, 5}, "MQTT-4.4.0-1/3.3.1-1"),
    "resume-pubrel": ({4, 5}, "MQTT-4.4.0-1/4.3.3-1"),
    "qos2-dedupe-connection": ({4, 5}, "MQTT-4.3.3-2"),
    "qos2-dedupe-reconnect": ({4, 5}, "MQTT-4.3.3-2"),
    "queued-not-retained": ({4, 5}, "MQTT-3.3.1-9"),
    "delivered-qos-min": ({4, 5}, "MQTT-3.8.4-6"),
    "clean-discards-session": ({4, 5}, "MQTT-3.1.2-6"),
    "takeover": ({4, 5}, "MQTT-3.1.4-2"),
    "expiry-zero": ({5}, "3.1.2.11.2"),
    "expiry-passes": ({5}, "MQTT-4.1.0-2"),
    "expiry-not-passed": ({5}, "MQTT-3.1.2-23"),
    "expiry-never": ({5}, "3.1.2.11.2"),
    "expiry-set-on-disconnect": ({5}, "3.14.2.2.2"),
}


def test_compat_has_every_scenario_issue_5_asks_for_with_its_spec_id() -> None:
    """Issue 5, point 2: SessionPresent (3.2.2-1..3), offline queueing (3.1.2-5), redelivery with
    DUP and the same id (4.4.0-1, 3.3.1-1), PUBREL-only resume, QoS 2 dedupe on one connection
    and across a reconnect, not retained, min QoS, clean discards, take-over, and the five
    MQTT 5 expiry cases: each a scenario, on the protocols it applies to, naming its spec id."""
    by_name = {s.name: s for s in SCENARIOS}
    missing = sorted(set(WANTED) - set(by_name))
    assert not missing, missing
    for name, (protocols, spec4) in WANTED.items():
        s = by_name[name]
        assert set(s.protocols) == protocols, (name, s.protocols)
        assert s.spec4 == spec4, (name, s.spec4)
        assert s.spec5 and s.summary, name


@pytest.mark.parametrize("conf", sorted(p.name for p in (ROOT / "broker_conf").iterdir()))
def test_every_broker_conf_file_is_commented(conf: str) -> None:
    """Issue 5, point 5: broker_conf/ holds the configs the tests, the tool and the docs use,
    each commented."""
    text = (ROOT / "broker_conf" / conf).read_text(encoding="utf-8")
    comment = r"<!--" if conf.endswith(".xml") else r"^\s*(#|%)"
    assert re.search(comment, text, flags=re.M), conf
