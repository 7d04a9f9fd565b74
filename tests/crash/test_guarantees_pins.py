"""docs/guarantees.rst, kill -9 in the ``SessionSync`` modes the other crash tests leave to
the default: ``interval`` and ``none`` promise nothing lost on a kill as ``always`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import uuid

from mqttsession import Client

from ._tally import Tally

pytestmark = [pytest.mark.crash, pytest.mark.integration]

_CHILD = r"""
import sys, time
from mqttsession import Client
state, cid, host, port, mode, tag = sys.argv[1:7]
c = Client(client_id=cid, clean_session=False)
c.config("SessionStateFile=" + state)
c.config("SessionSync=" + mode)
c.config("SessionSyncInterval=600000")  # (interval) no sync of its own before the kill
c.config("MaxInflight=20")
c.restore_session("")
c.connect(host, int(port), 10)
for n in range(100000):
    c.publish_message("mqs/" + tag, 1 + n % 2, str(n))
    print("R", n, flush=True)
    time.sleep(0.002)
"""


@pytest.mark.parametrize("mode", ["interval", "none"])
def test_kill9_loses_nothing_in_every_sync_mode(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, mode: str
) -> None:
    """guarantees.rst: the client process killed (``kill -9``), any mode: nothing is lost
    with a ``SessionStateFile`` in every ``SessionSync`` mode; the next process's
    ``restore_session`` reads it and the next ``connect()`` resumes (QoS 2 once)."""
    proxy = mqtt_proxy_factory(mosquitto)
    tag = f"k9{mode}-{uuid.uuid4().hex[:8]}"
    cid = f"k9-{uuid.uuid4().hex[:8]}"
    state = str(tmp_path / "pub.session")
    tally = Tally(mosquitto, f"mqs/{tag}")
    # acks held back: messages wait for PUBACK, for PUBCOMP (past PUBREC), and never sent
    proxy.drop("s2c", "PUBACK", "PUBCOMP")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, state, cid, proxy.host,
                              str(proxy.port), mode, tag], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    returned: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            returned.append(int(line.split()[1]))
            if len(returned) == 40:
                child.send_signal(signal.SIGKILL)  # mid-stream: publishes still going
                break
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        returned += [int(x.split()[1]) for x in out.splitlines() if x.startswith("R ")]
        assert len(returned) >= 40, err
        proxy.cut()
        proxy.clear_drops()
        c = Client(client_id=cid, clean_session=False)
        c.config(f"SessionStateFile={state}")
        c.config("MaxInflight=20")
        c.restore_session("")
        try:
            assert c.outgoing_messages, "nothing held: the acks were held back"
            c.connect(proxy.host, proxy.port)
            assert c.flush(15), c.outgoing_messages
        finally:
            c.close()
        tally.wait_for(set(returned), timeout=15)
        # an observation window, not synchronisation: a late duplicate would show up within it
        time.sleep(0.3)
        with tally.lock:
            missing = [n for n in returned if tally.counts[n] == 0]
            qos2_dups = [n for n in returned if n % 2 == 1 and tally.counts[n] > 1]
        assert not missing, f"returned messages never arrived: {missing[:20]}"
        assert not qos2_dups, f"QoS 2 delivered twice: {qos2_dups[:20]}"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
        tally.close()
