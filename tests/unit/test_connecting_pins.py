"""Pins from a mutation hunt over ``connecting.py``, ``lifecycle.py`` and ``handover.py`` (no broker): a late
connect's words; a session without a state file handed from a closed front end to the next,
by server and client id, kept only while it holds messages and until restored."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mqttsession import Client, UsageError, handover
from mqttsession.connecting import _late
from mqttsession.lifecycle import call_back


def test_a_late_connect_says_whether_the_connack_came() -> None:
    """No CONNACK: said so; a CONNACK heard but on_connected still running: said so instead."""
    assert _late(False, "h:1883", 2.0) == "no CONNACK from h:1883 within 2.0 s"
    heard = _late(True, "h:1883", 2.0)
    assert heard.startswith("h:1883 accepted the connection, but on_connected")
    assert heard.endswith("did not return within 2.0 s: connection closed")


class _FakeClient:
    """What ``handover`` uses of a ``Client``: its state, SessionStateFile, save/restore."""

    def __init__(self, client_id: str, text: str = "", state_file: str = "",
                 fail: bool = False, **held: Any) -> None:
        self.client_id = client_id
        self.state_file, self.text, self.fail = state_file, text, fail
        self.restored: list[str] = []
        state = SimpleNamespace(outgoing={}, incoming={}, orphans=[])
        for name, value in held.items():
            setattr(state, name, value)
        self._engine = SimpleNamespace(state=state)

    def config(self, setting: str) -> str:
        assert setting == "SessionStateFile"
        return self.state_file

    def save_session(self) -> str:
        return self.text

    def restore_session(self, text: str) -> None:
        if self.fail:
            raise ValueError("cannot restore")
        self.restored.append(text)


@pytest.fixture(autouse=True)
def _empty_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handover, "_kept", {})


@pytest.mark.parametrize("held", [{"outgoing": {1: "m"}}, {"incoming": {7: "m"}},
                                  {"orphans": ["m"]}])
def test_a_session_holding_messages_goes_to_the_next_front_end(held: dict[str, Any]) -> None:
    """Outgoing, incoming (QoS 2 past PUBREC) or orphaned messages: the session text is kept
    for the next client of that id on that server, once."""
    handover.keep("h:1883", _FakeClient("c1", "TEXT", **held))
    other_server, other_id, same = _FakeClient("c1"), _FakeClient("c2"), _FakeClient("c1")
    handover.restore("h:1884", other_server)
    handover.restore("h:1883", other_id)
    assert other_server.restored == [] and other_id.restored == []
    handover.restore("h:1883", same)
    assert same.restored == ["TEXT"]
    again = _FakeClient("c1")
    handover.restore("h:1883", again)
    assert again.restored == []


def test_an_empty_session_or_one_with_a_state_file_is_not_kept() -> None:
    handover.keep("h:1883", _FakeClient("c1", "EMPTY"))
    handover.keep("h:1883", _FakeClient("c2", "FILED", state_file="/x/s.json", outgoing={1: "m"}))
    assert handover._kept == {}


def test_a_client_with_a_state_file_restores_nothing_and_leaves_it_kept() -> None:
    """A gateway's session (its store has it) takes nothing of the kept text."""
    handover.keep("h:1883", _FakeClient("c1", "TEXT", outgoing={1: "m"}))
    filed = _FakeClient("c1", state_file="/x/s.json")
    handover.restore("h:1883", filed)
    assert filed.restored == [] and handover._kept == {("h:1883", "c1"): "TEXT"}


def test_a_session_that_cannot_be_restored_stays_kept() -> None:
    handover.keep("h:1883", _FakeClient("c1", "TEXT", outgoing={1: "m"}))
    with pytest.raises(ValueError, match="cannot restore"):
        handover.restore("h:1883", _FakeClient("c1", fail=True))
    ok = _FakeClient("c1")
    handover.restore("h:1883", ok)
    assert ok.restored == ["TEXT"]


def test_a_clean_start_discards_the_kept_session() -> None:
    handover.keep("h:1883", _FakeClient("c1", "TEXT", outgoing={1: "m"}))
    handover.keep("h:1883", _FakeClient("c2", "OTHER", outgoing={1: "m"}))
    handover.discard("h:1883", "c1")
    handover.discard("h:1883", "nobody")
    assert handover._kept == {("h:1883", "c2"): "OTHER"}


class _Callbacks:
    """What ``lifecycle.call_back`` uses of a ``Client``: its callbacks and ``_fire``."""

    def __init__(self, **callbacks: Any) -> None:
        self.on_error: Any = None
        self.on_log: Any = None
        self.fired: list[tuple[str, Any]] = []
        for name, cb in callbacks.items():
            setattr(self, name, cb)

    def _fire(self, name: str, event: Any) -> None:
        self.fired.append((name, event))
        call_back(self, name, event)  # type: ignore[arg-type]


def test_an_on_error_that_raises_is_not_reported_to_itself() -> None:
    """A raising callback is reported to on_error once; an on_error that raises is only logged
    (no report of its own error to itself: no endless recursion)."""
    calls: list[object] = []

    def on_error(event: object) -> None:
        calls.append(event)
        raise RuntimeError("on_error broke")

    def on_log(_event: object) -> None:
        raise ValueError("on_log broke")
    c = _Callbacks(on_error=on_error, on_log=on_log)
    call_back(c, "on_log", "ev")  # type: ignore[arg-type]
    assert [name for name, _ in c.fired] == ["on_error"] and len(calls) == 1
    assert "on_log callback raised: ValueError('on_log broke')" in calls[0].description  # type: ignore[attr-defined]


def test_a_keyboard_interrupt_in_a_callback_is_raised_in_the_main_thread_only() -> None:
    """In the main thread a KeyboardInterrupt from a callback goes on; in another thread
    (paho's, a gateway loop's) it is reported instead (that thread must not die)."""
    def on_log(_event: object) -> None:
        raise KeyboardInterrupt
    c = _Callbacks(on_log=on_log)
    with pytest.raises(KeyboardInterrupt):
        call_back(c, "on_log", "ev")  # type: ignore[arg-type]
    assert c.fired == []
    t = threading.Thread(target=call_back, args=(c, "on_log", "ev"))
    t.start()
    t.join(5.0)
    assert [name for name, _ in c.fired] == ["on_error"]


def test_close_raises_what_the_last_write_failed_with_and_still_releases_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval sync's write of what waits failing at close(): raised from close(), and the
    state file is released all the same (the next Client takes it)."""
    path = str(tmp_path / "s.json")
    c = Client()
    c.client_id = "pin-close"
    c.config(f"SessionStateFile={path}")
    c.publish_data("a/b", 1, b"x")
    monkeypatch.setattr(c._driver, "cancel_sync_timer", lambda: OSError(28, "disk full"))  # noqa: SLF001
    with pytest.raises(OSError, match="disk full"):
        c.close()
    with pytest.raises(UsageError):
        c.publish_data("a/b", 1, b"y")
    nxt = Client()
    nxt.client_id = "pin-close"
    nxt.config(f"SessionStateFile={path}")
    try:
        nxt.restore_session("")
        assert nxt.queue_stats().messages == 1
    finally:
        nxt.close()
