"""What the repository ships besides the code (issue 15 points 5 and 7):

* LICENSE (MIT, as setup.cfg says), CHANGELOG.rst with an Unreleased section and the version;
* the sdist carries the tests, the examples, broker_conf/ and those documents (MANIFEST.in),
  checked on an sdist built from a copy of this checkout;
* no ``hook_*`` name in the public surface (pydoc of every class of the package);
* every "BROKERS.md" a test or config cites exists, with the numbered amqtt bugs cited.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import pkgutil
import pydoc
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import mqttsession

ROOT = Path(__file__).resolve().parents[2]


def _version() -> str:
    return mqttsession.__version__


# ------------------------------------------------------------------ LICENSE, CHANGELOG


def test_license_is_the_mit_license_the_metadata_names() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["metadata"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the mqttsession authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_changelog_has_unreleased_and_the_version() -> None:
    lines = (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8").splitlines()
    headings = [lines[i] for i in range(len(lines) - 1)
                if lines[i] and re.fullmatch(r"-{3,}", lines[i + 1])]
    assert headings[0] == "Unreleased", headings
    assert any(h.split()[0] == _version() for h in headings[1:]), headings


# ------------------------------------------------------------------ the sdist


def _tree_copy(to: Path) -> Path:
    """This checkout without what builds and runs leave behind (an sdist writes egg-info)."""
    dest = to / "src"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".mypy_cache",
        ".pytest_cache", ".hypothesis", ".ruff_cache", "results", "node_modules"))
    return dest


def test_the_sdist_carries_tests_examples_broker_conf_and_documents(tmp_path: Path) -> None:
    src = _tree_copy(tmp_path)
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "sdist",
         "-d", str(tmp_path / "dist")], cwd=src, check=True, capture_output=True, timeout=300)
    (tarball,) = (tmp_path / "dist").glob("mqttsession-*.tar.gz")
    assert tarball.name == f"mqttsession-{_version()}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {p.relative_to(ROOT).as_posix() for pattern in (
        "tests/**/*.py", "examples/*.py", "broker_conf/*", "mqttsession/**/*.py", "docs/*",
        "brokers/aedes/*.js", "brokers/aedes/*.json")
        for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    wanted |= {"LICENSE", "README.rst", "CHANGELOG.rst", "BROKERS.md", "setup.cfg",
               "pyproject.toml", "mqttsession/py.typed", ".ci/run"}
    assert any(n.startswith("tests/unit/") for n in wanted)
    assert sorted(wanted - names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


# ------------------------------------------------------------------ no hook_ in the public surface


def _modules() -> list[str]:
    names = ["mqttsession"]
    for info in pkgutil.walk_packages(mqttsession.__path__, "mqttsession."):
        if not info.name.endswith("__main__"):  # importing it runs the command
            names.append(info.name)
    return names


def test_no_hook_names_in_the_public_surface() -> None:
    """The network-thread hooks are the driver's: pydoc shows none of them, anywhere."""
    public_hook = re.compile(r"(?<![\w])hook_\w+")
    plain = pydoc.plaintext  # type: ignore[attr-defined]  # (not in typeshed)
    checked = 0
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # mqttsession.testing.amqtt_plugins without amqtt
            assert "amqtt" in str(exc), exc
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not cls.__module__.startswith("mqttsession"):
                continue
            hooks = [a for a in dir(cls) if a.startswith("hook_")]
            assert not hooks, (cls, hooks)
            checked += 1
        text = pydoc.render_doc(module, renderer=plain)
        assert not public_hook.findall(text), (name, public_hook.findall(text)[:5])
    assert checked > 20
    for cls in (mqttsession.Client, mqttsession.Session, mqttsession.AsyncSession,
                mqttsession.Connection):
        assert "hook" not in pydoc.render_doc(cls, renderer=plain)


# ------------------------------------------------------------------ BROKERS.md


def _citing_files() -> list[Path]:
    found = []
    for pattern in ("tests/**/*.py", "mqttsession/**/*.py", "broker_conf/*", "examples/*.py",
                    "README.rst", "bench/**/*.py"):
        for p in ROOT.glob(pattern):
            if p.is_file() and "BROKERS.md" in p.read_text(encoding="utf-8", errors="replace"):
                found.append(p)
    return found


def test_every_brokers_md_citation_resolves() -> None:
    brokers = (ROOT / "BROKERS.md").read_text(encoding="utf-8")
    amqtt = brokers.split("## amqtt", 1)[1].split("\n## ", 1)[0]
    numbered = {int(n) for n in re.findall(r"(?:^|\s)(\d+)\. ", amqtt)}
    assert numbered == set(range(1, 8)), numbered
    citing = _citing_files()
    assert len(citing) >= 4, citing  # the tests and broker_conf/amqtt.yaml cite it
    for p in citing:
        text = " ".join(p.read_text(encoding="utf-8").split())
        for cited in re.findall(r"BROKERS\.md,? (?:amqtt )?bug (\d+)", text):
            assert int(cited) in numbered, (p, cited)
        for cited in re.findall(r"[\w./-]*BROKERS\.md", text):
            assert cited == "BROKERS.md", (p, cited)  # the one at the root, nothing else
    assert "BROKERS.md" in (ROOT / "MANIFEST.in").read_text(encoding="utf-8")


@pytest.mark.parametrize("section", ["amqtt 0.12.1", "mosquitto 2.0.11", "aedes 1.2.0",
                                     "ejabberd 23.01", "RabbitMQ 3.10.8", "ActiveMQ Classic 5.17.2"])
def test_brokers_md_covers_the_brokers_the_tests_start(section: str) -> None:
    assert f"## {section}" in (ROOT / "BROKERS.md").read_text(encoding="utf-8")
