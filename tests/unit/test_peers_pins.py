"""Pins against failures other MQTT clients' users suffer (docs: the peers survey).

Each test reproduces one peer's failure scenario against mqttsession and fails should
mqttsession repeat it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import paho.mqtt.client as paho_client
import pytest

import mqttsession
from mqttsession import Client
from mqttsession.engine import Engine, EngineSettings
from mqttsession.errors import StateError
from mqttsession.state import SessionState

PACKAGE = Path(mqttsession.__file__).parent


def _paho_private_names() -> set[str]:
    """The private attribute and method names paho's client module defines."""
    src = Path(paho_client.__file__).read_text(encoding="utf-8")
    return set(re.findall(r"self\.(_[a-z][a-z0-9_]*)", src)) | \
        set(re.findall(r"def (_[a-z][a-z0-9_]*)", src))


def _own_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself (``self._x = ...``, ``def _x``, ``__slots__``)."""
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            names.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("_"):
            names.add(n.value)  # (``__slots__`` entries)
    return names


def test_a_zero_length_state_file_after_a_power_cut_is_state_error_kept_aside(
        tmp_path: Path) -> None:
    """paho.mqtt.c#990, paho.mqtt.java#634, paho.golang#195: an empty file left by a power cut
    crashed the client or made it loop. Here: a clear StateError naming the file, the empty
    file kept aside (never deleted), and the next restore starts an empty session."""
    p = tmp_path / "s"
    c = Client(client_id="c1", clean_session=False)
    c.config(f"SessionStateFile={p}")
    c.restore_session("")
    c.publish_message("t", 1, "x")
    c.close()
    p.write_bytes(b"")  # what a file system may leave of a file not yet written back

    c = Client(client_id="c1", clean_session=False)
    c.config(f"SessionStateFile={p}")
    try:
        with pytest.raises(StateError) as ei:
            c.restore_session("")
        assert str(p) in str(ei.value) and "kept aside" in str(ei.value)
        aside = [f for f in tmp_path.iterdir() if f.name.startswith("s.damaged-")]
        assert len(aside) == 1 and aside[0].read_bytes() == b""
        c.restore_session("")  # the next try is an empty session, not the same error again
        assert c.outgoing_messages == ()
    finally:
        c.close()
    assert [f for f in tmp_path.iterdir() if f.name.startswith("s.damaged-")] == aside


def test_an_unlimited_queue_keeps_more_than_65535_messages() -> None:
    """paho-mqtt (Python): ``max_queued_messages=0`` ("unlimited") still caps at the packet-id
    space and drops the rest. Without a queue limit every message is held, in order, and the
    first ones go out when the broker is there."""
    state = SessionState()
    state.configure(client_id="c", clean_session=False)
    e = Engine(EngineSettings(), state)
    n = 65535 + 65
    for i in range(n):
        e.publish("t", b"%d" % i, 1, False)
    assert len(e.state.outgoing) == n
    assert e.queue_stats(0.0).messages == n
    msgs = list(e.state.outgoing.values())
    assert [m.payload for m in msgs[:2]] == [b"0", b"1"]
    assert [m.payload for m in msgs[-2:]] == [b"%d" % (n - 2), b"%d" % (n - 1)]


def test_no_module_but_the_paho_adapter_touches_pahos_private_attributes() -> None:
    """PEERS design lesson: paho's internals (``_out_messages``, ``_in_messages``,
    ``_last_mid``, ...) are touched by ONE module only, so a paho upgrade changes one file.
    test_layout checks imports and subclasses; this checks attribute access too."""
    paho = _paho_private_names()
    assert {"_out_messages", "_in_messages", "_last_mid", "_out_packet"} <= paho
    trees = {path: ast.parse(path.read_text(encoding="utf-8"))
             for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "_paho.py" and "__pycache__" not in path.parts}
    # names the package defines for itself (a ``_port`` of its own) are not paho's
    foreign = paho - set().union(*(_own_names(t) for t in trees.values()))
    assert {"_out_messages", "_in_messages", "_last_mid"} <= foreign
    for path, tree in trees.items():
        touched = sorted({n.attr for n in ast.walk(tree)
                          if isinstance(n, ast.Attribute) and n.attr in foreign})
        assert touched == [], f"{path.name} touches paho's {touched}"


def test_every_paho_private_access_in_the_adapter_is_marked() -> None:
    """PEERS design lesson: each private access to paho in the adapter is marked (here:
    ``# noqa: SLF001`` on the statement), so a paho upgrade finds every one by a search."""
    path = PACKAGE / "_paho.py"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    paho = _paho_private_names()
    unmarked: list[int] = []
    for stmt in ast.walk(ast.parse(text)):
        if not isinstance(stmt, ast.stmt) or isinstance(
                stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Try)):
            continue  # (their bodies' statements are checked one by one)
        head: list[ast.AST] = [stmt]
        if isinstance(stmt, (ast.If, ast.While)):
            head = [stmt.test]  # a compound statement: its header only
        elif isinstance(stmt, ast.For):
            head = [stmt.iter]
        elif isinstance(stmt, ast.With):
            head = [i.context_expr for i in stmt.items]
        touches = any(isinstance(n, ast.Attribute) and n.attr in paho
                      and isinstance(n.value, ast.Name) and n.value.id == "self"
                      for h in head for n in ast.walk(h))
        end = max(getattr(h, "end_lineno", None) or stmt.lineno for h in head)
        span = lines[stmt.lineno - 1:end]
        if touches and not any("SLF001" in ln for ln in span):
            unmarked.append(stmt.lineno)
    assert unmarked == [], f"_paho.py lines touching paho's internals unmarked: {unmarked}"


@pytest.mark.parametrize("name", ["everysec", "no"])
def test_session_sync_takes_the_appendfsync_names_users_know(name: str) -> None:
    """PEERS design lesson: durability policy names users already know, Redis's appendfsync
    ``always`` / ``everysec`` / ``no``."""
    c = Client(client_id="c", clean_session=False)
    try:
        c.config(f"SessionSync={name}")
        assert c.config("SessionSync") == {"everysec": "interval", "no": "none"}[name]
        assert c.config("SessionSyncInterval") == "1000"  # (everysec's second)
    finally:
        c.close()


def test_thirty_thousand_held_messages_live_in_a_handful_of_files(tmp_path: Path) -> None:
    """paho.mqtt.c#1116: one file per message, 30,000 files blocked start-up for 20+ minutes.
    Here 30,000 held messages take a few files (state file, journal, a disk queue of 1 MiB
    segments), and a new process gets every one back, in order."""
    n = 30_000
    p = tmp_path / "s"
    c = Client(client_id="c1", clean_session=False)
    c.config(f"SessionStateFile={p}")
    c.config("SessionSync=none")  # (the file layout is the same under every policy)
    c.restore_session("")
    for i in range(n):
        c.publish_message(f"t/{i}", 1, "x" * 20)
    c.close()
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) <= 8, sorted(f.name for f in files)

    d = Client(client_id="c1", clean_session=False)
    d.config(f"SessionStateFile={p}")
    try:
        d.restore_session("")
        assert d.queue_stats().messages == n
        topics = [m.topic for m in d.outgoing_messages]
        assert topics == [f"t/{i}" for i in range(n)]
    finally:
        d.close()
