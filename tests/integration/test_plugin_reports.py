"""The pytest plugin (``mqttsession.testing.pytest_plugin``) in a user's own suite: a failing
test's report carries the log of each broker it used; a passing one's does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mqttsession
from mqttsession.testing.pytest_plugin import require_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

ROOT = Path(mqttsession.__file__).resolve().parent.parent

USER_SUITE = '''
pytest_plugins = ["mqttsession.testing.pytest_plugin"]


def test_fails(mosquitto):
    assert mosquitto.running
    raise AssertionError("the user's own failure")


def test_passes(mosquitto):
    assert mosquitto.running
'''


def test_a_failing_test_reports_the_log_of_its_broker(tmp_path: Path) -> None:
    require_mosquitto()
    (tmp_path / "test_user.py").write_text(USER_SUITE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in [k for k in env if k.startswith("PYTEST_")]:  # (ADDOPTS, an xdist worker's)
        del env[name]
    result = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "--rootdir", str(tmp_path), str(tmp_path / "test_user.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = result.stdout
    assert result.returncode == 1 and "1 failed, 1 passed" in out, out[-3000:] + result.stderr
    assert "the user's own failure" in out
    sections = [line for line in out.splitlines() if " mosquitto 127.0.0.1:" in line
                and line.rstrip("-").rstrip().endswith(" log")]
    assert len(sections) == 1, out[-3000:]  # the failing test's, not the passing one's
