"""The ``mqttsession`` command's habits (issue 15 point 6):

* ``mqttsession --version`` prints the package's version;
* ``--help`` lists the public subcommands only (the demo's ``_demo-publisher`` child still runs);
* ``compat``'s password is never needed on the command line: ``$MQTTSESSION_PASSWORD``, or asked
  for (``--password-prompt`` / ``--password -``: no echo on a terminal, else one line of stdin),
  checked against a real mosquitto listener that wants a password;
* ``inspect FILE`` reads the snapshot AND its journal (what only the journal holds is shown);
  ``inspect -`` says it read the text alone;
* ``HOST:PORT`` arguments take a port 1..65535 and ``[IPv6]:PORT``; ``compat --failover`` may not
  name the ``--broker`` itself; ``compat --help`` names the topic tree it needs and what it
  cannot check (a broker restart).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

import mqttsession
from mqttsession import Client
from mqttsession.cli import _split_broker, main
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.brokers import load_template, render_template
from mqttsession.testing.pytest_plugin import require_mosquitto

pytestmark = pytest.mark.integration

ROOT = Path(mqttsession.__file__).resolve().parent.parent
USER, PASSWORD = "cli-user", "cli-s3cret"


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = str(ROOT) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH")
                                      else "")
    return subprocess.run([sys.executable, "-m", "mqttsession", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=full, check=False)


# ------------------------------------------------------------------------------ --version, --help


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mqttsession {mqttsession.__version__}\n"
    assert run_cli("--version").stdout == f"mqttsession {mqttsession.__version__}\n"


def test_help_shows_the_public_subcommands_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "{demo,compat,inspect}" in text, text
    for name in ("demo", "compat", "inspect"):
        assert f"\n    {name} " in text, text
    assert "_demo" not in text and "SUPPRESS" not in text, text
    # the internal one still parses (the demo spawns it)
    with pytest.raises(SystemExit) as exit_:
        main(["_demo-publisher", "--help"])
    assert exit_.value.code == 0


# ------------------------------------------------------------------------------ compat passwords


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """mosquitto that wants USER / PASSWORD (broker_conf/mosquitto-auth.conf)."""
    binary = require_mosquitto()
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(passwd, os.X_OK):
        pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")
    d = tmp_path_factory.mktemp("cli-auth")
    password_file = d / "passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    text, _ = load_template("mosquitto-auth.conf")
    conf = d / "mosquitto-auth.conf"
    conf.write_text(render_template(text, password_file=str(password_file)), encoding="utf-8")
    broker = MosquittoBroker(conf, mosquitto_bin=binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTTSESSION_PASSWORD", "MQTTSESSION_USERNAME")}
    env.update(extra)
    return env


def _compat(broker: MosquittoBroker, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("compat", "--broker", broker.address, "--scenario", "session-present-new",
                   "--json", *args, stdin=stdin, env=_env() if env is None else env)


def _passed(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["passed"] == 1, doc


def _refused(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refused an MQTT 3.1.1 CONNECT" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.mosquitto
def test_compat_password_from_the_environment(auth_broker: MosquittoBroker) -> None:
    _passed(_compat(auth_broker, "--username", USER, env=_env(MQTTSESSION_PASSWORD=PASSWORD)))
    _passed(_compat(auth_broker, env=_env(MQTTSESSION_USERNAME=USER,
                                          MQTTSESSION_PASSWORD=PASSWORD)))
    _refused(_compat(auth_broker, "--username", USER))  # none at all: refused, said so
    _refused(_compat(auth_broker, "--username", USER, env=_env(MQTTSESSION_PASSWORD="wrong")))


@pytest.mark.mosquitto
def test_compat_password_prompt_reads_a_line_of_stdin(auth_broker: MosquittoBroker) -> None:
    """Not a terminal: one line of standard input (a terminal gets getpass: no echo)."""
    for flag in (["--password-prompt"], ["--password", "-"]):
        _passed(_compat(auth_broker, "--username", USER, *flag, stdin=PASSWORD + "\n"))
        _refused(_compat(auth_broker, "--username", USER, *flag, stdin="wrong\n"))
    # asked for, it wins over the environment
    _passed(_compat(auth_broker, "--username", USER, "--password-prompt", stdin=PASSWORD + "\n",
                    env=_env(MQTTSESSION_PASSWORD="wrong")))
    # usage errors: exit 2 like argparse's (1 means "a scenario failed"), nothing run
    empty = _compat(auth_broker, "--username", USER, "--password-prompt", stdin="")
    assert empty.returncode == 2 and "no password on standard input" in empty.stderr, empty.stderr
    both = _compat(auth_broker, "--username", USER, "--password-prompt", "--password", PASSWORD)
    assert both.returncode == 2 and "give one of them" in both.stderr, both.stderr
    assert empty.stdout == both.stdout == ""


@pytest.mark.mosquitto
def test_compat_password_on_the_command_line_still_works(auth_broker: MosquittoBroker) -> None:
    _passed(_compat(auth_broker, "--username", USER, "--password", PASSWORD,
                    env=_env(MQTTSESSION_PASSWORD="wrong")))  # given: it wins


# ------------------------------------------------------------------------------ inspect


def test_inspect_reads_the_journal_and_says_stdin_is_the_text_alone(tmp_path: Path) -> None:
    """Messages published after the snapshot are only in the journal: ``inspect FILE`` shows
    them; the snapshot's text through stdin does not, and the output says why."""
    path = tmp_path / "gw.session"
    c = Client(client_id="inspect-journal", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    snapshot = path.read_bytes()  # the file's first snapshot: an empty session
    for n in range(3):
        c.publish_message("journal/t", 1, f"m{n}")  # not connected: held, in the journal only
    try:
        assert path.read_bytes() == snapshot  # nothing compacted: the journal holds them
        from_file = run_cli("inspect", str(path), "--json")
        assert from_file.returncode == 0, from_file.stderr
        doc = json.loads(from_file.stdout)
        assert len(doc["never_sent"]) == 3 and doc["sizes"]["journal_bytes"] > 0, doc
        assert doc["source"] == "the state file: its snapshot, its journal and its disk queue"
        text = run_cli("inspect", str(path))
        assert text.stdout.splitlines()[0] == (
            "read from:        the state file: its snapshot, its journal and its disk queue")
        assert "never sent:       3" in text.stdout.splitlines(), text.stdout
        alone = run_cli("inspect", "-", stdin=snapshot.decode())
        assert alone.returncode == 0, alone.stderr
        assert alone.stdout.splitlines()[0] == (
            "read from:        standard input: the save_session() text alone (no journal, no"
            " disk queue)"), alone.stdout
        assert "never sent:       0" in alone.stdout.splitlines(), alone.stdout
    finally:
        c.close()


@pytest.mark.parametrize("broker", ["127.0.0.1:1", "nosuchhost.invalid:1883"])
def test_demo_at_a_broker_it_cannot_reach_says_so_in_one_line(
        broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a raw ConnectionRefusedError / gaierror traceback and exit code 1."""
    assert main(["demo", "--broker", broker]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mqttsession demo: cannot connect to {broker}") and "Traceback" not in err


@pytest.mark.parametrize("count", ["-3", "0", "1", "x"])
def test_demo_refuses_a_count_it_cannot_run(count: str) -> None:
    """Before: ``--count -3`` printed "sent -3 ... nothing lost" and exit code 0."""
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--count", count])
    assert exc.value.code == 2


def test_compat_with_a_failover_node_it_cannot_reach_says_so(mosquitto: Any) -> None:
    """Before: the broker was reported FAILing ``failover-resume`` (exit 1) for a --failover
    node that was simply not there; now, like an unreachable --broker: one line, exit 2."""
    from mqttsession.testing.brokers import free_port

    dead = f"127.0.0.1:{free_port()}"
    out = run_cli("compat", "--broker", mosquitto.address, "--failover", dead, env=_env())
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot reach the broker at {dead}" in out.stderr


# ------------------------------------------------------------------------------ HOST:PORT


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:67419", "host:",
                                     "127.0.0.1", "[::1]", "::1:1883", "127.0.0.1:-1", "h:1883x"])
@pytest.mark.parametrize("option", [["compat", "--broker"], ["compat", "--broker", "127.0.0.1:1883",
                                                              "--failover"], ["demo", "--broker"]],
                         ids=["compat-broker", "compat-failover", "demo-broker"])
def test_a_broker_address_needs_a_port_of_1_to_65535(option: list[str], address: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 127.0.0.1:67419 (1883 + 65536) was accepted and the broker on 1883 checked."""
    with pytest.raises(SystemExit) as exit_:
        main([*option, address])
    assert exit_.value.code == 2
    assert f"argument {option[-1]}: " in capsys.readouterr().err


def test_a_broker_address_may_be_bracketed_ipv6() -> None:
    assert _split_broker("[::1]:1883") == ("::1", 1883)
    assert _split_broker("localhost:65535") == ("localhost", 65535)
    assert _split_broker("127.0.0.1:1") == ("127.0.0.1", 1)


@pytest.mark.parametrize("failover", ["127.0.0.1:{port}", "localhost:{port}"])
def test_compat_refuses_a_failover_node_that_is_the_broker_itself(mosquitto: Any, failover: str) -> None:
    """Before: failover-resume passed against one mosquitto named twice (no cluster at all)."""
    node = failover.format(port=mosquitto.port)
    out = run_cli("compat", "--broker", mosquitto.address, "--failover", node, "--scenario",
                  "failover-resume", env=_env())
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    assert out.stderr == (f"mqttsession compat: --failover {node} is the --broker itself: name"
                          " another node of its cluster\n")


def test_compat_help_names_the_topic_tree_and_says_it_restarts_no_broker() -> None:
    text = " ".join(run_cli("compat", "--help").stdout.split())
    assert "publish and subscribe under mqttsession-compat/#" in text, text
    assert "never restarts a broker it did not start" in text, text
    assert "does not check that sessions survive a broker restart" in text, text


# ------------------------------------------------------------------ a reader that leaves, a wheel


def _cli_popen(*args: str, cwd: Path | None = None, pythonpath: Path = ROOT
               ) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.Popen([sys.executable, "-m", "mqttsession", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("many", [True, False])
def test_output_into_a_reader_that_leaves_ends_quietly(tmp_path: Path, many: bool) -> None:
    """``mqttsession inspect FILE --json | head -1`` (a long output: the pipe breaks while it
    writes) and ``compat --list`` into a reader gone before it wrote (broken at the exit's
    flush): no traceback, exit 141 as a shell's for SIGPIPE (before: a BrokenPipeError
    traceback, exit 1 or 120)."""
    if many:
        path = tmp_path / "pipe.session"
        c = Client(client_id="pipe", clean_session=False)
        c.config(f"SessionStateFile={path}")
        c.config("SessionSync=none")
        c.restore_session("")
        for _ in range(1500):
            c.publish_message("t/pipe", 1, "x" * 10)  # not connected: all held
        c.close()
        proc = _cli_popen("inspect", str(path), "--json")
        assert proc.stdout is not None and proc.stdout.readline()
    else:
        proc = _cli_popen("compat", "--list")
        assert proc.stdout is not None
    proc.stdout.close()
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", (proc.returncode, err)


def test_update_readme_without_a_checkout_readme_stops_before_any_broker(tmp_path: Path) -> None:
    """``compat --matrix --update-readme`` from an installed package (no README.rst beside
    it): exit 2 at once, saying why (before: every broker ran, minutes, then a traceback
    and the table lost)."""
    shutil.copytree(ROOT / "mqttsession", tmp_path / "site" / "mqttsession",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = _cli_popen("compat", "--matrix", "--update-readme", "--brokers", "mosquitto",
                      cwd=tmp_path, pythonpath=tmp_path / "site")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert b"--update-readme" in err and b"README.rst" in err and b"Traceback" not in err, err
    assert b"mosquitto" not in out, out  # no broker started
