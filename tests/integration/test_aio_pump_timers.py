"""The timers of an ``AsyncSession``'s connection (``pump.AsyncioPump``, no network thread):
the keep-alive goes on while the session is idle, and the reconnect backoff doubles up to
``ReconnectDelayMax`` and starts again at ``ReconnectDelayMin`` after an accepted CONNACK.
A scripted server on loopback (``FakeBroker``, or a listener that closes each connection)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from mqttsession import AsyncSession, Options
from mqttsession.testing.fake_broker import FakeBroker

pytestmark = pytest.mark.integration


def test_an_idle_async_session_keeps_its_keep_alive() -> None:
    """Keep-alive 1 s, nothing published for 3.5 s: PINGREQs keep coming (the pump's timer
    is set again after each round; a hunt: once it stopped after the first, no PINGREQ, no
    session timer ran again and the broker would close the link)."""
    fb = FakeBroker()

    async def main() -> None:
        options = Options(address=f"{fb.host}:{fb.port}", keep_alive=1,
                          request_timeout_seconds=5.0)
        async with AsyncSession(options, client_id="idle-ping"):
            await asyncio.sleep(3.5)

    try:
        asyncio.run(main())
    finally:
        fb.stop()
    assert len(fb.packets("PINGREQ")) >= 2, [p.type for p in fb.packets()]


class _Doorman:
    """A listener on loopback that notes when each connection comes: those whose index is in
    ``accept`` get a CONNACK (MQTT 3.1.1, accepted) and are closed ``hold`` seconds later
    (``closed``: when), the others are closed at once."""

    def __init__(self, accept: set[int], hold: float) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accept, self.hold = accept, hold
        self.came: list[float] = []
        self.closed: dict[int, float] = {}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.came.append(time.monotonic())
            if len(self.came) - 1 in self.accept:
                conn.settimeout(5)
                try:
                    conn.recv(4096)  # the CONNECT
                    conn.sendall(b"\x20\x02\x00\x00")
                    time.sleep(self.hold)
                except OSError:
                    pass
                self.closed[len(self.came) - 1] = time.monotonic()
            conn.close()

    def close(self) -> None:
        self.listener.close()


def test_async_backoff_is_bounded_and_starts_low_again_after_a_connack() -> None:
    """ReconnectDelayMin 0.1, ReconnectDelayMax 1: after the first connection (accepted,
    then closed) seven attempts closed at once come at most ~1 s apart (the doubling stops
    at the maximum: 0.1 .. 0.8, 1, 1, 1); then one is accepted (CONNACK) and closed: the
    next attempt comes after about the minimum again, not the maximum the backoff had
    reached (a hunt: each rule could go unnoticed)."""
    door = _Doorman(accept={0, 8}, hold=0.3)

    async def main() -> None:
        options = Options(address=f"127.0.0.1:{door.port}", request_timeout_seconds=5.0)
        session = AsyncSession(options, client_id="aio-backoff-bounds", clean_session=False)
        session.client.config("ReconnectDelayMin=0.1")
        session.client.config("ReconnectDelayMax=1")
        await session.start()
        deadline = time.monotonic() + 20
        while len(door.came) < 10:
            assert time.monotonic() < deadline, door.came
            await asyncio.sleep(0.02)
        await session.close()

    try:
        asyncio.run(main())
    finally:
        door.close()
    came = door.came
    gaps = [b - a for a, b in zip(came[1:8], came[2:9])]  # after each attempt closed at once
    assert max(gaps) < 1.4, gaps  # unbounded: 1.6 s and more by the 6th
    after = came[9] - door.closed[8]
    assert after < 0.7, (after, gaps)  # not reset: 1 s (the maximum; no jitter alone)
