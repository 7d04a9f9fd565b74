"""What the kernel knows of a TCP connection (Linux ``TCP_INFO``, ``SIOCOUTQ``): whether the
peer is taking the bytes sent (a slow link, not a dead one)."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
from typing import Any, Callable

__all__ = ["PingWait", "bytes_acked", "cut_when_stalled", "unsent"]

_BYTES_ACKED_AT = 120  # struct tcp_info's tcpi_bytes_acked (u64; Linux 4.1 and later)


def bytes_acked(sock: Any) -> int | None:
    """How many bytes the peer's TCP has acknowledged on ``sock`` (TCP or TLS); None: not
    known (no socket, not Linux, an older kernel)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (AttributeError, OSError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_AT + 8:
        return None
    return int(struct.unpack_from("=Q", info, _BYTES_ACKED_AT)[0])


def unsent(sock: Any) -> int:
    """Bytes in ``sock``'s send queue the peer has not acknowledged (0: not known)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])
    except (AttributeError, OSError, ValueError):
        return 0


class PingWait:
    """A PINGRESP that is due: is it late only because its PINGREQ waits behind earlier bytes
    the broker is still taking (a long upload on a slow link)? The PINGREQ ends where the
    bytes in the socket and in the client's queue ended when it was first seen due; bytes sent
    after it (a publisher going on) never count, so a frozen broker whose kernel still
    acknowledges is noticed as before."""

    def __init__(self) -> None:
        self._acked: int | None = None
        self._mark: int | None = None  # the acknowledged count at which the PINGREQ is in

    def behind(self, sock: Any, due: bool, queued: Callable[[], int]) -> bool:
        """``sock``: the TCP (or TLS) socket; ``due``: a PINGRESP is awaited; ``queued``: the
        bytes the client still holds to write. True: wait for the PINGRESP again from now."""
        acked = bytes_acked(sock) if due else None
        if acked is None:
            self._acked = self._mark = None
            return False
        if self._mark is None:
            self._mark = acked + unsent(sock) + queued()
        moving = self._acked is not None and self._acked < acked and self._acked < self._mark
        self._acked = acked
        return moving


def cut_when_stalled(sock: Callable[[], Any], cut: Callable[[], None],
                     every: float) -> threading.Event:
    """While the returned event is not set: every ``every`` seconds, ``cut()`` the connection
    once the peer acknowledged nothing of what waits in ``sock()`` since the last look (a
    stalled link: a DISCONNECT that can never leave). A slow link that moves is left alone."""
    done = threading.Event()

    def watch() -> None:
        seen = bytes_acked(sock())
        while not done.wait(every):
            now = bytes_acked(sock())
            if now is None or (now == seen and unsent(sock())):
                cut()
                return
            seen = now

    try:
        threading.Thread(target=watch, name="mqttsession-close-watch", daemon=True).start()
    except RuntimeError:  # no thread to be had: no watch (the close waits as paho's would)
        pass
    return done
