"""A ``SessionStateFile`` path (or its journal's) that names a directory or a FIFO (defect D6):
``restore_session`` / ``publish_data`` / ``save_session`` raise ``StateError`` naming the path,
write nothing, and never block (a FIFO used to wait in ``open()`` for a writer, a directory
raised a bare ``IsADirectoryError`` naming an fd number)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mqttsession import Client, StateError

CALLS: dict[str, Callable[[Client], object]] = {
    "restore_session": lambda c: c.restore_session(""),
    "publish_data": lambda c: c.publish_data("t/a", 1, b"x"),
    "save_session": lambda c: c.save_session(),
}


def _listing(where: Path) -> list[str]:
    return sorted(p.relative_to(where).as_posix() for p in where.rglob("*"))


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (None: nothing), failing the test if it is still blocked."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return out[0] if out else pytest.fail(f"still blocked after {seconds} s")


def _unblock(fifo: Path) -> None:
    """Let a reader blocked in open() on ``fifo`` go (after a failure: no thread left hanging)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize("call", list(CALLS))
def test_a_state_file_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str,
                                                         call: str) -> None:
    path = tmp_path / "gw.state"
    os.mkdir(path) if kind == "directory" else os.mkfifo(path)
    before = _listing(tmp_path)
    c = Client(client_id="odd-file", clean_session=False)
    c.config(f"SessionStateFile={path}")
    try:
        exc = _within(5, lambda: CALLS[call](c))
    finally:
        _unblock(path) if kind == "fifo" else None
    assert isinstance(exc, StateError), repr(exc)
    assert f"{path} is not a regular file" in str(exc)
    assert _listing(tmp_path) == before  # nothing written, nothing kept aside


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_journal_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "gw.state"
    c = Client(client_id="odd-journal", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t/a", 1, b"x")
    c.close()
    journal = tmp_path / "gw.state.journal"
    journal.unlink()
    os.mkdir(journal) if kind == "directory" else os.mkfifo(journal)
    c2 = Client(client_id="odd-journal", clean_session=False)
    c2.config(f"SessionStateFile={path}")
    try:
        exc = _within(5, lambda: c2.restore_session(""))
    finally:
        _unblock(journal) if kind == "fifo" else None
    assert isinstance(exc, StateError), repr(exc)
    assert f"{journal} is not a regular file" in str(exc)
