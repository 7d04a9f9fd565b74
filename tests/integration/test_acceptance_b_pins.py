"""Acceptance pins (audit B) for resolved issues 10 and 11 whose points had no test that would
fail if they regressed; each against a raw-socket ``FakeBroker`` on loopback (or mosquitto):

* issue 10, point 13: a CONNACK with reserved acknowledge flag bits set is a protocol error: the
  first ``connect()`` raises ``ConnectError``, ``on_error`` reports it, the session is unchanged;
* issue 10, point 1: a first ``connect()`` whose CONNACK record cannot be written raises
  ``ConnectError`` at once (no exception escapes into paho's thread, no false "no CONNACK");
* issue 11, point 4: no user callback runs while the session lock is held.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import ConnectError
from mqttsession.testing.fake_broker import FakeBroker
from mqttsession.testing.faults import Fault, Injector, fd_name

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

PROTOCOLS = pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])


class _ReservedFlagsBroker(FakeBroker):
    """A FakeBroker whose CONNACK sets a reserved acknowledge flag bit (0x02)."""

    def connack(self, session_present: bool = False, reason: int = 0) -> bytes:
        good = super().connack(session_present, reason)
        return good[:2] + bytes([good[2] | 0x02]) + good[3:]



def _client(protocol: int) -> mqttsession.Client:
    c = mqttsession.Client(client_id=_procs.unique("accb"), clean_session=False,
                           protocol_version=protocol)
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    if protocol == 5:
        c.config("SessionExpInterval=600")
    return c


@PROTOCOLS
def test_connack_with_reserved_flags_is_refused_and_changes_nothing(protocol: int) -> None:
    """Issue 10, point 13: reserved CONNACK flags close the connection, ``on_error`` reports it,
    the first connect raises ``ConnectError`` and the held message stays as it was."""
    broker = _ReservedFlagsBroker()
    c = _client(protocol)
    log = _procs.EventLog(c)
    try:
        c.publish_message("t/held", 1, "kept")
        before = [(m.packet_id, m.topic, m.message) for m in c.outgoing_messages]
        with pytest.raises(ConnectError):
            c.connect(broker.host, broker.port, timeout=5)
        assert not c.connected
        errors = log.of("on_error")
        assert errors and "reserved" in errors[0].description, errors
        assert [(m.packet_id, m.topic, m.message) for m in c.outgoing_messages] == before
        assert broker.packets("PUBLISH") == []  # nothing sent on a refused connection
        assert log.of("on_connected") == []
    finally:
        c.close()
        broker.stop()


def test_a_first_connect_whose_connack_record_cannot_be_written_is_connect_error(
        fake: FakeBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10, point 1: a first ``connect()`` whose CONNACK record cannot be written (every
    journal write fails with EIO) raises ``ConnectError`` naming the state file, not
    a false "no CONNACK" timeout; ``on_error`` reports it."""
    c = _client(4)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    log = _procs.EventLog(c)
    try:
        c.restore_session("")
        c.publish_message("t/held", 1, "kept")
        journal = "s.journal"
        Injector(monkeypatch, Fault("journal-eio", "append", "write",
                                    lambda fd, *_: fd_name(fd).startswith(journal),
                                    errno.EIO, nth=None))
        with pytest.raises(ConnectError) as info:
            c.connect(fake.host, fake.port, timeout=8)
        text = str(info.value)
        assert "cannot write state journal" in text, text  # the cause, not a timeout
        assert "no CONNACK" not in text and "timed out" not in text, text
        assert not c.connected
        assert any("state file" in e.description.lower() or "journal" in e.description.lower()
                   for e in log.of("on_error")), log.of("on_error")
        assert [m.message for m in c.outgoing_messages] == [b"kept"]
    finally:
        monkeypatch.undo()
        c.close()


def test_no_user_callback_runs_while_the_session_lock_is_held(fake: FakeBroker) -> None:
    """Issue 11, point 4: every callback (connected, subscribed, message out / ack / in,
    disconnected) runs without the session lock: another thread takes it at once."""
    c = _client(5)
    held: dict[str, bool] = {}
    done = threading.Event()

    def probe(name: str) -> Any:
        def callback(_ev: Any) -> None:
            got: list[bool] = []

            def take() -> None:
                ok = c._lock.acquire(timeout=2)  # noqa: SLF001
                got.append(ok)
                if ok:
                    c._lock.release()  # noqa: SLF001

            t = threading.Thread(target=take)
            t.start()
            t.join(5)
            held[name] = not (got and got[0])
            if name == "on_message_in":
                done.set()
        return callback

    for name in ("on_connected", "on_subscribed", "on_message_out", "on_message_ack",
                 "on_message_in", "on_disconnected"):
        setattr(c, name, probe(name))
    try:
        c.connect(fake.host, fake.port)
        c.subscribe("t/in", 1)
        c.publish_message("t/out", 1, "m")
        assert c.flush(5)
        _procs.wait_until(lambda: "on_subscribed" in held, what="on_subscribed")
        from mqttsession import _wire
        fake.send_raw(_wire.encode_publish("t/in", b"in", qos=1, packet_id=9, protocol=5))
        assert done.wait(5), "on_message_in not called"
        c.disconnect()
        _procs.wait_until(lambda: "on_disconnected" in held, what="on_disconnected")
    finally:
        c.close()
    assert set(held) == {"on_connected", "on_subscribed", "on_message_out", "on_message_ack",
                         "on_message_in", "on_disconnected"}, held
    assert not any(held.values()), f"callbacks run under the session lock: {held}"


def test_an_open_mesh_session_uses_one_thread(mosquitto: Any) -> None:
    """Issue 11, point 5: the mesh ``Session`` builds on the same engine and ``Client``, with
    no extra threads: while open (subscribed, publishing, receiving) it costs one thread of its
    own, paho's network thread."""
    from mqttsession import Options
    from mqttsession.mesh import Connection

    before = set(threading.enumerate())
    topic = f"mqs/{_procs.unique('mesh-threads')}"
    connection = Connection.insecure(f"{mosquitto.host}:{mosquitto.port}",
                                     options=Options(request_timeout_seconds=10.0))
    session = connection.create_session()
    session.open()
    try:
        session.subscribe(topic, 1)
        session.publish(topic, b"x", 1)
        got = session.receive(10)
        assert got is not None and got.message == b"x"
        assert session.client.flush(10)
        own = sorted(t.name for t in threading.enumerate() if t not in before)
        assert len(own) == 1, own
    finally:
        session.close()
    _procs.wait_until(lambda: not [t for t in threading.enumerate() if t not in before],
                      timeout=5, what="the session's thread to end")
