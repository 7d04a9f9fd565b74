"""What the kernel knows of a TCP connection (Linux ``TCP_INFO``)."""

from __future__ import annotations

import socket
import struct
from typing import Any

__all__ = ["bytes_acked"]

_BYTES_ACKED_AT = 120  # struct tcp_info's tcpi_bytes_acked (u64; Linux 4.1 and later)


def bytes_acked(sock: Any) -> int | None:
    """How many bytes the peer's TCP has acknowledged on ``sock`` (a socket, TLS or under
    paho's websocket wrapper); None: not known (no socket, not Linux, an older kernel)."""
    sock = getattr(sock, "_socket", sock)  # (paho's websocket wrapper keeps the socket there)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (AttributeError, OSError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_AT + 8:
        return None
    return int(struct.unpack_from("=Q", info, _BYTES_ACKED_AT)[0])
