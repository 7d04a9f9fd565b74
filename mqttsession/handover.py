"""A session without a state file, handed from a closed front end to the next one attached
in this process: a Mesh ``Session`` closed with ``end_session=False``, an ``AsyncSession``
with ``clean_session=False``. The broker keeps the session, but QoS 2 messages past their
PUBREC (the broker sends only their PUBREL again) and unacknowledged outgoing messages would
die with the closed ``Client``: their session text waits here, by server and client id, for
the next one. In memory only: a crash loses it (a state file keeps it)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("mqttsession")
_kept: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def keep(server: str, client: Client) -> None:
    """``client`` (disconnected, not closed), without a state file: its session kept for the
    next one when it holds messages."""
    st = client._engine.state  # noqa: SLF001 - what the session holds, its disk queue too
    if client.config("SessionStateFile") or not (st.outgoing or st.incoming or st.orphans):
        return
    text = client.save_session()
    with _lock:
        _kept[(server, client.client_id)] = text


def restore(server: str, client: Client) -> None:
    """The session kept for ``client``'s id on ``server`` restored into it (none: nothing);
    one that cannot be restored stays kept (the error raised)."""
    key = (server, client.client_id)
    if client.config("SessionStateFile"):  # (a gateway's session: its store has it)
        return
    with _lock:
        text = _kept.pop(key, None)
    if text is None:
        return
    try:
        client.restore_session(text)
    except BaseException as exc:
        with _lock:
            _kept.setdefault(key, text)
        log.warning("the session a closed %r left on %s (kept in this process) cannot be"
                    " restored into this one: %s; it stays kept", client.client_id, server, exc)
        raise


def discard(server: str, client_id: str) -> None:
    """A clean start of ``client_id`` on ``server``: the session kept for it is gone (the
    broker discards its own) (3.1.1 [MQTT-3.1.2-6], 5 [MQTT-3.1.2-4])."""
    with _lock:
        if _kept.pop((server, client_id), None) is not None:
            log.info("the session a closed %r left on %s (kept in this process) is discarded:"
                     " a clean start", client_id, server)
