"""Pins from a mutation hunt over ``mqttsession/spool.py``, ``queuelimits.py`` and
``rotating.py`` (real files in tmp_path, no sockets). Each test failed with the mutant named
in its docstring applied."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mqttsession import Client, QueueFullError, queuelimits, rotating
from mqttsession.errors import StateError
from mqttsession.outgoing import Outgoing
from mqttsession.records import encode_message
from mqttsession.recovery import read_frames
from mqttsession.spool import QUEUE_SUFFIX, Spool

from ._support import at_line
from .test_sharedlog import SHM, Gateway, _rotated
from .test_spool import _rewrite_frames, filled, msg, reopened


def _queue_dir(tmp: Path) -> Path:
    return Path(str(tmp / "s") + QUEUE_SUFFIX)


def _sealed(tmp: Path) -> list[str]:
    return sorted(n for n in os.listdir(_queue_dir(tmp)) if n.endswith(".seg"))


def test_a_segment_reaching_its_bound_exactly_is_sealed_by_the_next_append(
        tmp_path: Path) -> None:
    """A segment whose size is exactly ``segment_bytes`` is full: ``roll_due`` says so and
    the next append seals it and begins a new one. Mutant: ``_roll`` with ``>`` for ``>=``
    (a fourth message went into the full segment, a roll announced but not made)."""
    probe = Spool(str(tmp_path / "probe"), "c", sync=False, segment_bytes=1 << 20)
    probe.recover(0)
    for seq in (1, 2, 3):
        probe.append([msg(seq)], sync=False)
    probe.close()
    raw = next((Path(str(tmp_path / "probe") + QUEUE_SUFFIX)).iterdir()).read_bytes()
    bound = read_frames(raw)[1]  # header and three frames: their exact size
    sp = Spool(str(tmp_path / "s"), "c", sync=True, segment_bytes=bound)
    sp.recover(0)
    for seq in (1, 2, 3):
        sp.append([msg(seq)], sync=True)
    assert _sealed(tmp_path) == [] and sp.roll_due()
    sp.append([msg(4)], sync=True)
    [name] = _sealed(tmp_path)
    assert name.startswith(f"q-{1:020d}-{3:020d}-3-")
    sp.close()
    assert reopened(tmp_path).read(10) == [msg(s) for s in (1, 2, 3, 4)]


def test_another_clients_sealed_segment_is_never_read_back(tmp_path: Path) -> None:
    """Sealed segments are not opened at a restart: the one read back first is checked then
    (its header: the client id). Another client's queue is ``StateError``, none of its
    messages handed over. Mutant: ``_fill`` without ``_header_ok`` (its messages read back
    and sent as this client's)."""
    filled(tmp_path, list(range(1, 41))).close()
    d = _queue_dir(tmp_path)
    for n in os.listdir(d):
        if n.endswith(".open"):
            os.unlink(d / n)  # only sealed ones: nothing is read at recovery
    assert _sealed(tmp_path)
    other = Spool(str(tmp_path / "s"), "someone-else", sync=False)
    other.recover(0)
    with pytest.raises(StateError, match="client id"):
        other.read(100)


def test_damage_in_the_last_segment_moves_read_to_past_it(tmp_path: Path) -> None:
    """A crash right after a seal left the new segment with a torn header (deleted at
    recovery): the sealed one is the last. Damage in it is reported, and ``read_to`` (the
    journal's ``spool_next``) passes its last message, so the segment can be retired.
    Mutant: ``_damaged`` without ``read_to = max(read_to, seg.last + 1)``."""
    filled(tmp_path, list(range(1, 41))).close()
    d = _queue_dir(tmp_path)
    [opened] = [n for n in os.listdir(d) if n.endswith(".open")]
    (d / opened).write_bytes(b"")  # created, its header never written
    last_name = _sealed(tmp_path)[-1]
    f, last = (int(x) for x in last_name[2:-4].split("-")[:2])
    _rewrite_frames(d / last_name, {2: encode_message(replace(msg(f + 2), packet_id=7))})
    sp = reopened(tmp_path)
    got = [m.seq for m in sp.read(100)]
    assert got == [*range(1, f + 2)]
    [(_, text)] = sp.take_errors()
    assert f"{last - f - 1} queued messages in it after the damage are lost" in text
    assert sp.read_to == last + 1 and (sp.count, sp.bytes) == (0, 0)
    assert sp.retirable(sp.read_to)


def test_a_batch_appended_makes_its_last_message_the_newest(tmp_path: Path) -> None:
    """``tail_time`` after one append of several messages (``publish_many``): the last one's
    publish time. Mutant: ``append`` taking ``messages[0].accepted_at``."""
    sp = Spool(str(tmp_path / "s"), "c", sync=False)
    sp.recover(0)
    batch = [msg(1, at=100.0), msg(2, at=200.0), msg(3, at=300.0)]
    sp.append(batch, sync=False)
    assert sp.tail_time() == batch[-1].accepted_at
    assert sp.head_time() == batch[0].accepted_at


def test_a_segment_that_cannot_be_deleted_is_reported(tmp_path: Path) -> None:
    """A segment read back whose deletion fails (here its name is now a directory): the
    retire goes on and ``take_errors`` names it. Mutant: ``_unlink`` without the error
    report (the failure silent, the file left for good)."""
    sp = filled(tmp_path, list(range(1, 41)))
    d = _queue_dir(tmp_path)
    first = _sealed(tmp_path)[0]
    last = int(first[2:-4].split("-")[1])
    assert [m.seq for m in sp.read(last + 1)] == list(range(1, last + 2))
    os.unlink(d / first)
    os.mkdir(d / first)  # (unlink(2): EISDIR)
    assert sp.retire(last + 1) == 1
    errors = sp.take_errors()
    assert any("cannot delete" in text and first in text for _, text in errors), errors


def test_messages_appended_after_damage_in_the_open_segment_are_read_back(
        tmp_path: Path) -> None:
    """The open segment found damaged while read back (kept aside): the next append begins
    a new segment and is read back. Mutant: ``_damaged`` without closing the writer (the
    append went on into the file kept aside, behind the read: lost)."""
    sp = filled(tmp_path, list(range(1, 6)), sync=True)
    [opened] = [n for n in os.listdir(_queue_dir(tmp_path)) if n.endswith(".open")]
    _rewrite_frames(_queue_dir(tmp_path) / opened,
                    {2: encode_message(replace(msg(3), packet_id=7))})
    assert [m.seq for m in sp.read(100)] == [1, 2]
    [(_, text)] = sp.take_errors()
    assert "3 queued messages in it after the damage are lost" in text
    sp.append([msg(6)], sync=True)
    assert sp.read(100) == [msg(6)]
    sp.close()
    assert reopened(tmp_path, 6).read(100) == [msg(6)]


def _offline_client(tmp: Path, *settings: str) -> Client:
    c = Client(client_id="c", clean_session=False)
    c.config(f"SessionStateFile={tmp / 's'}")
    for setting in settings:
        c.config(setting)
    return c


def test_drop_oldest_by_bytes_makes_room_from_the_disk_queue(tmp_path: Path) -> None:
    """MaxQueuedBytes alone, drop-oldest, most messages in the disk queue: the new message
    takes the room of the oldest ones, read back and dropped. Mutant: the read-back loop of
    ``_make_room`` counting MaxQueuedMessages only (the publish refused instead)."""
    c = _offline_client(tmp_path, "QueueInMemory=1", "MaxQueuedBytes=30",
                        "QueueFullPolicy=drop-oldest")
    dropped: list[tuple[int, str]] = []
    c.on_message_dropped = lambda e: dropped.append((e.seq, e.reason))
    try:
        for i in range(3):  # 10 bytes each (topic and payload): 1 in memory, 2 on disk
            c.publish_data("t", 1, b"m%d" % i + b"x" * 7)
        assert c._engine.state.spooled == 2  # noqa: SLF001
        c.publish_data("t", 1, b"n" * 14)  # 15 bytes: 45 > 30, two must go
        assert dropped == [(1, "queue-full"), (2, "queue-full")]
        assert [m.message for m in c.outgoing_messages] == [b"m2" + b"x" * 7, b"n" * 14]
    finally:
        c.close()


def test_a_publish_no_drop_can_make_room_for_reads_nothing_back(tmp_path: Path) -> None:
    """drop-oldest, a message larger than MaxQueuedBytes by itself: refused before anything
    is read back; the disk queue keeps its messages there (memory stays within
    QueueInMemory). Mutant: ``_make_room`` without the check before its read-back loop
    (the whole disk queue read into memory, then the refusal)."""
    c = _offline_client(tmp_path, "QueueInMemory=1", "MaxQueuedBytes=30",
                        "QueueFullPolicy=drop-oldest")
    try:
        for i in range(3):
            c.publish_data("t", 1, b"m%d" % i + b"x" * 7)
        st = c._engine.state  # noqa: SLF001
        with pytest.raises(QueueFullError, match="no message that was never sent"):
            c.publish_data("t", 1, b"n" * 30)  # 31 bytes
        assert (len(st.outgoing), st.spooled) == (1, 2)
        assert [m.message for m in c.outgoing_messages] == [b"m%d" % i + b"x" * 7
                                                            for i in range(3)]
    finally:
        c.close()


def test_a_drop_summary_is_logged_once(monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The drops counted in a window are summed up once: a later flush logs nothing more.
    Mutant: ``DropLog._flush`` without clearing its counts (every flush repeated the sum)."""
    clock = [1000.0]
    monkeypatch.setattr(queuelimits.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="mqttsession")
    drops = queuelimits.DropLog()
    for seq in (1, 2, 3):
        drops.dropped(seq, "t/x", "queue-full")
    drops.flush(force=True)
    clock[0] += 20
    drops.flush()
    drops.flush(force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "message seq 1 to 't/x' dropped: queue-full (further drops within 10 s are summed up)",
        "2 more messages dropped in 0 s (queue-full: 2)"]


def _line(fn: object, text: str) -> int:
    src, first = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    return first + next(i for i, s in enumerate(src) if text in s)


def _interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["st, sp = self.state, self.spool",
                                   "if sp is not None:  # a damaged segment"])
def test_an_interrupt_while_a_message_is_read_back_to_be_dropped(tmp_path: Path,
                                                                 where: str) -> None:
    """Ctrl-C in ``_loaded`` while drop-oldest reads the disk queue's oldest back: before it
    joined the session (``st.load``) it stays in the disk queue, after it the session's;
    either way the publish made again drops the two oldest and each message is held once.
    Mutants: ``_read_back`` never resetting the read (the first case: the message skipped
    for good) or always (the second: it came back from the disk queue after its drop)."""
    c = _offline_client(tmp_path, "QueueInMemory=1", "MaxQueuedBytes=30",
                        "QueueFullPolicy=drop-oldest")
    dropped: list[int] = []
    c.on_message_dropped = lambda e: dropped.append(e.seq)
    try:
        for i in range(3):
            c.publish_data("t", 1, b"m%d" % i + b"x" * 7)
        with at_line(Outgoing._loaded, _line(Outgoing._loaded, where), _interrupt) as fired:
            with pytest.raises(KeyboardInterrupt):
                c.publish_data("t", 1, b"n" * 14)
        assert fired
        c.publish_data("t", 1, b"n" * 14)
        assert dropped[-2:] == [1, 2]
        assert [m.message for m in c.outgoing_messages] == [b"m2" + b"x" * 7, b"n" * 14]
    finally:
        c.close()


def test_a_refusal_after_damage_keeps_the_messages_it_read_back(tmp_path: Path) -> None:
    """drop-oldest reads the disk queue's oldest back to drop it, then finds the rest damaged
    (lost, reported): too little room, the publish refused. What it read back joined the
    session in memory; its record is written all the same, so a restart after a kill -9 still holds it.
    Mutant: the last refusal of ``_make_room`` carrying ``gone`` for ``gone + out`` (the
    journal never loaded that message, its segment kept aside: the restart refused, a
    ``StateError``)."""
    settings = ("QueueInMemory=2", "MaxQueuedMessages=5", "QueueFullPolicy=drop-oldest")
    c = _offline_client(tmp_path, *settings)
    try:
        c.restore_session("")
        for i in range(5):  # 2 in memory, 3 in the disk queue
            c.publish_data("t", 1, b"m%d" % i)
        [opened] = [n for n in os.listdir(_queue_dir(tmp_path)) if n.endswith(".open")]
        _rewrite_frames(_queue_dir(tmp_path) / opened,
                        {1: encode_message(replace(msg(4), packet_id=7))})
        with pytest.raises(QueueFullError):
            c.publish_many([("t", 1, b"b%d" % i) for i in range(5)])
        assert c._engine.state.spooled == 0  # noqa: SLF001  (the rest lost to the damage)
        assert [m.message for m in c.outgoing_messages] == [b"m0", b"m1", b"m2"]
        crashed = tmp_path / "crashed"  # what a kill -9 now leaves (close() compacts)
        crashed.mkdir()
        for src in tmp_path.iterdir():
            if src.name.startswith("s") and not src.name.endswith(".lock"):
                copy = shutil.copytree if src.is_dir() else shutil.copyfile
                copy(src, crashed / src.name)
    finally:
        c.close()
    again = _offline_client(crashed, *settings)
    try:
        again.restore_session("")
        assert [m.message for m in again.outgoing_messages] == [b"m0", b"m1", b"m2"]
    finally:
        again.close()


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-muthunt8-", dir=SHM) as d:
        yield Path(d)


def test_the_newest_incarnations_keep_their_token_mapping(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``MAX_MOVED`` rotations the oldest incarnation's mapping goes, never the newest:
    a token of the incarnation just rotated maps to the current one (unmapped, ``is_synced``
    answers from ``_lost``: True, durable unchecked). Mutant: ``del lg._moved[max(...)]``."""
    monkeypatch.setattr(rotating, "MAX_MOVED", 2)
    gw = Gateway(shm, seed=3, max_log_bytes=20_000, max_journal_bytes=2_000)
    try:
        for _ in range(40):
            gw.run(100)
            _rotated(gw.log)
            if gw.log._gen >= 4:
                break
        gen = gw.log._gen
        assert gen >= 4
        assert sorted(gw.log._moved) == [gen - 2, gen - 1]
        assert rotating.moved_to(gw.log._moved, gen - 1, 1)[0] == gen
    finally:
        for v in gw.views.values():
            v.close()
        gw.log.close()
