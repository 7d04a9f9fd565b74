"""A small application as a user would write it, type-checked with ``mypy --strict`` by
``tests/unit/test_typing_user.py`` (never run: it would need a broker).

Every ``on_*`` event of ``Client`` is set, with functions and lambdas; mypy checks each handler
against its own event class.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from mqttsession import (
    AsyncSession,
    Client,
    ConnectedEvent,
    Connection,
    DisconnectedEvent,
    ErrorEvent,
    MessageAckEvent,
    MessageDroppedEvent,
    MessageEvent,
    Options,
    SessionLostEvent,
    TlsOptions,
    SubscribedEvent,
    UnsubscribedEvent,
)

log = logging.getLogger("gateway")


def on_connected(e: ConnectedEvent) -> None:
    log.info("connected: %s (SessionPresent=%s)", e.description, e.session_present)


def on_disconnected(e: DisconnectedEvent) -> None:
    log.info("disconnected: %d %s", e.status_code, e.description)


def on_message_in(e: MessageEvent) -> None:
    log.info("%s: %r (QoS %d, dup %s)", e.topic, e.message, e.qos, e.duplicate)


def on_session_lost(e: SessionLostEvent) -> None:
    log.warning("session lost: %d republished, %d dropped, %d possible duplicates",
                len(e.republished), len(e.dropped), len(e.possible_duplicates))


def make_client() -> Client:
    c = Client(client_id="gw-1", clean_session=False, protocol_version=5)
    c.on_connected = on_connected
    c.on_disconnected = on_disconnected
    c.on_message_in = on_message_in
    c.on_message_out = lambda e: log.debug("sent %d to %s", e.packet_id, e.topic)
    c.on_message_ack = lambda e: log.debug("ack %d (direction %d)", e.packet_id, e.direction)
    c.on_subscribed = lambda e: log.info("subscribed %s: %d", e.topic_filter, e.response_code)
    c.on_unsubscribed = lambda e: log.info("unsubscribed %s", e.topic_filter)
    c.on_session_lost = on_session_lost
    c.on_message_dropped = lambda e: log.warning("dropped seq %d: %s", e.seq, e.reason)
    c.on_error = lambda e: log.error("error %d: %s", e.error_code, e.description)
    c.on_error = None  # no callback
    return c


def handlers_by_type() -> None:
    """Handlers kept in typed variables are accepted where their event type matches."""
    ack: MessageAckEvent | None = None
    sub: SubscribedEvent | None = None
    unsub: UnsubscribedEvent | None = None
    drop: MessageDroppedEvent | None = None
    err: ErrorEvent | None = None
    print(ack, sub, unsub, drop, err)


def publish(c: Client) -> list[int]:
    pid = c.publish_message("telemetry/gw-1", 1, "hello")
    stats = c.queue_stats()
    log.info("held %d messages, %d bytes", stats.messages, stats.bytes)
    return [pid, *c.publish_many([("telemetry/gw-1", 1, b"a"), ("telemetry/gw-1", 2, "b")])]


def mesh(address: str) -> None:
    with Connection.insecure(address).create_session() as session:
        session.subscribe("cmd/#", 1)
        msg = session.receive(timeout=1.0)
        if msg is not None:
            print(msg.topic, msg.message.decode())


def transports() -> tuple[Client, Options]:
    context = ssl.create_default_context()
    c = Client(tls_context=context, transport="websockets", websocket_path="/mqtt",
               websocket_headers={"Authorization": "Bearer t0k3n"})
    o = Options(address="broker:443", tls_options=TlsOptions(context=context),
                transport="websockets", websocket_headers={"X-Site": "north"})
    return c, o


async def aio() -> None:
    options = Options.from_env(request_timeout_seconds=10)
    async with AsyncSession(options, client_id="gw-async") as session:
        await session.publish("telemetry/async", "hello")
        async for msg in session.messages():
            print(msg.topic, len(msg.message))
            break


if __name__ == "__main__":
    asyncio.run(aio())
