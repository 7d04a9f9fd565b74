"""Acceptance pins of issues 14 and 15 that no test held (a regression audit), without a broker:

* issue 14 point 3: the aedes cluster tests skip with a clear reason only when Node.js is absent
  (packages missing under CI is an error, not a skip); ``.ci/run`` installs what they need, the
  npm packages pinned in a lock file inside the repository and Debian's redis-server;
* issue 14 point 4: CI runs the fast brokers every time and the slow ones only when asked for;
* issue 14, acceptance: README's compatibility table covers six brokers from a real run, each
  FAIL listed with its spec id and reason;
* issue 15, acceptance: CI builds the docs with warnings as errors and runs ``mypy --strict``
  on the small typed user script kept in the tests.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest

import mqttsession
from mqttsession.compat import SCENARIOS
from mqttsession.compat.matrix import MARK_END, MARK_START
from mqttsession.testing import pytest_plugin
from mqttsession.testing.pytest_plugin import require_aedes

ROOT = Path(mqttsession.__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"
AEDES = ROOT / "brokers" / "aedes"


def _fake_node(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


# ------------------------------------------------------------------ issue 14 point 3: fixtures


@pytest.mark.parametrize("ci", ["", "true"], ids=["local", "ci"])
def test_aedes_tests_skip_naming_nodejs_only_when_it_is_absent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    """Issue 14 point 3: without Node.js the aedes tests skip, saying so, also under CI."""
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("NODE_BIN", str(tmp_path / "no-node"))  # set: only it is looked at
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_aedes(redis=True)
    assert "Node.js not found" in str(skipped.value)


def test_aedes_packages_missing_under_ci_are_an_error_not_a_skip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 point 3: with Node.js 20 present, aedes' npm packages missing is a skip that says
    how to install them locally, and a failure under CI (the test must not pass by skipping)."""
    aedes = tmp_path / "aedes"
    aedes.mkdir()
    (aedes / "broker.js").write_text("")
    monkeypatch.setenv("MQTTSESSION_AEDES_DIR", str(aedes))  # no package-lock: no npm ci tried
    monkeypatch.setenv("NODE_BIN", _fake_node(tmp_path / "node", "v20.11.0"))
    monkeypatch.setattr(pytest_plugin, "_NPM_CI_TRIED", {})
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_aedes()
    assert "npm ci --prefix brokers/aedes" in str(skipped.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_aedes()
    assert "CI is set, so this is an error, not a skip" in str(failed.value)


def test_ci_installs_the_locked_aedes_packages_and_redis_server() -> None:
    """Issue 14 point 3: aedes, aedes-persistence-redis and mqemitter-redis are pinned to exact
    versions in ``brokers/aedes`` (package.json and its lock file agree), and ``.ci/run``
    installs them from the lock file (``npm ci``) and Debian's redis-server."""
    wanted = json.loads((AEDES / "package.json").read_text())["dependencies"]
    assert set(wanted) == {"aedes", "aedes-persistence-redis", "mqemitter-redis"}
    assert all(re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", v) for v in wanted.values()), wanted
    locked = json.loads((AEDES / "package-lock.json").read_text())["packages"]
    assert {name: locked[f"node_modules/{name}"]["version"] for name in wanted} == wanted
    ci = CI_RUN.read_text()
    assert re.search(r"^\s*npm ci --prefix brokers/aedes\b", ci, re.M), "npm ci of brokers/aedes"
    assert re.search(r"apt-get install\b.*\bredis-server\b", ci), "redis-server installed"


# ------------------------------------------------------------------ issue 14 point 4: CI's brokers


def test_ci_runs_the_fast_brokers_and_the_slow_ones_only_when_asked() -> None:
    """Issue 14 point 4: the default selection leaves out ``slow_brokers`` (ejabberd, RabbitMQ,
    ActiveMQ) only; the README says how to ask for them."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    addopts = cfg["tool:pytest"]["addopts"]
    assert re.findall(r'-m\s+"([^"]*)"', addopts) == ["not slow_brokers"]
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert "python3 -m pytest -m slow_brokers tests/compat/test_matrix.py" in readme


# ------------------------------------------------------------------ issue 14: README's table


def test_readme_table_covers_six_brokers_and_lists_every_fail_with_spec_and_reason() -> None:
    """Issue 14, acceptance: the README's table (written by ``compat --matrix --update-readme``)
    has a column for each of mosquitto, amqtt, aedes, ejabberd, RabbitMQ and ActiveMQ, and each
    FAIL cell appears once in the list below it with the spec statement and a reason."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    table = text.split(MARK_START, 1)[1].split(MARK_END, 1)[0]
    assert "python3 -m mqttsession compat --matrix --update-readme" in table  # from a run
    columns = dict(re.findall(r"\*\*([0-9]+)\*\* ([A-Za-z]+) ", table))
    assert {name.lower() for name in columns.values()} == {
        "mosquitto", "amqtt", "aedes", "ejabberd", "rabbitmq", "activemq"}
    names = {s.name for s in SCENARIOS}
    rows = [line.split() for line in table.splitlines() if line.split()[:1] and line.split()[0] in names]
    assert {row[0] for row in rows} == names
    fails = {(str(i), row[0]) for row in rows for i, cell in enumerate(row[1:], 1) if cell == "FAIL"}
    assert fails
    listed = re.findall(r"^- ([0-9]+) [a-z]+ [0-9.]+, ``([a-z0-9-]+)`` \(([^)]+)\): (.+)$", table,
                        re.M)
    assert {(col, name) for col, name, _, _ in listed} == fails
    assert len(listed) == len(fails)
    for _, name, spec, reason in listed:
        assert re.fullmatch(r"(MQTT-)?[0-9][0-9./-]*(/[0-9.-]+)*", spec), (name, spec)
        assert len(reason.strip()) > 10, (name, reason)


# ------------------------------------------------------------------ issue 15: CI checks


def test_ci_builds_the_docs_with_warnings_as_errors_and_type_checks_the_user_script() -> None:
    """Issue 15, acceptance: ``.ci/run`` builds the Sphinx docs with ``-W`` and runs
    ``mypy --strict`` on ``tests/typecheck/user_script.py``, which exists."""
    ci = CI_RUN.read_text()
    assert re.search(r"-m sphinx -W\b[^\n]*\bdocs\b", ci), "sphinx -W on docs"
    assert re.search(r"-m mypy --strict[^\n]*\\?\n?[^\n]*tests/typecheck/user_script\.py", ci), \
        "mypy --strict on the user script"
    assert (ROOT / "tests" / "typecheck" / "user_script.py").is_file()


def test_readme_brokers_section_has_an_entry_for_each_of_the_six_brokers() -> None:
    """Issue 14 point 6: README's "Brokers" section says, per broker, what it does and what
    mqttsession does about it: an entry for each of the six brokers of the matrix, and the
    settings the client-side answers need are named there."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    start = text.index("\nBrokers\n-------\n")
    section = text[start:text.index(MARK_START) if MARK_START in text[start:] else len(text)]
    for broker in ("mosquitto 2.0", "amqtt 0.12", "aedes 1.2", "ejabberd 23.01", "RabbitMQ 3.10",
                   "ActiveMQ Classic 5.17"):
        assert broker in section, broker
    for setting in ("FailoverRepublish", "ReleasedOnSessionLost"):
        assert f"``{setting}" in section, setting


def test_guarantees_page_says_what_survives_what_the_qos2_window_and_each_sync_mode() -> None:
    """Issue 15 point 5: the guarantees page holds what survives what (``kill -9``, a power
    cut), the exact QoS 2 duplicate window, and a row for each ``SessionSync`` mode."""
    text = (ROOT / "docs" / "guarantees.rst").read_text(encoding="utf-8")
    assert "``kill -9``" in text and "power cut" in text
    assert re.search(r"^The QoS 2 duplicate window\n[-=~^]{10,}$", text, re.M)
    assert "possible_duplicates" in text
    for mode in ("always", "interval", "none"):
        assert re.search(rf"^``{mode}``\s{{2,}}\S", text, re.M), mode
