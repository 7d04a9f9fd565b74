"""A Client that names a SessionStateFile and never restores its session: ``close()``,
``disconnect()``, ``save_session()`` and a failed ``connect()`` never write over the session
in the file (before, a ``with`` block that failed early replaced it with an empty one: every
held message lost), nor over a file another process holds, a symbolic link, or another
client id's session. ``save_session()`` keeps the old session aside, as a publish does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from mqttsession import Client, ConnectError, StateError, StateLockedError


def _filled(path: Path, client_id: str = "dev", n: int = 3) -> None:
    a = Client(client_id=client_id, clean_session=False)
    a.config(f"SessionStateFile={path}")
    a.restore_session("")
    for i in range(n):
        a.publish_data("t/x", 1, b"m%d" % i)
    a.close()


def _restored(path: Path, client_id: str = "dev") -> list[bytes]:
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    try:
        return [bytes(m.message) for m in c.outgoing_messages]
    finally:
        c.close()


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: a connect to it is refused


def _close(c: Client) -> None:
    c.close()


def _disconnect(c: Client) -> None:
    c.disconnect()
    c.close()


def _failed_connect(c: Client) -> None:
    with pytest.raises(ConnectError):
        c.connect("127.0.0.1", _refused_port(), timeout=2)
    c.close()


def _with_block(c: Client) -> None:
    with pytest.raises(RuntimeError):
        with c:
            raise RuntimeError("the application failed before restore_session")


@pytest.mark.parametrize("end", [_close, _disconnect, _failed_connect, _with_block],
                         ids=["close", "disconnect", "failed-connect", "with-block"])
def test_ending_a_client_that_never_restored_leaves_the_file_as_it_was(
        tmp_path: Path, end: Callable[[Client], None]) -> None:
    path = tmp_path / "s"
    _filled(path)
    before = path.read_bytes()
    c = Client(client_id="dev", clean_session=False)
    c.config(f"SessionStateFile={path}")
    end(c)
    assert path.read_bytes() == before
    assert _restored(path) == [b"m0", b"m1", b"m2"]


def test_save_session_without_restoring_keeps_the_old_session_aside(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _filled(path)
    c = Client(client_id="dev", clean_session=False)
    c.config(f"SessionStateFile={path}")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    c.save_session()  # the application went on without it, as a publish would
    c.close()
    aside = sorted(p.name for p in tmp_path.iterdir() if ".unrestored-" in p.name)
    assert aside and aside[0].startswith("s.")
    assert _restored(path) == []
    kept = tmp_path / next(n for n in aside if not n.startswith("s.journal"))
    os.replace(kept, path)  # what was kept aside is the whole session
    for n in aside:
        if n.startswith("s.journal"):
            os.replace(tmp_path / n, tmp_path / "s.journal")
    assert _restored(path) == [b"m0", b"m1", b"m2"]


def test_a_refused_restore_of_another_client_ids_file_then_close_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _filled(path, "dev-A")
    b = Client(client_id="dev-B", clean_session=False)
    b.config(f"SessionStateFile={path}")
    with pytest.raises(StateError, match="dev-A"):
        b.restore_session("")
    b.close()
    assert _restored(path, "dev-A") == [b"m0", b"m1", b"m2"]


def test_a_symbolic_link_refused_is_still_a_link_after_close(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    _filled(real)
    os.symlink(real, link)
    b = Client(client_id="dev", clean_session=False)
    b.config(f"SessionStateFile={link}")
    with pytest.raises(StateError, match="symbolic link"):
        b.restore_session("")
    b.close()
    assert link.is_symlink()
    assert _restored(real) == [b"m0", b"m1", b"m2"]


_OWNER = """
import sys, time
from mqttsession import Client
a = Client(client_id="dev", clean_session=False)
a.config("SessionStateFile=" + sys.argv[1])
a.restore_session("")
for i in range(3):
    a.publish_data("t/x", 1, b"m%d" % i)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_instance_refused_the_lock_writes_nothing_at_close(tmp_path: Path) -> None:
    path = tmp_path / "s"
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        snapshot = path.read_bytes()
        b = Client(client_id="dev", clean_session=False)
        b.config(f"SessionStateFile={path}")
        with pytest.raises(StateLockedError):
            b.restore_session("")
        b.close()
        assert path.read_bytes() == snapshot
    finally:
        os.kill(owner.pid, signal.SIGKILL)  # the owner dies before its next write
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert _restored(path) == [b"m0", b"m1", b"m2"]
