"""Pins from a mutation hunt over ``mqttsession/publishing.py``, against a real mosquitto: an
``AsyncSession.publish_many`` that shares no fdatasync (no state file, or ``SessionSync``
other than ``always``) holds back none of its PUBLISHes. The test failed with one mutant applied (named in its
docstring)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from mqttsession import AsyncSession, Options

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def _id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("sync", ["no-file", "interval", "none"])
def test_an_async_publish_many_without_a_group_commit_sends_its_messages(
        mosquitto: Any, tmp_path: Path, sync: str) -> None:
    """``AsyncSession.publish_many`` where no group commit can be (no state file, or
    ``SessionSync`` interval / none): its PUBLISHes go out at once and ``flush`` sees them
    acknowledged. Mutant: ``store_checked`` without ``group = group and d.group_commit()``
    (the records held for an fdatasync nobody runs: the PUBLISHes never left)."""
    async def main() -> bool:
        s = await AsyncSession.create(
            Options(address=mosquitto.address), client_id=_id("mh5-many"),
            state_file=None if sync == "no-file" else str(tmp_path / "s"),
            session_sync=None if sync == "no-file" else sync)
        try:
            ids = await s.publish_many([("mh5/many", 1, "a"), ("mh5/many", 2, "b"),
                                        ("mh5/many", 1, "c")])
            assert len(ids) == 3 and all(ids)
            return await s.flush(10)
        finally:
            await s.close()

    assert asyncio.run(asyncio.wait_for(main(), 30))
