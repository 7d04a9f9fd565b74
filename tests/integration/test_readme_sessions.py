"""README.rst's "Sessions and asyncio" section runs as written, and so does the first snippet of
"Using it" (its state file's directory made by the snippet itself).

Each ``.. code-block:: python`` of that section is executed, in a fresh namespace and a temporary
working directory, against mosquitto, whose address reaches the snippets the way the README says:
through ``MQTTSESSION_ADDRESS`` (and ``MQTTSESSION_PROTOCOL_VERSION`` for the MQTT 5 run). The
"Using it" snippet names ``localhost:1883``: only that address is replaced by mosquitto's.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import mqttsession

README = Path(__file__).resolve().parents[2] / "README.rst"
SECTION = "Sessions and asyncio"


def _section_blocks(section: str = SECTION) -> list[str]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(section)
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


def test_using_it_snippet_runs_as_written(
    mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first snippet of "Using it" in a folder where its state directory does not exist
    yet (it failed as written when ``/var/lib/gw`` did not exist)."""
    block = _section_blocks("Using it")[0]
    connect = 'c.connect("localhost", 1883)'
    assert block.count(connect) == 1, block
    code = block.replace(connect, f"c.connect({mosquitto.host!r}, {mosquitto.port})")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, "README.rst[Using it] block 1", "exec"), namespace)  # noqa: S102
    c = namespace["c"]
    try:
        assert not c.outgoing_messages and not c.connected  # flushed, then disconnected
        state_files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                             if p.is_file())
        assert len(state_files) >= 1 and all(p.startswith("gw-state/") for p in state_files)
        assert load_state_file(tmp_path / "gw-state" / "session").subscriptions == {"cmd/#": 2}
    finally:
        c.close()
        cleaner = mqttsession.Client(client_id="gw-1", clean_session=True)  # the broker forgets it
        cleaner.connect(mosquitto.host, mosquitto.port)
        cleaner.disconnect()
        cleaner.close()


def load_state_file(path: Path) -> mqttsession.SavedState:
    """What a state file holds (snapshot and journal), read-only."""
    from mqttsession.journal import read_state

    return mqttsession.SavedState.of(read_state(str(path)))
