"""Crash-test child: an ``AsyncSession`` subscriber with a state file that is slow to take messages.

Logs (os.write on an O_APPEND descriptor: kill -9 cannot lose a written line) "Q <n>" when a
message has reached the session's queue (the Client's on_message_in returned) and "T <n>" when the
application took it from ``receive()``. Mode ``one``: take one message, then never ask for more
(the rest wait in the queue); mode ``all``: take every message.
argv: state_file host port log_file mode qos
"""

import asyncio
import logging
import os
import sys
from typing import Any

from mqttsession import AsyncSession, Options


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state, host, port, log_file, mode, qos = sys.argv[1:7]
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"S {os.getpid()}\n".encode())
    options = Options(address=f"{host}:{port}", request_timeout_seconds=10.0)
    session = AsyncSession(options, client_id="crash-aio-subscriber", state_file=state)
    queued = session.client.on_message_in
    assert queued is not None

    def on_message_in(e: Any) -> None:
        queued(e)
        os.write(fd, f"Q {e.message.decode()}\n".encode())

    session.client.on_message_in = on_message_in
    await session.start()
    await session.subscribe("crash/aio", int(qos))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    while (msg := await session.receive()) is not None:
        os.write(fd, f"T {msg.message.decode()}\n".encode())
        if mode == "one":
            await asyncio.Event().wait()  # busy with it for ever: the rest stay queued


asyncio.run(main())
