"""Which server a connection attempt goes to: a server list tried in turn, and MQTT 5 server
redirection (pure: no paho, no sockets).

``ServerRotation`` holds the servers of one ``connect()``: the one it was given first, then
``FailoverServers`` (duplicates left out). Every automatic reconnect moves to the next one,
round robin; a followed redirection (a CONNACK or DISCONNECT with reason 0x9C Use another server
or 0x9D Server moved and a Server Reference, MQTT 5 section 4.11) takes the next attempt to the
server it names. At most ``MAX_REDIRECTS`` redirections are followed in a row (until a CONNACK
accepts a connection), so two servers that send a client to each other cannot keep it moving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Final

from .errors import ConnectError, UsageError
from .options import format_address, parse_address

__all__ = [
    "MAX_REDIRECTS", "REDIRECT_CODES", "SERVER_MOVED", "USE_ANOTHER_SERVER", "ServerRotation",
    "none_accepted", "parse_server_reference",
]

log = logging.getLogger("mqttsession")

USE_ANOTHER_SERVER: Final = 0x9C  # MQTT 5 3.2.2.2 / 3.14.2.1: the client should use another server
SERVER_MOVED: Final = 0x9D  # the client should permanently use another server
REDIRECT_CODES: Final = frozenset({USE_ANOTHER_SERVER, SERVER_MOVED})
MAX_REDIRECTS: Final = 3  # redirections followed in a row, until a connection is accepted

Server = tuple[str, int]


def parse_server_reference(reference: str, *, tls: bool = False) -> Server | None:
    """The server a Server Reference names (MQTT 5 section 4.11: ``host[:port]``, possibly a
    space-separated list, of which the first is taken; without a port, 1883, or 8883 with TLS).
    None when it names none that can be read (a host with control characters: a hostile
    broker's text would reach the log as it is)."""
    for word in reference.split():
        try:
            server = parse_address(word, tls=tls, source="Server Reference")
        except UsageError:
            return None
        return server if server[0].isprintable() else None
    return None


class ServerRotation:
    """The servers one ``connect()`` may use, and where the next attempt goes."""

    def __init__(self, servers: Sequence[Server], *, tls: bool = False) -> None:
        if not servers:
            raise ValueError("a server rotation needs a server")
        unique: list[Server] = []
        for s in servers:
            if s not in unique:
                unique.append(s)
        self.servers = unique
        self.index = 0  # the list entry the current (or last) attempt came from
        self.current: Server = unique[0]
        self.tls = tls
        self.hops = 0  # redirections followed since a connection was last accepted
        self._redirect: Server | None = None  # where the next attempt goes, once

    @property
    def redirect_pending(self) -> bool:
        return self._redirect is not None

    def next(self) -> Server:
        """The server for the next attempt: a followed redirection's, else the next one in
        the list (round robin)."""
        if self._redirect is not None:
            target, self._redirect = self._redirect, None
        else:
            self.index = (self.index + 1) % len(self.servers)
            target = self.servers[self.index]
        self.current = target
        return target

    def attempts(self) -> Iterator[Server]:
        """The servers connect() tries, in turn: each in the list once, and after a refusal
        that named another server (FollowServerReference) that server first; a list entry
        a redirection already went to is left out."""
        yield self.current
        tried, steps = {self.current}, 1
        while self.redirect_pending or steps < len(self.servers):
            if not self.redirect_pending:
                steps += 1
                if self.servers[(self.index + 1) % len(self.servers)] in tried:
                    self.index = (self.index + 1) % len(self.servers)  # (tried already)
                    continue
            target = self.next()
            tried.add(target)
            yield target

    def accepted(self) -> None:
        """A CONNACK accepted the connection: the redirection count starts again."""
        self.hops = 0

    def redirect(self, code: int, reference: str | None, where: str) -> Server | None:
        """A CONNACK / DISCONNECT from ``where`` with reason ``code`` and a Server Reference
        (FollowServerReference on): the server the next attempt goes to, or None when it is
        not followed (not a redirection code, no readable reference, too many in a row).
        0x9D Server moved also replaces the list entry the current server came from."""
        if code not in REDIRECT_CODES:
            return None
        what = "Use another server" if code == USE_ANOTHER_SERVER else "Server moved"
        target = None if reference is None else parse_server_reference(reference, tls=self.tls)
        if target is None:
            log.warning("%s answered 0x%02X %s with no Server Reference that names a server (%r):"
                        " not redirected", where, code, what, reference)
            return None
        if self.hops >= MAX_REDIRECTS:
            log.warning("%s redirects to %s (0x%02X %s), but %d redirections were followed in a"
                        " row: not followed, the next server in the list is tried", where,
                        format_address(*target), code, what, self.hops)
            return None
        self.hops += 1
        self._redirect = target
        if code == SERVER_MOVED and target not in self.servers:
            self.servers[self.index] = target  # [MQTT 5 4.11] "permanently use another server"
        log.info("%s redirects to %s (0x%02X %s, redirection %d of at most %d in a row)",
                 where, format_address(*target), code, what, self.hops, MAX_REDIRECTS)
        return target


def none_accepted(failures: list[tuple[Server, ConnectError]]) -> ConnectError:
    """The error of a connect() no server accepted (one server: its own error)."""
    if len(failures) == 1:
        return failures[0][1]
    return ConnectError("no server accepted the connection: "
                        + "; ".join(str(e) for _, e in failures), failures[-1][1].status_code)
