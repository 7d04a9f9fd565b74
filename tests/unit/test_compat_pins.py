"""Pins on ``mqttsession/compat/report.py`` and ``compat/matrix.py`` found by a mutation hunt,
with no broker, socket or subprocess:

* the report: ``ok`` in the JSON is false after a FAIL, the table says FAIL (capitals) with its
  reason, ``--list`` shows n/a as the 3.1.1 statement of an MQTT 5 only scenario;
* the README table: a FAIL list with nothing but FAILs, the n/a list without "MQTT 5 only", the
  SessionPresent=0 notes for passes only, start times for brokers that started, columns in
  protocol order, an empty cell for a scenario a column did not run, random topic parts hidden;
  the markers in the wrong order or one missing are an error;
* ``run_broker`` / ``run_matrix`` with a fake broker: an unavailable one is not started, one that
  does not start is a skipped row, a refused protocol does not stop the next one, credentials and
  the scenario subset are passed on, and the broker is stopped even when a run crashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mqttsession.compat import SCENARIOS, BrokerUnavailable, Target, find_scenarios
from mqttsession.compat import matrix as matrix_mod
from mqttsession.compat.matrix import (
    MARK_END,
    MARK_START,
    BrokerRun,
    BrokerSpec,
    format_rst,
    format_text,
    readme_table,
    run_broker,
    run_matrix,
)
from mqttsession.compat.report import format_list, format_table, summary, to_json
from mqttsession.compat.scenarios import Result, Status

# ------------------------------------------------------------------------------ report.py


def test_json_ok_is_false_after_a_fail_and_names_the_embedded_broker() -> None:
    """A broker failing a scenario is never reported ``ok``; ``embedded`` is passed on."""
    results = [Result("a", "s1", Status.PASS), Result("b", "s2", Status.FAIL, "lost it")]
    doc = to_json(results, broker="127.0.0.1:1", protocol=4, embedded="amqtt 0.12", seconds=1.0)
    assert doc["ok"] is False and doc["failed"] == 1 and doc["passed"] == 1
    assert doc["embedded"] == "amqtt 0.12"


def test_json_and_summary_count_each_status_apart() -> None:
    """n/a and informative results are neither passes nor fails, and are counted as what they
    are; every result is in the document; the protocol is the one asked."""
    results = [Result("a", "s", Status.PASS), Result("b", "s", Status.NA, "MQTT 5 only"),
               Result("c", "s", Status.INFO, "x", value="on PUBREL"), Result("d", "s", Status.NA)]
    doc = to_json(results, broker="b", protocol=5, embedded=None, seconds=0.0)
    assert (doc["ok"], doc["passed"], doc["failed"], doc["not_applicable"], doc["informative"]) == (
        True, 1, 0, 2, 1)
    assert doc["protocol"] == 5
    assert doc["results"] == [r.to_json() for r in results]
    assert summary(results, 1.0) == "1 passed, 0 failed, 1 informative, 2 not applicable in 1.0 s"


def test_table_says_fail_in_capitals_with_its_reason() -> None:
    """A FAIL row reads ``FAIL  <reason>``: the reason is the user's only clue."""
    text = format_table([Result("takeover", "MQTT-3.1.4-3", Status.FAIL, "not delivered")], "T", 0.5)
    row = next(line for line in text.splitlines() if line.startswith("takeover"))
    assert row.split()[-3:] == ["FAIL", "not", "delivered"]


def test_list_shows_na_as_the_311_statement_of_an_mqtt5_only_scenario() -> None:
    """``compat --list``: an MQTT 5 only scenario has no MQTT 3.1.1 statement."""
    only5 = next(s for s in SCENARIOS if 4 not in s.protocols)
    row = next(line for line in format_list().splitlines() if line.split()[0] == only5.name)
    assert row.split()[1:3] == ["n/a", only5.spec5]


# ------------------------------------------------------------------------------ matrix.py: README


def test_readme_markers_in_the_wrong_order_or_one_missing_are_an_error(tmp_path: Path) -> None:
    """``--update-readme`` must not rewrite anything but what lies between the two markers."""
    path = tmp_path / "README.rst"
    for text in (f"a\n{MARK_END}\nb\n{MARK_START}\nc\n", f"a\n{MARK_END}\nb\n", f"a\n{MARK_START}\nb\n"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="missing"):
            readme_table(path)


def _res(name: str, status: Status, reason: str = "") -> Result:
    return Result(name, "SPEC", status, reason)


def test_rst_lists_only_fails_as_fails_and_only_passes_as_flag_notes() -> None:
    """The FAIL list holds FAILs alone; n/a for MQTT 5 only is not listed; the SessionPresent=0
    notes are for passes (a FAIL with that reason is listed as a FAIL only)."""
    run = BrokerRun("mosq", version="mosquitto 2", results={4: [
        _res("expiry-zero", Status.NA, "MQTT 5 only"),
        _res("qos2-delivery-point", Status.INFO, "on PUBLISH"),
        _res("takeover", Status.FAIL, "SessionPresent=0 on reconnect (session)"),
    ]})
    text = format_rst([run], when="2026-12-01")
    fails = [line for line in text.splitlines() if line.startswith("- 1 mosq 3.1.1")]
    assert fails == ["- 1 mosq 3.1.1, ``takeover`` (SPEC): SessionPresent=0 on reconnect (session)"]
    assert "Each n/a" not in text and "Each pass judged" not in text
    rule = next(line for line in text.splitlines() if line.startswith("="))
    parts = rule.split("  ")  # RST simple table: columns two spaces apart
    assert len(parts) == 2 and all(set(part) == {"="} for part in parts), rule


def test_rst_and_text_of_runs_that_ran_nothing() -> None:
    """No column: no table; a refused protocol and a skipped broker are each said, in the README
    and on the terminal."""
    refused = BrokerRun("amqtt", version="amqtt 0.12", refused={5: "refused at 127.0.0.1:1234"})
    skipped = BrokerRun("ejabberd", skipped="not installed")
    text = format_rst([refused, skipped], when="2026-12-01")
    assert "===" not in text and "Columns:" not in text
    assert "- amqtt 0.12, MQTT 5: refused at 127.0.0.1:PORT" in text
    assert "- ejabberd: not installed" in text
    assert format_text([refused, skipped]).splitlines() == [
        "amqtt 0.12, MQTT 5: refused: refused at 127.0.0.1:PORT", "ejabberd: not run: not installed"]


def test_rst_columns_in_protocol_order_and_a_scenario_not_run_is_an_empty_cell() -> None:
    """Columns go MQTT 3.1.1 then 5 whatever order the run stored them in; a scenario a column
    did not run is blank, not n/a."""
    run = BrokerRun("mosq", version="mosquitto 2", results={
        5: [_res("takeover", Status.FAIL, "x"), _res("session-present-new", Status.PASS)],
        4: [_res("takeover", Status.PASS)],
    })
    text = format_rst([run], when="2026-12-01")
    assert "**1** mosquitto 2, MQTT 3.1.1; **2** mosquitto 2, MQTT 5." in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha()}
    assert rows["takeover"] == ["takeover", "pass", "FAIL"]
    assert rows["session-present-new"] == ["session-present-new", "pass"]  # column 1 blank


def test_rst_start_times_only_for_brokers_that_started_and_topic_ids_hidden() -> None:
    """A skipped broker has no start time; the scenarios' random topic part is replaced."""
    ran = BrokerRun("mosq", version="mosquitto 2", start_seconds=0.25, results={4: [
        _res("takeover", Status.FAIL, "nothing on 'mqttsession-compat/0123abcd/t'")]})
    skipped = BrokerRun("ejabberd", skipped="not installed")
    text = format_rst([ran, skipped], when="2026-12-01")
    assert "Start times here (until the broker served): mosq 0.25 s." in text
    assert "mqttsession-compat/ID/t" in text and "0123abcd" not in text


# ------------------------------------------------------------------------------ matrix.py: runs


class _Broker:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def _spec(broker: _Broker, *, unavailable: str | None = None, start_error: str | None = None,
          credentials: tuple[str, str] | None = None) -> BrokerSpec:
    def start() -> tuple[Any, str, int]:
        if start_error is not None:
            raise RuntimeError(start_error)
        return broker, "127.0.0.1", 1883

    return BrokerSpec("fake", lambda: unavailable, start, lambda: "fake 1", credentials=credentials)


def _fake_checks(monkeypatch: pytest.MonkeyPatch, refuse: set[int]) -> list[tuple[Target, Any]]:
    """check_broker refusing ``refuse``; run_all recording (target, scenarios)."""
    ran: list[tuple[Target, Any]] = []

    def check(target: Target) -> None:
        if target.protocol in refuse:
            raise BrokerUnavailable(f"refused {target.protocol}")

    def run_all(target: Target, scenarios: Any = None, jobs: int = 4) -> list[Result]:
        ran.append((target, scenarios))
        return [_res("takeover", Status.PASS)]

    monkeypatch.setattr(matrix_mod, "check_broker", check)
    monkeypatch.setattr(matrix_mod, "run_all", run_all)
    return ran


def test_run_broker_unavailable_is_not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that cannot run here is a skipped row with the reason; nothing is started."""
    ran = _fake_checks(monkeypatch, set())
    spec = _spec(_Broker(), unavailable="install it")
    spec = BrokerSpec(spec.name, spec.unavailable, lambda: pytest.fail("started"), spec.version)
    run = run_broker(spec)
    assert run.skipped == "install it" and run.results == {} and ran == []


def test_run_broker_that_does_not_start_is_skipped_with_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start failure is that broker's row ("did not start: ..."), so the exit code says so."""
    ran = _fake_checks(monkeypatch, set())
    run = run_broker(_spec(_Broker(), start_error="port in use\ntraceback"))
    assert run.skipped == "did not start: port in use" and ran == []


def test_run_broker_refused_protocol_does_not_stop_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """MQTT 3.1.1 refused: still MQTT 5 is tried; credentials go to every Target; stopped once."""
    ran = _fake_checks(monkeypatch, {4})
    broker = _Broker()
    run = run_broker(_spec(broker, credentials=("u", "p")))
    assert run.refused == {4: "refused 4"} and set(run.results) == {5}
    assert [(t.protocol, t.username, t.password) for t, _ in ran] == [(5, "u", "p")]
    assert broker.stopped == 1


def test_run_broker_stops_the_broker_when_a_run_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker is stopped by the matrix even when running the scenarios raises."""
    _fake_checks(monkeypatch, set())

    def boom(*_a: Any, **_k: Any) -> list[Result]:
        raise RuntimeError("boom")

    monkeypatch.setattr(matrix_mod, "run_all", boom)
    broker = _Broker()
    with pytest.raises(RuntimeError):
        run_broker(_spec(broker))
    assert broker.stopped == 1


def test_run_matrix_passes_the_scenario_subset_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--matrix --scenario X`` runs X alone on every broker."""
    ran = _fake_checks(monkeypatch, set())
    monkeypatch.setattr(matrix_mod, "broker_spec", lambda _name: _spec(_Broker()))
    subset = find_scenarios(["takeover"])
    runs = run_matrix(["a", "b"], scenarios=subset)
    assert len(runs) == 2 and len(ran) == 4 and all(s == subset for _, s in ran)
