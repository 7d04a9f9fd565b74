"""docs/guarantees.rst, claims no other test pinned: each test names the claim it proves.

* QoS 0 published while disconnected: dropped, ``publish_*`` returns 0, one WARNING a window
  (the rest summed up), no ``on_message_dropped``, never sent later.
* A removal after PUBACK / PUBCOMP is lazy: a process killed in between (the files copied at
  ``on_message_out``) sends the QoS 1 message again, the QoS 2 message's PUBREL only (nothing
  delivered twice); the session's timer round writes the removal without any other write.
* A broker restart with ``persistence true`` is a lost connection: SessionPresent=1, no
  ``on_session_lost``, the unacknowledged PUBLISHes resent with DUP=1 and their ids.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client
from mqttsession.journal import JOURNAL_SUFFIX

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

Counter, EventLog = _procs.Counter, _procs.EventLog
number_of, payload, unique, wait_until = (_procs.number_of, _procs.payload, _procs.unique,
                                          _procs.wait_until)

pytestmark = pytest.mark.integration


def _restart(cid: str, state_file: Path, proxy: Any) -> None:
    """A new process's client on ``state_file``: restored, connected through ``proxy``,
    everything it holds acknowledged, closed."""
    r = Client(client_id=cid, clean_session=False)
    r.config(f"SessionStateFile={state_file}")
    r.restore_session("")
    try:
        r.connect(proxy.host, proxy.port)
        assert r.flush(_procs.TIMEOUT)
    finally:
        r.close()

def test_a_qos0_publish_while_disconnected_is_dropped_and_never_held(
    mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """guarantees.rst: a QoS 0 message published while disconnected is dropped, logged at
    WARNING (the first of a 10 s window, the others summed up), without an
    ``on_message_dropped`` event; ``publish_*`` returns 0; it is never sent later."""
    tag = unique("q0")
    topic = f"mqs/{tag}"
    counter = Counter(mosquitto.host, mosquitto.port, topic)
    c = Client(client_id=unique("q0"), clean_session=False)
    dropped: list[Any] = []
    c.on_message_dropped = dropped.append
    caplog.set_level(logging.DEBUG, logger="mqttsession")
    try:
        assert c.publish_message(topic, 0, payload(tag, 1)) == 0
        assert c.publish_data(topic, 0, payload(tag, 2).encode()) == 0
        assert c.publish_message(topic, 0, payload(tag, 3)) == 0
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "dropped" in warned[0] and "10 s" in warned[0], warned
        assert c.outgoing_messages == () and c.queue_stats().messages == 0
        c.connect(mosquitto.host, mosquitto.port)
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        assert counter.counts(tag) == {}, "a QoS 0 message dropped offline was sent later"
        assert dropped == []
    finally:
        c.close()
        counter.close()
    summary = [r.getMessage() for r in caplog.records if "more messages dropped" in r.getMessage()]
    assert summary and summary[0].startswith("2 more messages dropped"), summary


def _copy_files(src: Path, dst: Path) -> None:
    """What a kill -9 at this instant leaves: the state file and its journal as they are."""
    for a, b in ((src, dst), (Path(f"{src}{JOURNAL_SUFFIX}"), Path(f"{dst}{JOURNAL_SUFFIX}"))):
        if a.exists():
            shutil.copyfile(a, b)


def _held(path: Path, cid: str) -> list[bytes]:
    copy = path.with_name(path.name + "-look")
    _copy_files(path, copy)
    return [bytes(m) for m in _procs.crash_copy(copy, cid)]


def test_a_removal_after_the_final_ack_is_lazy_and_a_kill_before_it_repeats_no_qos2(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path
) -> None:
    """guarantees.rst: a removal after PUBACK or PUBCOMP is written lazily (at the session's
    next timer round while connected): a process killed in between sends that QoS 1 message
    again (at least once) or that QoS 2 message's PUBREL again (the broker answers PUBCOMP;
    nothing is delivered twice)."""
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("lazy")
    topic = f"mqs/{tag}"
    counter = Counter(mosquitto.host, mosquitto.port, topic)
    cid = unique("lazy")
    live = tmp_path / "live.session"
    at_ack = {1: tmp_path / "k1.session", 2: tmp_path / "k2.session"}
    copied = {n: threading.Event() for n in at_ack}

    def on_out(e: Any) -> None:  # network thread, on the final ack: "killed" right here
        n = number_of(tag, e.message)
        if n in at_ack:
            _copy_files(live, at_ack[n])
            copied[n].set()

    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={live}")
    c.restore_session("")
    c.on_message_out = on_out
    try:
        c.connect(proxy.host, proxy.port)
        c.publish_message(topic, 1, payload(tag, 1))
        assert c.flush(_procs.TIMEOUT)
        assert copied[1].wait(_procs.TIMEOUT), "no on_message_out"  # before the next publish
        c.publish_message(topic, 2, payload(tag, 2))
        assert c.flush(_procs.TIMEOUT)
        assert copied[2].wait(_procs.TIMEOUT), "no on_message_out"
        # no other write follows: the timer round alone takes the removal to the file
        wait_until(lambda: _held(live, cid) == [], 3.0, "the removal written by the timer")
    finally:
        c.close()
    try:
        counter.wait_numbers(tag, [1, 2])
        # the process "killed" at the PUBACK / PUBCOMP: its file still holds the message
        assert _held(at_ack[1], cid) == [payload(tag, 1).encode()]
        assert _held(at_ack[2], cid) == [payload(tag, 2).encode()]
        for n in (1, 2):
            proxy.clear_log()
            _restart(cid, at_ack[n], proxy)
            pubs = [p for p in proxy.packets("c2s", "PUBLISH") if number_of(tag, p.payload or b"")]
            if n == 1:  # sent again
                assert [number_of(tag, p.payload or b"") for p in pubs] == [1]
            else:  # only its PUBREL again, answered with PUBCOMP
                assert pubs == []
                assert proxy.packets("c2s", "PUBREL") and proxy.packets("s2c", "PUBCOMP")
        c2 = Client(client_id=cid, clean_session=False)
        c2.config(f"SessionStateFile={at_ack[2]}")
        c2.restore_session("")
        c2.connect(mosquitto.host, mosquitto.port)
        c2.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        c2.close()
        counts = counter.counts(tag)
        assert counts[1] == 2, counts  # QoS 1: at least once, here twice
        assert counts[2] == 1, counts  # QoS 2: the PUBREL again delivers nothing twice
    finally:
        counter.close()


def test_a_persistent_broker_restart_is_a_lost_connection(
    mosquitto_factory: Any, mqtt_proxy_factory: Any
) -> None:
    """guarantees.rst: a broker restart is as a lost connection when the broker kept the
    session (mosquitto with ``persistence true``): SessionPresent=1, no ``on_session_lost``,
    the unacknowledged PUBLISHes resent with DUP=1 and their original ids; QoS 2 once."""
    broker = mosquitto_factory("mosquitto-persist.conf")
    proxy = mqtt_proxy_factory(broker)
    tag = unique("prst")
    topic = f"mqs/{tag}"
    counter = Counter(broker.host, broker.port, topic)
    c = Client(client_id=unique("prst"), clean_session=False)
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    log = EventLog(c)
    try:
        c.connect(proxy.host, proxy.port)
        proxy.drop("s2c", "PUBACK", "PUBREC")
        ids = {n: c.publish_message(topic, 1 + n % 2, payload(tag, n)) for n in range(1, 5)}
        proxy.wait_for("s2c", "PUBREC", predicate=lambda r: r.dropped, count=2)
        proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.dropped, count=2)
        proxy.stop()
        log.wait("on_disconnected")
        broker.restart()  # SIGTERM: mosquitto saves its sessions
        counter.wait_subscribed(2)
        proxy.clear_drops()
        proxy.clear_log()
        proxy.start()  # same port: the client comes back by itself
        connected = log.wait("on_connected", 2)
        assert [e.session_present for e in connected] == [False, True]
        assert c.flush(_procs.TIMEOUT), c.outgoing_messages
        c.publish_message(topic, 2, f"{tag}:END")
        counter.wait_payload(f"{tag}:END")
        counter.wait_numbers(tag, range(1, 5))
        assert log.of("on_session_lost") == []
        resent = [(number_of(tag, p.payload or b""), p.packet_id, p.dup)
                  for p in proxy.packets("c2s", "PUBLISH") if number_of(tag, p.payload or b"")]
        assert resent == [(n, ids[n], True) for n in range(1, 5)]
        counts = counter.counts(tag)
        assert counts[1] == 1 and counts[3] == 1  # QoS 2: once
    finally:
        c.close()
        counter.close()


def test_a_qos1_message_sent_before_a_kill_is_resent_with_dup_after_the_restart(
    mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """guarantees.rst, QoS 1: an outgoing message is resent (DUP=1) until its PUBACK arrives,
    across reconnects and restarts. The kill lands after its PUBLISH left, before the
    session's next timer round (the round's period stretched so the instant is certain; the
    files copied are what a kill -9 leaves)."""
    import mqttsession.driver as driver_mod

    monkeypatch.setattr(driver_mod, "_TICK_EVERY", 3600.0)
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("dup")
    topic = f"mqs/{tag}"
    cid = unique("dup")
    live, killed = tmp_path / "live.session", tmp_path / "killed.session"
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={live}")
    c.restore_session("")
    try:
        c.connect(proxy.host, proxy.port)
        proxy.drop("s2c", "PUBACK")
        pid = c.publish_message(topic, 1, payload(tag, 1))
        proxy.wait_for("s2c", "PUBACK", predicate=lambda r: r.dropped)
        _copy_files(live, killed)  # kill -9 here: the PUBLISH left, its PUBACK never came
    finally:
        c.close()
    proxy.clear_drops()
    proxy.clear_log()
    _restart(cid, killed, proxy)
    resent = [(p.packet_id, p.dup) for p in proxy.packets("c2s", "PUBLISH")
              if number_of(tag, p.payload or b"")]
    assert resent == [(pid, True)]
