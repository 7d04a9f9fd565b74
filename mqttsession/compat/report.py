"""Compatibility results as a text table or a JSON document."""

from __future__ import annotations

from collections.abc import Sequence

from .scenarios import SCENARIOS, Result, Status

__all__ = ["all_passed", "format_list", "format_table", "summary", "to_json"]


def all_passed(results: Sequence[Result]) -> bool:
    """True when every applicable scenario passed (none failed)."""
    return all(r.status is not Status.FAIL for r in results)


def summary(results: Sequence[Result], seconds: float) -> str:
    count = {s: sum(r.status is s for r in results) for s in Status}
    info = f" {count[Status.INFO]} informative," if count[Status.INFO] else ""
    return (f"{count[Status.PASS]} passed, {count[Status.FAIL]} failed,{info}"
            f" {count[Status.NA]} not applicable in {seconds:.1f} s")


def format_table(results: Sequence[Result], title: str, seconds: float) -> str:
    """One row per scenario: name, spec statement, pass / FAIL reason / n/a."""
    name_w = max([len("scenario"), *(len(r.name) for r in results)])
    spec_w = max([len("spec"), *(len(r.spec) for r in results)])
    lines = [title, f"{'scenario':<{name_w}}  {'spec':<{spec_w}}  result"]
    for r in results:
        tail = f"  {r.reason}" if r.reason else ""
        lines.append(f"{r.name:<{name_w}}  {r.spec:<{spec_w}}  {r.status.label:<4}{tail}".rstrip())
    lines.append(summary(results, seconds))
    return "\n".join(lines)


def to_json(results: Sequence[Result], *, broker: str, protocol: int, embedded: str | None,
            seconds: float) -> dict[str, object]:
    """The machine-readable report (``mqttsession compat --json``)."""
    return {
        "broker": broker,
        "embedded": embedded,
        "protocol": protocol,
        "ok": all_passed(results),
        "passed": sum(r.status is Status.PASS for r in results),
        "failed": sum(r.status is Status.FAIL for r in results),
        "not_applicable": sum(r.status is Status.NA for r in results),
        "informative": sum(r.status is Status.INFO for r in results),
        "seconds": round(seconds, 3),
        "results": [r.to_json() for r in results],
    }


def format_list() -> str:
    """The scenarios with their spec statements for MQTT 3.1.1 and 5."""
    name_w = max(len(s.name) for s in SCENARIOS)
    spec_w = max(len(s.spec4) for s in SCENARIOS)
    lines = [f"{'scenario':<{name_w}}  {'MQTT 3.1.1':<{spec_w}}  {'MQTT 5':<{spec_w}}  checks"]
    for s in SCENARIOS:
        spec4 = s.spec4 if 4 in s.protocols else "n/a"
        lines.append(f"{s.name:<{name_w}}  {spec4:<{spec_w}}  {s.spec5:<{spec_w}}  {s.summary}")
    return "\n".join(lines)
