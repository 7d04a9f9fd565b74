"""``Gateway.forget`` and the broker's session: the next session of a forgotten client id starts
clean (``forgotten``). A real broker (aedes for MQTT 3.1.1: it keeps a QoS 2 flow's packet id
until its PUBREL [MQTT-4.3.3-10]; mosquitto for MQTT 5), a proxy that holds the PUBRELs back,
and a gateway process killed with SIGKILL mid-flow.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import ConnectError, Gateway

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

_CHILD = """
import sys, time
from mqttsession import Gateway
gw = Gateway({dir!r})
c = gw.client({cid!r}, clean_session=False, protocol_version={v})
c.connect("127.0.0.1", {port})
for i in range(3):
    c.publish_data({topic!r}, 2, f"old-{{i}}".encode())
print("published", flush=True)
time.sleep(120)
"""


def _forgotten(state: Path) -> list[str] | None:
    path = state / "forgotten"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("broker", ["aedes", "mosquitto-5"])
def test_a_forgotten_id_starts_clean_so_no_qos2_message_is_lost(
        broker: str, request: pytest.FixtureRequest, mqtt_proxy_factory: Any,
        tmp_path: Path) -> None:
    """A gateway session's three QoS 2 flows are left at the broker (PUBRELs held back, the
    process killed); ``forget()``, then a new session of the same id publishes five. Before:
    it resumed the broker's session and reused packet ids 1-3, which aedes took for the old
    flows' duplicates: three messages lost without a word (a hunt). Now its first CONNECT asks
    for a clean start (3.1.1: a connection of its own ends the old session first; 5: Clean
    Start=1),
    every new message arrives once, the id leaves the ``forgotten`` file once the start is
    accepted, and the session's reconnect asks for no clean start and resumes it."""
    b = request.getfixturevalue("aedes_broker" if broker == "aedes" else "mosquitto")
    v = 4 if broker == "aedes" else 5
    proxy = mqtt_proxy_factory(b)
    proxy.drop("c2s", "PUBREL")
    topic, cid = f"mqs/{_procs.unique('fcs')}", _procs.unique("fcs")
    counter = _procs.Counter(b.host, b.port, topic, protocol=v)
    state = tmp_path / "gw"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD.format(
            dir=str(state), cid=cid, v=v, port=proxy.port, topic=topic))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "published"
        _procs.wait_until(lambda: len(proxy.packets("c2s", "PUBREL", dropped=True)) >= 3,
                          what="three PUBRELs held back")
        child.send_signal(signal.SIGKILL)
        child.wait()
        proxy.clear_drops()
        with Gateway(state) as gw:
            assert gw.forget(cid) is True
            noted = _forgotten(state)
            c = gw.client(cid, clean_session=False, protocol_version=v)
            c.connect(proxy.host, proxy.port)
            for i in range(5):
                c.publish_data(topic, 2, f"new-{i}".encode())
            assert c.flush(_procs.TIMEOUT)
            assert proxy.cut() == 1  # the reconnect: its own session, resumed
            acks = 3 if v == 5 else 4  # (3.1.1: the old session ended by a connection first)
            _procs.wait_until(lambda: len(proxy.packets("s2c", "CONNACK")) == acks
                              and c.connected, what="a reconnect")
            c.publish_data(topic, 2, b"new-5")
            assert c.flush(_procs.TIMEOUT)
            c.close()
        counter.wait_payload("new-5")
        got = [p for p, _q, _d in counter.received]
        assert [p for p in got if p.startswith(b"new-")] == [f"new-{i}".encode()
                                                            for i in range(6)]
        assert noted == [cid] and _forgotten(state) == []  # (taken out once accepted)
        # the killed session's CONNECT, the clean one, the reconnect's: the reconnect resumes
        # the session its first connection began (3.1.1: a connection of its own ended the
        # old session, CleanSession=1 then DISCONNECT; the session's own asked CleanSession=0)
        clean = [p.clean_start for p in proxy.packets("c2s", "CONNECT")]
        present = [p.session_present for p in proxy.packets("s2c", "CONNACK")]
        assert (clean, present) == (([False, True, False], [False, False, True]) if v == 5
                                    else ([False, True, False, False],  # (aedes: present
                                          [False, False, False, False]))  # with subscriptions)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        counter.close()


def test_a_forget_of_an_id_never_stored_notes_nothing(tmp_path: Path) -> None:
    """``forget`` of an id the store never held returns False and leaves no note (a review:
    each was kept for good, the file growing with every such call)."""
    with Gateway(tmp_path / "gw") as gw:
        assert [gw.forget(f"never-{i}") for i in range(3)] == [False] * 3
    assert _forgotten(tmp_path / "gw") is None


class _Refusing:
    """A stand-in broker on 127.0.0.1 (MQTT 3.1.1): refuses the first ``refuse`` CONNECTs
    (return code 3, server unavailable), accepts the others (or answers ``codes`` in turn;
    ``silent``: never); notes each CONNECT's CleanSession flag; answers PINGREQ and
    DISCONNECT only."""

    def __init__(self, refuse: int, codes: list[int] | None = None,
                 silent: bool = False) -> None:
        self.refuse = refuse
        self.codes = codes  # (instead: the return code of each CONNECT in turn, then 0)
        self.silent = silent  # (no CONNACK at all)
        self.cleans: list[bool] = []
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        with s:
            try:
                body = _packet(s)[1]
                self.cleans.append(bool(body[2 + int.from_bytes(body[:2], "big") + 1] & 2))
                n = len(self.cleans)
                if self.silent:
                    _packet(s)  # (until the client closes)
                    return
                rc = (self.codes[n - 1] if self.codes is not None and n <= len(self.codes)
                      else 0 if self.codes is not None else 3 if n <= self.refuse else 0)
                s.sendall(bytes([0x20, 2, 0, rc]))
                while rc == 0:
                    head, _ = _packet(s)
                    if head >> 4 == 12:
                        s.sendall(b"\xd0\x00")
                    elif head >> 4 == 14:
                        return
            except (OSError, EOFError):
                return

    def close(self) -> None:
        self._srv.close()


def _packet(s: socket.socket) -> tuple[int, bytes]:
    def read(n: int) -> bytes:
        b = b""
        while len(b) < n:
            got = s.recv(n - len(b))
            if not got:
                raise EOFError
            b += got
        return b
    head, mult, size = read(1)[0], 1, 0
    while True:
        d = read(1)[0]
        size, mult = size + (d & 127) * mult, mult * 128
        if not d & 128:
            return head, read(size)


def test_a_forgotten_ids_clean_start_outlasts_refusals(tmp_path: Path) -> None:
    """MQTT 3.1.1: the CONNECTs of a forgotten id's session stay clean until a CONNACK
    accepts one, the refused ones included (a review: a refusal must not let the next try
    resume the broker's old session); then the id leaves the ``forgotten`` file."""
    # (each connect() makes a new paho connection; a try on the same one is paho's reconnect)
    broker = _Refusing(refuse=2)
    try:
        with Gateway(tmp_path / "gw") as gw:
            c = gw.client("dev", clean_session=False)
            c.publish_data("t", 1, b"x")  # (stored: a session to forget)
            c.close()
            assert gw.forget("dev") is True
            c = gw.client("dev", clean_session=False)
            for _ in range(2):
                with pytest.raises(ConnectError, match="refused"):
                    c.connect("127.0.0.1", broker.port, 5)
            c.connect("127.0.0.1", broker.port, 5)
            c.close()
        assert broker.cleans == [True, True, True, False]  # (then the session's own)
        assert _forgotten(tmp_path / "gw") == []
    finally:
        broker.close()


def test_a_connect_after_the_accepted_clean_start_resumes_the_session(tmp_path: Path) -> None:
    """Once a forgotten id's clean start was accepted, a later ``connect()`` (a new
    connection) resumes the session (CleanSession=0): asking for a clean start again would
    throw away the broker's session and what it queued meanwhile (a mutation hunt: the
    driver's ``clean_once`` left set, no test saw it)."""
    broker = _Refusing(refuse=0)
    try:
        with Gateway(tmp_path / "gw") as gw:
            c = gw.client("dev", clean_session=False)
            c.publish_data("t", 1, b"x")
            c.close()
            assert gw.forget("dev") is True
            c = gw.client("dev", clean_session=False)
            c.connect("127.0.0.1", broker.port, 5)
            c.disconnect()
            c.connect("127.0.0.1", broker.port, 5)
            c.close()
        assert broker.cleans == [True, False, False]  # (3.1.1: the old one ended first)
        assert _forgotten(tmp_path / "gw") == []
    finally:
        broker.close()


def test_a_forgotten_ids_first_311_connection_keeps_what_is_queued_while_it_is_down(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path) -> None:
    """MQTT 3.1.1 has no Clean Start of its own: a forgotten id's old broker session is ended
    by a connection of its own (CleanSession=1, then DISCONNECT), so the new session's first
    connection is persistent already. When it drops, a QoS 1 message published to its
    subscription meanwhile waits at the broker and arrives after the reconnect; before, that
    first connection asked CleanSession=1, its broker session ended with it, and the
    message was lost (README said so)."""
    proxy = mqtt_proxy_factory(mosquitto)
    topic, cid = f"mqs/{_procs.unique('fq')}", _procs.unique("fq")
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client(cid, clean_session=False, protocol_version=4)
        c.publish_data(topic, 1, b"stored")  # (a session to forget)
        c.close()
        assert gw.forget(cid) is True
        c = gw.client(cid, clean_session=False, protocol_version=4)
        log = _procs.EventLog(c)
        c.subscribe(topic, 1)
        c.connect(proxy.host, proxy.port)
        log.wait("on_subscribed")
        proxy.stop()  # the connection drops; no reconnect gets through meanwhile
        _procs.wait_until(lambda: not c.connected, what="the connection lost")
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "while-down")])
        proxy.start()
        _procs.wait_until(lambda: any(e.message == b"while-down"
                                      for e in log.of("on_message_in")),
                          what="the message queued while the connection was down")
        c.close()
    clean = [p.clean_start for p in proxy.packets("c2s", "CONNECT")]
    assert clean[:3] == [True, False, False]  # the old session ended, then its own
    assert _forgotten(tmp_path / "gw") == []


def test_a_failover_server_after_a_cleared_one_is_cleared_too(mosquitto: Any,
                                                               tmp_path: Path) -> None:
    """FailoverServers: the first server accepts the connection that ends the old session
    but refuses the session's own CONNECT; the next server, which holds the forgotten id's
    old session (a subscription, a queued message), is cleared too before the session's
    CONNECT: nothing of the old session arrives (a review: the clean start counted as done
    once the first server's clearing was accepted, and the next server resumed the old
    session). The note goes once the session's own CONNACK came."""
    cid, old = _procs.unique("ff"), f"old/{_procs.unique('ff')}"
    first = _Refusing(refuse=0, codes=[0, 3])
    try:
        with Gateway(tmp_path / "gw") as gw:
            c = gw.client(cid, clean_session=False, protocol_version=4)
            log = _procs.EventLog(c)
            c.subscribe(old, 1)
            c.connect(mosquitto.host, mosquitto.port)
            log.wait("on_subscribed")
            c.close()
        _procs.publish_direct(mosquitto.host, mosquitto.port, old, [(1, "old-queued")])
        with Gateway(tmp_path / "gw") as gw:
            assert gw.forget(cid) is True
            c = gw.client(cid, clean_session=False, protocol_version=4)
            log = _procs.EventLog(c)
            c.config(f"FailoverServers=127.0.0.1:{mosquitto.port}")
            c.connect("127.0.0.1", first.port, 5)
            _procs.publish_direct(mosquitto.host, mosquitto.port, old, [(1, "old-after")])
            c.subscribe("new/topic", 1)
            log.wait("on_subscribed")  # (the broker read what came before it)
            c.close()
        assert first.cleans == [True, False]
        assert [e.message for e in log.of("on_message_in")] == []
        assert _forgotten(tmp_path / "gw") == []
    finally:
        first.close()


def test_close_ends_a_connect_waiting_for_the_old_sessions_end(tmp_path: Path) -> None:
    """``close()`` from another thread ends a ``connect()`` whose connection ending the old
    session waits for a CONNACK that never comes: at once, as it ends one waiting for its
    own CONNACK (a review: it waited out the whole timeout); the id stays forgotten."""
    silent = _Refusing(refuse=0, silent=True)
    try:
        with Gateway(tmp_path / "gw") as gw:
            c = gw.client("dev", clean_session=False, protocol_version=4)
            c.publish_data("t", 1, b"x")
            c.close()
            assert gw.forget("dev") is True
            c = gw.client("dev", clean_session=False, protocol_version=4)
            ended: list[BaseException] = []

            def connect() -> None:
                try:
                    c.connect("127.0.0.1", silent.port, 60)
                except ConnectError as exc:
                    ended.append(exc)

            t = threading.Thread(target=connect)
            t.start()
            _procs.wait_until(lambda: silent.cleans == [True], what="the clearing CONNECT")
            c.close()
            t.join(20)
            assert not t.is_alive() and len(ended) == 1, ended
            assert "ended by close()" in str(ended[0])
        assert _forgotten(tmp_path / "gw") == ["dev"]
    finally:
        silent.close()


@pytest.mark.parametrize("version", [4, 5])
def test_nothing_leaves_before_a_forgotten_ids_note_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """After the CONNACK that accepts a forgotten id's clean start, its SUBSCRIBE and its
    PUBLISH wait until the id is out of the ``forgotten`` file (the write made slow here, a
    slow card's): a kill before that write starts clean again, and the broker's session
    begun by that CONNACK held no subscription and no message yet, so nothing queued for it
    is lost (a review: they went at once, and what the broker queued for the new session in
    the write's time was thrown away by the next start's clean start)."""
    from mqttsession import forgotten  # noqa: PLC0415
    from mqttsession.testing.fake_broker import FakeBroker  # noqa: PLC0415

    state = tmp_path / "gw"
    real_write = forgotten.write_atomic

    def slow_write(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)
        real_write(*args, **kwargs)

    fb = FakeBroker()
    seen: list[tuple[str, list[str] | None]] = []
    fb.on_packet = lambda _fb, rec: seen.append((rec.type, _forgotten(state))) \
        if rec.type in ("SUBSCRIBE", "PUBLISH") else None
    try:
        with Gateway(state) as gw:
            c = gw.client("dev", clean_session=False, protocol_version=version)
            c.publish_data("t", 1, b"old")  # (stored: a session to forget)
            c.close()
            assert gw.forget("dev") is True
            monkeypatch.setattr(forgotten, "write_atomic", slow_write)
            c = gw.client("dev", clean_session=False, protocol_version=version)
            c.subscribe("s/#", 1)
            c.publish_data("t", 1, b"new")
            c.connect(fb.host, fb.port, 5)
            fb.wait_for("SUBSCRIBE")
            fb.wait_for("PUBLISH")
            c.close()
    finally:
        fb.stop()
    assert [t for t, _ids in seen] == ["SUBSCRIBE", "PUBLISH"]
    assert all(ids == [] for _t, ids in seen), seen
