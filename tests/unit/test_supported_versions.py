"""The Python and paho-mqtt versions setup.cfg claims are the ones the code can run on.

* no module of the package uses a name that the oldest claimed Python (3.10) lacks: ``typing``
  names added in 3.11+ (``Self``, ``Never``, ...), modules added in 3.11+ (``tomllib``), or
  syntax newer than 3.10 (``except*``, PEP 695 ``type`` statements);
* every module imports on the Python running the tests (.ci/run runs this on the lowest and the
  highest claimed Python, so an import that needs a newer Python fails there);
* the claims in setup.cfg are the versions .ci/run's matrix installs.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import mqttsession

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mqttsession"
OLDEST = (3, 10)

# typing names added after 3.10 (3.11: PEP 673, 646, 655, 675, 681 and helpers; 3.12; 3.13)
NEWER_TYPING = {
    "Self", "Never", "LiteralString", "TypeVarTuple", "Unpack", "Required", "NotRequired",
    "assert_never", "assert_type", "reveal_type", "dataclass_transform", "get_overloads",
    "clear_overloads", "override", "TypeAliasType", "get_original_bases", "ReadOnly", "TypeIs",
    "NoDefault", "get_protocol_members", "is_protocol",
}
# (module, name) pairs added after 3.10 that this kind of code might reach for
NEWER_NAMES = {
    ("asyncio", "TaskGroup"), ("asyncio", "timeout"), ("asyncio", "timeout_at"),
    ("asyncio", "Runner"), ("asyncio", "Barrier"), ("enum", "StrEnum"), ("enum", "verify"),
    ("datetime", "UTC"), ("hashlib", "file_digest"), ("operator", "call"),
    ("itertools", "batched"), ("contextlib", "chdir"),
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _offences(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(root)
    try:
        tree = ast.parse(text, filename=str(path), feature_version=OLDEST)
    except SyntaxError as exc:
        return [f"{where}:{exc.lineno}: syntax newer than Python 3.10: {exc.msg}"]
    found = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module in NEWER_MODULES:
                found.append(f"{line}: module {node.module} is Python 3.11+")
            for alias in node.names:
                if node.module == "typing" and alias.name in NEWER_TYPING:
                    found.append(f"{line}: typing.{alias.name} is Python 3.11+")
                if (node.module, alias.name) in NEWER_NAMES:
                    found.append(f"{line}: {node.module}.{alias.name} is Python 3.11+")
        elif isinstance(node, ast.Import):
            found += [f"{line}: module {a.name} is Python 3.11+" for a in node.names
                      if a.name in NEWER_MODULES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            pair = (node.value.id, node.attr)
            if (node.value.id == "typing" and node.attr in NEWER_TYPING) or pair in NEWER_NAMES:
                found.append(f"{line}: {node.value.id}.{node.attr} is Python 3.11+")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(f"{line}: {node.id} is Python 3.11+")
    return found


def test_no_names_newer_than_the_oldest_claimed_python() -> None:
    offences = [o for path in _sources() for o in _offences(path)]
    assert not offences, "\n".join(offences)


def test_the_scan_catches_what_broke_3_10(tmp_path: Path) -> None:
    """The scan itself works: the imports that broke Python 3.10 once are reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\nfrom typing import Final, Self\n"
                     "import typing\nx: typing.Never\n")
    offences = _offences(probe, tmp_path)
    assert any("typing.Self" in o for o in offences), offences
    assert any("typing.Never" in o for o in offences), offences


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(mqttsession.__path__, "mqttsession.")
                  if not m.name.endswith(".__main__"))  # __main__ runs the command line


# what only the broker test helpers need (amqtt's plugin base class, its YAML configuration):
# without them the unit tests still run (test_without_broker_deps.py), these modules are skipped
BROKER_DEPS = {"amqtt", "yaml"}


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports_on_this_python(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in BROKER_DEPS:
            raise
        pytest.skip(f"{name} needs {exc.name}, which is not installed")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirement(name: str) -> str:
    reqs = _setup_cfg()["options"]["install_requires"].split("\n")
    [req] = [r.strip() for r in reqs if re.match(rf"\s*{re.escape(name)}\b", r)]
    return req


def test_claims_match_what_ci_runs() -> None:
    """setup.cfg claims Python >= 3.10 and paho-mqtt >= 2.2 (paho.mqtt._packet, which
    mqttsession._paho uses, is 2.2+); .ci/run runs the unit and smoke tests on the lowest and
    the highest of those, reading the lowest paho from setup.cfg."""
    assert _setup_cfg()["options"]["python_requires"].strip() == ">=3.10"
    assert _requirement("paho-mqtt") == "paho-mqtt>=2.2,<3"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "matrix_leg 3.10 " in ci and "matrix_leg 3.13 " in ci
    assert "-m smoke" in ci and "tests/unit" in ci
    assert ci.rstrip().splitlines()[-1] == "python3 -m pytest"  # the README's test command
    assert sys.version_info >= OLDEST


def test_paho_is_new_enough() -> None:
    from paho.mqtt import _packet  # noqa: F401  (the 2.2+ module mqttsession._paho needs)
