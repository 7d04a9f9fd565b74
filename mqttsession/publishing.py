"""How a publish is checked and stored: the ``Client``'s, an ``AsyncSession``'s and a
gateway's publish paths (persistence point 1), one message or a ``publish_many``'s, alone, in
turns with other threads (``Turns``) or as a disk-queue batch (``Combiner``)."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Callable, Iterable

from .combining import Alone, Item, needs_room, spooling
from .durability import since_boot
from .engine import Action
from .errors import QueueFullError, UsageError
from .events import PublishRequest
from .properties import publish_properties
from .state import Accepted, validate_qos
from .validation import text_payload, validate_publish_topic

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

    from .client import Client

__all__ = ["check_item", "check_message", "check_messages", "retain_flag", "store_checked",
           "store_items", "store_many", "together"]


def check_message(c: Client, topic: str, qos: int, data: object,
             properties: Properties | None) -> tuple[bytes, bytes]:
    """A message's payload and packed properties, its topic and QoS checked
    (``UsageError``; properties need ``c`` to speak MQTT 5)."""
    validate_publish_topic(topic)
    validate_qos(qos)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"data must be bytes, got {type(data).__name__}")
    props = b""
    if properties is not None:
        if c.protocol_version != 5:
            raise UsageError("properties need MQTT 5 (protocol_version=5)")
        props = publish_properties(properties)
    return bytes(data), props


def check_messages(c: Client, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest]
              ) -> list[tuple[str, bytes, int, bool, bytes]]:
    """``publish_many``'s messages checked, as the engine takes them: (topic, payload, qos,
    retain, packed properties)."""
    items: list[tuple[str, bytes, int, bool, bytes]] = []
    for m in messages:
        if isinstance(m, PublishRequest):
            topic, qos, data, retain, props = m.topic, m.qos, m.payload, m.retain, m.properties
        elif isinstance(m, tuple) and len(m) == 3:
            (topic, qos, data), retain, props = m, None, None
        else:
            raise UsageError(f"publish_many takes (topic, qos, data) tuples or PublishRequest"
                             f" values, got {type(m).__name__}")
        payload, packed = check_message(
            c, topic, qos, text_payload(data) if isinstance(data, str) else data, props)
        items.append((topic, payload, qos,
                      retain_flag(c, retain), packed))
    return items



def store_many(c: Client, messages: Iterable[tuple[str, int, bytes | str] | PublishRequest],
                group: bool) -> tuple[list[int], list[tuple[int, int, int]]]:
    """``publish_many``: all of them stored (persistence point 1). ``group``: under
    ``SessionSync=always`` their records wait for a group commit's fdatasync, their PUBLISHes
    held; a token each for ``Driver.wait_durable`` / ``release`` (``AsyncSession``'s)."""
    ids, tokens, rest = store_checked(c, check_messages(c, messages), group)
    c._driver.finish(rest)
    return ids, tokens


def store_checked(c: Client, items: list[Item], group: bool, got: list[int] | None = None,
                   what: str = "publish_many"
                   ) -> tuple[list[int], list[tuple[int, int, int]], list[Action]]:
    """``store_many`` of messages validated already (``what``: the call, for errors); the
    callbacks for ``finish`` last; ``got``: the ids, once stored (``Combiner``)."""
    c._require_open(what)
    if not items:
        return [], [], []
    d, tokens = c._driver, []
    try:
        with c._lock:
            c._require_open(what)
            if any(i[2] for i in items):
                c._file.open(c._engine.state)
                c._file.compact_before_publish(c._engine.state)
            group = group and d.group_commit()
            try:
                ids, actions = c._engine.publish_many(items, time.time(), since_boot(), group)
            except QueueFullError as exc:
                d.run_refused(exc)
                raise
            accepted = c._engine.accepted_many
            group = group and bool(accepted) and type(accepted[0]) is Accepted
            rest = d.run(actions, accepted, deferred=group)  # point 1, all
            if got is not None:
                got.extend(ids)
            if group:  # (one Persist: one position, which every token names)
                tokens = [t for r in accepted if (t := d.hold(r.message.seq)) is not None]
    finally:
        d.finish_stashed()
    return ids, tokens, rest


def retain_flag(c: Client, retain: bool | None) -> bool:
    """A publish's retain flag: the ``Retain`` setting's when None."""
    return c._settings.retain if retain is None else bool(retain)


def check_item(c: Client, topic: str, qos: int, data: bytes, retain: bool | None,
          properties: Properties | None) -> Item:
    """One publish's message checked, as ``publish_many`` stores it (``check_messages``')."""
    payload, props = check_message(c, topic, qos, data, properties)
    return topic, payload, qos, retain_flag(c, retain), props


def store_items(c: Client, items: list[Item], batch: bool, got: list[int],
                 what: str = "publish") -> Callable[[], None]:
    """``Combiner``'s store: one call's messages, or several calls' together (``batch``), as
    one ``publish_many``, ids into ``got``; its callbacks to run once each call has its ids
    (in the storing thread). ``Alone`` for a batch that would first make room (``needs_room``)."""
    if batch and needs_room(c._engine, items):
        raise Alone
    if c._driver.loop_waits:  # (the loop's read, or release, goes first)
        c._driver.let_loop_in()
    return functools.partial(c._driver.finish, store_checked(c, items, False, got, what)[2])


def together(c: Client, topic: str, qos: int, data: bytes, retain: bool | None,
              properties: Properties | None) -> tuple[int, tuple[int, int, int] | None]:
    """A publish while others run in other threads (``SessionSync=always``): one of them
    runs the others' locked parts (``Turns``: one fdatasync for their records); bound for
    the disk queue, one of them stores them all as one batch (``Combiner``: one fdatasync
    there). The packet id, and a token for ``settle`` (None: durable already)."""
    payload, props = check_message(c, topic, qos, data, properties)
    d = c._driver
    if d.combiner.busy or spooling(d.engine):
        item = (topic, payload, qos, retain_flag(c, retain), props)
        return d.combiner.publish(item, functools.partial(store_items, c),
                                  lambda: (d.turns.publishers, d.sync_time())), None
    (pid, rest), token = d.turns.run(d, lambda: c._publish_locked(
        topic, qos, payload, retain, props, True))
    d.finish(rest)
    return pid, token
