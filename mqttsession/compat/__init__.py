"""Broker compatibility: session scenarios run with raw MQTT packets (``mqttsession compat``).

``run_all(Target(host, port, protocol))`` runs every scenario and returns one ``Result`` each;
``check_broker`` first tells an unreachable or protocol-refusing broker apart, and one that does
not let the user publish and subscribe under ``TOPIC_ROOT/#`` (``BrokerUnavailable``). ``raw`` is the packet codec and blocking client they use.
"""

from __future__ import annotations

from .report import all_passed, format_list, format_table, summary, to_json
from .scenarios import (
    SCENARIOS,
    TOPIC_ROOT,
    BrokerUnavailable,
    Context,
    Fail,
    Result,
    Scenario,
    Status,
    Target,
    check_broker,
    find_scenarios,
    run_all,
    run_scenario,
)

__all__ = [
    "SCENARIOS",
    "TOPIC_ROOT",
    "BrokerUnavailable",
    "Context",
    "Fail",
    "Result",
    "Scenario",
    "Status",
    "Target",
    "all_passed",
    "check_broker",
    "find_scenarios",
    "format_list",
    "format_table",
    "run_all",
    "run_scenario",
    "summary",
    "to_json",
]
