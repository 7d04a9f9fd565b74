"""The user-facing documentation says what the code does: every option of the ``mqttsession``
command is named in README.rst, the pytest markers README.rst lists are setup.cfg's, every
default README.rst / docs/*.rst state for a ``config()`` setting as "``Name`` (default X" (or
"(X by default", "``Name``, default X") is a new Client's, and the modules the docs point
users to hold the names they say."""

from __future__ import annotations

import argparse
import configparser
import re
from pathlib import Path

import mqttsession
from mqttsession import cli
from mqttsession._config import SETTING_DOCS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


def _text(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


def _parser() -> argparse.ArgumentParser:
    return cli._parser()


def _options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Every long option, by subcommand ("" for the command's own)."""
    out: dict[str, set[str]] = {"": set()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name.startswith("_"):
                    continue
                out[name] = {s for a in sub._actions for s in a.option_strings
                             if s.startswith("--") and s != "--help"}
        else:
            out[""] |= {s for s in action.option_strings if s.startswith("--") and s != "--help"}
    return out


def test_every_cli_option_is_in_the_readme() -> None:
    readme = _text(ROOT / "README.rst")
    missing = sorted(f"{cmd or 'mqttsession'} {opt}" for cmd, opts in _options(_parser()).items()
                     for opt in opts if not re.search(re.escape(opt) + r"(?![\w-])", readme))
    assert not missing, f"options of the mqttsession command README.rst never names: {missing}"


def test_readme_options_exist() -> None:
    known = set().union(*_options(_parser()).values())
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    used = set()
    for line in readme.splitlines():
        if "mqttsession" in line and ("compat" in line or "demo" in line or "inspect" in line):
            used |= {m for m in re.findall(r"(?<![\w-])--[a-z][a-z-]+", line)}
    assert used - known == set(), f"README names options the command lacks: {used - known}"


def test_readme_markers_are_setup_cfgs() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    markers = {line.split(":")[0].strip() for line in cfg["tool:pytest"]["markers"].splitlines()
               if line.strip()}
    readme = _text(ROOT / "README.rst")
    section = readme[readme.index("Markers:"):]
    section = section[:section.index("the full-disk test")]
    named = set(re.findall(r"``([a-z_]+)``", section))
    assert named == markers


_UNITS = {"MiB": 2**20, "KiB": 2**10, "GiB": 2**30, "ms": 1, "s": 1, "": 1}


def _stated_defaults() -> list[tuple[str, str, str]]:
    names = "|".join(sorted((n for n, _ in SETTING_DOCS.values()), key=len, reverse=True))
    value = r"([0-9][0-9,]*(?:\.[0-9]+)?|True|False|true|false)\s*(MiB|KiB|GiB|ms|s)?\b"
    patterns = [rf"``({names})``\s*\(default\s+{value}",
                rf"``({names})``\s*\({value}\s+by default",
                rf"``({names})``,\s*default\s+{value}",
                rf"``({names})``\s*\(MQTT 5, default\s+{value}"]
    out = []
    for path in DOCS:
        text = _text(path)
        for pattern in patterns:
            for m in re.finditer(pattern, text):
                name, v, unit = m.groups()
                if v.lower() in ("true", "false"):
                    out.append((path.name, name, v.capitalize()))
                    continue
                x = float(v.replace(",", "")) * _UNITS[unit or ""]
                out.append((path.name, name, str(int(x)) if x == int(x) else str(x)))
    return out


def test_stated_defaults_are_a_new_clients() -> None:
    stated = _stated_defaults()
    assert len(stated) >= 8  # (the patterns still find what the docs say)
    c = mqttsession.Client()
    try:
        wrong = [(f, n, v, c.config(n)) for f, n, v in stated if c.config(n) != v]
    finally:
        c.close()
    assert not wrong, wrong


def test_changelog_and_readme_modules_hold_the_names_they_give() -> None:
    import mqttsession.testing
    import mqttsession.testing.node_brokers as nb
    import mqttsession.testing.server_brokers as sb

    text = _text(ROOT / "CHANGELOG.rst") + _text(ROOT / "README.rst")
    for m in re.finditer(r"``(mqttsession\.testing(?:\.\w+)?)``: ``(\w+)``", text):
        module = {"mqttsession.testing": mqttsession.testing,
                  "mqttsession.testing.node_brokers": nb,
                  "mqttsession.testing.server_brokers": sb}[m.group(1)]
        assert hasattr(module, m.group(2)), m.group(0)

