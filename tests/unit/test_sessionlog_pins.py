"""Pins from a mutation hunt over ``sessionlog.py``, ``expiry.py``, ``publishing.py``,
``aiosync.py`` and ``_inbox.py``, no broker needed. Each test failed with one mutant applied
(named in its docstring)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import AsyncSession, Client, Options, PublishRequest, UsageError
from mqttsession._inbox import Slots
from mqttsession.errors import PersistenceError
from mqttsession.expiry import MessageClock, disconnect_time, expired
import mqttsession.sessionlog as sessionlog_mod
from mqttsession.sessionlog import SessionLog
from mqttsession.sharedlog import ASIDE_DIR, AUTO_SESSION_BYTES, SharedLog
from mqttsession.state import MAX_EXPIRY, SessionState

try:  # tests/unit may or may not be a package
    from .test_sharedlog import _fail_next_fdatasync
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_sharedlog import _fail_next_fdatasync  # type: ignore[no-redef]

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
linux = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")


def _offline(cid: str = "pin", **kwargs: object) -> Client:
    return Client(client_id=cid, clean_session=False, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ expiry


def test_a_disconnect_at_the_connect_time_is_exact() -> None:
    """A disconnect recorded at the very time of the last connect is the disconnect time,
    not the last activity (mutant: ``disconnected_at >= connected_at`` -> ``>``)."""
    assert disconnect_time(100.0, 100.0, 50.0) == 100.0


@pytest.mark.parametrize("now", [float("nan"), float("inf"), float("-inf")])
def test_a_clock_reading_that_is_no_number_tells_nothing(now: float) -> None:
    """NaN or an infinite clock: unknown, never expired nor alive (mutant: the
    ``math.isfinite(now)`` guard dropped)."""
    assert expired(5, 10, 100.0, 110.0, 110.0, now) is None
    assert expired(5, MAX_EXPIRY, 100.0, 110.0, 110.0, now) is None


def test_interval_ffffffff_never_expires_even_past_its_seconds() -> None:
    """0xFFFFFFFF is "never", not 136 years (mutant: ``interval == NEVER`` compared with
    another value: the interval then counts as seconds)."""
    assert expired(5, MAX_EXPIRY, 100.0, 110.0, 110.0, 110.0 + 2.0 ** 33) is False
    assert expired(5, MAX_EXPIRY - 1, 100.0, 110.0, 110.0, 110.0 + 2.0 ** 33) is True


def test_a_wall_clock_step_of_exactly_step_is_followed() -> None:
    """A step of exactly ``STEP`` seconds is no jump: the offset stays (mutant: ``jump >``
    -> ``jump >=``)."""
    clock = MessageClock()
    clock.read(1000.0, 10.0, 0.0)
    assert clock.read(1001.0, 10.0, 0.0) == (1001.0, 0.0)


def test_a_backward_slew_within_a_thousandth_of_the_elapsed_time_is_followed() -> None:
    """Going back 1.5 s over 1000 s (under ``STEP`` + 0.1%): a slew, followed, no jump
    (mutant: ``since / 1000`` dropped from the backward bound)."""
    clock = MessageClock()
    clock.read(1000.0, 10.0, 0.0)
    assert clock.read(1998.5, 1010.0, 0.0) == (1998.5, 0.0)


def test_a_monotonic_reading_earlier_than_the_last_counts_no_time() -> None:
    """A monotonic reading behind the last one kept counts as no time elapsed, not negative
    time (mutant: ``since = mono - self.mono`` without the ``mono > self.mono`` guard)."""
    clock = MessageClock()
    clock.read(1000.0, 100.0, 0.0)
    assert clock.read(1000.0, 50.0, 0.0) == (1000.0, 0.0)


# ------------------------------------------------------------------ publish checks


@pytest.mark.parametrize("call", [
    lambda c: c.publish_data("t", 3, b"x"),
    lambda c: c.publish_data("t", -1, b"x"),
    lambda c: c.publish_many([("t", 3, b"x")]),
], ids=["qos3", "qos-1", "many-qos3"])
def test_a_publish_qos_outside_0_to_2_is_a_usage_error(call: Callable[[Client], object]
                                                        ) -> None:
    """QoS 3 or -1: ``UsageError`` naming the qos, nothing held (mutant: ``validate_qos``
    dropped from ``check_message``)."""
    with _offline() as c:
        with pytest.raises(UsageError, match="qos must be one of"):
            call(c)
        assert not c.outgoing_messages


@pytest.mark.parametrize("data", ["text", 5, None, [1, 2]], ids=["str", "int", "none", "list"])
def test_publish_data_takes_bytes_only(data: object) -> None:
    """``publish_data`` with text or any other non-bytes value: ``UsageError`` (mutant: ``str``
    let through the type check)."""
    with _offline() as c:
        with pytest.raises(UsageError, match="data must be bytes"):
            c.publish_data("t", 1, data)  # type: ignore[arg-type]
        assert not c.outgoing_messages


def test_bytearray_and_memoryview_payloads_are_stored_as_bytes_copies() -> None:
    """A ``bytearray`` or ``memoryview`` payload is taken, stored as ``bytes``: changing the
    buffer afterwards changes nothing held (mutants: either type dropped from the check;
    ``bytes(data)`` -> ``data``)."""
    buf = bytearray(b"ab")
    view_of = bytearray(b"cd")
    with _offline() as c:
        c.publish_data("t", 1, buf)  # type: ignore[arg-type]
        c.publish_data("t", 1, memoryview(view_of))  # type: ignore[arg-type]
        buf[0:2] = b"XY"
        view_of[0:2] = b"ZW"
        held = [m.message for m in c.outgoing_messages]
        assert held == [b"ab", b"cd"]
        assert all(type(m) is bytes for m in held)
        assert all(type(m.payload) is bytes for m in c._engine.state.outgoing.values())


def test_properties_need_mqtt_5_also_on_mqtt_311() -> None:
    """Properties on an MQTT 3.1.1 client (protocol_version 4): ``UsageError`` (mutant:
    ``protocol_version != 5`` -> ``== 3``)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "text/plain"
    with _offline(protocol_version=4) as c:
        with pytest.raises(UsageError, match="properties need MQTT 5"):
            c.publish_data("t", 1, b"x", properties=props)
        assert not c.outgoing_messages


@pytest.mark.parametrize("bad", [("t", 1), ("t", 1, b"x", True), ["t", 1, b"x"]],
                         ids=["two", "four", "list"])
def test_publish_many_takes_three_tuples_only(bad: object) -> None:
    """A tuple of 2 or 4 items, or a list of 3: ``UsageError`` naming what it takes (mutants:
    ``len(m) == 3`` dropped; ``isinstance(m, tuple)`` dropped)."""
    with _offline() as c:
        with pytest.raises(UsageError, match="publish_many takes"):
            c.publish_many([("ok", 1, b"a"), bad])  # type: ignore[list-item]
        assert not c.outgoing_messages


def test_publish_many_retain_follows_the_setting_unless_given() -> None:
    """``Retain=true``: a tuple's message retains (the setting); a request's ``retain=False``
    does not, ``retain=1`` is ``True`` (mutants: ``retain_flag`` -> ``bool(retain)``;
    ``retain is None`` -> ``not retain``; ``bool(retain)`` -> ``retain``)."""
    with _offline() as c:
        c.config("Retain=true")
        c.publish_many([("t", 1, b"a"), PublishRequest("t", 1, b"b", retain=False),
                        PublishRequest("t", 1, b"c", retain=1)])  # type: ignore[arg-type]
        assert [m.retained for m in c.outgoing_messages] == [True, False, True]
        assert [m.retain for m in c._engine.state.outgoing.values()] == [True, False, True]
        assert all(type(m.retain) is bool for m in c._engine.state.outgoing.values())


def test_a_mixed_qos_batch_opens_the_state_file(tmp_path: Path) -> None:
    """A ``publish_many`` of QoS 0 and QoS 1 messages on a client whose state file is not yet
    open makes the QoS 1 one durable (mutant: ``any(i[2] ...)`` -> ``all``)."""
    path = tmp_path / "mixed.session"
    c = _offline("mixed")
    c.config(f"SessionStateFile={path}")
    c.publish_many([("t/0", 0, b"gone"), ("t/1", 1, b"kept")])
    c.close()
    d = _offline("mixed")
    d.config(f"SessionStateFile={path}")
    d.restore_session("")
    assert [m.message for m in d.outgoing_messages] == [b"kept"]
    d.close()


# ------------------------------------------------------------------ sessionlog


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqs-slpins-", dir=SHM) as d:
        yield Path(d)


def _one(shm: Path, cid: str = "a", **kw: int) -> tuple[SharedLog, SessionLog, SessionState]:
    """A log with session ``cid``, an empty snapshot of it synced."""
    log = SharedLog(str(shm))
    view, state = log.session(cid, **kw), SessionState(client_id=cid, clean_session=False)
    view.compact(state)
    return log, view, state


@linux
def test_each_synced_snapshot_counts_a_compaction(shm: Path) -> None:
    """``compactions`` counts the snapshots written and synced (mutant: ``compactions += 1``
    dropped)."""
    log, view, state = _one(shm)
    assert view.compactions == 1
    view.compact(state)
    assert view.compactions == 2
    log.close()


@linux
def test_a_record_appended_without_sync_is_synced_by_sync_pending(shm: Path) -> None:
    """Policy ``always``: ``append(sync=False)`` leaves the record for ``sync_pending``, which
    makes it durable (mutant: ``self._unsynced = (gen, pos)`` dropped: nothing to sync)."""
    log, view, state = _one(shm)
    assert view.sync
    view.append([state.accept("t", b"one", 1)], state, sync=False)
    at = view.appended_at
    assert not view.is_synced(*at)
    view.sync_pending()
    assert view.is_synced(*at) and log.is_synced(*at)
    log.close()


@linux
def test_a_record_a_failed_sync_cut_counts_synced_once_a_snapshot_holds_it(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record cut by a failed fdatasync is not durable in the log, but is once a snapshot of
    the state that holds it is synced (mutant: ``SessionLog.is_synced`` only the log's)."""
    log, view, state = _one(shm)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        view.append([state.accept("t", b"cut", 1)], state, sync=True)
    cut = view.appended_at
    assert not log.is_synced(*cut) and not view.is_synced(*cut)
    view.compact(state)
    assert not log.is_synced(*cut)
    assert view.is_synced(*cut)
    log.close()


@linux
def test_a_lazy_record_of_a_session_a_failed_sync_cut_rewrites_it_at_once(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed sync cut the session, even a lazy record writes a snapshot of the state
    at once (mutant: ``s.stale`` dropped from the first look: the record kept in memory, the
    session left broken)."""
    log, view, state = _one(shm)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        view.append([state.accept("t", b"cut", 1)], state, sync=True)
    assert view.broken
    view.append([state.accept("t", b"lazy", 1)], state, lazy=True)
    assert not view.broken
    log.close()
    assert [m.payload for m in _reopened(shm, "a").outgoing.values()] == [b"cut", b"lazy"]


def _reopened(shm: Path, cid: str) -> SessionState:
    log = SharedLog(str(shm))
    try:
        return log.session(cid).recover()
    finally:
        log.close()


@linux
def test_the_compaction_bound_is_max_journal_bytes_else_the_automatic_one(shm: Path) -> None:
    """``max_journal_bytes`` 0: the automatic bound (64 KiB, or half a larger snapshot);
    ``needs_compaction`` once the records pass it, not at it (mutants: ``> 0`` -> ``>= 0``;
    ``len(snap) // 2`` -> ``len(snap)``; ``rec_bytes > bound`` -> ``>=``)."""
    log, view, state = _one(shm)
    assert view.bound == AUTO_SESSION_BYTES
    state.accept("t", b"x" * (3 * AUTO_SESSION_BYTES), 1)
    view.compact(state)
    snap = log._sessions["a"].snap
    assert snap is not None and view.bound == len(snap) // 2 > AUTO_SESSION_BYTES
    view.append([state.accept("t", b"r", 1)], state)
    rec_bytes = log._sessions["a"].rec_bytes
    view.max_journal_bytes = rec_bytes
    assert view.bound == rec_bytes and not view.needs_compaction
    view.max_journal_bytes = rec_bytes - 1
    assert view.needs_compaction
    log.close()


@linux
def test_keep_unsynced_once_set_stays_set(shm: Path) -> None:
    """``keep_unsynced`` is for the whole log once one session sets it; a view setting False
    does not clear it (mutant: the setter assigns ``keep`` alone)."""
    log, view, _ = _one(shm)
    assert view.keep_unsynced is False
    view.keep_unsynced = True
    view.keep_unsynced = False
    assert view.keep_unsynced is True and log.keep_unsynced is True
    log.close()


@linux
def test_fsync_of_a_session_a_failed_sync_cut_says_false(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fsync`` on a session whose records a failed sync cut: False, not an error (mutant:
    ``s.stale`` dropped from its look)."""
    log, view, state = _one(shm)
    _fail_next_fdatasync(monkeypatch)
    with pytest.raises(PersistenceError):
        view.append([state.accept("t", b"cut", 1)], state, sync=True)
    assert view.fsync() is False
    log.close()


@linux
def test_fsync_writes_the_lazy_records_first(shm: Path) -> None:
    """``fsync``: everything so far on disk, the lazy records included (mutant: its
    ``flush`` dropped)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"lazy", 1)], state, lazy=True)
    assert [s.records for s in log.stats()] == [0]
    assert view.fsync() is True
    assert [s.records for s in log.stats()] == [1]
    assert log.is_synced(*log.position())
    log.close()


@linux
def test_recover_drops_the_lazy_records_not_yet_written(shm: Path) -> None:
    """``recover``: the session as the log holds it; lazy records held in memory before it are
    dropped, never written after it (mutant: ``_lazy.clear()`` dropped from ``recover``)."""
    log, view, state = _one(shm)
    view.append([state.accept("t", b"lazy", 1)], state, lazy=True)
    assert not view.recover().outgoing
    view.close()
    log.close()
    assert not _reopened(shm, "a").outgoing


@linux
def test_a_session_the_log_does_not_hold_recovers_empty_and_persistent(shm: Path) -> None:
    """No session in the log: an empty persistent session, and ``discard`` says False and
    writes nothing (mutants: ``clean_session=False`` -> ``True``; ``discard``'s ``snap is
    None`` guard dropped)."""
    log = SharedLog(str(shm))
    view = log.session("none")
    state = view.recover()
    assert state.client_id == "none" and state.clean_session is False
    at = log.position()
    assert view.discard() is False
    assert log.position() == at
    log.close()


@linux
def test_keep_aside_writes_no_journal_without_records(shm: Path) -> None:
    """A session with a snapshot and no records is kept aside as the state file alone
    (mutant: ``if recs`` -> ``if True``: an empty journal written beside it)."""
    log, view, _ = _one(shm)
    kept = view.keep_aside("pin")
    assert len(kept) == 1 and not kept[0].endswith(".journal")
    assert os.listdir(shm / ASIDE_DIR) == [os.path.basename(kept[0])]
    log.close()


@linux
def test_keep_aside_takes_a_new_name_when_only_the_journal_is_there(
        shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose ``.journal`` alone exists is taken already (mutant: only the state file's
    name looked at: the old journal would pair with the new file)."""
    monkeypatch.setattr(sessionlog_mod.time, "strftime", lambda fmt: "STAMP")
    log, view, state = _one(shm)
    view.append([state.accept("t", b"r", 1)], state)
    (shm / ASIDE_DIR).mkdir()
    (shm / ASIDE_DIR / "a.pin-STAMP.journal").write_bytes(b"old")
    kept = view.keep_aside("pin")
    assert [os.path.basename(k) for k in kept] == ["a.pin-STAMP-2", "a.pin-STAMP-2.journal"]
    assert (shm / ASIDE_DIR / "a.pin-STAMP.journal").read_bytes() == b"old"
    log.close()


@pytest.mark.parametrize("cid, name", [("..hidden", "hidden"), ("...", "_"), ("a/b c", "a_b_c")])
def test_a_kept_aside_name_is_never_hidden(cid: str, name: str) -> None:
    """Leading dots are taken off a client id's aside name (mutant: ``.lstrip(".")``
    dropped: a hidden file, or ``..``)."""
    assert sessionlog_mod._aside_name(cid) == name


# ------------------------------------------------------------------ _inbox.Slots


def test_a_slot_given_back_is_one_slot() -> None:
    """``give`` returns exactly one slot: after it one ``take`` goes through and the next
    waits (mutant: ``_free += 1`` -> ``+= 2``)."""
    s = Slots(1)
    assert s.take()
    s.give()
    assert s.take()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(s.take()), daemon=True)
    t.start()
    t.join(0.1)
    assert t.is_alive() and got == []  # none free: it waits
    s.close()
    t.join(5)
    assert got == [False]


def test_an_async_publish_into_the_disk_queue_takes_the_retain_setting(tmp_path: Path) -> None:
    """``AsyncSession.publish`` with ``retain=None`` bound for the disk queue: the ``Retain``
    setting's flag (mutant: ``check_item``'s ``retain_flag`` -> ``bool(retain)``)."""
    async def main() -> None:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="ret-aio",
                                      state_file=tmp_path / "aio.session", connect=False)
        s.client.config("Retain=true")
        s.client.config("QueueInMemory=1")
        for i in range(3):
            await s.publish("t/a", f"m{i}")
        assert [(m.message, m.retained) for m in s.client.outgoing_messages] == [
            (b"m0", True), (b"m1", True), (b"m2", True)]
        await s.close()

    asyncio.run(main())
