"""Pins from a mutation hunt over ``mqttsession/spool.py``: what a failed fdatasync of the
disk queue leaves (injected by ``_powercut.Recorder``, real files, no broker). Each test
failed with the mutant named in its docstring applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqttsession.errors import PersistenceError
from mqttsession.records import OutgoingMessage
from mqttsession.spool import Spool

try:  # tests/integration may or may not be a package
    from . import _powercut
except ImportError:  # pragma: no cover - rootdir-relative import
    import _powercut  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def _msg(seq: int) -> OutgoingMessage:
    return OutgoingMessage(seq, 0, f"t/{seq}", b"m%03d" % seq, 1, False, b"",
                           accepted_at=1000.0 + seq)


def _spool(tmp: Path) -> Spool:
    sp = Spool(str(tmp / "s"), "c", sync=True)
    sp.recover(0)
    return sp


def _read_after_restart(tmp: Path) -> list[int]:
    sp = _spool(tmp)
    try:
        return [m.seq for m in sp.read(100)]
    finally:
        sp.close()


def test_an_append_whose_sync_failed_is_not_found_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=always: an append whose fdatasync fails raises ``PersistenceError`` (the
    publish told it failed) and is taken back; the next append follows the one before, and a
    restart reads only those. Mutant: ``append`` without ``take_back`` in its except (the
    failed message stayed in the file and came back at the restart)."""
    rec = _powercut.install(monkeypatch)
    sp = _spool(tmp_path)
    sp.append([_msg(1)], sync=True)
    rec.fail_name, rec.fail_next = "q-", 1
    with pytest.raises(PersistenceError):
        sp.append([_msg(2)], sync=True)
    assert rec.fail_next == 0
    sp.append([_msg(3)], sync=True)
    assert [m.seq for m in sp.read(100)] == [1, 3]
    sp.close()
    assert _read_after_restart(tmp_path) == [1, 3]


def test_a_taken_back_append_is_not_written_again_after_a_failed_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=interval: an append taken back (its publish raised) leaves the bytes kept
    for a rewrite after a failed sync; the rewrite then never brings it back. Mutant:
    ``take_back`` without popping ``_tail`` (the retried sync wrote the taken-back message
    again: a publish told "failed" was found at the restart)."""
    rec = _powercut.install(monkeypatch)
    sp = _spool(tmp_path)
    sp.append([_msg(1)], sync=False)
    sp.append([_msg(2)], sync=False)
    assert sp.take_back(2)
    rec.fail_name, rec.fail_next = "q-", 1
    with pytest.raises(PersistenceError):
        sp.sync_pending()
    sp.sync_pending()  # tried again: the unsynced appends written again first
    assert rec.fail_next == 0
    sp.close()
    assert _read_after_restart(tmp_path) == [1]
