"""Links that stop moving bytes: a server whose TCP handshake is never answered, and a peer that
stops reading (a stalled link, its send buffer full). ``connect(timeout=T)`` gives up after
about T (before: paho's fixed 5 s, whatever T); ``close()`` and ``disconnect()`` return after
connect()'s timeout at most, the session kept whole (before: until the keep-alive noticed,
for ever with keep-alive 0). A scripted broker on loopback (``FakeBroker``) stops reading. An
upload slower than the keep-alive on a healthy link is no dead link."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, ConnectError
from mqttsession.testing.fake_broker import FakeBroker

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def test_connect_timeout_bounds_the_tcp_handshake() -> None:
    """A server whose accept queue is full drops the SYN: ``connect(timeout=1)`` raises
    ``ConnectError`` after about a second, not paho's 5."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.socket()
    filler.connect(listener.getsockname())  # the accept queue is full from now on
    c = Client(client_id="syn-drop")
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError, match="timed out"):
            c.connect("127.0.0.1", listener.getsockname()[1], timeout=1.0)
        assert time.monotonic() - started < 3.5
    finally:
        c.close()
        filler.close()
        listener.close()


@pytest.mark.parametrize("call", ["close", "disconnect"])
@pytest.mark.parametrize("keep_alive", [0, 60])
def test_close_on_a_stalled_link_returns(tmp_path: Path, call: str, keep_alive: int) -> None:
    """The broker stops reading while 5 MB of QoS 1 messages are on their way: ``close()`` /
    ``disconnect()`` cut the link after connect()'s timeout (2 s here); every message stays in
    the session."""
    stalled = threading.Event()
    release = threading.Event()

    def stall(_fb: FakeBroker, rec: Any) -> None:
        if rec.type == "PUBLISH":
            stalled.set()
            release.wait(60)  # the broker reads nothing more: the client's send buffer fills

    fb = FakeBroker(qos1_ack="none")
    fb.on_packet = stall
    c = Client(client_id="stall", clean_session=False, keep_alive_interval=keep_alive)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.config("SessionSync=none")
    c.restore_session("")
    done = threading.Event()
    try:
        c.connect(fb.host, fb.port, timeout=2.0)
        big = b"y" * (256 * 1024)
        for i in range(20):
            c.publish_data("stall/t", 1, b"%d-" % i + big)
        assert stalled.wait(10)
        time.sleep(0.5)  # the socket's buffers fill
        worker = threading.Thread(target=lambda: (getattr(c, call)(), done.set()), daemon=True)
        worker.start()
        assert done.wait(20), f"{call}() still blocked after 20 s on the stalled link"
    finally:
        release.set()
        if done.is_set():
            c.close()
        fb.stop()
    again = Client(client_id="stall", clean_session=False)
    again.config(f"SessionStateFile={tmp_path / 's'}")
    try:
        again.restore_session("")
        assert len(again.outgoing_messages) == 20
    finally:
        again.close()


@pytest.mark.parametrize("protocol", [4, 5])
def test_an_upload_slower_than_the_keep_alive_is_delivered(mosquitto: Any, protocol: int) -> None:
    """A 1.5 MB QoS 1 message over a 300 kB/s uplink (5 s) with keep-alive 2: the PINGRESP
    waits behind it, but the broker keeps taking bytes: no keep-alive timeout (before: the
    client cut the link every ~4 s and sent the message again from the start, for ever)."""
    link = _procs.SlowUplink((mosquitto.host, mosquitto.port), 300_000)
    lost: list[int] = []
    c = Client(client_id=f"slow-up-{protocol}", protocol_version=protocol, keep_alive_interval=2)
    c.on_disconnected = lambda e: lost.append(e.status_code)
    try:
        c.connect("127.0.0.1", link.port, timeout=10)
        c.publish_data("slow/up", 1, b"z" * 1_500_000)
        c.publish_data("slow/up", 1, b"small")
        assert c.flush(30), f"not delivered; disconnects: {lost}"
        assert lost == []
    finally:
        c.close()
        link.close()


def test_a_frozen_broker_is_noticed_while_the_client_publishes(mosquitto_factory: Any) -> None:
    """mosquitto stopped (SIGSTOP: its kernel still acknowledges what arrives) while QoS 0
    readings go out every 0.2 s, keep-alive 2: the missing PINGRESP cuts the link within
    about 3x the keep-alive (bytes sent after the PINGREQ are no sign of life)."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    broker = mosquitto_factory()
    lost = threading.Event()
    c = Client(client_id="frozen", keep_alive_interval=2)
    c.on_disconnected = lambda e: lost.set()
    try:
        c.connect(broker.host, broker.port, timeout=5)
        os.kill(broker.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 8
        while not lost.is_set() and time.monotonic() < deadline:
            c.publish_data("tele/x", 0, b"t" * 100)
            time.sleep(0.2)
        assert lost.is_set(), "a frozen broker went unnoticed for 8 s (keep-alive 2)"
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        c.close()


def test_close_leaves_a_slow_link_that_moves_alone(mosquitto: Any) -> None:
    """``close()`` behind 16 MB of QoS 0 on a 4 MB/s uplink, ``connect(timeout=1)``: the link
    moves, so it is not cut: the DISCONNECT arrives and the broker keeps the Will to itself
    (before: cut after the timeout, the Will published)."""
    link = _procs.SlowUplink((mosquitto.host, mosquitto.port), 4_000_000)
    c = Client(client_id="slow-close", will_topic="slow/will", will_message=b"gone")
    try:
        with _procs.observed(mosquitto.host, mosquitto.port, "slow/will") as wills:
            c.connect("127.0.0.1", link.port, timeout=1.0)
            for _ in range(16):
                c.publish_data("slow/data", 0, b"q" * 1_000_000)
            c.close()
            time.sleep(1.0)
            assert wills == [], "close() cut a link that moved: the broker published the Will"
    finally:
        link.close()


@pytest.mark.parametrize(("bound", "how"), [(1_000_000, "publish_data"),
                                            (1_000_000, "publish_many"), (0, "publish_data")])
def test_qos0_waiting_for_a_stalled_link_is_bounded(bound: int, how: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The broker stops reading while 20 MB of 1 KB QoS 0 messages are published: with
    ``QoS0BacklogBytes`` they wait in memory up to it (the kernel's socket buffers hold some
    more), the rest is dropped, logged, and the broker gets only those once it reads again;
    0 keeps plain paho's way (every one waits in memory, every one arrives). Once the link
    moves, what was written no longer counts: none is dropped. Before: every
    one waited, for any setting (a loop publishing as fast as it could put 1.3 GB there in
    10 s)."""
    release = threading.Event()
    got = [0]

    def stall(_fb: FakeBroker, rec: Any) -> None:
        if rec.type == "PUBLISH" and rec.topic == "stall/go":
            release.wait(60)  # the broker reads nothing more: the client's send buffer fills
        elif rec.type == "PUBLISH":
            got[0] += 1

    fb = FakeBroker()
    fb.on_packet = stall
    c = Client(client_id="qos0-stall", keep_alive_interval=60)
    c.config(f"QoS0BacklogBytes={bound}")
    n, body = 20_000, b"r" * 1000
    try:
        c.connect(fb.host, fb.port, timeout=5)
        with caplog.at_level(logging.WARNING, logger="mqttsession"):
            c.publish_data("stall/go", 0, b"")
            batch = [("stall/t", 0, b"%05d" % i + body) for i in range(n)]
            if how == "publish_many":  # (one call: the bound holds within it too)
                c.publish_many(batch)
            else:
                for topic, qos, data in batch:
                    c.publish_data(topic, qos, data)
        release.set()
        seen, still = -1, time.monotonic()
        while time.monotonic() - still < 1.0:  # until nothing more arrives for 1 s
            if got[0] != seen:
                seen, still = got[0], time.monotonic()
            time.sleep(0.05)
        behind = [r.getMessage() for r in caplog.records if "connection is behind" in
                  r.getMessage()]
        if bound:
            assert 0 < got[0] < n // 2, got[0]  # (what the kernel's buffers held, and the bound)
            assert behind, "no drop logged"
        else:
            assert got[0] == n
            assert behind == []
        before = got[0]  # the link moves again: what is written leaves the count
        for i in range(2 * bound // len(body) + 100):
            c.publish_data("stall/after", 0, body)
            time.sleep(0.002 if i % 50 == 49 else 0)  # (at most 50 KB ahead of the writer)
        deadline = time.monotonic() + 10
        while got[0] < before + 2 * bound // len(body) + 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got[0] == before + 2 * bound // len(body) + 100, "dropped on a link that moves"
    finally:
        release.set()
        c.close()
        fb.stop()


def test_qos0_held_while_the_network_thread_is_busy_is_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    """The network thread busy in ``on_message_in`` (a slow handler) while another thread
    publishes 20 MB of 1 KB QoS 0 messages: what waits for it to write them (held with its
    read batch) counts against ``QoS0BacklogBytes`` too (a review: it was not counted, so
    all of them waited in memory); the rest is dropped, logged."""
    fb = FakeBroker()
    busy, release = threading.Event(), threading.Event()
    c = Client(client_id="qos0-busy", keep_alive_interval=60)
    c.config("QoS0BacklogBytes=1000000")
    c.config("SessionSync=none")  # (the publishing thread waits for no sync: its packets
    # join the read batch's, written at its end)

    def handler(_e: Any) -> None:
        busy.set()
        release.wait(60)

    c.on_message_in = handler
    n, body = 20_000, b"r" * 1000
    try:
        c.connect(fb.host, fb.port, timeout=5)
        fb.send_raw(fb.publish("in/t", b"slow", 0))
        assert busy.wait(10)
        with caplog.at_level(logging.WARNING, logger="mqttsession"):
            for i in range(n):
                c.publish_data("busy/t", 0, b"%05d" % i + body)
        release.set()
        deadline = time.monotonic() + 10
        seen = -1
        while (got := len(fb.packets("PUBLISH"))) != seen and time.monotonic() < deadline:
            seen = got
            time.sleep(0.5)
        assert 0 < got < n // 2, got
        assert any("connection is behind" in r.getMessage() for r in caplog.records)
        for i in range(2100):  # all written: nothing counts any more, none is dropped
            c.publish_data("busy/after", 0, body)
            time.sleep(0.002 if i % 50 == 49 else 0)
        deadline = time.monotonic() + 10
        while len(fb.packets("PUBLISH")) < got + 2100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fb.packets("PUBLISH")) == got + 2100
    finally:
        release.set()
        c.close()
        fb.stop()
