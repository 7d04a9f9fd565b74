"""A gateway under one disk fault at a time (a sweep of every write, sync, rename and open of
a gateway workload; each test failed before its fix):

* an ``AsyncGateway.session()`` whose restore failed (EIO opening the disk queue's segment)
  closed the half-made session with a saving close: an empty state compacted over the log's
  session, its messages in memory lost for good; the threaded ``Gateway`` kept them;
* that failure was a raw ``OSError`` (now ``StateError`` naming the disk queue);
* ``forget()`` whose end frame's fdatasync failed: the session was gone from memory, not
  from the file (a second ``forget()`` said nothing was stored, the next Gateway found it
  with its disk queue deleted: ``StateError``).
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

import mqttsession.groupcommit as groupcommit_mod
import mqttsession.spool as spool_mod
from mqttsession import AsyncGateway, Gateway, StateError
from mqttsession.testing.faults import FakeOs

pytestmark = pytest.mark.integration

HELD = [f"B-{i}".encode() for i in range(4)]


def _eio_at_segment_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next read-only open of a disk queue's open segment fails with EIO."""
    armed = [True]

    def failing_open(path: str, flags: int, *a: Any, **kw: Any) -> int:
        if armed[0] and path.endswith(".open") and not flags & (os.O_WRONLY | os.O_RDWR):
            armed[0] = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        return os.open(path, flags, *a, **kw)

    monkeypatch.setattr(spool_mod, "os", FakeOs(open=failing_open))


@pytest.mark.parametrize("form", ["async", "thread"])
def test_a_failed_restore_keeps_the_stored_session(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   form: str) -> None:
    d = tmp_path / "gw"

    async def amain() -> None:
        async with AsyncGateway(d) as gw:
            s = await gw.session("B", session_sync="always", connect=False)
            await s.config("QueueInMemory=2")
            for m in HELD:
                await s.publish("t/B", m, 1)
            await s.close()
            _eio_at_segment_open(monkeypatch)
            with pytest.raises(StateError, match="disk queue"):
                await gw.session("B", session_sync="always", connect=False)
            monkeypatch.setattr(spool_mod, "os", os)

    if form == "async":
        asyncio.run(amain())
    else:
        with Gateway(d) as gw:
            c = gw.client("B")
            c.config("QueueInMemory=2")
            for m in HELD:
                c.publish_data("t/B", 1, m)
            c.close()
            _eio_at_segment_open(monkeypatch)
            with pytest.raises(StateError, match="disk queue"):
                gw.client("B")
            monkeypatch.setattr(spool_mod, "os", os)
    with Gateway(d) as gw:
        assert [m.message for m in gw.client("B").outgoing_messages] == HELD


def test_forget_whose_end_frame_sync_fails_is_forgotten_in_the_file_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "gw"
    armed = [False]

    def fdatasync(fd: int) -> None:
        if armed[0]:
            armed[0] = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)

    with Gateway(d) as gw:
        keep = gw.client("A")
        keep.publish_data("t/A", 1, b"A-0")
        c = gw.client("C")
        c.config("QueueInMemory=2")
        for i in range(4):
            c.publish_data("t/C", 1, f"C-{i}".encode())
        c.close()
        monkeypatch.setattr(groupcommit_mod, "os", FakeOs(fdatasync=fdatasync))
        armed[0] = True
        assert gw.forget("C")  # the log rewritten without it, synced
        monkeypatch.setattr(groupcommit_mod, "os", os)
        assert gw.stored_sessions() == ["A"]
    with Gateway(d) as gw:
        assert gw.stored_sessions() == ["A"]
        assert [m.message for m in gw.client("A").outgoing_messages] == [b"A-0"]
        assert gw.client("C").outgoing_messages == ()


def test_a_forget_cut_after_its_queue_went_is_named(tmp_path: Path) -> None:
    """``forget()`` removes the disk queue, then ends the session in the log: a kill -9
    between left the session without its queue. The error named only "a volume not mounted,
    files deleted?" (a sweep's note): it names a forget() cut short too."""
    import shutil

    d = tmp_path / "gw"
    with Gateway(d) as gw:
        c = gw.client("C")
        c.config("QueueInMemory=2")
        for i in range(4):
            c.publish_data("t/C", 1, f"C-{i}".encode())
        c.close()
    shutil.rmtree(d / "queues" / "C.queue")
    with Gateway(d) as gw:
        with pytest.raises(StateError, match=r"a forget\(\) cut short"):
            gw.client("C")
        assert gw.forget("C")
