"""README "Using it": behaviour sentences no other test pinned, without a broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mqttsession import Client

_PARENT = textwrap.dedent("""
    import os, sys, time
    from mqttsession import Client
    c = Client(client_id="fork-lock", clean_session=False)
    c.config("SessionStateFile=" + sys.argv[1])
    c.restore_session("")
    c.publish_message("t/a", 1, "held")
    if os.fork() == 0:  # the worker: it calls nothing, it only outlives the parent
        print(os.getpid(), flush=True)  # (its at-fork handlers have run by now)
        time.sleep(30)
        os._exit(0)
    time.sleep(30)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_fork_child_lets_go_of_the_parents_lock_at_once(tmp_path: Path) -> None:
    """README: "the child lets go of the parent's lock at once (a worker that outlives a
    killed parent never holds its restart off)": the parent SIGKILLed, its forked worker still
    running, a new process restores the file."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "s")],
                              stdout=subprocess.PIPE, env=env)
    worker = 0
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        os.kill(worker, 0)  # the worker still runs
        again = Client(client_id="fork-lock", clean_session=False)
        again.config(f"SessionStateFile={tmp_path / 's'}")
        again.restore_session("")  # before: "in use" while the worker lived
        assert [m.message for m in again.outgoing_messages] == [b"held"]
        again.close()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if worker:
            os.kill(worker, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()
