"""The disk queue (issue 12 point 1): never-sent messages beyond QueueInMemory live in segment
files next to the state file, are read back in publish order as the window has room, and whole
segments are deleted once read back; memory holds the window, not the queue. Real mosquitto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, StateError, load_state
from mqttsession.spool import QUEUE_SUFFIX

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

number_of, qos_of, unique = _procs.number_of, _procs.qos_of, _procs.unique

pytestmark = pytest.mark.integration

N = 400


def _client(path: Path, client_id: str, protocol: int = 4) -> Client:
    c = Client(client_id=client_id, clean_session=False, protocol_version=protocol)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=20")
    c.config("QueueSegmentBytes=4096")
    return c


def _segments(path: Path) -> list[str]:
    folder = str(path) + QUEUE_SUFFIX
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _written(monkeypatch: pytest.MonkeyPatch, tag: str) -> list[int]:
    """The numbers of the PUBLISH packets the client writes, in the order it writes them (the
    order the counter sees is the broker's: mosquitto may reorder a subscriber's queue)."""
    from mqttsession.engine import Engine

    sent: list[int] = []
    orig = Engine._publish

    def publish(self: Engine, m: Any, dup: bool) -> Any:
        n = number_of(tag, m.payload)
        if n is not None:
            sent.append(n)
        return orig(self, m, dup)

    monkeypatch.setattr(Engine, "_publish", publish)
    return sent


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_offline_queue_on_disk_restored_and_drained_in_order(
        mosquitto: Any, tmp_path: Path, protocol: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.state"
    tag = unique("dq")
    topic = f"mqs/{tag}"
    cid = unique("gw")
    c = _client(path, cid, protocol)
    c.restore_session("")
    for n in range(1, N + 1):
        c.publish_message(topic, qos_of(n), _procs.payload(tag, n))
    st = c._engine.state
    assert len(st.outgoing) == 20 and st.spooled == N - 20  # memory holds QueueInMemory
    stats = c.queue_stats()
    assert stats.messages == N and stats.oldest_age is not None
    assert len(_segments(path)) > 3  # several sealed segments and the open one
    c.close()

    d = _client(path, cid, protocol)
    d.restore_session("")
    st = d._engine.state
    assert len(st.outgoing) == 20 and st.spooled == N - 20  # restored: the index, not the queue
    assert d.queue_stats().messages == N
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic, protocol)
    sent = _written(monkeypatch, tag)
    try:
        d.connect(mosquitto.host, mosquitto.port)
        assert d.flush(30) is True
        counter.wait_numbers(tag, range(1, N + 1))
        assert sent == list(range(1, N + 1))  # written in publish order, once [MQTT-4.6.0-1]
        counts = counter.counts(tag)
        _procs.assert_delivered(counts, range(1, N + 1))
        assert max(counts.values()) == 1
        assert d.queue_stats().messages == 0
        assert [s for s in _segments(path) if s.endswith(".seg")] == []  # read back: deleted
    finally:
        counter.close()
        d.close()


def test_publishing_while_connected_spills_and_drains(mosquitto: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher faster than the broker: the queue goes to disk past QueueInMemory and
    comes back; every message arrives once, in order."""
    path = tmp_path / "gw.state"
    tag = unique("spill")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    c = _client(path, unique("gw"))
    sent = _written(monkeypatch, tag)
    try:
        c.connect(mosquitto.host, mosquitto.port)
        most = 0
        for n in range(1, N + 1):
            c.publish_message(topic, qos_of(n), _procs.payload(tag, n))
            most = max(most, len(c._engine.state.outgoing))
        assert c.flush(30) is True
        counter.wait_numbers(tag, range(1, N + 1))
        assert sent == list(range(1, N + 1))
        assert max(counter.counts(tag).values()) == 1
        assert most <= 20 + 20  # QueueInMemory, plus the window read back at most
    finally:
        counter.close()
        c.close()


def test_save_session_text_holds_the_disk_queue(tmp_path: Path) -> None:
    """save_session()'s text is the whole session: the disk queue's messages are in it, so a
    client without the files restores all of them."""
    path = tmp_path / "gw.state"
    c = _client(path, "gw-save")
    c.restore_session("")
    for n in range(1, 101):
        c.publish_data("t/x", 1, str(n).encode())
    text = c.save_session()
    c.close()
    view = load_state(text)
    assert [int(m.payload) for m in view.never_sent] == list(range(1, 101))
    other = Client(client_id="gw-save", clean_session=False)
    other.restore_session(text)
    assert other.queue_stats().messages == 100
    # and the file's own snapshot refers to the queue, not a copy of it
    d = _client(path, "gw-save")
    d.restore_session("")
    assert d.queue_stats().messages == 100 and len(d._engine.state.outgoing) == 20
    d.close()


def test_drop_oldest_reaches_into_the_disk_queue(tmp_path: Path) -> None:
    path = tmp_path / "gw.state"
    c = _client(path, "gw-drop")
    c.config("MaxQueuedMessages=50")
    c.config("QueueFullPolicy=drop-oldest")
    dropped: list[int] = []
    c.on_message_dropped = lambda e: dropped.append(e.seq)
    c.restore_session("")
    for n in range(1, 101):
        c.publish_data("t/x", 1, str(n).encode())
    assert dropped == list(range(1, 51))
    assert c.queue_stats().messages == 50
    c.close()
    d = _client(path, "gw-drop")
    d.restore_session("")
    text = d.save_session()
    assert [int(m.payload) for m in load_state(text).never_sent] == list(range(51, 101))
    d.close()


def test_a_queue_without_its_state_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "gw.state"
    c = _client(path, "gw-orphan")
    c.restore_session("")
    for n in range(1, 101):
        c.publish_data("t/x", 1, str(n).encode())
    c.close()
    os.unlink(path)
    os.unlink(str(path) + ".journal")
    errors: list[str] = []
    d = _client(path, "gw-orphan")
    d.on_error = lambda e: errors.append(e.description)
    d.restore_session("")
    d.publish_data("t/x", 1, b"new")
    assert d.queue_stats().messages == 1
    assert any(name.startswith("gw.state.queue.orphaned-") for name in os.listdir(tmp_path))
    d.close()


def test_inspect_counts_the_disk_queue(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    path = tmp_path / "gw.state"
    c = _client(path, "gw-inspect")
    c.restore_session("")
    for n in range(1, 101):
        c.publish_data("t/x", 1, b"x" * 10)
    c.close()
    out = subprocess.run([sys.executable, "-m", "mqttsession", "inspect", "--json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["queue"]["messages"] == 100 and info["queue"]["on_disk"] == 80
    assert info["queue"]["bytes"] == 100 * (10 + 3)
    assert info["sizes"]["disk_queue_bytes"] > 0
    text = subprocess.run([sys.executable, "-m", "mqttsession", "inspect", str(path)],
                          check=True, capture_output=True, text=True).stdout
    assert "80 wait in the disk queue" in text


def test_a_segment_damaged_on_disk_is_reported_kept_and_skipped(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random damage in a sealed segment is found when it is read back: on_error says how
    many messages it held after the damage, ``queue_stats().dropped`` counts them, the file
    is kept aside, the rest of the queue goes out in order, and the session goes on (a
    restart reads it without error)."""
    path = tmp_path / "gw.state"
    tag = unique("dmg")
    topic = f"mqs/{tag}"
    c = _client(path, unique("gw"))
    cid = c.client_id
    c.restore_session("")
    for n in range(1, N + 1):
        c.publish_message(topic, 1, _procs.payload(tag, n))
    c.close()
    folder = Path(str(path) + QUEUE_SUFFIX)
    victim = sorted(p for p in folder.iterdir() if p.suffix == ".seg")[-1]  # the last sealed one
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    victim.write_bytes(bytes(raw))
    errors: list[str] = []
    d = _client(path, cid)
    d.on_error = lambda e: errors.append(e.description)
    d.restore_session("")
    sent = _written(monkeypatch, tag)
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    try:
        d.connect(mosquitto.host, mosquitto.port)
        assert d.flush(30) is True
        assert any("is damaged" in e and "kept as" in e for e in errors), errors
        assert sent == sorted(sent) and len(set(sent)) == len(sent)  # nothing invented
        assert N - 60 < len(sent) < N and sent[-1] == N  # one segment's tail lost, no more
        assert any(p.name.startswith(victim.name + ".damaged-") for p in folder.iterdir())
        stats = d.queue_stats()  # those lost count as dropped (before: not counted at all)
        assert (stats.messages, stats.dropped) == (0, N - len(sent)), stats
        d.publish_message(topic, 1, _procs.payload(tag, N + 1))
        assert d.flush(30) is True
    finally:
        counter.close()
        d.close()
    e = _client(path, cid)
    e.restore_session("")  # the journal replays: the lost seqs do not break it
    e.publish_message(topic, 1, _procs.payload(tag, N + 2))
    assert e.queue_stats().messages == 1
    e.close()


@pytest.mark.parametrize("sync", ["always", "interval", "none"])
def test_a_deleted_segment_before_others_is_found(tmp_path: Path, sync: str) -> None:
    """A sealed segment not read back deleted (by hand, a cleanup script) while later ones
    stay: under ``always`` and ``interval`` (every segment's name synced when made) restoring
    raises ``StateError`` and changes nothing (before: its messages silently gone); under
    ``none`` (a power cut may take a name) the loss is reported to ``on_error``."""
    path = tmp_path / "s"
    c = _client(path, unique("gap"))
    cid = c.client_id
    c.config(f"SessionSync={sync}")
    c.restore_session("")
    for n in range(N):
        c.publish_data("t/gap", 1, b"%d" % n)
    c.close()
    folder = Path(str(path) + QUEUE_SUFFIX)
    sealed = sorted(p for p in folder.iterdir() if p.suffix == ".seg")
    assert len(sealed) >= 3
    kept = sealed[1].read_bytes()
    sealed[1].unlink()
    before = sorted(p.name for p in folder.iterdir())
    d = _client(path, cid)
    d.config(f"SessionSync={sync}")
    errors: list[str] = []
    d.on_error = lambda e: errors.append(e.description)
    try:
        if sync == "none":
            d.restore_session("")
            assert any("lacks a segment" in e for e in errors), errors
        else:
            with pytest.raises(StateError, match="lacks a segment"):
                d.restore_session("")
            assert sorted(p.name for p in folder.iterdir()) == before  # nothing touched
            sealed[1].write_bytes(kept)  # put back: every message is there again
            d.restore_session("")
            assert d.queue_stats().messages == N
    finally:
        d.close()


def test_outgoing_messages_lists_the_disk_queue_too(tmp_path: Path) -> None:
    """``outgoing_messages`` is every message held, in publish order, the disk queue's with
    packet id 0 (before: only memory's, so 60 of 80 went unlisted); ``publish_data`` returns 0
    for one that waits there. Also after a restore."""
    path = tmp_path / "s"
    c = _client(path, unique("dq"))
    c.restore_session("")
    ids = [c.publish_data("t/x", 1, b"%d" % n) for n in range(80)]
    assert all(ids[:20]) and ids[20:] == [0] * 60
    for client in (c, None):
        if client is None:
            c.close()
            client = _client(path, c.client_id)
            client.restore_session("")
        held = client.outgoing_messages
        assert [m.message for m in held] == [b"%d" % n for n in range(80)]
        assert [m.packet_id for m in held][20:] == [0] * 60
        assert len(held) == client.queue_stats().messages == 80
    client.close()


def test_an_asyncio_session_deletes_read_back_segments_off_the_loop(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``AsyncSession`` draining its disk queue deletes each segment read back after the
    sync of the record saying so, in the executor (before: that fsync, then the deletion, ran
    on the event loop's thread, once a segment)."""
    import asyncio
    import threading

    from mqttsession import AsyncSession, Options
    from mqttsession.spool import Spool

    path, cid = tmp_path / "s", unique("dqa")
    c = _client(path, cid)
    c.restore_session("")
    for n in range(N):
        c.publish_data("t/dq", 1, b"%d" % n)
    c.close()
    assert len(_segments(path)) >= 5
    retired_in: list[int] = []
    real = Spool.retire

    def retire(self: Spool, spool_next: int) -> int:
        retired_in.append(threading.get_ident())
        return real(self, spool_next)

    monkeypatch.setattr(Spool, "retire", retire)

    async def main() -> int:
        s = AsyncSession(Options(address=f"{mosquitto.host}:{mosquitto.port}"), client_id=cid,
                         state_file=str(path), session_sync="always")
        s.client.config("QueueInMemory=20")
        s.client.config("QueueSegmentBytes=4096")
        async with s:
            await s.flush()
            for _ in range(200):  # the last deletions run after the flush, off the loop
                if len(_segments(path)) <= 2:
                    break
                await asyncio.sleep(0.02)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert retired_in and loop_thread not in retired_in
    assert len(_segments(path)) <= 2


@pytest.mark.parametrize("kind", ["client", "gateway"])
def test_setting_the_state_file_to_its_own_name_changes_nothing(tmp_path: Path, kind: str) -> None:
    """``config("SessionStateFile=" + its own value)`` (a settings dict applied to every
    session, say) with messages in the disk queue: nothing happens. Before: the files were
    closed and opened again as a session this run had not restored, kept aside with the disk
    queue: 4 of 5 held messages never sent, the next start ``StateError``. A gateway session
    refuses any other name."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415
    from mqttsession.errors import UsageError  # noqa: PLC0415

    def held(c: Client) -> int:
        c.restore_session("") if kind == "client" else None
        return c.queue_stats().messages

    gw = Gateway(tmp_path / "gw") if kind == "gateway" else None
    c = _client(tmp_path / "s", "same") if gw is None else gw.client("same")
    if gw is None:
        c.restore_session("")
    c.config("QueueInMemory=1")
    for n in range(5):
        c.publish_message("t/same", 1, f"m{n}")
    c.config("SessionStateFile=" + c.config("SessionStateFile"))
    assert c.queue_stats().messages == 5 and len(c.outgoing_messages) == 5
    if gw is not None:
        with pytest.raises(UsageError, match="cannot change"):
            c.config(f"SessionStateFile={tmp_path / 'other'}")
    c.close()
    if gw is not None:
        gw.close()
        gw = Gateway(tmp_path / "gw")
    d = _client(tmp_path / "s", "same") if gw is None else gw.client("same")
    try:
        assert held(d) == 5 and [m.message for m in d.outgoing_messages] == [
            f"m{n}".encode() for n in range(5)]
    finally:
        d.close()
        if gw is not None:
            gw.close()


def test_the_state_file_under_another_spelling_is_the_same(tmp_path: Path) -> None:
    """``./s`` for ``s``, or through a linked directory: the same file, nothing closed or set
    aside (review: before, the session was kept aside as not restored)."""
    (tmp_path / "link").symlink_to(tmp_path)
    c = _client(tmp_path / "s", unique("spell"))
    c.restore_session("")
    errors: list[str] = []
    c.on_error = lambda e: errors.append(e.description)
    for n in range(3):
        c.publish_message("t/spell", 1, f"m{n}")
    for other in (f"{tmp_path}/./s", f"{tmp_path}/link/s"):
        c.config(f"SessionStateFile={other}")
        c.publish_message("t/spell", 1, "more")
    assert c.queue_stats().messages == 5 and errors == []
    c.close()
    assert not [p for p in tmp_path.iterdir() if "unrestored" in p.name]


def test_the_state_file_cannot_change_while_connected(mosquitto: Any, tmp_path: Path) -> None:
    """Another file while connected: ``UsageError`` (review: the session's flows went to no
    file until its next write; a kill -9 then lost an incoming QoS 2 message)."""
    from mqttsession import UsageError  # noqa: PLC0415

    c = _client(tmp_path / "a", unique("swap"))
    c.restore_session("")
    c.connect(mosquitto.host, mosquitto.port)
    try:
        with pytest.raises(UsageError, match="while connected"):
            c.config(f"SessionStateFile={tmp_path / 'b'}")
        c.config(f"SessionStateFile={tmp_path / 'a'}")  # its own: fine
    finally:
        c.close()
