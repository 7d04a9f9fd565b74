"""amqtt broker plugins used by mqttsession's test brokers.

amqtt 0.12.1 loads plugins named by dotted path under the ``plugins:`` key of its configuration
(``amqtt.plugins.manager.PluginManager._load_str_plugin``): the class must subclass
``amqtt.plugins.base.BasePlugin`` and is built with a context whose ``config`` is an instance of the
class's inner ``Config`` dataclass, filled from the mapping given in the configuration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin

__all__ = ["KeepSessionsAuthPlugin"]

logger = logging.getLogger(__name__)


class KeepSessionsAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Accept every client, with or without a username, and keep its session persistent.

    amqtt's own ``AnonymousAuthPlugin`` with ``allow_anonymous: true`` marks each session it accepts
    as anonymous (``session.is_anonymous = True``); the broker's session monitor then deletes a
    disconnected anonymous session within about a second, and its broadcast loop never queues
    QoS 1/2 messages for it. So ``clean_session=0`` does not give a persistent session on a default
    amqtt. This plugin returns True for every CONNECT and leaves (sets) ``is_anonymous`` False, so a
    ``clean_session=0`` session is kept after disconnect and offline messages are queued for it.
    """

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Any) -> bool:
        """Accept the client; never mark its session anonymous."""
        session.is_anonymous = False
        logger.debug("accepting client %r (username %r)", session.client_id, session.username)
        return True
