"""SessionSync=interval (issue 13 point 3): a publish's record reaches the OS before
publish_* returns (a kill -9 loses nothing) and the disk within SessionSyncInterval; the
records an acknowledgement depends on are still synced before it leaves."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mqttsession import Client, MessageEvent, UsageError
from mqttsession.testing.fsyncs import FsyncCounter, counting_fdatasyncs

pytestmark = pytest.mark.integration


@pytest.fixture
def counting() -> Iterator[FsyncCounter]:
    with counting_fdatasyncs() as counter:
        yield counter


def _client(path: Path, interval_ms: int) -> Client:
    c = Client(client_id="interval", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("SessionSync=interval")
    c.config(f"SessionSyncInterval={interval_ms}")
    c.config("QueueInMemory=50")
    return c


def test_publishes_do_not_wait_for_fsync_and_one_follows_within_the_interval(
        tmp_path: Path, counting: FsyncCounter) -> None:
    path = tmp_path / "s"
    c = _client(path, 300)
    c.restore_session("")
    before = counting.syncs
    for n in range(200):  # into memory and into the disk queue
        c.publish_data("t/x", 1, str(n).encode())
    # none a publish's: the packet-id reservation's (one per 256 ids), the journal's once
    # when the disk queue takes over (the messages before the queue's on disk first), and at
    # most the new queue segment's
    assert counting.syncs - before <= 3
    first = counting.syncs
    time.sleep(0.9)  # the timer's interval, with room
    assert counting.syncs >= first + 1  # the deferred fsync ran (journal and queue)
    synced = counting.syncs
    time.sleep(0.5)
    assert counting.syncs == synced  # nothing new: no timer armed
    c.close()
    d = _client(path, 300)
    d.restore_session("")
    assert d.queue_stats().messages == 200  # everything reached the files
    d.close()


def test_close_syncs_what_waits(tmp_path: Path, counting: FsyncCounter) -> None:
    c = _client(tmp_path / "s", 60_000)
    c.restore_session("")
    c.publish_data("t/x", 1, b"x")
    before = counting.syncs
    c.close()
    assert counting.syncs > before


def test_acks_still_wait_for_their_sync(mosquitto: Any, tmp_path: Path,
                                        counting: FsyncCounter) -> None:
    """QoS 2: the 'released' record is synced before PUBREL, whatever the interval."""
    c = _client(tmp_path / "s", 60_000)
    c.connect(mosquitto.host, mosquitto.port)
    names = _syncing_threads(counting)
    for n in range(20):
        c.publish_data("t/x", 2, str(n).encode())
    assert c.flush(20) is True
    # the network thread (or its acksync thread) synced for the PUBRELs: the publisher's own
    # sync (the packet-id reservation) does not count (before, any sync passed: an audit)
    me = threading.current_thread().name
    assert [n for n in names if n != me], names
    c.close()


def _syncing_threads(counting: FsyncCounter) -> list[str]:
    """The names of the threads that call fdatasync from now on (in order)."""
    names: list[str] = []
    plain = counting.fdatasync

    def fdatasync(fd: int) -> None:
        plain(fd)
        names.append(threading.current_thread().name)
    counting.fdatasync = fdatasync  # type: ignore[method-assign]
    return names


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_connected_session_syncs_on_its_network_thread(
        mosquitto: Any, tmp_path: Path, counting: FsyncCounter) -> None:
    """Issue 11: a connected Client has one thread of its own: the interval's fsync runs on
    paho's network thread (its select() waits only until then), not on a timer thread."""
    before = set(threading.enumerate())
    c = _client(tmp_path / "s", 200)
    c.connect(mosquitto.host, mosquitto.port)
    try:
        c.publish_data("t/x", 1, b"first")  # (its packet-id reservation is synced here)
        names = _syncing_threads(counting)
        for n in range(20):
            c.publish_data("t/x", 1, str(n).encode())
        assert not names  # none waited for a sync
        assert _wait(lambda: names, 3.0), "no sync within the interval"
        own = [t for t in threading.enumerate() if t not in before]
        assert len(own) == 1, own  # paho's, which made the sync
        assert names == [own[0].name]
        assert c.flush(10)
    finally:
        c.close()


def test_a_lost_connection_syncs_what_waits_at_once(
        mosquitto: Any, mqtt_proxy_factory: Any, tmp_path: Path,
        counting: FsyncCounter) -> None:
    """The network thread may wait before reconnecting: the records waiting for the interval
    are synced when the connection is lost, not after the reconnect."""
    proxy = mqtt_proxy_factory(mosquitto)
    c = _client(tmp_path / "s", 60_000)
    c.config("ReconnectDelayMin=5")
    c.connect(proxy.host, proxy.port)
    try:
        c.publish_data("t/x", 1, b"first")
        names = _syncing_threads(counting)
        c.publish_data("t/x", 1, b"waits for the interval")
        assert not names
        proxy.cut()
        assert _wait(lambda: names, 3.0), "not synced when the connection was lost"
        assert names[0] != threading.main_thread().name
    finally:
        c.close()


def test_bad_values_are_refused(tmp_path: Path) -> None:
    c = Client(client_id="interval-bad")
    with pytest.raises(UsageError):
        c.config("SessionSync=sometimes")
    with pytest.raises(UsageError):
        c.config("SessionSyncInterval=0")
    c.config("SessionSync=interval")
    assert c.config("SessionSync") == "interval"


# ------------------------------------------------------------ packet-id reservations (issue 13)


def test_packet_ids_are_reserved_with_one_fsync_a_block(tmp_path: Path,
                                                        counting: FsyncCounter) -> None:
    """A power cut may take the records of the last interval while the broker holds their QoS
    2 flows: packet ids come from reservations of 256, each synced before its ids leave."""
    c = _client(tmp_path / "s", 60_000)
    c.config("QueueInMemory=10000")
    c.restore_session("")
    before = counting.syncs
    for n in range(1000):
        c.publish_data("t/x", 2, str(n).encode())
    assert counting.syncs - before == 4  # ids 1-256, 257-512, 513-768, 769-1024
    assert '"reserved":[769,1024]' in c.save_session()
    c.close()


def test_always_reserves_nothing(tmp_path: Path, counting: FsyncCounter) -> None:
    c = _client(tmp_path / "s", 60_000)
    c.config("SessionSync=always")
    c.restore_session("")
    for n in range(300):
        c.publish_data("t/x", 2, str(n).encode())
    assert '"reserved"' not in c.save_session()
    c.close()


def _copy(path: Path, into: Path) -> Path:
    """The state file as a process killed now leaves it (the live owner keeps its lock)."""
    into.mkdir()
    for src in path.parent.iterdir():
        if src.name.startswith(path.name) and src.is_file() and not src.name.endswith(".lock"):
            shutil.copyfile(src, into / src.name)
    return into / path.name


@pytest.mark.parametrize("protocol", [4, 5])
def test_restart_releases_the_reserved_ids_without_harm(
        mosquitto: Any, tmp_path: Path, protocol: int, caplog: pytest.LogCaptureFixture) -> None:
    """A state file read back with a reservation: the first SessionPresent=1 connection sends
    PUBREL for every reserved id the session does not hold; the broker answers PUBCOMP
    [MQTT-4.3.3-11]; new messages take ids after the reservation and arrive."""
    caplog.set_level(logging.INFO, logger="mqttsession")
    path = tmp_path / "s"
    got: queue.Queue[MessageEvent] = queue.Queue()
    sub = Client(client_id=f"interval-sub-{protocol}", clean_session=True)
    sub.protocol_version = protocol
    sub.on_message_in = got.put
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("t/reserved", 2)
    c = _client(path, 60_000)
    c.protocol_version = protocol
    c.restore_session("")
    c.connect(mosquitto.host, mosquitto.port)
    for n in range(3):
        c.publish_data("t/reserved", 2, b"before-%d" % n)
    assert c.flush(20) is True
    killed = _copy(path, tmp_path / "killed")  # a kill -9 now: the reservation is in the file
    c.close()
    d = _client(killed, 60_000)
    d.protocol_version = protocol
    d.restore_session("")
    d.connect(mosquitto.host, mosquitto.port)
    assert d.publish_data("t/reserved", 2, b"after") == 257
    assert d.flush(20) is True
    payloads = sorted(got.get(timeout=10).message for _ in range(4))
    assert payloads == [b"after", b"before-0", b"before-1", b"before-2"]
    sent = [r.getMessage() for r in caplog.records if "PUBREL sent for packet ids" in r.getMessage()]
    # 256 less the messages the copy still holds (a lazy removal): those are resent as usual
    assert len(sent) == 1 and sent[0].split()[0] in ("253", "254", "255", "256"), sent
    assert "for packet ids 1..256 reserved" in sent[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    d.close()
    sub.close()
