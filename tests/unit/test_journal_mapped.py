"""The journal's records are copied into a mapping of its file (``mapped.MappedTail``), over
the zeros written ahead: no ``write`` per record, under every SessionSync policy. What must
hold: a record is in the OS once ``append`` returns (a SIGKILL right after loses nothing), an
fdatasync makes mapped records durable as it does written ones, and a file that cannot be
mapped is written as before."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mqttsession.journal as journal_mod
import mqttsession.mapped as mapped_mod
from mqttsession import codec
from mqttsession.journal import AHEAD_BYTES, JOURNAL_SUFFIX, Journal, read_state
from mqttsession.state import SessionState
from mqttsession.testing.faults import FakeOs

CID = "mapped"


def fresh(p: Path, sync: bool) -> tuple[Journal, SessionState]:
    j = Journal(str(p), CID, sync=sync)
    state = j.recover()
    j.compact(state)
    return j, state


@pytest.mark.parametrize("policy, synced_each", [(False, False), (True, False), (True, True)],
                         ids=["none", "interval", "always"])
def test_records_are_mapped_unless_each_is_synced_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: bool, synced_each: bool) -> None:
    """``none``, and ``interval``'s records (synced later, many at once): copied into the
    mapping, no ``write``. ``always``'s record, synced at once: written (a write fault per
    fdatasync'd page would cost more than the ``write``)."""
    if mapped_mod.fs_type(os.stat(tmp_path).st_dev) not in mapped_mod.IN_PLACE:
        pytest.skip("a file system the journal does not map (mapped.IN_PLACE)")
    p = tmp_path / "s.state"
    j, state = fresh(p, policy)
    writes: list[int] = []
    syncs: list[int] = []

    def write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return os.write(fd, data)

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        os.fdatasync(fd)

    monkeypatch.setattr(journal_mod, "os", FakeOs(write=write, fdatasync=fdatasync))
    for i in range(300):  # past the first AHEAD_BYTES: the mapping grows with the zeros
        j.append([state.accept(f"t/{i}", bytes(300), 1)], state, sync=synced_each)
    j.sync_pending()  # (interval: one fdatasync for all of them)
    monkeypatch.setattr(journal_mod, "os", os)
    assert len(writes) == (300 if synced_each else 0) and j._map.active is not synced_each
    assert len(syncs) == (300 if synced_each else 1 if policy else 0)
    size = Path(str(p) + JOURNAL_SUFFIX).stat().st_size
    assert size % AHEAD_BYTES == 0 and size > j.position()[1] > 300 * 300
    j.close()
    got = read_state(str(p))
    assert codec.encode(got) == codec.encode(state)


def test_a_journal_that_cannot_be_mapped_is_written(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mmap(*_a: Any, **_k: Any) -> mmap.mmap:
        raise OSError(errno.ENODEV, "no mmap here")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    p = tmp_path / "s.state"
    j, state = fresh(p, False)
    for i in range(20):
        j.append([state.accept(f"t/{i}", b"x", 1)], state)
    assert not j._map.active and not j._map.mappable
    j.close()
    got = read_state(str(p))
    assert codec.encode(got) == codec.encode(state)


_CHILD = """
import os, signal, sys
from mqttsession import codec
from mqttsession.journal import Journal
j = Journal(sys.argv[1], "mapped", sync=False)
state = j.recover()
j.compact(state)
for i in range(2000):
    j.append([state.accept(f"t/{i}", bytes([i % 251]) * 50, 1 + i % 2)], state)
with open(sys.argv[1] + ".expected", "w") as f:
    f.write(codec.encode(state))
os.kill(os.getpid(), signal.SIGKILL)  # no close, no unmap: what the page cache holds
"""


def test_a_sigkill_after_append_returns_loses_no_record(tmp_path: Path) -> None:
    p = tmp_path / "s.state"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(p)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    got = read_state(str(p))
    assert codec.encode(got) == Path(str(p) + ".expected").read_text()
    j = Journal(str(p), CID, sync=False)  # and appending goes on where the frames end
    state = j.recover()
    j.append([state.accept("t/after", b"x", 1)], state)
    j.close()
    again = read_state(str(p))
    assert codec.encode(again) == codec.encode(state)


@pytest.mark.parametrize("policy, mapped", [("none", True), ("interval", True), ("always", False)])
def test_the_session_sync_policy_decides_what_is_mapped(tmp_path: Path, policy: str,
                                                        mapped: bool) -> None:
    """A Client's journal and disk queue map the records they do not sync at once under
    ``none`` and ``interval``; under ``always`` nothing (each publish syncs its record, and
    the network thread's few records would fault on the pages each fdatasync cleans)."""
    if mapped_mod.fs_type(os.stat(tmp_path).st_dev) not in mapped_mod.IN_PLACE:
        pytest.skip("a file system the journal does not map (mapped.IN_PLACE)")
    from mqttsession import Client

    c = Client(client_id="mapped-policy", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 's.state'}")
    c.config(f"SessionSync={policy}")
    c.config("QueueInMemory=5")  # the rest goes to the disk queue
    c.restore_session("")
    for i in range(20):  # never connected: all of them wait, in the journal and the queue
        c.publish_data("t/policy", 1, b"%d" % i)
    f = c._file
    assert f.journal is not None and f.spool is not None
    assert (f.journal.mapped, f.spool.mapped) == (mapped, mapped)
    assert f.spool._map.active is mapped
    c.close()
    again = Client(client_id="mapped-policy", clean_session=False)
    again.config(f"SessionStateFile={tmp_path / 's.state'}")
    again.restore_session("")
    assert again.queue_stats().messages == 20  # (5 in memory, 15 in the disk queue)
    again.close()
