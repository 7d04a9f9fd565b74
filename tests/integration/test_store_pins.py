"""Rules of group commit (``durability``) that a mutation hunt found no test pinned."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, Options
from mqttsession import journal as journal_mod
from mqttsession.errors import PersistenceError
from mqttsession.testing.fsyncs import counting_fdatasyncs

pytestmark = pytest.mark.integration


class _FailingSyncs:
    """``os`` for the journal whose fdatasyncs fail (EIO)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error (injected)")


def test_an_asyncio_publish_many_whose_sync_fails_takes_back_every_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AsyncSession.publish_many``: one record, one fate. Its fdatasync fails: it raises,
    and none of its messages stays in the session or is found after a restart (not only
    the last one taken back)."""
    path = tmp_path / "a"

    async def main() -> list[bytes]:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="apm-fail",
                                      state_file=str(path), connect=False)
        await s.publish("t", b"kept", 1)
        monkeypatch.setattr(journal_mod, "os", _FailingSyncs())
        with pytest.raises(PersistenceError):
            await asyncio.wait_for(
                s.publish_many([("t", 1, b"m%d" % i) for i in range(3)]), 10)
        monkeypatch.setattr(journal_mod, "os", os)
        await asyncio.wait_for(s.publish("t", b"after", 1), 10)
        held = [bytes(m.message) for m in s._client.outgoing_messages]  # noqa: SLF001
        await asyncio.wait_for(s.close(), 10)
        return held

    assert asyncio.run(main()) == [b"kept", b"after"]
    d = Client(client_id="apm-fail", clean_session=False)
    d.config(f"SessionStateFile={path}")
    d.restore_session("")
    assert [bytes(m.message) for m in d.outgoing_messages] == [b"kept", b"after"]
    d.close()


def _interval_client(client_id: str, where: Path) -> Client:
    """A client with a state file under SessionSync=interval, its sync a minute away."""
    c = Client(client_id=client_id, clean_session=False)
    c.config(f"SessionStateFile={where / 's'}")
    c.config("SessionSync=interval")
    c.config("SessionSyncInterval=60000")
    return c


def test_lowering_the_sync_interval_while_a_sync_waits_arms_it_again(tmp_path: Path) -> None:
    """SessionSync=interval: a sync armed for SessionSyncInterval=60000 is armed again with
    a lowered interval, so the records waiting reach the disk within the new one (not only
    at close)."""
    with counting_fdatasyncs() as counting:
        c = _interval_client("rearm", tmp_path)
        try:
            c.restore_session("")
            c.publish_data("t/x", 1, b"first")  # (its packet-id reservation synced here)
            c.publish_data("t/x", 1, b"waits")  # in the OS: the timer armed for 60 s
            before = counting.syncs
            c.config("SessionSyncInterval=50")
            deadline = time.monotonic() + 10
            while counting.syncs == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert counting.syncs > before, "no sync after the interval was lowered"
        finally:
            c.close()


def test_without_a_thread_for_the_sync_timer_the_interval_sync_runs_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSync=interval, no loop and no connection: the sync timer is a thread; when
    none can be started, the records are synced at once rather than left in the OS."""
    import mqttsession.durability as durability_mod

    class _NoThread(threading.Timer):
        def start(self) -> None:
            raise RuntimeError("can't start new thread (injected)")

    monkeypatch.setattr(durability_mod.threading, "Timer", _NoThread)
    c = _interval_client("nothread", tmp_path)
    try:
        c.restore_session("")
        c.publish_data("t/x", 1, b"one")
        c.publish_data("t/x", 1, b"two")
        j = c._file.journal  # noqa: SLF001
        assert j is not None and j.is_synced(*j.appended_at)
    finally:
        c.close()
