"""What a ``_paho.PahoConnection`` calls on the network thread: the driver's side of the
adapter (``driver.Driver`` implements it)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any, Protocol

from ._wire import Packet, PacketType

__all__ = ["Future", "Hooks", "Sync"]

Sync = asyncio.Future[None] | Future[None]  # a sync off a loop's, or a sync thread's


class Hooks(Protocol):
    """What the connection calls on the network thread, each BEFORE the dependent packet
    (underscored: the driver's, not part of the public surface)."""

    def _hook_connack(
        self, rc: int, reason: str, session_present: bool, receive_maximum: int,
        maximum_packet_size: int | None, server_reference: str | None = None,
        max_qos: int = 2, retain_available: bool = True,
    ) -> None: ...  # server_reference: MQTT 5, of a refusal (4.11 Server redirection)

    def _hook_packet(self, packet: Packet) -> None: ...  # a session packet, decoded

    def _hook_ack(self, kind: PacketType, packet_id: int) -> None: ...  # the usual 2-byte ack

    def _hook_acks(self, acks: list[tuple[PacketType, int]]) -> None: ...
    # PUBACK / PUBREC / PUBCOMP read one after another: ``_hook_ack`` for each, in order,
    # under one hold of the session lock

    def _hook_batch_waits(self) -> bool: ...
    # the read batch's end waits for the disk: the PUBLISHes not held go out first

    def _hook_publisher_waits(self) -> bool: ...
    # publishers wait for the disk (SessionSync=always): theirs leave during a batch at once

    def _hook_batch_end(self) -> Sync | None: ...
    # the records the held packets depend on: durable now (None), or once the future is done
    # (a sync run off the loop: a gateway's; paho's thread's: a sync thread's)

    def _hook_connection_reset(self) -> tuple[str, int] | None: ...
    # a new network connection is being made; to this server (None: the same as before)

    def _hook_connect_properties(self) -> Any: ...  # MQTT 5 CONNECT's, as the session is now
    def _hook_tick(self) -> None: ...  # once per network-loop round
    def _hook_wait(self, timeout: float) -> float: ...  # select()'s timeout: the next timer's

    def _hook_failure(self, exc: Exception, context: str) -> None: ...
