"""Pins for entries of CHANGELOG.rst's "Fixed" list that no test held (a regression-test
audit of the fixes): ``StateFile.compaction_near`` reads counts, never walks the journal's
lazy frames."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mqttsession.state import SessionState
from mqttsession.store import StateFile


class _Unwalkable(list[bytes]):
    """The journal's lazy frames, counted but never to be walked (``len`` only)."""

    def __iter__(self) -> Iterator[bytes]:
        raise AssertionError("compaction_near walked the journal's lazy frames")


def test_compaction_near_counts_the_lazy_frames_without_walking_them(tmp_path: Path) -> None:
    """CHANGELOG "``StateFile.compaction_near`` (asked at every asyncio publish ...)": it
    summed the lengths of the journal's lazy frames (``sum(map(len, j._lazy))``), quadratic
    with thousands of concurrent publishes; it reads the counts the journal keeps (O(1)) and
    still says when the bound is near."""
    f = StateFile()
    f.path = str(tmp_path / "s")
    state = SessionState(client_id="c", clean_session=False)
    f.open(state)
    try:
        for i in range(20):  # lazy records: they wait for the next append
            f.append([state.accept(f"t/{i}", b"x", 1)], state, lazy=True)
        j = f.journal
        assert j is not None and len(j._lazy) > 0  # noqa: SLF001
        frames = j._lazy  # noqa: SLF001
        j._lazy = _Unwalkable(frames)  # noqa: SLF001
        try:
            assert not f.compaction_near(0)
            assert f.compaction_near(j.bound)  # (what is written already, and those frames)
        finally:
            j._lazy = frames  # noqa: SLF001
    finally:
        f.close()
