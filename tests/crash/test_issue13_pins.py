"""Issue 13: "the crash proofs run for all three modes". The publisher's kill -9 in
``interval`` and ``none`` is ``test_guarantees_pins``; this is the durable subscriber's: a
real process under ``SessionSync=interval`` / ``none`` taking QoS 1 and QoS 2 messages,
SIGKILLed mid-stream with QoS 2 flows past PUBREC (their PUBRELs held back by a proxy), then
restarted from its state file: nothing is lost (the held flows are delivered on the broker's
PUBREL), and no QoS 2 message reaches the application twice."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession import Client, MessageEvent

pytestmark = [pytest.mark.crash, pytest.mark.integration]

N = 400

_CHILD = r"""
import os, sys, threading
from mqttsession import Client
state, cid, host, port, mode, topic, log = sys.argv[1:8]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

def on_message_in(e):
    os.write(fd, b"B %s\n" % e.message)
    os.write(fd, b"E %s\n" % e.message)

c = Client(client_id=cid, clean_session=False)
c.config("SessionStateFile=" + state)
c.config("SessionSync=" + mode)
c.config("SessionSyncInterval=600000")  # (interval) no sync of its own before the kill
c.restore_session("")
c.on_message_in = on_message_in
subscribed = threading.Event()
c.on_subscribed = lambda _e: subscribed.set()
c.connect(host, int(port), 10)
c.subscribe(topic, 2)
subscribed.wait(10)
print("READY", flush=True)
threading.Event().wait()
"""


def _log(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(a, int(b)) for a, b in (ln.split() for ln in path.read_text().splitlines() if ln)]


@pytest.mark.parametrize("mode", ["interval", "none"])
def test_a_durable_subscriber_killed_mid_stream_loses_nothing_in_every_sync_mode(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, mode: str) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    proxy.drop("s2c", "PUBREL")  # the child's QoS 2 flows stay past PUBREC
    tag = uuid.uuid4().hex[:8]
    topic, cid = f"mqs/k9sub-{tag}", f"k9sub-{tag}"
    state, log = tmp_path / "sub.session", tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(state), cid, proxy.host,
                              str(proxy.port), mode, topic, str(log)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"k9feed-{tag}")
    after: list[MessageEvent] = []
    c: Client | None = None
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY", child.communicate(timeout=10)[1]
        # at most mosquitto's max_inflight_messages (20): past it mosquitto 2.0 refuses a QoS 1
        # PUBLISH with 0x97 (Quota exceeded), which MQTT 3.1.1 sends as a plain PUBACK: the
        # message is thrown away unseen (README "Operational notes"; under CPU load the feed's
        # QoS 2 flows wait for their PUBRELs and once lost up to 38 QoS 1 messages here)
        pub.max_inflight_messages_set(20)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        infos: list[Any] = []

        def feed() -> None:  # odd numbers QoS 2, even QoS 1
            for n in range(N):
                infos.append(pub.publish(topic, b"%d" % n, qos=1 + n % 2))
                time.sleep(0.001)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        proxy.wait_for("c2s", "PUBREC", count=10, timeout=10)  # QoS 2 flows held
        child.send_signal(signal.SIGKILL)
        _out, err = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL, err
        feeder.join(20)
        for info in infos:
            info.wait_for_publish(10)
        proxy.cut()
        refused = re.findall(rf"Sending PUB(?:ACK|REC) to k9feed-{tag} \(m(\d+), rc([1-9]\d*)\)",
                             mosquitto.log_since_start())
        assert not refused, f"mosquitto refused messages of the feed (mid, reason): {refused[:10]}"
        before = _log(log)
        assert 0 < sum(1 for k, _ in before if k == "E") < N  # killed mid-stream
        assert not [n for k, n in before if n % 2]  # (no QoS 2 one delivered: no PUBREL)
        c = Client(client_id=cid, clean_session=False)
        c.config(f"SessionStateFile={state}")
        c.config(f"SessionSync={mode}")
        c.on_message_in = after.append
        c.restore_session("")
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        counts: collections.Counter[int] = collections.Counter(
            n for k, n in before if k == "B")

        def all_taken() -> bool:
            got = counts + collections.Counter(int(e.message) for e in list(after))
            return all(got[n] for n in range(N))

        deadline = time.monotonic() + 30  # (a loaded machine: a CI run once took 15 s)
        while not all_taken():
            if time.monotonic() > deadline:
                got = counts + collections.Counter(int(e.message) for e in list(after))
                lost = [n for n in range(N) if not got[n]]
                raise AssertionError(
                    f"messages lost: {len(lost)} (QoS 2: {sum(n % 2 for n in lost)}), e.g."
                    f" {lost[:10]}; taken before the kill {len(counts)}, after {len(after)}")
            time.sleep(0.02)
        time.sleep(0.3)  # an observation window: a late repeat would show up within it
        counts.update(int(e.message) for e in after)
        repeats = [n for n in range(1, N, 2) if counts[n] > 1]
        assert not repeats, f"QoS 2 messages taken twice: {repeats[:20]}"
        assert not [n for n in range(N) if not counts[n]]
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
        pub.disconnect()
        pub.loop_stop()
        if c is not None:
            c.close()
