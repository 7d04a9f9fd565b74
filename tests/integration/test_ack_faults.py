"""ManualAck: a failed fdatasync inside ``ack()`` of a QoS 2 message, called from an
application thread (a sweep's finding; each test fails before). Before: the removal was applied
in memory, its PUBCOMP never written and the connection kept, so the broker held the flow open
for good (with ReceiveMaximum=1 nothing else was ever delivered), ``ack()`` again returned False
and ``on_error`` said nothing. Now the state is rewritten from memory and the PUBCOMP sent; if
that fails too, the connection is dropped (the broker sends the PUBREL again) and ``ack()``
raises. Real mosquitto."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, PersistenceError
from mqttsession.journal import read_state

try:  # tests/integration may or may not be a package
    from . import _feeds, _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _feeds  # type: ignore[no-redef]
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


_publish = _feeds.publish


def _assert_not_held(path: Path, payload: bytes) -> None:
    held = [m.payload for m in read_state(str(path)).incoming.values()]
    assert payload not in held, held


def _wait(cond: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(cond())


@pytest.mark.parametrize("sync", ["always", "interval"])
@pytest.mark.parametrize("rewrite_fails", [False, True])
def test_a_failed_sync_in_ack_never_leaves_the_qos2_flow_open(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str,
        rewrite_fails: bool) -> None:
    rec = _powercut.install(monkeypatch)
    rec.fail_fsync = True
    topic = f"ackfail/{uuid.uuid4().hex[:8]}"
    got: list[Any] = []
    errors: list[str] = []
    subscribed = threading.Event()
    c = Client(client_id=f"ackfail-{uuid.uuid4().hex[:8]}", clean_session=False)
    c.protocol_version = 5
    c.config(f"SessionStateFile={tmp_path / 'sub'}")
    c.config(f"SessionSync={sync}")
    c.config("ManualAck=True")
    c.config("ReceiveMaximum=1")  # (mosquitto's own default window is 20)
    c.on_message_in = got.append
    c.on_error = lambda e: errors.append(e.description)
    c.on_subscribed = lambda e: subscribed.set()
    try:
        c.restore_session("")
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        c.subscribe(topic, 2)
        assert subscribed.wait(10)
        _publish(mosquitto, topic, b"one")
        assert _wait(lambda: got)
        # ack()'s fdatasync fails; with rewrite_fails, both rewrites' snapshot fsyncs too
        rec.fail_name, rec.fail_next = "sub", 3 if rewrite_fails else 1
        if rewrite_fails:
            with pytest.raises(PersistenceError):
                c.ack(got[0])  # the application's thread
        else:
            assert c.ack(got[0]) is True
        assert rec.fail_next == 0
        assert any("acknowledging a message" in e for e in errors), errors
        _publish(mosquitto, topic, b"two")
        assert _wait(lambda: len(got) >= 2), f"the flow of 'one' is still open: {errors}"
        # (ReceiveMaximum=1: "two" came after the PUBCOMP that ended "one"'s flow) a power cut
        # or a kill -9 now: "one" must not be held, or the broker's next QoS 2 PUBLISH with
        # its packet id would be taken for a duplicate and lost [MQTT-4.3.3-10]
        if sync == "always":  # (interval: a power cut may lose this much; a kill -9 not)
            _assert_not_held(rec.image(tmp_path / "sub", tmp_path / "cut"), b"one")
        _assert_not_held(_powercut.copy_now(tmp_path / "sub", tmp_path / "kill9"), b"one")
        c.ack(got[1])
        time.sleep(0.3)  # (a second delivery of "one" would come now)
    finally:
        c.close()
    assert [e.message for e in got] == [b"one", b"two"]  # each once


def test_the_pubcomp_leaves_after_a_failed_ack_sync_made_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's side seen (a scripted broker): ``ack()`` of a QoS 2 message whose sync
    fails once, the state rewritten from memory: its PUBCOMP goes out on the same connection,
    once (a hunt: mosquitto sends the next message at PUBREC already, so the test above
    could not see a PUBCOMP that never left)."""
    from mqttsession.testing.fake_broker import FakeBroker  # noqa: PLC0415

    rec = _powercut.install(monkeypatch)
    rec.fail_fsync = True
    fb = FakeBroker()
    got: list[Any] = []
    c = Client(client_id="ack-pubcomp", clean_session=False)
    c.protocol_version = 5
    c.config(f"SessionStateFile={tmp_path / 'sub'}")
    c.config("SessionSync=always")
    c.config("ManualAck=True")
    c.on_message_in = got.append
    try:
        c.restore_session("")
        c.connect(fb.host, fb.port, timeout=10)
        fb.send_raw(fb.publish("ack/t", b"one", 2, packet_id=7))
        fb.wait_for("PUBREC")
        fb.send_raw(fb.ack(0x62, 7))
        assert _wait(lambda: got)
        rec.fail_name, rec.fail_next = "sub", 1
        assert c.ack(got[0]) is True
        assert rec.fail_next == 0
        (pubcomp,) = fb.wait_for("PUBCOMP")
        assert pubcomp.packet_id == 7 and fb.connections == 1
        time.sleep(0.2)
        assert len(fb.packets("PUBCOMP")) == 1
    finally:
        c.close()
        fb.stop()
