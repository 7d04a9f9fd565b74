"""The front ends over a session's life, found by a hunt of ``AsyncSession`` / ``mesh.Session``:
calls before ``start()`` (``start()`` restores, which would replace what they did), a clean
start and the session a closed one left in this process, ``SessionStateFile`` changed while a
session lives in the file, a negative ``receive`` timeout."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Client, Connection, Options, UsageError

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def _id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def test_an_async_session_refuses_calls_before_start(mosquitto: Any, tmp_path: Path) -> None:
    """``publish`` / ``subscribe`` / ``connect`` before ``start()``: ``UsageError`` (before:
    accepted, then ``start()``'s restore refused or replaced them: a QoS 1 message lost, a
    subscription gone, a connected session that dropped every event). ``config`` is fine."""
    async def main() -> None:
        s = AsyncSession(Options(address=mosquitto.address), client_id=_id("early"),
                         state_file=str(tmp_path / "s"))
        await s.config("QueueInMemory=5")
        for call in (s.publish("t/early", "x", 1), s.subscribe("t/#", 1), s.connect(),
                     s.publish_many([("t/early", 1, "y")]), s.save_session()):
            with pytest.raises(UsageError, match="not started"):
                await call
        await s.start()
        assert await s.publish("t/early", "x", 1) > 0 and await s.flush(5)
        await s.close()

    asyncio.run(main())


def test_a_clean_start_discards_what_a_closed_session_left_in_this_process(
        mosquitto: Any) -> None:
    """A (persistent, no state file) closes holding a message: kept in this process. B, the
    same id with ``clean_session=True``, starts and closes. C, persistent again, must not send
    A's stale message (before: it did) [MQTT-3.1.2-6]."""
    cid, got = _id("clean"), []

    async def main() -> None:
        opts = Options(address=mosquitto.address)
        a = AsyncSession(opts, client_id=cid, clean_session=False)
        await a.start(connect=False)
        await a.publish("t/stale", "stale", 1)
        await a.close()
        b = await AsyncSession.create(opts, client_id=cid, clean_session=True)
        await b.close()
        c = AsyncSession(opts, client_id=cid, clean_session=False)
        await c.start(connect=False)  # (what it holds, before it could send it)
        got.extend(m.message for m in c.client.outgoing_messages)
        await c.close()

    asyncio.run(main())
    assert got == []


def test_the_state_file_cannot_change_while_a_session_lives_in_it(tmp_path: Path) -> None:
    """Another ``SessionStateFile`` while the session in the open file holds messages:
    ``UsageError`` (before: the new file was not written until the next change, the old one
    kept them too: a QoS 2 message live in two files). An empty session may move."""
    c = Client(client_id=_id("move"), clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 'a'}")
    c.restore_session("")
    c.config(f"SessionStateFile={tmp_path / 'b'}")  # empty: fine
    c.restore_session("")
    c.publish_message("t/move", 2, "held")
    with pytest.raises(UsageError, match="two files"):
        c.config(f"SessionStateFile={tmp_path / 'c'}")
    assert c.config("SessionStateFile") == str(tmp_path / "b")
    c.close()


def test_a_mesh_receive_with_a_negative_timeout_does_not_wait(mosquitto: Any) -> None:
    """``receive(-1)`` / ``messages(-1)``: as 0 (before: a raw ``ValueError``)."""
    with Connection(Options(address=mosquitto.address)).create_session() as s:
        assert s.receive(-1) is None
        assert list(s.messages(-1)) == []
