"""The pure unit tests collect and run without PyYAML or amqtt (no broker installed).

``tests/conftest.py`` loads ``mqttsession.testing.pytest_plugin`` for every test, unit tests
included; the plugin and ``mqttsession.testing`` import PyYAML and amqtt only when a broker is
configured or started. Proved in subprocesses whose ``PYTHONPATH`` starts with a directory that
shadows both with modules raising ``ModuleNotFoundError``, as if they were not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("yaml", "amqtt")


def _blocker(tmp_path: Path) -> Path:
    """A directory whose ``yaml`` and ``amqtt`` cannot be imported."""
    where = tmp_path / "blocker"
    for name in BLOCKED:
        package = where / name
        package.mkdir(parents=True)
        message = f"No module named {name!r} (blocked for this test)"
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    return where


def _run(args: list[str], blocker: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if blocker is not None:
        paths.insert(0, str(blocker))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        check=False)


def _collected(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    summary = re.search(r"(\d+) tests? collected", result.stdout)
    assert summary and int(summary.group(1)) == len(ids), result.stdout[-3000:]
    return ids


def test_the_blocker_blocks(tmp_path: Path) -> None:
    code = ("import importlib\n"
            f"for name in {BLOCKED!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError as exc:\n"
            "        assert exc.name == name, exc\n"
            "    else:\n"
            "        raise SystemExit(name + ' imported')\n")
    result = _run(["-c", code], _blocker(tmp_path))
    assert result.returncode == 0, result.stderr


def test_the_plugin_imports_neither_yaml_nor_amqtt() -> None:
    """Even where both are installed: importing the plugin leaves them unimported."""
    code = ("import sys\n"
            "import mqttsession.testing, mqttsession.testing.pytest_plugin\n"
            "import mqttsession.testing.faults, mqttsession.testing.proxy\n"
            f"loaded = sorted(m for m in sys.modules if m.partition('.')[0] in {BLOCKED!r})\n"
            "assert not loaded, loaded\n")
    result = _run(["-c", code], None)
    assert result.returncode == 0, result.stderr


def test_unit_tests_collect_without_yaml_and_amqtt(tmp_path: Path) -> None:
    args = ["-m", "pytest", "tests/unit", "--collect-only", "-q", "-p", "no:cacheprovider"]
    everything = _collected(_run(args, None))
    blocked = _collected(_run(args, _blocker(tmp_path)))
    assert blocked == everything
    assert any(__name__.rpartition(".")[2] in test for test in blocked)  # this file among them


def test_unit_tests_run_without_yaml_and_amqtt(tmp_path: Path) -> None:
    """The tests that import every module and inject disk faults through the plugin's helpers;
    only the amqtt plugin module is skipped."""
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                   "tests/unit/test_supported_versions.py", "tests/unit/test_journal_faults.py"],
                  _blocker(tmp_path))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    skipped = re.findall(r"SKIPPED \[\d+\] .*: (.*)", result.stdout)
    assert skipped == ["mqttsession.testing.amqtt_plugins needs amqtt, which is not installed"], \
        result.stdout[-3000:]
    assert re.search(r"\d+ passed, 1 skipped", result.stdout), result.stdout[-3000:]
