"""The client ids a gateway forgot (``forget``): the next session of each starts clean.

The broker keeps a forgotten device's session (its subscriptions, the messages queued for it,
the QoS 2 flows it had not finished). The next session of that id starts its packet ids
anew, so resuming the broker's session would let a QoS 2 PUBLISH reuse an id the broker still
holds a flow for: the broker takes it for that flow's duplicate and never delivers it
[MQTT-4.3.3-10] (aedes), or drops the old flow (mosquitto). So that session's first CONNECT
asks for a clean start (MQTT 5: Clean Start=1 with its Session Expiry Interval; 3.1.1:
CleanSession=1 on the first connection, 0 on its reconnects), as a clean start asked for by
name would. The ids wait in ``D/forgotten`` (a JSON list, written atomically and synced; a
damaged one is kept aside, ERROR) until a CONNACK accepts that clean start: the gateway's
close waits for that write, and so do the packets after that CONNACK (``Driver``): a kill
before it is gone starts clean again, with nothing at the broker yet to lose. At most ``MAX_IDS`` wait (a retired device never connects
again): past it the oldest is let go.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from .errors import PersistenceError, StateError
from .journal import write_atomic
from .recovery import _read_file, free_name
from .statelock import _remove_stale_temps

__all__ = ["FORGOTTEN_NAME", "Forgotten"]

log = logging.getLogger(__name__)

FORGOTTEN_NAME = "forgotten"
MAX_IDS = 10_000


class Forgotten:
    """The forgotten client ids of one gateway directory (its lock held by the caller)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, FORGOTTEN_NAME)
        self._lock = threading.Lock()
        self._writers: list[threading.Thread] = []  # ``discard_later``'s, until ``close``
        _remove_stale_temps(self.path)  # (a write a kill -9 cut short)
        self._order = self._read()  # oldest first
        self.ids = frozenset(self._order)

    def _read(self) -> list[str]:
        data = _read_file(self.path)  # (StateError: a symlink, a special file)
        if data is None:
            return []
        try:
            ids = json.loads(data.decode("utf-8"))
            if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                return list(dict.fromkeys(ids))
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        aside = free_name(f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            raise StateError(f"{self.path} is damaged and cannot be kept aside: {exc}") from exc
        log.error("%s is damaged; kept aside as %s (a forgotten client id's next session may"
                  " resume the broker's session)", self.path, aside)
        return []

    def add(self, client_id: str) -> None:
        """``client_id`` forgotten: its next session starts clean (``PersistenceError``)."""
        with self._lock:
            if client_id not in self.ids:
                self._write([*self._order, client_id][-MAX_IDS:])

    def discard(self, client_id: str) -> None:
        """A clean start of ``client_id`` was accepted (``PersistenceError``)."""
        with self._lock:
            if client_id in self.ids:
                self._write([i for i in self._order if i != client_id])

    def discard_later(self, client_id: str) -> threading.Thread:
        """``discard`` in a thread of its own, returned (called from a network thread or an
        event loop, once per forgotten id; ``close`` waits for it); a failure is logged: the
        next start is clean again."""
        def run() -> None:
            try:
                self.discard(client_id)
            except PersistenceError as exc:
                log.warning("%s: %r not taken out (%s): its next session starts clean again",
                            self.path, client_id, exc)
        t = threading.Thread(target=run, name="mqttsession-forgotten", daemon=True)
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()] + [t]
        t.start()
        return t

    def close(self) -> None:
        """Wait for ``discard_later``'s writes (before the directory's lock goes)."""
        with self._lock:
            writers, self._writers = self._writers, []
        for t in writers:
            t.join()

    def _write(self, ids: list[str]) -> None:
        write_atomic(self.path, json.dumps(ids), sync=True)
        self._order, self.ids = ids, frozenset(ids)
