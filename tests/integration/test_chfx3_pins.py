"""Pins for CHANGELOG "Unreleased / Fixed" entries whose fix no other test failed without
(found by putting each bug back, session chfx3). Each test names its entry and the mutation
that fails it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import Client, ConnectError, UsageError
from mqttsession.gateway import Gateway
from mqttsession.testing import MosquittoBroker

try:  # tests/integration may or may not be a package
    from . import _procs
    from ._procs import observed
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]
    from _procs import observed  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

@pytest.mark.parametrize("kind", ["client", "gateway"])
def test_disconnect_then_connect_while_the_first_waits_for_its_connack(
        mosquitto: MosquittoBroker, tmp_path: Path, kind: str) -> None:
    """CHANGELOG "(second review) the end of a ``connect()`` under way was one flag ...: a
    ``disconnect()`` then ``connect()`` from another thread let the first attempt connect
    too ..., or its failure stop the new connection's pump". Thread A's ``connect()`` waits
    for a CONNACK from a server that never sends one; B calls ``disconnect()`` then
    ``connect()`` to mosquitto. A ends ("ended by ..."), B's connection carries a QoS 1
    message, one paho thread. The existing pin uses a server that drops SYNs, whose connect
    ``disconnect()`` now cuts at the socket: it passes without the generation. Fails with
    ``Connecting._check_ended`` testing only ``ended`` (no generation, no ownership)."""
    with _procs.silent_port() as port, Gateway(tmp_path / "gw") as gw:
        c = Client(client_id=f"gen-{kind}") if kind == "client" else gw.client(
            f"gen-{kind}", clean_session=False)
        try:
            t, raised = _procs.connect_in_thread(lambda: c.connect("127.0.0.1", port, timeout=4))
            time.sleep(0.5)
            c.disconnect()
            c.connect(mosquitto.host, mosquitto.port, timeout=5)
            t.join(10)
            assert not t.is_alive(), "the first connect() still waits"
            assert [type(e) for e in raised] == [ConnectError] and "ended by" in str(raised[0])
            time.sleep(0.3)
            assert c.connected
            c.publish_message("chfx3/gen", 1, "after")
            assert c.flush(8), "the new connection was torn down by the old attempt's end"
            assert len([th for th in threading.enumerate()
                        if th.name.startswith("paho") and th.is_alive()]) <= 1
        finally:
            c.close()


def test_a_connect_ended_by_disconnect_says_disconnect(tmp_path: Path) -> None:
    """CHANGELOG "A connect ended by ``disconnect()`` said 'ended by close()': 'ended by
    close(), disconnect() or another thread's connect()'". No test read the words. Fails with
    ``_check_ended``'s message back to "ended by close()"."""
    with _procs.silent_port() as port:
        c = Client(client_id="ended-by-disconnect")
        try:
            t, raised = _procs.connect_in_thread(lambda: c.connect("127.0.0.1", port, timeout=20))
            time.sleep(0.5)
            c.disconnect()
            t.join(5)
            assert not t.is_alive(), "connect() still waits after disconnect()"
            assert [type(e) for e in raised] == [ConnectError], raised
            assert "disconnect()" in str(raised[0]), str(raised[0])
        finally:
            c.close()


def test_a_gateway_session_refuses_another_sessions_name(tmp_path: Path) -> None:
    """CHANGELOG "(Gateway's API over a session's life) ... a gateway session refuses any
    other [``SessionStateFile``]". A session holding nothing given another id's name in the
    same gateway (``LOG#other``): ``UsageError``, its own name kept. The existing pins try a
    path outside the gateway, or a session holding messages (refused for that). Fails with
    ``StateFile.set_path``'s ``(self.path or ...)`` dropped: the session silently became
    "other"."""
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("one")
        own = c.config("SessionStateFile")
        other = own.rpartition("#")[0] + "#other"
        with pytest.raises(UsageError, match="gateway's directory"):
            c.config(f"SessionStateFile={other}")
        assert c.config("SessionStateFile") == own
        c.publish_message("chfx3/gw", 1, "held")
    with Gateway(tmp_path / "gw") as gw:
        assert [m.message for m in gw.client("one").outgoing_messages] == [b"held"]
        assert list(gw.client("other").outgoing_messages) == []


_SLOW_DNS_CHILD = """
import os, socket, sys, threading, time
real = socket.getaddrinfo
def slow(host, *args, **kwargs):
    if host == "slow.invalid":  # a resolver that takes its time (no close() can cut it)
        time.sleep(30)
        raise socket.gaierror(socket.EAI_NONAME, "slow.invalid")
    return real(host, *args, **kwargs)
socket.getaddrinfo = slow
from mqttsession.gateway import Gateway
gw = Gateway(sys.argv[1])
c = gw.client("exiting", clean_session=False)
def connect():
    try:
        c.connect("slow.invalid", 1883, timeout=30)
    except Exception:
        pass
t = threading.Thread(target=connect, daemon=True)
t.start()
time.sleep(0.5)
gw.close()
t.join(5)
# what the interpreter's exit would wait for (it joins every non-daemon thread)
held = [th.name for th in threading.enumerate()
        if th is not threading.main_thread() and not th.daemon and th.is_alive()]
print("MAIN-END", held, flush=True)
os._exit(0)  # (not waited for here: the list says whether the exit would wait)
"""


def test_the_exit_after_gateway_close_waits_for_no_connect_thread(tmp_path: Path) -> None:
    """CHANGELOG "The interpreter's exit after ``Gateway.close()`` waited for a connect thread
    still in a TCP connect to a dead server ...: the pool's threads are daemon threads now".
    The existing pin's connect (to a server that drops SYNs) is now cut by ``close()`` at its
    socket, so its thread ends anyway; here the pool thread is in a name lookup no close can
    cut (a slow resolver, 30 s): no thread the interpreter's exit joins is left. Fails with
    ``DaemonPool`` starting ``daemon=False`` threads (a ThreadPoolExecutor's, joined at exit)."""
    env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", _SLOW_DNS_CHILD, str(tmp_path / "gw")],
                         env=env, timeout=90, capture_output=True, text=True)
    assert "MAIN-END" in out.stdout, out.stderr
    assert "MAIN-END []" in out.stdout, f"the exit would wait for: {out.stdout}"


def test_close_leaves_a_slow_link_that_moves_alone_to_the_end(mosquitto: MosquittoBroker
                                                               ) -> None:
    """CHANGELOG "(second review of today's fixes) ``close()`` cut a slow but moving link
    after the timeout (the DISCONNECT lost: the broker published the Will): it cuts only a
    link over which nothing was acknowledged for the timeout". 16 MB of QoS 0 behind
    ``close()`` on a 4 MB/s uplink, ``connect(timeout=1)``. The existing pin looks for the
    Will 1 s after ``close()``, while a cut link's forwarder still passes what it holds for
    seconds: it passes with the bug back. Here the Will is looked for once every byte went
    through. Fails with ``tcpinfo.cut_when_stalled`` cutting at its first look."""
    link = _procs.SlowUplink((mosquitto.host, mosquitto.port), 4_000_000)
    c = Client(client_id="chfx3-slow-close", will_topic="chfx3/slow/will",
               will_message=b"gone")
    try:
        with observed(mosquitto.host, mosquitto.port, "chfx3/slow/will") as wills:
            c.connect("127.0.0.1", link.port, timeout=1.0)
            for _ in range(16):
                c.publish_data("chfx3/slow/data", 0, b"q" * 1_000_000)
            c.close()
            assert link.drained.wait(60), "the uplink never drained"
            time.sleep(1.0)  # (a Will follows the broker's side's end at once)
            assert wills == [], "close() cut a link that moved: the broker published the Will"
    finally:
        link.close()


def _state_client(path: Path) -> Client:
    c = Client(client_id="chfx3-mount", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=1")
    c.config("QueueSegmentBytes=4096")
    return c


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
def test_a_mounted_queue_whose_segments_cannot_all_move_keeps_them_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CHANGELOG "A session found in the state file and not restored goes aside ... a queue on
    its own mount whose segments cannot all be moved into it keeps them all in place". The
    disk queue is a tmpfs mount point (its segments move into ``unrestored-<time>`` inside
    it); the second segment's move fails: the publish is ``PersistenceError``, every segment
    is back and a restore has every message. Fails with ``Spool._move_aside``'s put-back of
    the segments moved so far removed (the first stays in the inner directory: its messages
    lost to the next restore)."""
    import mqttsession.spool as spool_mod
    from mqttsession.errors import PersistenceError
    from mqttsession.testing.faults import FakeOs

    path, queue = tmp_path / "s", tmp_path / "s.queue"
    queue.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(queue)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        old = [f"old{i}:".encode() + b"x" * 1500 for i in range(8)]
        c = _state_client(path)
        c.restore_session("")
        for m in old:
            c.publish_data("chfx3/mount", 1, m)
        c.close()
        segments = sorted(p.name for p in queue.iterdir() if p.is_file())
        assert len(segments) >= 2, segments
        moved: list[str] = []

        def rename(src: Any, dst: Any) -> None:
            if os.path.dirname(os.fspath(dst)) != str(queue) and os.path.basename(
                    os.fspath(src)) in segments:
                moved.append(os.path.basename(os.fspath(src)))
                if len(moved) == 2:  # the second segment cannot follow
                    raise OSError(5, "Input/output error (injected)")
            os.rename(src, dst)

        monkeypatch.setattr(spool_mod, "os", FakeOs(rename=rename))
        c = _state_client(path)
        with pytest.raises(PersistenceError):
            c.publish_data("chfx3/mount", 1, b"new")  # not restored: set aside, refused
        c.close()
        monkeypatch.setattr(spool_mod, "os", os)
        assert len(moved) == 2, moved
        assert sorted(p.name for p in queue.iterdir() if p.is_file()) == segments
        assert [p for p in queue.iterdir() if p.is_dir()] == []
        again = _state_client(path)
        again.restore_session("")
        assert [m.message for m in again.outgoing_messages] == old
        again.close()
    finally:
        subprocess.run(["umount", "-l", str(queue)], check=False)
