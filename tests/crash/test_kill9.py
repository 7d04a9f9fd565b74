"""Crash tests: real processes with a SessionStateFile, killed with SIGKILL at random instants.

The publisher's promise: every message whose publish_* returned reaches an independent
subscriber, QoS 1 at least once, QoS 2 exactly once. The subscriber's promise: nothing lost;
QoS 2 repeated to the application only when a kill landed inside on_message_in.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttsession.testing import MosquittoBroker

from ._tally import Tally

HERE = Path(__file__).parent
pytestmark = [pytest.mark.crash, pytest.mark.integration]

# Each round sets what the proxy holds back, so kills land with messages in every phase:
# never sent (window full), awaiting PUBACK, awaiting PUBREC, awaiting PUBCOMP, and none.
ROUNDS: list[tuple[str, ...]] = [
    (), ("PUBACK",), ("PUBREC",), ("PUBCOMP",), ("PUBACK", "PUBREC"), ("PUBACK", "PUBCOMP"),
]
KILLS = 24


@pytest.fixture
def broker(mosquitto_factory: Any) -> Iterator[MosquittoBroker]:
    yield mosquitto_factory()


def _child(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def _lines(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[list[str], str]:
    out, err = proc.communicate(timeout=timeout)
    return out.splitlines(), err


def test_publisher_killed_at_random_loses_nothing(
    broker: MosquittoBroker, mqtt_proxy_factory: Any, tmp_path: Path
) -> None:
    rng = random.Random(os.environ.get("CRASH_SEED", "mqttsession"))
    proxy = mqtt_proxy_factory(broker)
    tally = Tally(broker, "crash/pub")
    state = str(tmp_path / "publisher.session")
    returned: set[int] = set()
    inflight_at_kill: list[int] = []
    try:
        for k in range(KILLS):
            proxy.clear_drops()
            hold = ROUNDS[k % len(ROUNDS)]
            if hold:
                proxy.drop("s2c", *hold)
            first = k * 1000
            proxy.clear_log()  # the previous child is dead and cut: nothing more is logged for it
            proc = _child("_publisher.py", state, proxy.host, str(proxy.port), str(first),
                          str(first + 1000))
            try:
                proxy.wait_for("s2c", "CONNACK", timeout=30)  # the child is up and publishing
            except TimeoutError:
                proc.kill()
                raise AssertionError(f"publisher {k} never connected: {_lines(proc)[1]}") from None
            time.sleep(rng.uniform(0.1, 0.9))  # the point of the test: kill at a random instant
            proc.send_signal(signal.SIGKILL)
            lines, err = _lines(proc)
            assert proc.returncode == -signal.SIGKILL, err
            got = {int(x.split()[1]) for x in lines if x.startswith("R ")}
            returned |= got
            inflight_at_kill.append(len(got))
            proxy.cut()  # the broker sees the dead connection at once
        proxy.clear_drops()
        final = _child("_publisher.py", state, proxy.host, str(proxy.port), "900000", "900010",
                       "flush")
        lines, err = _lines(final)
        assert final.returncode == 0, err
        assert lines[-1].startswith("DONE True 0"), (lines[-3:], err)
        returned |= set(range(900000, 900010))
        tally.wait_for(returned, timeout=20)
        # An observation window, not synchronisation: everything arrived; a late duplicate
        # (a resend of a message already delivered) would show up within it.
        time.sleep(1.0)
        with tally.lock:
            missing = sorted(n for n in returned if tally.counts[n] == 0)
            qos2_dups = sorted(n for n in returned if n % 2 == 1 and tally.counts[n] > 1)
        print(f"kills={KILLS} returned={len(returned)} per-run={inflight_at_kill}"
              f" qos1-repeats={sum(c - 1 for n, c in tally.counts.items() if n % 2 == 0 and c > 1)}")
        assert not missing, f"{len(missing)} returned messages never arrived: {missing[:20]}"
        assert not qos2_dups, f"QoS 2 messages delivered twice: {qos2_dups[:20]}"
        assert sum(1 for n in inflight_at_kill if n > 0) >= KILLS // 2, inflight_at_kill
    finally:
        tally.close()


# the disk queue's rounds: publishing offline into it (the second time from four threads,
# whose publishes are stored in batches: one fdatasync each); connected with the acks held
# back (it fills); connected with everything flowing (it is read back, its segments deleted)
SPOOL_ROUNDS: list[tuple[bool, tuple[str, ...], int]] = [
    (True, (), 1), (False, ("PUBACK", "PUBREC"), 1), (False, (), 1), (True, (), 4),
    (False, ("PUBCOMP",), 4), (False, (), 1),
]
SPOOL_KILLS = 12


def test_disk_queue_publisher_killed_offline_draining_and_retiring(
    broker: MosquittoBroker, mqtt_proxy_factory: Any, tmp_path: Path
) -> None:
    """The same promise with the queue on disk (10 messages in memory, 4 KiB segments): kills
    land while publishing offline into it, while it fills behind held acks, and while it is
    read back and its segments deleted."""
    rng = random.Random(os.environ.get("CRASH_SEED", "mqttsession") + "-spool")
    proxy = mqtt_proxy_factory(broker)
    tally = Tally(broker, "crash/pub")
    state = str(tmp_path / "publisher.session")
    env = {"CRASH_SPOOL": "1"}
    returned: set[int] = set()
    per_run: list[int] = []
    try:
        for k in range(SPOOL_KILLS):
            offline, hold, threads = SPOOL_ROUNDS[k % len(SPOOL_ROUNDS)]
            proxy.clear_drops()
            if hold:
                proxy.drop("s2c", *hold)
            first = k * 10000
            proxy.clear_log()
            proc = _child("_publisher.py", state, proxy.host, str(proxy.port), str(first),
                          str(first + 10000), env={**env, "CRASH_THREADS": str(threads),
                                                   **({"CRASH_OFFLINE": "1"} if offline else {})})
            if offline:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "UP", _lines(proc)[1]
                time.sleep(rng.uniform(0.05, 0.4))
            else:
                try:
                    proxy.wait_for("s2c", "CONNACK", timeout=30)
                except TimeoutError:
                    proc.kill()
                    raise AssertionError(f"publisher {k} never connected: {_lines(proc)[1]}") from None
                time.sleep(rng.uniform(0.1, 0.9))
            proc.send_signal(signal.SIGKILL)
            lines, err = _lines(proc)
            assert proc.returncode == -signal.SIGKILL, err
            got = {int(x.split()[1]) for x in lines if x.startswith("R ")}
            returned |= got
            per_run.append(len(got))
            proxy.cut()
        proxy.clear_drops()
        final = _child("_publisher.py", state, proxy.host, str(proxy.port), "900000", "900010",
                       "flush", env=env)
        lines, err = _lines(final, timeout=120)
        assert final.returncode == 0, err
        assert lines[-1].startswith("DONE True 0"), (lines[-3:], err)
        returned |= set(range(900000, 900010))
        tally.wait_for(returned, timeout=30)
        time.sleep(1.0)  # an observation window for late duplicates
        with tally.lock:
            missing = sorted(n for n in returned if tally.counts[n] == 0)
            qos2_dups = sorted(n for n in returned if n % 2 == 1 and tally.counts[n] > 1)
        print(f"spool kills={SPOOL_KILLS} returned={len(returned)} per-run={per_run}")
        assert not missing, f"{len(missing)} returned messages never arrived: {missing[:20]}"
        assert not qos2_dups, f"QoS 2 messages delivered twice: {qos2_dups[:20]}"
        assert sum(1 for n in per_run if n > 20) >= SPOOL_KILLS // 2, per_run
        assert not any(name.endswith(".seg") for name in os.listdir(state + ".queue"))
    finally:
        tally.close()


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    """Poll a condition a file shows (no event to wait on) until it holds or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _read_log(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


@pytest.mark.parametrize("host", ["client", "gateway"])
def test_subscriber_killed_at_random_loses_nothing(mosquitto_factory: Any, tmp_path: Path,
                                                   host: str) -> None:
    """[MQTT-4.4.0-1] the broker resends to the restored session; QoS 2 once but for the window.
    ``gateway``: the session is one of a ``Gateway``, whose PUBRECs wait for syncs run in its
    sync thread (persistence point 3 off the loop).

    mosquitto's max_queued_messages (default 1000, counting queued and in flight) discards
    what a subscriber falls behind by; a durable subscriber fsyncs twice per QoS 2 message, so
    the cap is lifted here (and must be sized on a real broker: see broker_conf/).
    """
    broker = mosquitto_factory(extra_config="max_queued_messages 0\n")
    rng = random.Random(os.environ.get("CRASH_SEED", "mqttsession"))
    state = str(tmp_path / ("gateway" if host == "gateway" else "subscriber.session"))
    mode = ["gateway"] if host == "gateway" else []
    log = tmp_path / "deliveries.log"
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crash-sub-feeder")
    # paho's default window (20) = mosquitto's max_inflight_messages: a larger one makes a 3.1.1
    # mosquitto discard QoS 1 messages while still sending PUBACK
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    sent: list[int] = []
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            pub.publish("crash/sub", str(n).encode(), qos=1 + n % 2)
            sent.append(n)
            n += 1
            time.sleep(0.002)  # the feed's rate (~500/s), not synchronisation

    first = _child("_subscriber.py", state, broker.host, str(broker.port), str(log), *mode)
    assert first.stdout is not None and first.stdout.readline().strip() == "READY"
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    proc = first
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.5))  # the point of the test: kill at a random instant
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            time.sleep(rng.uniform(0.0, 0.3))  # the broker queues while it is away
            proc = _child("_subscriber.py", state, broker.host, str(broker.port), str(log), *mode)
            assert proc.stdout is not None
            ready = proc.stdout.readline().strip()
            assert ready == "READY", proc.communicate(timeout=10)[1]
        stop.set()
        feeder.join()
        want = set(sent)
        # until the log shows every message handled (or 60 s: the assertions below say what is
        # missing), then an observation window in which a late duplicate would show up
        _poll(lambda: want <= {n for tag, n, _q in _read_log(log) if tag == "E"}, timeout=60)
        time.sleep(1.0)
    finally:
        stop.set()
        proc.send_signal(signal.SIGKILL)
        last_err = proc.communicate(timeout=30)[1]
        pub.loop_stop()
        pub.disconnect()
    rows = _read_log(log)
    ends = Counter(n for tag, n, _q in rows if tag == "E")
    qos = {n: q for t, n, q in rows if t != "S"}
    missing = sorted(n for n in sent if ends[n] == 0)
    # The window: a kill after on_message_in began and before the removal record is durable
    # (just after the callback returns) delivers that QoS 2 message again after the restart.
    # The network thread handles one PUBREL at a time, so the first delivery of such a message
    # is the last one its process made before it was killed.
    last_of_segment: set[int] = set()
    seen: Counter[int] = Counter()
    first_at: dict[int, int] = {}
    for i, (tag, n, _q) in enumerate(rows):
        if tag == "S" and i:
            prev = [r for r in rows[:i] if r[0] == "B"]
            if prev:
                last_of_segment.add(prev[-1][1])
        if tag == "B":
            seen[n] += 1
            first_at.setdefault(n, i)
    qos2_repeats = sorted(n for n, c in seen.items() if qos[n] == 2 and c > 1)
    unexplained = [n for n in qos2_repeats if n not in last_of_segment]
    print(f"kills={KILLS} sent={len(sent)} delivered={len(ends)} qos2-repeats={len(qos2_repeats)}"
          f" (each the last delivery before a kill: {len(qos2_repeats) - len(unexplained)})")
    assert not missing, f"{len(missing)} never delivered: {missing[:20]}\n{last_err[-3000:]}"
    assert not unexplained, f"QoS 2 delivered twice outside the callback window: {unexplained[:20]}"
