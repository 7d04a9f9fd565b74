"""A ``Client``'s life: its end (``close()``: refused to publishes, then the state file
released), its callbacks' errors, and the clients a ``fork()`` left in a child process (the
parent's: every call refused, nothing of theirs touched)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .events import ErrorEvent
from .statelock import forks

if TYPE_CHECKING:
    from .client import Client

__all__ = ["call_back", "close_client", "configure", "closed_text", "foreign", "live"]

log = logging.getLogger("mqttsession")


def foreign(c: Client) -> bool:
    """``c`` was made before a fork() that made this process: its connection, state file and
    lock are the parent's (``UsageError`` from any call; nothing of them touched here)."""
    return c._born != forks()


def closed_text(c: Client, what: str) -> str:
    if foreign(c):
        return (f"{what} in a child of fork(): this Client (and its state file, lock and"
                f" connection) belongs to the parent process; make a new Client here")
    return (f"{what} after close(): the client is closed (its state file released); make a"
            " new Client")


def close_client(c: Client) -> None:
    """``close()``: refused to publishes from now on, then ``_close`` (after the ack of the
    message ``on_message_in`` handles, when called there)."""
    if foreign(c):  # (no lock, no I/O: they are the parent's)
        c._closed = True
        return
    me = threading.get_ident()
    with c._lock:  # a publish after this is refused: none lands after the last snapshot
        if c._closed and c._closer != me:  # (a close() a KeyboardInterrupt cut before its
            return  # work began: done by this thread's next one)
        c._closed, c._closer = True, me
    if c._driver.delivering_in == me:  # inside on_message_in:
        c._closer = 0
        c._driver.close_after = lambda: _close(c)  # after its ack is written
    else:
        _close(c)


def live(c: Client, what: str) -> None:
    """``UsageError`` in a child of fork(): the client is the parent's."""
    if foreign(c):
        raise UsageError(closed_text(c, what))


def configure(c: Client, what: str, **change: Any) -> None:
    live(c, what)
    c._driver.configure(what, **change)


def _close(c: Client) -> None:
    """``close()``'s work: what waits written, disconnected, saved, the state file released."""
    try:
        c._closer = 0  # begun: its ``finally`` releases the file whatever happens
        c._driver.engine.drops.flush(force=True)  # (the drops counted, summed up)
        failed = c._driver.cancel_sync_timer()  # interval: what waits goes to disk now
        compacted = c._driver.disconnect() and c._file.owned
        if c._settings.session_state_file and not compacted:
            c._driver.save(closing=True)  # (a disconnect's compaction wrote the same)
        if failed is not None:  # (the disk queue's: a snapshot does not hold it)
            raise failed
    finally:
        c._driver.behind.stop()  # (a sync of read batches under way ends before the file closes)
        with c._lock:
            c._file.close()
        c._driver.end()


def call_back(c: Client, name: str, event: object) -> None:
    """The callback ``name`` with ``event``. What it raises is logged and reported
    (``on_error``); SystemExit and KeyboardInterrupt too, but in the main thread only: paho's
    network thread or a gateway's loop would die of them, the connection dead unnoticed."""
    cb = getattr(c, name)
    if cb is None:
        return
    try:
        cb(event)
        return
    except Exception as exc:
        what: BaseException = exc
    except BaseException as exc:
        if threading.current_thread() is threading.main_thread():
            raise
        what = exc
    log.error("%s callback raised", name, exc_info=what)
    if name != "on_error":
        c._fire("on_error", ErrorEvent(-1, f"{name} callback raised: {what!r}"))
