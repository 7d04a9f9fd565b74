"""The benchmarks that reach into the library's internals still run (tiny sizes, no figures
checked): ``bench_restore.py`` and ``profile_hotspots.py`` had stopped at an attribute a
refactoring removed, unnoticed until a session needed their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(tmp_path: Path, *args: str) -> str:
    if not BENCH.is_dir():
        pytest.skip("no bench/ here (the sdist carries the tests, not the benchmarks)")
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_bench_restore_runs(tmp_path: Path) -> None:
    # 1,200 held: past the default QueueInMemory, so some wait in the disk queue (its copy of
    # the files once left that folder out and stopped there)
    out = _run(tmp_path, str(BENCH / "bench_restore.py"), "--sizes", "50,1200",
               "--history", "300", "--history-held", "20", "-r", "1", "--workdir", str(tmp_path))
    assert "restore" in out


def test_profile_hotspots_runs(tmp_path: Path) -> None:
    out = _run(tmp_path, str(BENCH / "profile_hotspots.py"), "-n", "50", "--restore-messages",
               "50", "--top", "3", "--out", str(tmp_path / "profiles"),
               "--only", "micro,restore")
    assert "restore_session of 50 held messages" in out
