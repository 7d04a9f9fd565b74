"""SessionSync=interval (issue 13 point 3): a publish's record reaches the OS before
publish_* returns (a kill -9 loses nothing) and the disk within SessionSyncInterval; the
records an acknowledgement depends on are still synced before it leaves."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mqttsession import Client, UsageError
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
    assert counting.syncs - before <= 1  # none a publish: at most the new queue segment's
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
    before = counting.syncs
    for n in range(20):
        c.publish_data("t/x", 2, str(n).encode())
    assert c.flush(20) is True
    assert counting.syncs > before  # the network thread synced for the PUBRELs
    c.close()


def test_bad_values_are_refused(tmp_path: Path) -> None:
    c = Client(client_id="interval-bad")
    with pytest.raises(UsageError):
        c.config("SessionSync=sometimes")
    with pytest.raises(UsageError):
        c.config("SessionSyncInterval=0")
    c.config("SessionSync=interval")
    assert c.config("SessionSync") == "interval"
