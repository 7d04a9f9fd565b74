"""A wall clock that goes back while a durable Client is connected (a sweep's finding; fails
before): the Activity records the session's expiry estimate rests on kept coming after the
jump (none was written until the clock caught up, so ``session_expired`` after a crash
answered from the time before the jump). Real mosquitto; the wall clock is faked in
``mqttsession.client``, ``mqttsession.publishing`` and ``mqttsession.driver`` (their
``time``)."""

from __future__ import annotations

import time as _time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttsession.client
import mqttsession.publishing
import mqttsession.driver
import mqttsession.durability
import mqttsession.engine
from mqttsession import Client, codec, session_expired
from mqttsession.journal import read_state

try:
    from . import _powercut
    from ._procs import Counter, unique, wait_until
except ImportError:  # run as a top-level module (rootdir-relative)
    import _powercut  # type: ignore[no-redef]
    from _procs import Counter, unique, wait_until  # type: ignore[no-redef]

pytestmark = pytest.mark.integration
T = 1_700_000_000.0


class Clock:
    """``time`` with ``time()`` = the real wall clock + an offset, and the boot clock
    (``since_boot``) the real one + its own."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.boot_offset = 0.0

    def time(self) -> float:
        return _time.time() + self.offset

    def since_boot(self) -> float:
        return _real_since_boot() + self.boot_offset

    def set(self, wall: float) -> None:
        self.offset = wall - _time.time()

    def elapse(self, seconds: float) -> None:
        """Both clocks move on (without waiting)."""
        self.offset += seconds
        self.boot_offset += seconds

    def reboot(self, wall: float) -> None:
        """A new boot: the boot clock starts again near 0, the wall clock reads ``wall``."""
        self.boot_offset = 5.0 - _real_since_boot()
        self.set(wall)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


_real_since_boot = mqttsession.durability.since_boot


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    for module in (mqttsession.client, mqttsession.publishing, mqttsession.driver):
        monkeypatch.setattr(module, "time", c)
        monkeypatch.setattr(module, "since_boot", c.since_boot)
    return c


def test_activity_records_go_on_after_the_clock_went_back(
        tmp_path: Path, mosquitto: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqttsession.engine, "ACTIVITY_EVERY", 0.5)  # 5 s in the library
    path = tmp_path / "s"
    clock.set(T)
    c = Client(client_id="clock-back", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=none")
    c.config("SessionExpInterval=3600")
    c.restore_session("")
    try:
        c.connect(mosquitto.host, mosquitto.port)
        _time.sleep(1.5)
        clock.set(T - 3600)  # the wall clock goes back 1 h while connected
        _time.sleep(2.5)
        st = read_state(str(path))  # what a process killed now reads back
        kill = clock.time()
        verdict = session_expired(codec.encode(st), kill + 5400)  # 90 min after the kill
        assert st.last_activity is not None and st.last_activity <= kill + 1 \
            and verdict is not False, (
                f"last_activity {st.last_activity - T:+.1f} s from T (clock {kill - T:+.1f});"
                f" session_expired 90 min after a kill now: {verdict}")
    finally:
        c.close()


def test_publish_many_into_the_disk_queue_under_a_clock_before_1970(
        tmp_path: Path, clock: Clock) -> None:
    # before: its queue record held accepted_at -5.0 and every later restore raised StateError
    path = tmp_path / "s"
    c = Client(client_id="clock-neg", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=1")
    c.restore_session("")
    c.publish_data("t", 1, b"a")  # in memory
    clock.set(-5.0)  # a clock before 1970 (a wrong RTC)
    c.publish_many([("t", 1, b"c")])  # into the disk queue
    c.close()
    clock.set(T)
    d = Client(client_id="clock-neg", clean_session=False, protocol_version=5)
    d.config(f"SessionStateFile={path}")
    d.config("QueueInMemory=1")
    try:
        d.restore_session("")
        assert [m.message for m in d.outgoing_messages] == [b"a", b"c"]  # (the queue's too)
    finally:
        d.close()


def test_messages_queued_under_a_1970_clock_outlive_the_ntp_fix_and_a_restart(
        tmp_path: Path, mosquitto: Any, clock: Clock) -> None:
    """A gateway booted with a 1970 clock queues five messages with a 1 h Message Expiry
    Interval (three in the disk queue); NTP sets the clock; the process restarts and
    connects. Before: every message published before the correction was dropped as
    expired, 0.3 s old."""
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 3600
    path, topic = tmp_path / "s", unique("clock/ntp")

    def client() -> Client:
        c = Client(client_id="clock-ntp", clean_session=False, protocol_version=5)
        c.config(f"SessionStateFile={path}")
        c.config("QueueInMemory=2")
        c.restore_session("")
        return c

    clock.set(40.0)
    c = client()
    for i in range(4):
        c.publish_data(topic, 1 + i % 2, b"m%d" % i, properties=props)
    _time.sleep(0.3)
    clock.set(T)  # NTP
    c.publish_data(topic, 1, b"m4", properties=props)  # the jump is stored with it
    c.close()
    counter = Counter(mosquitto.host, mosquitto.port, topic, protocol=5)
    d = client()
    try:
        d.connect(mosquitto.host, mosquitto.port)
        wait_until(lambda: len(counter.received) >= 5 or d.queue_stats().expired,
                   what="five deliveries")
        assert d.queue_stats().expired == 0
        assert sorted(p for p, _q, _d in counter.received) == [b"m%d" % i for i in range(5)]
    finally:
        d.close()
        counter.paho.disconnect()
        counter.paho.loop_stop()


def test_a_gateway_session_keeps_its_clock_correction_in_the_shared_log(
        tmp_path: Path, clock: Clock) -> None:
    """The correction a jump makes is a record of the gateway's shared log too: a new
    gateway process restores it with the session, so the message keeps its age."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 3600
    clock.set(40.0)
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("clock-gw", clean_session=False, protocol_version=5)
        c.publish_data("t", 1, b"a", properties=props)
        _time.sleep(0.2)
        clock.set(T)  # NTP
        c.publish_data("t", 1, b"b", properties=props)
        offset = c._engine.state.clock_offset
        assert -T + 40 < offset < -T + 50
    with Gateway(tmp_path / "gw") as gw:
        d = gw.client("clock-gw", clean_session=False, protocol_version=5)
        assert d._engine.state.clock_offset == offset
        assert 0 <= d.queue_stats().oldest_age < 10


def _offline(path: Path, **settings: object) -> Client:
    c = Client(client_id="clock-off", clean_session=False, protocol_version=5)
    c.config(f"SessionStateFile={path}")
    for k, v in settings.items():
        c.config(f"{k}={v}")
    c.restore_session("")
    return c


def _expiring(seconds: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = seconds
    return props


def test_a_jump_seen_by_no_publish_is_stored_by_close(tmp_path: Path, clock: Clock) -> None:
    """Booted with a 1970 clock, offline: a publish, then NTP sets the clock and the
    application closes (no publish, no connection in between). Before: the jump was never
    stored, and the new process counted 54 years of age (dropped as expired on connect)."""
    clock.set(40.0)
    c = _offline(tmp_path / "s")
    c.publish_data("t", 1, b"m", properties=_expiring(3600))
    clock.elapse(30)
    clock.set(T)  # NTP
    c.close()
    d = _offline(tmp_path / "s")
    try:
        age = d.queue_stats().oldest_age
        assert age is not None and 29 <= age < 40, age
    finally:
        d.close()


def test_a_clock_behind_the_session_is_seen_when_it_is_restored(
        tmp_path: Path, clock: Clock) -> None:
    """A board without an RTC battery boots at 1970 twice: the second time the clock reads
    earlier than the held message and NTP sets it 20 s after the restore, before any
    publish. Before: the first reading came after NTP, so the message was 54 years old."""
    clock.set(40.0)
    c = _offline(tmp_path / "s")
    c.publish_data("t", 1, b"m", properties=_expiring(3600))
    clock.elapse(60)
    c.close()
    clock.reboot(30.0)
    d = _offline(tmp_path / "s")
    try:
        clock.elapse(20)
        clock.set(T)  # NTP
        age = d.queue_stats().oldest_age
        assert age is not None and 19 <= age < 90, age  # (the downtime counts as none)
    finally:
        d.close()


def test_the_newest_message_in_the_disk_queue_bounds_a_clock_set_back(
        tmp_path: Path, clock: Clock) -> None:
    """Three messages, two in the disk queue; the clock reads 50 s before the newest after a
    restart. Before: the disk queue's OLDEST was taken for the newest, and the oldest message
    was counted 150 s old instead of at least 200."""
    clock.set(T)
    c = _offline(tmp_path / "s", QueueInMemory=1)
    for i in range(3):
        c.publish_data("t", 1, b"m%d" % i, properties=_expiring(180))
        if i < 2:
            clock.elapse(100)
    c.close()
    clock.reboot(T + 150)
    d = _offline(tmp_path / "s", QueueInMemory=1)
    try:
        age = d.queue_stats().oldest_age
        assert age is not None and age >= 199, age
    finally:
        d.close()


def test_under_interval_a_correction_is_on_disk_before_a_sealed_queue_segment(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=interval, messages in the disk queue: NTP sets a 1970 clock and the next
    publish goes to the queue with the correction (a journal record) before it. A queue
    segment sealed then is synced; the journal must be synced first, or a power cut keeps
    the queued messages without the correction and they expire at once. (The review's
    finding: only a message's record made the queue wait for the journal.)"""
    rec = _powercut.install(monkeypatch)
    path = tmp_path / "s"
    clock.set(40.0)
    c = _offline(path, SessionSync="interval", SessionSyncInterval=600_000, QueueInMemory=1,
                 QueueSegmentBytes=4096)
    body = b"x" * 1500
    for i in range(2):  # one in memory, one in the queue
        c.publish_data("t", 1, b"m%d-" % i + body, properties=_expiring(3600))
    clock.elapse(30)
    clock.set(T)  # NTP
    for i in range(2, 6):  # the correction with m2; a segment sealed (synced) on the way
        c.publish_data("t", 1, b"m%d-" % i + body, properties=_expiring(3600))
    cut = rec.image(path, tmp_path / "cut")
    c.close()
    d = _offline(cut, SessionSync="interval", QueueInMemory=1)
    try:
        age = d.queue_stats().oldest_age
        assert age is None or age < 60, age  # (before: 1.7e9 s)
    finally:
        d.close()
