"""``SessionSync=interval`` and a power cut with the broker holding QoS 2 flows the session's
file forgot (the broker took the PUBLISHes, their PUBRECs went with the power; the packet-id
reservation, synced before its first id left, is in the file). Those flows fill the broker's
incoming quota (mosquitto ``max_inflight_messages`` 20, MQTT 5's Receive Maximum 20): the
restarted session PUBRELs them before any new PUBLISH and counts them in its window, so every
message published after the restart is delivered. Before (a hunt): the new PUBLISHes went
first; MQTT 5: refused 0x97 and lost, every one; 3.1.1: acknowledged and thrown away. The
power cut is modelled by the state directory put back as it was before the lost records."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

import mqttsession
from mqttsession import Client
from mqttsession.testing import MosquittoBroker
from mqttsession.testing.proxy import MQTTProxy

try:  # tests/integration may or may not be a package
    from ._procs import wait_until
except ImportError:  # pragma: no cover - rootdir-relative import
    from _procs import wait_until  # type: ignore[no-redef]

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto, pytest.mark.crash]

_CHILD = r"""
import sys, time
from mqttsession import Client
state, cid, host, port, proto = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = Client(client_id=cid, clean_session=False, protocol_version=proto)
c.config("SessionStateFile=" + state + "/s")
c.config("SessionSync=interval")
c.config("SessionSyncInterval=600000")
c.restore_session("")
c.connect(host, port, 5)
c.publish_data("quota/first", 1, b"first")
assert c.flush(10)
print("synced", flush=True)
sys.stdin.readline()
for i in range(20):  # their records never reach the disk (the interval is 10 minutes)
    c.publish_data("quota/m", 2, b"old%02d" % i)
time.sleep(1.0)
print("sent", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("protocol", [5, 4])
def test_new_messages_after_a_power_cut_get_past_the_forgotten_flows(tmp_path: Path,
                                                                     protocol: int) -> None:
    state, image, cid = tmp_path / "state", tmp_path / "image", f"quota-{uuid.uuid4().hex[:8]}"
    state.mkdir()
    got: list[bytes] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{cid}-sub",
                      protocol=paho.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = lambda _c, _u, m: got.append(m.payload)
    sub.on_subscribe = lambda *_a: subscribed.set()
    with MosquittoBroker(extra_config="max_queued_messages 0\n") as b, \
            MQTTProxy(b.host, b.port) as px:
        sub.on_connect = lambda c, *_a: c.subscribe("quota/m", 2)
        sub.connect(b.host, b.port)
        sub.loop_start()
        child = None
        try:
            assert subscribed.wait(10)
            env = dict(os.environ, PYTHONPATH=str(Path(mqttsession.__file__).parent.parent))
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(state), cid, px.host, str(px.port),
                 str(protocol)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True)
            assert child.stdin is not None and child.stdout is not None
            assert child.stdout.readline().startswith("synced")
            shutil.copytree(state, image)  # the disk as the power cut leaves it
            px.drop("s2c", "PUBREC")  # the broker's PUBRECs never reach the client
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().startswith("sent")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            shutil.rmtree(state)
            shutil.copytree(image, state)
            px.clear_drops()
            c = Client(client_id=cid, clean_session=False, protocol_version=protocol)
            c.config(f"SessionStateFile={state / 's'}")
            c.config("SessionSync=interval")
            dropped: list[str] = []
            c.on_message_dropped = lambda e: dropped.append(e.reason)
            c.restore_session("")
            new = [b"new%02d" % i for i in range(40)]
            for m in new:
                c.publish_data("quota/m", 2, m)
            c.connect(px.host, px.port, 5)
            try:
                assert c.flush(20)
                wait_until(lambda: set(new) <= set(got), 10, "the new messages delivered")
            finally:
                c.close()
            assert not dropped
            assert all(got.count(m) == 1 for m in set(got))  # no QoS 2 duplicate
        finally:
            if child is not None:
                if child.poll() is None:
                    child.kill()
                    child.wait(10)
                for pipe in (child.stdin, child.stdout):
                    if pipe is not None:
                        pipe.close()
            sub.disconnect()
            sub.loop_stop()
