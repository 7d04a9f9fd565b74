"""Publishers in several threads under SessionSync=always (``turns``), at the edges a review
found (each test failed before its fix): a callback that publishes from the thread whose turn
it is, a KeyboardInterrupt between a publish's hold and its token, a publish racing
``close()``. Real mosquitto."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import Client, UsageError
from mqttsession import journal as journal_mod
from mqttsession.driver import Driver
from mqttsession.store import StateFile
from mqttsession.testing.fsyncs import FsyncCounter

pytestmark = pytest.mark.integration


def test_a_callback_of_a_turn_that_publishes_does_not_wait_for_that_turn(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: on_message_dropped, fired by the turn's release of a message that expired
    # during its fdatasync, published: it queued for the turn its own thread held, and every
    # publisher of the client hung for good
    c = Client(client_id="turn-callback", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.connect(mosquitto.host, mosquitto.port)
    c.publish_data("t/warm", 1, b"warm")
    assert c.flush(10)
    dropped: list[Any] = []
    nested: dict[str, Any] = {}

    def on_dropped(e: Any) -> None:  # a common pattern: report a lost message over MQTT
        dropped.append(e)
        nested["pid"] = c.publish_data("t/alerts", 1, b"a message expired")

    c.on_message_dropped = on_dropped
    monkeypatch.setattr(journal_mod, "os", FsyncCounter(delay=2.5))  # the expiry passes
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 1
    done: dict[str, int] = {}

    def a() -> None:  # alone: synced under the lock
        done["a"] = c.publish_data("t/a", 1, b"a")

    def b() -> None:  # while a() is under way: a turn, whose fdatasync releases it expired
        time.sleep(0.3)
        done["b"] = c.publish_data("t/b", 1, b"b", properties=props)

    threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert dropped, "the expired message was not dropped (timing)"
        assert not any(t.is_alive() for t in threads), "a publisher hangs"
        assert set(done) == {"a", "b"} and nested["pid"] > 0
    finally:
        monkeypatch.setattr(journal_mod, "os", os)
        c.close()


def test_a_publish_interrupted_before_its_hold_is_taken_back_and_blocks_nothing(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: a KeyboardInterrupt in the compaction Driver.run does for a held publish (after
    # engine.publish(hold=True), before Driver.hold) left the message held with no token:
    # the pump stopped at it, and nothing published after it was ever sent
    c = Client(client_id="turn-interrupt", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's'}")
    c.connect(mosquitto.host, mosquitto.port)
    c.publish_data("t", 1, b"warm")
    assert c.flush(10)
    fired: list[str] = []
    real = StateFile.compact_before_publish

    def compact_before_publish(self: StateFile, state: Any) -> None:
        real(self, state)
        if (not fired and threading.current_thread() is threading.main_thread()
                and sys._getframe(1).f_code.co_name == "run"):  # Driver.run, a held publish
            fired.append("kbd")
            raise KeyboardInterrupt

    monkeypatch.setattr(StateFile, "compact_before_publish", compact_before_publish)
    stop = threading.Event()
    failed: list[bytes] = []

    def worker() -> None:  # another thread publishing: main's publishes take turns
        n = 0
        while not stop.is_set():
            n += 1
            try:
                c.publish_data("t", 1, b"w%d" % n)
            except Exception:  # noqa: BLE001 - told failed: must not be in the session
                failed.append(b"w%d" % n)

    w = threading.Thread(target=worker, daemon=True)
    w.start()
    interrupted: list[BaseException] = []
    deadline = time.monotonic() + 20
    try:
        while not fired and time.monotonic() < deadline:
            try:
                c.publish_data("t", 1, b"main")
            except KeyboardInterrupt as exc:  # Ctrl-C caught, the program goes on
                interrupted.append(exc)
        stop.set()
        w.join(10)
        c.publish_data("t", 1, b"after")
        assert fired and interrupted
        assert c.flush(10), f"{len(c.outgoing_messages)} messages never sent"
        assert not set(failed) & {m.message for m in c.outgoing_messages}
    finally:
        stop.set()
        c.close()


def test_a_publish_once_close_has_begun_is_refused_and_not_found_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: a publish whose locked part ran after close()'s last snapshot returned
    # success though only Journal.close()'s flush (no fdatasync) wrote its record
    path = tmp_path / "s"
    c = Client(client_id="turn-close", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_data("t", 1, b"first")
    late: list[BaseException | int] = []
    real = Driver.save

    def save(self: Driver, closing: bool = False) -> str:
        text = real(self, closing)
        if not late:  # another thread publishing while close() runs

            def publish() -> None:
                try:
                    late.append(c.publish_data("t", 1, b"LATE"))
                except BaseException as exc:  # noqa: BLE001
                    late.append(exc)
            t = threading.Thread(target=publish)
            t.start()
            t.join(10)
        return text

    monkeypatch.setattr(Driver, "save", save)
    c.close()
    assert len(late) == 1 and isinstance(late[0], UsageError), late
    d = Client(client_id="turn-close", clean_session=False)
    d.config(f"SessionStateFile={path}")
    try:
        d.restore_session("")
        assert [m.message for m in d.outgoing_messages] == [b"first"]
    finally:
        d.close()
