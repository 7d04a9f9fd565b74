"""``pip install mqttsession`` brings paho-mqtt alone (issue 15): the library, the ``mqttsession``
command and the pure unit tests work without PyYAML or amqtt, which the ``demo`` and ``test``
extras bring; ``demo`` and ``compat``, asked to start the embedded amqtt broker without it, say
how to get it and exit 2, no traceback.

``tests/conftest.py`` loads ``mqttsession.testing.pytest_plugin`` for every test, unit tests
included; the plugin and ``mqttsession.testing`` import PyYAML and amqtt only when a broker is
configured or started. Proved in subprocesses whose ``PYTHONPATH`` starts with a directory that
shadows both with modules raising ``ModuleNotFoundError``, as if they were not installed.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

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


def _run(args: list[str], blocker: Path | None, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env)
    paths = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if blocker is not None:
        paths.insert(0, str(blocker))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in [k for k in env if k.startswith("PYTEST_")]:  # (ADDOPTS, an xdist worker's)
        del env[name]
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


@pytest.mark.heavy
def test_unit_tests_collect_without_yaml_and_amqtt(tmp_path: Path) -> None:
    args = ["-m", "pytest", "tests/unit", "--collect-only", "-q", "-p", "no:cacheprovider"]
    everything = _collected(_run(args, None))
    blocked = _collected(_run(args, _blocker(tmp_path)))
    assert blocked == everything
    assert any(__name__.rpartition(".")[2] in test for test in blocked)  # this file among them


@pytest.mark.heavy
def test_unit_tests_run_without_yaml_and_amqtt(tmp_path: Path) -> None:
    """The tests that import every module and inject disk faults through the plugin's helpers,
    and those of the Client's misuse and of packaging; only the amqtt plugin module is
    skipped."""
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                   "tests/unit/test_supported_versions.py", "tests/unit/test_journal_faults.py",
                   "tests/unit/test_client_misuse.py", "tests/unit/test_packaging.py"],
                  _blocker(tmp_path))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    skipped = re.findall(r"SKIPPED \[\d+\] .*: (.*)", result.stdout)
    assert skipped == ["mqttsession.testing.amqtt_plugins needs amqtt, which is not installed"], \
        result.stdout[-3000:]
    assert re.search(r"\d+ passed, 1 skipped", result.stdout), result.stdout[-3000:]


# ------------------------------------------------------------------ the library and the command

LIBRARY_SCRIPT = """
import sys, pathlib
import mqttsession
from mqttsession import Client, load_state
from mqttsession.cli import main

state = pathlib.Path(sys.argv[1])
c = Client(client_id="light", clean_session=False)
c.config(f"SessionStateFile={state}")
c.restore_session("")
c.publish_message("light/t", 1, "held")  # not connected: waits in the session, on disk
assert len(load_state(c.save_session()).outgoing) == 1
c.close()
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("yaml", "amqtt"))
assert not loaded, loaded
print("ok", mqttsession.__version__)
"""


def test_the_library_works_without_yaml_and_amqtt(tmp_path: Path) -> None:
    """``import mqttsession``, a Client with a state file, save and load: paho-mqtt is enough."""
    result = _run(["-c", LIBRARY_SCRIPT, str(tmp_path / "gw.session")], _blocker(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout


def test_the_command_works_without_yaml_and_amqtt(tmp_path: Path) -> None:
    blocker = _blocker(tmp_path)
    for args in (["--help"], ["demo", "--help"], ["compat", "--help"], ["compat", "--list"],
                 ["inspect", "--help"]):
        result = _run(["-m", "mqttsession", *args], blocker)
        assert result.returncode == 0 and result.stdout, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    version = _run(["-m", "mqttsession", "--version"], blocker)
    assert version.stdout == f"mqttsession {_setup_cfg()['metadata']['version_value']}\n"
    state = tmp_path / "gw.session"
    assert _run(["-c", LIBRARY_SCRIPT, str(state)], blocker).returncode == 0
    shown = _run(["-m", "mqttsession", "inspect", str(state), "--json"], blocker)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["queue"]["messages"] == 1


def _without_mosquitto() -> dict[str, str]:
    """The environment of a machine without mosquitto (as in tests/integration/test_demo.py)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "").split(os.pathsep)
        if d and not os.path.exists(os.path.join(d, "mosquitto")))
    env["MOSQUITTO_BIN"] = os.path.join(os.sep, "nonexistent", "mosquitto")
    return env


@pytest.mark.parametrize("args", [
    ["compat"],  # no --broker: it would start an embedded amqtt broker
    ["compat", "--scenario", "takeover", "--protocol", "5"],
    ["demo", "--embedded", "amqtt"],
    ["demo"],  # auto, mosquitto not installed: amqtt
])
def test_without_amqtt_demo_and_compat_say_how_to_get_it(tmp_path: Path, args: list[str]) -> None:
    result = _run(["-m", "mqttsession", *args], _blocker(tmp_path), env=_without_mosquitto())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    command = args[0]
    assert result.stderr.startswith(f"mqttsession {command}: starting the embedded amqtt broker"
                                    " needs amqtt, which is not installed."), result.stderr
    assert 'pip install "mqttsession[demo]"' in result.stderr, result.stderr
    assert "--broker HOST:PORT" in result.stderr, result.stderr
    assert ("install mosquitto" in result.stderr) == (args == ["demo"]), result.stderr


def test_the_demo_extra_installs_what_the_blocker_hides() -> None:
    """What the message says to install brings both modules the blocker hides."""
    extras = _requirements()
    assert {_name(r) for r in extras["demo"]} == {"amqtt", "pyyaml"}


# ------------------------------------------------------------------ what pip installs


def _setup_cfg() -> dict[str, dict[str, str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    out = {section: dict(cfg[section]) for section in cfg.sections()}
    # version = attr: mqttsession.__version__ (one place for it)
    attr = out["metadata"]["version"]
    assert attr == "attr: mqttsession.__version__", attr
    init = (ROOT / "mqttsession" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', init, re.M)
    assert found, "mqttsession.__version__ not found"
    out["metadata"]["version_value"] = found.group(1)
    return out


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _requirements() -> dict[str, list[str]]:
    """setup.cfg's requirements as setuptools reads them: '' for install_requires, then each
    extra (``egg_info`` into a temporary folder: the metadata ``pip install`` would write)."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info",
             "-e", out], cwd=ROOT, check=True, capture_output=True, timeout=120)
        (info,) = Path(out).glob("*.egg-info")
        text = (info / "requires.txt").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
        elif line:
            sections[current].append(line)
    return sections


def test_install_requires_is_paho_mqtt_alone() -> None:
    cfg = _setup_cfg()["options"]["install_requires"]
    assert [line.strip() for line in cfg.splitlines() if line.strip()] == ["paho-mqtt>=2.2,<3"]
    reqs = _requirements()
    assert [_name(r) for r in reqs[""]] == ["paho-mqtt"], reqs[""]
    # the README's `pip install -e ".[test]"` still brings the brokers the tests start
    assert {"amqtt", "pyyaml", "pytest"} <= {_name(r) for r in reqs["test"]}, reqs["test"]


def test_ci_finds_the_claimed_versions() -> None:
    """.ci/run's ``claimed`` / ``claimed_min`` read these lines with sed: the first match wins."""
    lines = (ROOT / "setup.cfg").read_text(encoding="utf-8").splitlines()
    for name, whole, low in (("paho-mqtt", "paho-mqtt>=2.2,<3", "2.2"),
                             ("amqtt", "amqtt>=0.12,<0.13", "0.12")):
        found = [m.group(1) for m in (re.match(rf"^\s*({re.escape(name)}>=.*)$", line)
                                      for line in lines) if m]
        assert found and found[0] == whole, found
        assert re.split(r"[^0-9.]", found[0].split(">=")[1], maxsplit=1)[0] == low


def test_the_installed_metadata_lists_paho_mqtt_alone() -> None:
    """The installed distribution (``pip install -e ".[test]"`` of this checkout, as .ci/run does)."""
    try:
        dist = distribution("mqttsession")
    except PackageNotFoundError:
        pytest.skip("mqttsession is not installed (run from the source tree)")
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    # pip's record of where it installed from; else where the metadata lies (an egg-info
    # that setuptools wrote into this checkout, found first through PYTHONPATH)
    where = Path(url.removeprefix("file://")) if url.startswith("file://") else \
        Path(str(dist.locate_file("")))
    if where.resolve() != ROOT.resolve():
        pytest.skip(f"the installed mqttsession is not this checkout's ({url or where})")
    required = [r for r in dist.requires or [] if "extra ==" not in r]
    assert [_name(r) for r in required] == ["paho-mqtt"], required


USER_SUITE = '''
pytest_plugins = ["mqttsession.testing.pytest_plugin"]


def test_embedded(embedded_amqtt):
    raise AssertionError("ran without amqtt")


def test_process(amqtt_broker):
    raise AssertionError("ran without amqtt")


def test_factory(amqtt_factory):
    raise AssertionError("ran without amqtt")
'''


def test_a_users_suite_skips_the_amqtt_fixtures_saying_how_to_get_it(tmp_path: Path) -> None:
    """A user's own suite with the plugin, amqtt and PyYAML not installed: the amqtt fixtures
    skip with the extra to install (fail under CI). Before: a raw ``ModuleNotFoundError`` in
    one, in the others a "did not start within 15 s" after waiting for a child that had died."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_user.py").write_text(USER_SUITE)
    args = ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
            "-W", "error", str(suite / "test_user.py")]
    blocker = _blocker(tmp_path)
    for ci, outcome in (("", r"3 skipped"), ("true", r"3 errors")):
        env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
        result = _run([*args, "--rootdir", str(suite)], blocker, env)
        assert re.search(outcome, result.stdout), result.stdout[-3000:] + result.stderr[-2000:]
        assert result.stdout.count('pip install "mqttsession[demo]"') >= 3, result.stdout[-3000:]
