"""Pins from a mutation hunt over ``mqttsession/gateway.py`` (``Gateway`` / ``AsyncGateway``),
no broker needed: the ids a gateway holds (a session whose close is under way, an id being
forgotten), the state directory's checks, ``client()``'s argument checks, ``connect_all``'s
refusals and errors. Each test failed with one mutant of ``gateway.py`` applied (named in
its docstring)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import MQTTSessionError, StateError, UsageError
from mqttsession.events import ErrorEvent
from mqttsession.forgotten import FORGOTTEN_NAME
from mqttsession.gateway import AsyncGateway, Gateway
from mqttsession.options import Options


def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------ the ids a gateway holds


def test_a_session_whose_close_is_under_way_is_still_hosted(tmp_path: Path) -> None:
    """A session closed but whose view of the store is not released yet (its ``close()`` under
    way in another thread) still holds its id: a second ``client(id)`` is refused, not made
    beside it on the same stored session (mutant: ``_released`` without the ``journal is
    None`` part)."""
    with Gateway(tmp_path / "gw") as gw:
        c = gw.client("closing", clean_session=False)
        c.publish_data("t/x", 1, b"m")
        go = threading.Event()
        save = c._driver.save  # noqa: SLF001

        def slow_save(*args: Any, **kwargs: Any) -> Any:
            go.wait(10)
            return save(*args, **kwargs)

        c._driver.save = slow_save  # type: ignore[method-assign]  # noqa: SLF001
        closer = threading.Thread(target=c.close)
        closer.start()
        try:
            _until(lambda: c._closed, "close() begun")  # noqa: SLF001
            with pytest.raises(UsageError, match="already has a session"):
                gw.client("closing", clean_session=False)
        finally:
            go.set()
            closer.join(10)
        again = gw.client("closing", clean_session=False)  # released now: hosted again
        assert [m.message for m in again.outgoing_messages] == [b"m"]


def test_a_second_forget_of_an_id_says_a_forget_is_under_way(tmp_path: Path) -> None:
    """``forget(id)`` while a ``forget(id)`` of the same id is under way: refused as "a forget()
    of 'id' is under way", not "the gateway hosts a session: close it" (none is hosted)
    (mutant: ``and client_id not in self._dropping`` dropped from ``_reserve``)."""
    async def main() -> None:
        async with AsyncGateway(tmp_path) as gw:
            s = await gw.session("gone", connect=False)
            await s.publish("t/x", b"m", 1)
            await s.close()
            busy = threading.Event()  # the jobs thread held: the first forget waits
            gw._executor.submit(busy.wait, 10)  # noqa: SLF001
            first = asyncio.ensure_future(gw.forget("gone"))
            await asyncio.sleep(0)
            try:
                with pytest.raises(UsageError, match="forget\\(\\) of 'gone' is under way"):
                    await gw.forget("gone")
            finally:
                busy.set()
            assert await first is True
            assert gw.stored_sessions() == []

    asyncio.run(main())


# ------------------------------------------------------------------ the state directory


def test_an_existing_queues_directory_is_narrowed_to_0700(tmp_path: Path) -> None:
    """A gateway directory whose ``queues`` directory is wider (made by hand, an old
    umask) is narrowed to 0700 when the gateway opens (mutant: ``own_dir`` of it dropped)."""
    state = tmp_path / "gw"
    (state / "queues").mkdir(parents=True)
    os.chmod(state / "queues", 0o755)
    with Gateway(state):
        assert stat.S_IMODE(os.lstat(state / "queues").st_mode) == 0o700


def test_a_symlinked_queues_directory_is_refused(tmp_path: Path) -> None:
    """``queues`` a symbolic link (to a directory elsewhere): ``StateError``, nothing written
    there (mutant: ``own_dir`` of it dropped)."""
    state, elsewhere = tmp_path / "gw", tmp_path / "elsewhere"
    state.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, state / "queues")
    with pytest.raises(StateError, match="symbolic link"):
        Gateway(state)
    assert os.listdir(elsewhere) == []


def test_a_refused_forgotten_file_releases_the_directory(tmp_path: Path) -> None:
    """The ``forgotten`` note unreadable (a symbolic link): ``StateError``, and the store's
    lock is released, so a gateway opened once it is fixed runs (mutant: the store not closed
    when ``Forgotten`` fails: ``StateLockedError``)."""
    state = tmp_path / "gw"
    state.mkdir()
    (tmp_path / "target").write_text("[]")
    os.symlink(tmp_path / "target", state / FORGOTTEN_NAME)
    with pytest.raises(StateError):
        Gateway(state)
    os.unlink(state / FORGOTTEN_NAME)
    with Gateway(state) as gw:
        assert gw.stored_sessions() == []


# ------------------------------------------------------------------ client()'s arguments


@pytest.mark.parametrize("value", [1, "yes"])
def test_a_truthy_clean_session_is_refused(tmp_path: Path, value: object) -> None:
    """``client(id, clean_session=<anything but False>)``: ``UsageError`` "persistent", not
    only ``True`` (mutant: ``is not False`` -> ``is True``); the id stays free."""
    with Gateway(tmp_path / "gw") as gw:
        with pytest.raises(UsageError, match="persistent"):
            gw.client("dev", clean_session=value)
        assert gw.clients == {} and gw.stored_sessions() == []
        assert gw.client("dev").client_id == "dev"


# ------------------------------------------------------------------ connect_all


def test_connect_all_inside_an_event_callback_is_refused(tmp_path: Path) -> None:
    """``connect_all()`` from an event callback (the gateway's thread): ``UsageError`` at once;
    it would wait for its own loop forever (mutant: that check dropped: the loop stuck)."""
    gw = Gateway(tmp_path)
    c = gw.client("cb", clean_session=False)
    raised: list[BaseException] = []

    def on_error(_e: ErrorEvent) -> None:
        try:
            gw.connect_all("127.0.0.1", 1, timeout=1.0)
        except BaseException as exc:  # noqa: BLE001
            raised.append(exc)

    c.on_error = on_error
    gw.loop.call_soon_threadsafe(c._driver.error, -1, "a fault, to have a callback run")  # noqa: SLF001
    _until(lambda: raised, "connect_all refused", timeout=5.0)
    assert isinstance(raised[0], UsageError) and "wait forever" in str(raised[0])
    gw.close()


def test_connect_all_raises_what_is_not_a_connect_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A session's connect failing with anything but ``ConnectError`` (a bug, a disk error)
    is raised by ``connect_all``, not swallowed as a success (mutant: that ``raise`` dropped)."""
    with Gateway(tmp_path) as gw:
        c = gw.client("odd", clean_session=False)

        async def broken(*_a: Any, **_k: Any) -> None:
            raise RuntimeError("not a connect error")

        monkeypatch.setattr(c._driver, "connect_async", broken)  # noqa: SLF001
        with pytest.raises(RuntimeError, match="not a connect error"):
            gw.connect_all("127.0.0.1", 1, timeout=1.0)


# ------------------------------------------------------------------ AsyncGateway


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_session_that_failed_to_start_leaves_the_async_gateway(tmp_path: Path) -> None:
    """``await gw.session(id)`` failing (its first connect refused): the session is not in
    ``gw.sessions`` and its id is free, so the device can be asked for again (mutants: the
    ``_sessions.pop`` or the ``_ids.discard`` of the failure path dropped)."""
    async def main() -> None:
        async with AsyncGateway(tmp_path) as gw:
            opts = Options(address=f"127.0.0.1:{_closed_port()}", request_timeout_seconds=2)
            with pytest.raises(MQTTSessionError):
                await gw.session("dev", opts)
            assert "dev" not in gw.sessions
            s = await gw.session("dev", connect=False)
            assert gw.sessions == {"dev": s}

    asyncio.run(main())


def test_close_waits_for_a_forget_whose_caller_was_cancelled(tmp_path: Path) -> None:
    """A ``forget()`` whose awaiting task was cancelled goes on in the jobs thread
    (shielded): ``close()`` still waits for it before it closes the store, so the session
    is gone (mutant: ``if job.done()`` -> ``if not job.done()``: the job left out of
    ``_forgetting``, run once the store was closed, the session kept)."""
    async def main() -> None:
        gw = AsyncGateway(tmp_path)
        s = await gw.session("gone", connect=False)
        await s.publish("t/x", b"m", 1)
        await s.close()
        busy = threading.Event()  # the jobs thread held: the forget waits in it
        gw._executor.submit(busy.wait, 10)  # noqa: SLF001
        task = asyncio.ensure_future(gw.forget("gone"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closing = asyncio.ensure_future(gw.close())
        await asyncio.sleep(0.05)
        busy.set()
        await closing
        async with AsyncGateway(tmp_path) as again:
            assert again.stored_sessions() == []

    asyncio.run(main())


def test_async_publish_many_refuses_another_gateways_session(tmp_path: Path) -> None:
    """``AsyncGateway.publish_many`` given a session of ANOTHER gateway: ``UsageError`` and
    nothing stored, in either session (mutant: the ``s._group is not self._sync`` check
    dropped: stored through the wrong gateway's syncs)."""
    async def main() -> None:
        async with AsyncGateway(tmp_path / "a") as ga, AsyncGateway(tmp_path / "b") as gb:
            mine = await ga.session("mine", connect=False)
            theirs = await gb.session("theirs", connect=False)
            with pytest.raises(UsageError, match="one of this gateway's"):
                await ga.publish_many([(mine, "t/a", 1, b"a"), (theirs, "t/b", 1, b"b")])
            assert not mine.client.outgoing_messages
            assert not theirs.client.outgoing_messages

    asyncio.run(main())



# ------------------------------------------------------------------ fork()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_gateway_made_before_fork_refuses_new_sessions_in_the_child(tmp_path: Path) -> None:
    """In a fork()'s child, ``client(id)`` of the parent's gateway: ``UsageError`` naming
    fork(), nothing made on the parent's store (mutant: the ``_foreign`` check of ``_add``
    dropped)."""
    with Gateway(tmp_path / "gw") as gw:
        pid = os.fork()
        if pid == 0:  # the child: an exit code says what happened
            code = 3
            try:
                gw.client("child")
            except UsageError as exc:
                code = 0 if "fork()" in str(exc) else 1
            except BaseException:  # noqa: BLE001
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert gw.clients == {} and gw.stored_sessions() == []
