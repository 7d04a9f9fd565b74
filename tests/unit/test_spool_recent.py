"""The disk queue's read-back of messages still held from their append (``Spool._recent``):
a burst drained while it is queued is read back without reading its frames, in order, with
the same counts as from the file; beyond the bound, after a restart, across sealed segments
and with interleaved appends and reads, the messages read back are exactly those appended."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqttsession.spool as spool_mod
from mqttsession.records import OutgoingMessage
from mqttsession.spool import Spool
from mqttsession.state import message_bytes

try:  # tests/unit may or may not be a package
    from .test_spool import SEG, msg, reopened
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_spool import SEG, msg, reopened  # type: ignore[no-redef]


class _Reads:
    """Counts the spool's reads of segment files (``Spool._read``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = Spool._read

        def counted(sp: Spool, path: str, offset: int = 0, size: int | None = None) -> bytes:
            self.n += 1
            return real(sp, path, offset, size)
        monkeypatch.setattr(Spool, "_read", counted)


def _new(tmp: Path, segment_bytes: int = 1 << 20) -> Spool:
    sp = Spool(str(tmp / "s"), "c", sync=False, segment_bytes=segment_bytes)
    sp.recover(0)
    return sp


def test_a_burst_read_back_while_queued_is_not_read_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = _new(tmp_path)
    reads = _Reads(monkeypatch)
    first = [msg(1)]
    sp.append(first, sync=False)
    assert sp.read(1) == first  # a segment this process began: not even its header read
    appended = [msg(s) for s in range(2, 202)]
    for i in range(0, 200, 10):
        sp.append(appended[i:i + 10], sync=False)
    got = sp.read(150) + sp.read(1000)
    assert got == appended and all(a is b for a, b in zip(got, appended))
    assert reads.n == 0
    assert (sp.count, sp.bytes, sp.read_to) == (0, 0, 202)


def test_past_the_bound_the_rest_is_read_from_the_file_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_RECENT_COUNT", 8)
    sp = _new(tmp_path)
    sp.append([msg(1)], sync=False)
    assert sp.read(1) == [msg(1)]
    appended = [msg(s) for s in range(2, 40)]
    for m in appended:
        sp.append([m], sync=False)
    assert len(sp._recent) == 8  # the oldest stay: they are read back first
    reads = _Reads(monkeypatch)
    got: list[OutgoingMessage] = []
    while len(got) < len(appended):
        got += sp.read(3)
    assert got == appended
    assert [m is a for m, a in zip(got, appended)] == [True] * 8 + [False] * 30
    assert reads.n == 1 and not sp._recent
    sp.append([msg(40)], sync=False)  # room again: held from its append
    assert sp.read(5) == [msg(40)] and reads.n == 1


def test_segments_whose_first_message_is_not_held_are_read_from_their_header(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_RECENT_COUNT", 3)
    sp = _new(tmp_path, SEG)
    appended = [msg(s) for s in range(1, 41)]
    for m in appended:
        sp.append([m], sync=False)
    assert len(sp._segs) > 3  # later segments' first messages found no room
    reads = _Reads(monkeypatch)
    assert sp.read(1000) == appended
    # one read each: the first one's messages past the three held, each other one's header
    # and frames
    assert reads.n == len(sp._segs)


def test_the_byte_bound_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_RECENT_BYTES", 5 * message_bytes(msg(1, size=100)))
    sp = _new(tmp_path)
    for s in range(1, 21):
        sp.append([msg(s, size=100)], sync=False)
    assert sp._recent_bytes == sum(e[3] for e in sp._recent) <= spool_mod._RECENT_BYTES
    assert len(sp._recent) == 5
    assert sp.read(100) == [msg(s, size=100) for s in range(1, 21)]


def test_a_restart_reads_from_the_files(tmp_path: Path) -> None:
    sp = _new(tmp_path, SEG)
    for s in range(1, 31):
        sp.append([msg(s)], sync=False)
    assert sp.read(5) == [msg(s) for s in range(1, 6)]
    sp.close()
    again = reopened(tmp_path, spool_next=6)
    assert not again._recent
    assert again.read(100) == [msg(s) for s in range(6, 31)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6), st.integers(0, 120)),
    st.tuples(st.just("read"), st.integers(1, 9), st.just(0)),
    st.tuples(st.just("restart"), st.just(0), st.just(0)),
), max_size=40), bound=st.integers(1, 12))
def test_appends_reads_and_restarts_interleaved_match_a_queue(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]],
        bound: int) -> None:
    tmp = tmp_path_factory.mktemp("q")
    real = spool_mod._RECENT_COUNT
    spool_mod._RECENT_COUNT = bound
    try:
        sp, model, seq = _new(tmp, SEG), [], 0
        for op, n, size in steps:
            if op == "append":
                batch = [msg(seq + 1 + i, size) for i in range(n)]
                seq += n
                sp.append(batch, sync=False)
                model += batch
            elif op == "read":
                got = sp.read(n)
                assert got == model[:len(got)] and len(got) == min(n, len(model))
                del model[:len(got)]
            else:
                sp.close()
                sp = reopened(tmp, spool_next=sp.read_to)
            assert (sp.count, sp.bytes) == (len(model), sum(map(message_bytes, model)))
        assert sp.read(10**6) == model
        sp.close()
    finally:
        spool_mod._RECENT_COUNT = real
