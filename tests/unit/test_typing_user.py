"""A user's ``mypy --strict`` on code using mqttsession: each ``on_*`` event is typed with its
own event class, so a handler using a field its event does not have is an error.

``tests/typecheck/user_script.py`` must pass; a copy with one bad handler must fail with that
attribute named. mypy comes with the ``test`` extra; without it the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "typecheck" / "user_script.py"


def _mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # MYPYPATH: this checkout's package, whatever is installed; run in the script's own
    # directory, so that no config file but mypy's flags applies (the repository's setup.cfg
    # is not what a user has)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
         "--no-error-summary", str(path)],
        capture_output=True, text=True, env=env, cwd=path.parent, timeout=300)


def test_user_script_type_checks_and_a_wrong_handler_does_not(tmp_path: Path) -> None:
    good = tmp_path / "user_script.py"
    good.write_text(SCRIPT.read_text(encoding="utf-8"), encoding="utf-8")
    result = _mypy(good, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr

    bad = tmp_path / "bad_script.py"
    bad.write_text(
        "from mqttsession import Client\n"
        "c = Client()\n"
        "c.on_message_in = lambda e: e.no_such_attribute\n"
        "c.on_connected = lambda e: e.topic\n", encoding="utf-8")
    result = _mypy(bad, tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"MessageEvent" has no attribute "no_such_attribute"' in result.stdout, result.stdout
    assert '"ConnectedEvent" has no attribute "topic"' in result.stdout, result.stdout
