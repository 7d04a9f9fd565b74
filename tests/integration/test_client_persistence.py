"""The Client and its durable state file (``config("SessionStateFile=...")``).

What is proved here:

* 1000 QoS 1/2 messages published while disconnected come back in a NEW process, in order, with
  their packet ids, topics and payloads: after a clean close AND after the publisher was killed
  with SIGKILL (the journal of 1000 records is replayed);
* ``restore_session`` on a damaged file raises ``StateError``, changes nothing in the client and
  keeps the damaged files aside; random bytes in the files give ``StateError`` or, only when they
  happen to be valid, a restored session -- never another exception;
* with a small ``JournalMaxBytes`` the journal never passes its bound, yet nothing is lost;
* a failing write (ENOSPC / EIO on every write path) makes ``publish_data`` raise
  ``PersistenceError`` and the message is not in ``outgoing_messages``; the next publish repairs
  the files, which then recover to exactly the client's session;
* while connected to a real broker (mosquitto), after every ``publish_data`` returns the files
  hold exactly the client's session.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttsession import Client, codec
from mqttsession.errors import MQTTSessionError, PersistenceError, StateError
from mqttsession.events import Message
from mqttsession.journal import JOURNAL_SUFFIX, LOCK_SUFFIX, Journal, frame, read_frames
from mqttsession.testing.faults import Fault, Injector, fd_name, journal_faults
from mqttsession.state import Phase, SessionState

CID = "gw-persist"
NAME = "client.state"

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def jpath(p: Path) -> Path:
    return Path(str(p) + JOURNAL_SUFFIX)


def lpath(p: Path) -> Path:
    return Path(str(p) + LOCK_SUFFIX)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def client_on(p: Path, max_bytes: int | None = None, **kwargs: Any) -> Client:
    """The documented restart: state file set, restore_session(""), (then connect)."""
    c = Client(client_id=CID, clean_session=False, **kwargs)
    if max_bytes is not None:
        c.config(f"JournalMaxBytes={max_bytes}")
    c.config(f"SessionStateFile={p}")
    c.restore_session("")
    return c


def journal_used(p: Path) -> int:
    """The bytes of P's journal its frames take (SessionSync=always writes zeros ahead)."""
    return read_frames(jpath(p).read_bytes())[1]


def crash_copy(p: Path, into: Path) -> SessionState:
    """What a process restarted right now would recover (the live owner keeps its lock)."""
    into.mkdir(parents=True, exist_ok=True)
    q = into / NAME
    for src, dst in ((p, q), (jpath(p), jpath(q))):
        dst.unlink(missing_ok=True)
        if src.exists():
            shutil.copyfile(src, dst)
    j = Journal(str(q), CID, sync=False)
    try:
        return j.recover()
    finally:
        j.close()


def out_of(state: SessionState) -> list[Message]:
    return [Message.outgoing(m) for m in state.outgoing.values()]


def damaged_copies(p: Path) -> tuple[list[Path], list[Path]]:
    return (sorted(p.parent.glob(p.name + ".damaged-*")),
            sorted(p.parent.glob(p.name + JOURNAL_SUFFIX + ".damaged-*")))


def tmp_files(d: Path) -> list[str]:
    return sorted(x.name for x in d.iterdir() if ".tmp-" in x.name)


# =================================================================================================
# 5. a thousand messages into a new process

_PUBLISH = textwrap.dedent(
    """
    import json, os, signal, sys
    from mqttsession import Client
    path, cid, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    c = Client(client_id=cid, clean_session=False)
    if how.endswith("-nosync"):
        c.config("SessionSync=none")  # in the OS, not on disk: survives a kill, not a power cut
    c.config("SessionStateFile=" + path)
    c.restore_session("")
    out = []
    for i in range(n):
        qos = 1 if i % 2 else 2
        topic = "t/\\u00fc/%d" % (i % 5)
        payload = bytes([i % 256]) + ("m%d" % i).encode()
        pid = c.publish_data(topic, qos, payload)
        out.append([pid, topic, qos, payload.hex()])
    print(json.dumps(out), flush=True)
    if how.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    c.close()
    """
)

_RESTORE = textwrap.dedent(
    """
    import json, sys
    from mqttsession import Client
    c = Client(client_id=sys.argv[2])
    c.config("SessionStateFile=" + sys.argv[1])
    c.restore_session("")
    print(json.dumps([[m.packet_id, m.topic, m.qos, m.message.hex(), m.retained, m.duplicate]
                      for m in c.outgoing_messages] + [c.clean_session]), flush=True)
    c.close()
    """
)


def _run(script: str, *args: str, expect_rc: int = 0) -> Any:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == expect_rc, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["kill", "kill-nosync", "close"])
def test_a_thousand_messages_come_back_in_a_new_process(tmp_path: Path, how: str) -> None:
    p = tmp_path / NAME
    n = 1000
    published = _run(_PUBLISH, str(p), CID, str(n), how,
                     expect_rc=-signal.SIGKILL if how.startswith("kill") else 0)
    assert len(published) == n
    assert [pid for pid, *_ in published] == list(range(1, n + 1))
    frames = read_frames(jpath(p).read_bytes())[0]
    if how.startswith("kill"):
        # killed: no compaction ran, the session is the snapshot plus 1000 journal records
        assert len(frames) == 1 + n
        assert lpath(p).exists()  # the dead owner's lock file: no obstacle
    else:
        assert len(frames) == 1 and not lpath(p).exists()
    *restored, clean = _run(_RESTORE, str(p), CID)
    assert clean is False
    assert [[pid, topic, qos, data] for pid, topic, qos, data, _r, _d in restored] == published
    assert all(r[4] is False and r[5] is False for r in restored)  # not retained, never sent
    for f in (p, jpath(p)):
        assert mode(f) == 0o600


# =================================================================================================
# 5. a damaged file through restore_session


def _prepared_client() -> Client:
    c = Client(client_id=CID, protocol_version=5)
    c.config("SessionExpInterval=600")
    c.subscribe("keep/#,also/+", 1)  # recorded in memory while disconnected
    return c


def _good_files(p: Path) -> None:
    c = client_on(p)
    for i in range(5):
        c.publish_data(f"good/{i}", 1 + i % 2, b"%d" % i)
    c.subscribe("saved/#", 2)
    c.close()
    # and a journal with records after the snapshot
    c = client_on(p)
    c.publish_data("good/5", 1, b"5")
    c.publish_data("good/6", 2, b"6")
    snap, jour = p.read_bytes(), jpath(p).read_bytes()
    c.close()
    # put back the uncompacted pair (snapshot + journal of 2 records), as after a crash
    p.write_bytes(snap)
    jpath(p).write_bytes(jour)
    assert len(read_frames(jour)[0]) >= 3


@pytest.mark.parametrize("where", ["snapshot", "journal-mid", "journal-no-snapshot", "lock-free"])
def test_restore_of_a_damaged_file_raises_and_changes_nothing(tmp_path: Path, where: str) -> None:
    p = tmp_path / NAME
    _good_files(p)
    snap, jour = p.read_bytes(), jpath(p).read_bytes()
    if where == "snapshot":
        snap = snap.replace(b'"good/1"', b'"evil/1"')
    elif where in ("journal-mid", "lock-free"):
        first_record_end = len(read_frames(jour)[0][0]) + 8
        b = bytearray(jour)
        b[first_record_end + 10] ^= 0x01  # inside the first record, the second is good
        jour = bytes(b)
    else:
        p.unlink()
        snap = b""
    if snap:
        p.write_bytes(snap)
    jpath(p).write_bytes(jour)

    c = _prepared_client()
    before = c.save_session()  # no state file yet: only returns the text
    c.config(f"SessionStateFile={p}")
    with pytest.raises(StateError) as ei:
        c.restore_session("")
    assert "kept aside" in str(ei.value)
    # the client is unchanged ...
    assert c.clean_session is True and c.client_id == CID and c.protocol_version == 5
    assert c.outgoing_messages == () and c.incoming_messages == ()
    assert c.config("SessionExpInterval") == "600"
    c.config("SessionStateFile=")
    assert c.save_session() == before
    # ... the damaged files are kept aside byte-identical, and the lock is released
    assert not p.exists() and not jpath(p).exists() and not lpath(p).exists()
    snaps, journals = damaged_copies(p)
    assert [s.read_bytes() for s in snaps] == ([snap] if snap else [])
    assert [j.read_bytes() for j in journals] == [jour]
    # the next restore starts an empty session and never overwrites the damaged copies
    c.config(f"SessionStateFile={p}")
    c.restore_session("")
    assert c.outgoing_messages == () and c.clean_session is False
    c.publish_data("fresh", 1, b"new life")
    c.close()
    assert damaged_copies(p) == (snaps, journals)
    assert [s.read_bytes() for s in snaps] == ([snap] if snap else [])
    assert [j.read_bytes() for j in journals] == [jour]
    if where == "lock-free":
        # another process can own the file now
        assert _run(_RESTORE, str(p), CID)[0][1] == "fresh"


def test_restore_of_another_clients_file_raises_and_leaves_it(tmp_path: Path) -> None:
    p = tmp_path / NAME
    _good_files(p)
    snap, jour = p.read_bytes(), jpath(p).read_bytes()
    c = Client(client_id="not-" + CID)
    c.config(f"SessionStateFile={p}")
    with pytest.raises(StateError, match="belongs to client id"):
        c.restore_session("")
    assert c.outgoing_messages == () and c.clean_session is True
    assert p.read_bytes() == snap and jpath(p).read_bytes() == jour  # not damage: untouched
    assert damaged_copies(p) == ([], []) and not lpath(p).exists()
    c.close()


# =================================================================================================
# 6. random bytes into restore_session


def _valid_text() -> bytes:
    s = SessionState(client_id=CID, clean_session=False)
    s.accept("held/1", b"one", 1)
    s.accept("held/2", b"two", 2)
    s.subscribe("sub/#", 1)
    return codec.encode(s).encode("utf-8")


VALID = _valid_text()


def _header(text: bytes, client_id: str = CID) -> bytes:
    digest = hashlib.sha256(text.strip()).hexdigest()
    return frame(json.dumps(["mqttsession-journal", 1, digest, client_id]).encode())


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a random slice replaced by random bytes."""
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 16)))
    return data[:i] + draw(st.binary(max_size=16)) + data[j:]


@st.composite
def record_frames(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(list("ASRLUXCZDTK")))
    scalars = st.none() | st.booleans() | st.integers(-3, 70000) | st.floats() | st.sampled_from(
        ["", "t", "a/#", "send", "puback", "pubrec", "AA==", "!"]) | st.lists(
        st.integers(0, 5), max_size=3)
    arr = [tag, *draw(st.lists(scalars, max_size=8))]
    return frame(json.dumps(arr).encode("utf-8"))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    kind=st.sampled_from(["snapshot", "journal", "both", "mutated-snapshot", "frames"]),
    blob=st.binary(max_size=200),
    mut=mutated(VALID),
    frames=st.lists(record_frames(), min_size=1, max_size=4),
)
def test_random_bytes_into_restore_session(kind: str, blob: bytes, mut: bytes,
                                           frames: list[bytes]) -> None:
    snapshot, journal = {
        "snapshot": (blob, None),
        "journal": (VALID, blob),
        "both": (blob, blob),
        "mutated-snapshot": (mut, None),
        "frames": (VALID, _header(VALID) + b"".join(frames)),
    }[kind]
    with tempfile.TemporaryDirectory(dir=SHM) as d:
        p = Path(d) / NAME
        p.write_bytes(snapshot)
        if journal is not None:
            jpath(p).write_bytes(journal)
        c = Client(client_id=CID)
        c.config(f"SessionStateFile={p}")
        try:
            c.restore_session("")
        except StateError:
            assert c.clean_session is True and c.outgoing_messages == ()
            assert not lpath(p).exists()
            assert not p.exists()  # kept aside
            return
        try:
            assert c.clean_session is False
            if kind == "journal" or (kind == "mutated-snapshot" and mut == VALID):
                # the snapshot was intact: a bad journal can only have been a torn one
                assert [m.topic for m in c.outgoing_messages] == ["held/1", "held/2"]
        finally:
            c.close()


# =================================================================================================
# 2. the journal bound, through the Client


def test_journal_stays_bounded_while_publishing_many(tmp_path: Path) -> None:
    p = tmp_path / NAME
    bound = 1024
    c = client_on(p, max_bytes=bound)
    sizes = []
    published = []
    try:
        for i in range(300):
            pid = c.publish_data(f"bound/{i % 3}", 1 + i % 2, b"payload %d" % i)
            published.append((pid, f"bound/{i % 3}", b"payload %d" % i))
            size = journal_used(p)  # (its frames: zeros allocated ahead may follow, within it)
            assert size <= jpath(p).stat().st_size <= bound, f"journal is {size} bytes after {i}"
            sizes.append(size)
            if i % 50 == 0:
                assert out_of(crash_copy(p, tmp_path / f"crash{i}")) == list(c.outgoing_messages)
        assert sizes != sorted(sizes), "never compacted"
        for f in (p, jpath(p), lpath(p)):
            assert mode(f) == 0o600
        assert out_of(crash_copy(p, tmp_path / "crash-end")) == list(c.outgoing_messages)
    finally:
        c.close()
    r = client_on(p)
    try:
        assert [(m.packet_id, m.topic, m.message) for m in r.outgoing_messages] == published
    finally:
        r.close()


# =================================================================================================
# 4. faults on the write paths, through the Client


FAULTS = journal_faults(NAME)


def _faulty_client(tmp_path: Path, fault: Fault) -> tuple[Path, Path, Client]:
    d = tmp_path / "live"
    d.mkdir()
    p = d / NAME
    c = client_on(p, max_bytes=1 if fault.op == "compact" else None)
    for i in range(3):
        c.publish_data(f"ok/{i}", 1 + i % 2, b"accepted %d" % i)
    c.subscribe("s/#", 1)
    return d, p, c


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_publish_fault_is_persistence_error_and_the_next_publish_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    d, p, c = _faulty_client(tmp_path, fault)
    try:
        before = c.outgoing_messages
        inj = Injector(monkeypatch, fault)
        with pytest.raises(PersistenceError) as ei:
            c.publish_data("doomed", 1, b"never accepted")
        assert inj.hits == 1, "the fault was never reached"
        inj.disarm()
        assert isinstance(ei.value, MQTTSessionError) and isinstance(ei.value, OSError)
        assert ei.value.errno == fault.err
        assert c.outgoing_messages == before  # not accepted
        assert tmp_files(d) == []

        # the fault is gone: the next publish succeeds and the files hold the whole session
        pid = c.publish_data("after", 2, b"fault gone")
        assert [m.topic for m in c.outgoing_messages] == ["ok/0", "ok/1", "ok/2", "after"]
        assert pid not in [m.packet_id for m in before]
        assert tmp_files(d) == []
        got = crash_copy(p, tmp_path / "repaired")
        assert out_of(got) == list(c.outgoing_messages)
        assert got.subscriptions == {"s/#": 1}
        text = c.save_session()
        assert codec.encode(got) == text
    finally:
        c.close()
    r = client_on(p)
    try:
        assert [m.topic for m in r.outgoing_messages] == ["ok/0", "ok/1", "ok/2", "after"]
    finally:
        r.close()
    assert tmp_files(d) == []


@pytest.mark.parametrize(
    "fault", [f for f in FAULTS if f.id in ("snapshot-replace", "journal-write", "journal-reopen")],
    ids=lambda f: f.id,
)
def test_save_session_fault_is_persistence_error_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    d, p, c = _faulty_client(tmp_path, Fault(fault.id, "append", fault.func, fault.when,
                                             fault.err, fault.nth))
    try:
        before = c.outgoing_messages
        inj = Injector(monkeypatch, fault)
        with pytest.raises(PersistenceError):
            c.save_session()
        assert inj.hits == 1
        inj.disarm()
        assert c.outgoing_messages == before and tmp_files(d) == []
        # every failure point of a compaction leaves files that recover to the same session
        assert out_of(crash_copy(p, tmp_path / "now")) == list(before)
        c.publish_data("after", 1, b"x")
        assert out_of(crash_copy(p, tmp_path / "after")) == list(c.outgoing_messages)
    finally:
        c.close()


# append-write is the control (nothing reached the file); the other three stand for the two ways
# the refused record is left durable: fdatasync failing after the frame was written, and any of
# the compaction faults after the append itself succeeded (all compaction faults behave alike).
_REFUSED = ("append-write", "append-fdatasync", "snapshot-replace", "journal-reopen")


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.id in _REFUSED], ids=lambda f: f.id)
def test_a_publish_that_raised_is_not_in_the_files_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    """PersistenceError means "not accepted": a crash right after it must not bring it back.

    Otherwise an application that retries a failed publish (the obvious reaction) sends it twice
    after a restart, and one that gives up sees a message it was told was refused.
    """
    _d, p, c = _faulty_client(tmp_path, fault)
    try:
        inj = Injector(monkeypatch, fault)
        with pytest.raises(PersistenceError):
            c.publish_data("doomed", 1, b"never accepted")
        inj.disarm()
        got = crash_copy(p, tmp_path / "crash-now")
        assert [m.topic for m in got.outgoing.values()] == [
            m.topic for m in c.outgoing_messages], "a refused message is in the state file"
    finally:
        c.close()


# =================================================================================================
# the persistence point of publish_*


def test_publish_with_a_state_file_is_durable_before_it_returns(tmp_path: Path) -> None:
    """README: config("SessionStateFile=...") -- "durable after every change"; publish_data:
    "durable with a SessionStateFile". Without restore_session("") or connect() first."""
    p = tmp_path / NAME
    c = Client(client_id=CID, clean_session=False)
    c.config(f"SessionStateFile={p}")
    try:
        c.publish_data("t/1", 1, b"must survive a crash")
        got = crash_copy(p, tmp_path / "crash")
        assert [m.topic for m in got.outgoing.values()] == ["t/1"]
    finally:
        c.close()


def test_files_match_the_session_after_every_publish_while_connected(
    tmp_path: Path, mosquitto: Any
) -> None:
    p = tmp_path / NAME
    c = client_on(p, max_bytes=2048)
    try:
        c.connect(mosquitto.host, mosquitto.port, timeout=10)
        for i in range(60):
            c.publish_data(f"mqs/persist/{i % 4}", 1 + i % 2, b"connected %d" % i)
            with c._lock:  # an ack's record may be between its append and the compaction
                assert journal_used(p) <= jpath(p).stat().st_size <= 2048
            if i % 6 == 0:
                # hold the session lock (private) so no acknowledgement lands mid-copy
                with c._lock:
                    held = list(c.outgoing_messages)
                    got = crash_copy(p, tmp_path / f"crash{i}")
                # Every held message is in the files (nothing lost). The files may still hold
                # messages already acknowledged, and a sent message may still look unsent:
                # SEND steps and removals on PUBACK / PUBCOMP are written lazily (persistence
                # point 5: losing one costs only a resend).
                key = lambda m: (m.packet_id, m.topic, m.qos, m.message)  # noqa: E731
                on_disk = [key(m) for m in out_of(got)]
                assert [key(m) for m in held] == [k for k in on_disk if k in set(map(key, held))]
                published = {(f"mqs/persist/{j % 4}", b"connected %d" % j) for j in range(i + 1)}
                assert all((t, b) in published for _pid, t, _q, b in on_disk)
        assert c.flush(15)
        c.disconnect()
        got = crash_copy(p, tmp_path / "end")
        assert got.outgoing == {} and got.disconnected_at is not None
    finally:
        c.close()


# =================================================================================================
# acks that wait for a durable record (points 2, 3, 4): written at the end of the network
# thread's read batch, after one fsync for the batch


def _fail_on_network_thread(monkeypatch: pytest.MonkeyPatch,
                                     func: str = "fdatasync") -> Injector:
    """``os.<func>`` (fdatasync, or write to the journal) raises EIO off the main thread (on
    paho's network thread) while armed; ``hits`` counts the failures."""
    journal = NAME + JOURNAL_SUFFIX
    return Injector(monkeypatch, Fault(
        f"network-thread-{func}", "append", func,
        lambda fd, *_: (threading.current_thread() is not threading.main_thread()
                        and fd_name(fd) == journal),
        errno.EIO, nth=None))


@pytest.mark.parametrize("func", ["fdatasync", "write"])
def test_pubrel_waits_until_released_is_durable(
    tmp_path: Path, mosquitto: Any, mqtt_proxy_factory: Any, monkeypatch: pytest.MonkeyPatch,
    func: str,
) -> None:
    """[MQTT-4.3.3-6] persistence point 2: no PUBREL before the PUBREC's record is on disk;
    after a failed write or sync the file is rewritten whole before the PUBREL goes out."""
    proxy = mqtt_proxy_factory(mosquitto)
    p = tmp_path / NAME
    c = client_on(p)
    c.config("ReconnectDelayMin=0")
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        inj = _fail_on_network_thread(monkeypatch, func)
        c.publish_data("mqs/pubrel/1", 2, b"released only when durable")
        proxy.wait_for("s2c", "PUBREC", timeout=10)
        # the sync failed: the connection is dropped and no PUBREL leaves on it
        proxy.wait_for("c2s", "CONNECT", count=2, timeout=10)
        assert inj.hits >= 1
        first_conn = proxy.packets("s2c", "PUBREC")[0].conn
        assert proxy.packets("c2s", "PUBREL", conn=first_conn) == []
        inj.disarm()
        # after the reconnect the session (rewritten whole, with fsync) sends the PUBREL
        proxy.wait_for("s2c", "PUBCOMP", timeout=10)
        assert c.flush(10)
        assert all(r.conn > first_conn for r in proxy.packets("c2s", "PUBREL"))
        with c._lock:  # the files hold the release (the PUBCOMP's removal is lazy)
            after = crash_copy(p, tmp_path / "after").outgoing.values()
            assert all(m.phase is Phase.AWAIT_PUBCOMP for m in after)
    finally:
        c.close()


def test_a_publish_goes_out_while_a_pubrel_waits_for_its_sync(
    tmp_path: Path, mosquitto: Any, mqtt_proxy_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the acknowledgements wait for a read batch's sync: while the network thread's
    fdatasync of a PUBREC's record is under way, the PUBREL waits (point 2), and a new PUBLISH,
    whose record its publisher synced, leaves at once (MQTT orders each kind of packet alone)."""
    proxy = mqtt_proxy_factory(mosquitto)
    c = client_on(tmp_path / NAME)
    gate, waiting = threading.Event(), threading.Event()
    plain, journal = os.fdatasync, NAME + JOURNAL_SUFFIX

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread() and fd_name(fd) == journal:
            waiting.set()
            gate.wait(10)
        plain(fd)
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        c.publish_data("mqs/bypass/2", 2, b"released when durable")
        assert waiting.wait(10)  # the network thread syncs the PUBREC's record
        c.publish_data("mqs/bypass/1", 1, b"out while that sync runs")
        proxy.wait_for("c2s", "PUBLISH", count=2, timeout=10)
        assert proxy.packets("c2s", "PUBREL") == []
        gate.set()
        proxy.wait_for("c2s", "PUBREL", timeout=10)
        assert c.flush(10)
        assert [p.packet_id for p in proxy.packets("s2c", "PUBCOMP")] == \
            [p.packet_id for p in proxy.packets("c2s", "PUBREL")]
    finally:
        gate.set()
        c.close()


def test_incoming_qos2_pubrec_waits_until_the_message_is_durable(
    tmp_path: Path, mosquitto: Any, mqtt_proxy_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Persistence point 3: no PUBREC before the incoming QoS 2 message is on disk; and the
    message is delivered once, after the broker's resend."""
    proxy = mqtt_proxy_factory(mosquitto)
    got: list[bytes] = []
    c = client_on(tmp_path / NAME)
    c.config("ReconnectDelayMin=0")
    c.on_message_in = lambda e: got.append(e.message)
    sender = Client(client_id=f"{CID}-sender")
    try:
        c.connect(proxy.host, proxy.port, timeout=10)
        c.subscribe("mqs/pubrec-in/#", 2)
        proxy.wait_for("s2c", "SUBACK", timeout=10)
        inj = _fail_on_network_thread(monkeypatch)
        sender.connect(mosquitto.host, mosquitto.port, timeout=10)
        sender.publish_data("mqs/pubrec-in/1", 2, b"stored before PUBREC")
        proxy.wait_for("s2c", "PUBLISH", timeout=10)
        proxy.wait_for("c2s", "CONNECT", count=2, timeout=10)
        first_conn = proxy.packets("s2c", "PUBLISH")[0].conn
        assert inj.hits >= 1
        assert proxy.packets("c2s", "PUBREC", conn=first_conn) == []
        inj.disarm()
        proxy.wait_for("c2s", "PUBCOMP", timeout=10)
        assert got == [b"stored before PUBREC"]
    finally:
        sender.close()
        c.close()
