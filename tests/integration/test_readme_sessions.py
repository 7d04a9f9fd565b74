"""README.rst's "Sessions and asyncio" section runs as written.

Each ``.. code-block:: python`` of that section is executed, in a fresh namespace and a temporary
working directory, against mosquitto, whose address reaches the snippets the way the README says:
through ``MQTTSESSION_ADDRESS`` (and ``MQTTSESSION_PROTOCOL_VERSION`` for the MQTT 5 run).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.rst"
SECTION = "Sessions and asyncio"


def _section_blocks() -> list[str]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(SECTION)
    end = len(lines)
    for i in range(start + 2, len(lines) - 1):  # the next heading: a line underlined with -/=
        if lines[i] and re.fullmatch(r"[-=~]{3,}", lines[i + 1]) and len(lines[i + 1]) >= len(lines[i]):
            end = i
            break
    blocks: list[str] = []
    i = start
    while i < end:
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body: list[str] = []
            while i < end and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)))
        else:
            i += 1
    return blocks


BLOCKS = _section_blocks()


def test_the_section_has_both_styles() -> None:
    assert len(BLOCKS) == 2
    assert "Connection.insecure" in BLOCKS[0] and "connect_to_session" in BLOCKS[0]
    assert "AsyncSession" in BLOCKS[1] and "async for" in BLOCKS[1]


@pytest.mark.parametrize("version", ["4", "5"], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["mesh", "asyncio"])
def test_snippet_runs(
    index: int, version: str, mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MQTTSESSION_ADDRESS", mosquitto.address)
    monkeypatch.setenv("MQTTSESSION_PROTOCOL_VERSION", version)
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.rst[{SECTION}] block {index + 1}", "exec")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    if index == 0:
        assert "hello" in out and "holds no session" in out, out
    else:
        assert "demo/async b'hello'" in out, out
        assert (tmp_path / "readme-gw.session").exists()
