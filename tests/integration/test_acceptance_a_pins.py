"""Acceptance pins (audit A) for points of issues 3, 4 and 6 no other test held, against real
parts: the power-cut model for save_session(), mosquitto (through MQTTProxy where the wire
matters) for the clean disconnect's compaction, the restore of an expired MQTT 5 session, and
a Mesh session kept alive in the background."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import mqttsession
from mqttsession import Connection, Options, load_state, session_expired
from mqttsession.journal import JOURNAL_SUFFIX
from mqttsession.recovery import read_frames

from _powercut import DirRecorder, install

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

Counter, EventLog = _procs.Counter, _procs.EventLog
payload, unique, wait_until = _procs.payload, _procs.unique, _procs.wait_until


def test_save_session_is_on_disk_whole_once_it_returns(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Issue 3, point 1: ``save_session()`` with a SessionStateFile writes the text atomically
    (temp file, fsync, rename, fsync of the directory): a power cut right after it returns finds
    exactly the text it returned, not the older snapshot, and no temporary file is left."""
    base = tmp_path / "d"
    base.mkdir()
    rec = DirRecorder(base)
    install(monkeypatch, rec)
    c = mqttsession.Client(client_id="atomic", clean_session=False)
    try:
        c.config(f"SessionStateFile={base / 's'}")
        c.restore_session("")
        c.publish_message("t/a", 1, "first")
        older = c.save_session()
        c.publish_message("t/a", 2, "second")
        saved = c.save_session()
        assert saved != older
        rec.dir_image(tmp_path / "cut")
    finally:
        c.close()
        rec.release()
    monkeypatch.undo()
    assert (tmp_path / "cut" / "s").read_text(encoding="utf-8") == saved
    assert [m.payload for m in load_state(saved).outgoing] == [b"first", b"second"]
    assert not [p.name for p in base.iterdir() if ".tmp" in p.name]


def test_a_clean_disconnect_compacts_the_journal(mosquitto: Any, tmp_path: Path) -> None:
    """Issue 4, point 1: compaction folds the journal into the snapshot on a clean disconnect:
    afterwards the journal holds its header alone and the snapshot is the session as it was
    left (nothing held, the disconnect time recorded)."""
    path = tmp_path / "gw.state"
    c = mqttsession.Client(client_id=unique("cmp"), clean_session=False)
    try:
        c.config(f"SessionStateFile={path}")
        c.restore_session("")
        c.connect(mosquitto.host, mosquitto.port)
        for n in range(10):
            c.publish_message("mqs/compact", 1 + n % 2, f"m{n}")
        assert c.flush(10)
        frames = read_frames(Path(str(path) + JOURNAL_SUFFIX).read_bytes())[0]
        assert len(frames) > 10  # accepted, sent, acknowledged: records since the last snapshot
        c.disconnect()
        frames = read_frames(Path(str(path) + JOURNAL_SUFFIX).read_bytes())[0]
        assert len(frames) == 1  # the header: every record folded into the snapshot
        view = load_state(path.read_text(encoding="utf-8"))
        assert view.outgoing == () and view.disconnected_at is not None
    finally:
        c.close()


def test_an_expired_mqtt5_session_restored_keeps_unsent_and_unconfirmed_messages(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """Issue 3, point 5: restoring a saved MQTT 5 session the clock says has expired starts
    clean (SessionPresent 0) but keeps the never-sent and the unconfirmed messages, which reach
    an independent subscriber (point 4: nothing the application handed over is lost). The
    interval is 0 (the session ends with its connection): expired for the clock at once and for
    mosquitto too, whose expiry check runs only about once a second."""
    proxy = mqtt_proxy_factory(mosquitto)
    tag = unique("expkeep")
    topic = f"mqs/{tag}"
    cid = unique("gw")
    counter = Counter(mosquitto.host, mosquitto.port, topic, 5)
    c = mqttsession.Client(client_id=cid, clean_session=False, protocol_version=5)
    c.config("SessionExpInterval=0")
    c.config("AutoReconnect=False")
    try:
        proxy.drop("c2s", "PUBLISH", count=1)  # the broker never has message 1: unconfirmed
        c.connect(proxy.host, proxy.port)
        c.publish_message(topic, 1, payload(tag, 1))
        proxy.wait_for("c2s", "PUBLISH", predicate=lambda r: r.dropped, timeout=10)
        c.disconnect()
        c.publish_message(topic, 2, payload(tag, 2))  # while disconnected: never sent
        saved = c.save_session()
    finally:
        c.close()
    try:
        view = load_state(saved)
        assert len(view.outgoing) == 2 and view.disconnected_at is not None
        assert view.session_expiry_interval == 0
        assert session_expired(saved) is True

        again = mqttsession.Client(client_id=cid, clean_session=False, protocol_version=5)
        again.config("SessionExpInterval=0")
        log = EventLog(again)
        try:
            again.restore_session(saved)
            again.connect(mosquitto.host, mosquitto.port)
            assert [e.session_present for e in log.wait("on_connected")] == [False]
            counter.wait_numbers(tag, [1, 2], timeout=10)
            assert again.flush(10) and again.outgoing_messages == ()
        finally:
            again.close()
        counts = counter.counts(tag)
        assert counts[1] >= 1 and counts[2] == 1, counts
    finally:
        counter.close()


def test_an_open_mesh_session_pings_and_reconnects_in_the_background(
        mosquitto: Any, mqtt_proxy_factory: Any) -> None:
    """Issue 6, point 2: while a Mesh-style session is open its lifetime is extended in the
    background: keep-alive PINGREQs go out with no call from the application, and a cut
    connection comes back by itself, resuming the same session (SessionPresent 1: its
    subscription still delivers)."""
    proxy = mqtt_proxy_factory(mosquitto)
    connection = Connection.insecure(proxy.address, options=Options(
        protocol_version=5, keep_alive=1, request_timeout_seconds=5.0))
    session = connection.create_session()
    session.open()
    try:
        session.client.config("ReconnectDelayMin=0.1")
        session.client.config("ReconnectDelayMax=0.3")
        topic = f"mesh/alive/{session.session_id}"
        session.subscribe(topic, 1)
        proxy.wait_for("c2s", "PINGREQ", timeout=5)  # nothing but time passed
        proxy.wait_for("s2c", "PINGRESP", timeout=5)
        assert proxy.cut() == 1
        wait_until(lambda: len(proxy.packets("c2s", "CONNECT")) == 2 and session.client.connected,
                   timeout=5, what="the session reconnected by itself")
        assert session.is_open and session.client.config("SessionPresent") == "True"
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "after the cut")], 5)
        msg = session.receive(5)
        assert msg is not None and msg.message == b"after the cut"
    finally:
        session.close()
