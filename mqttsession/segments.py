"""The disk queue's segment files (``spool.py``): their names, what a segment is, its header
frame ``["mqttsession-queue", 1, client id, first seq, prev]``, and the checks a restart makes of
a segment file (``check_regular``: one lstat; ``check_sealed``). No paho, no sockets."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Final

from .errors import StateError

__all__ = ["DAMAGED_NAME", "OPEN_NAME", "SEALED_NAME", "Segment", "check_regular", "check_sealed",
           "gap", "header", "read_header"]

_HEADER_TAG: Final = "mqttsession-queue"
_VERSION: Final = 1
OPEN_NAME: Final = re.compile(r"q-(\d{20})\.open\Z")
SEALED_NAME: Final = re.compile(r"q-(\d{20})-(\d{20})-(\d+)-(\d+)-(\d+)(?:-p(\d+))?\.seg\Z")
DAMAGED_NAME: Final = re.compile(r"q-(\d{20})[-.].*\.damaged-")  # (``Spool._damaged``)


@dataclass
class Segment:
    first: int  # seq of its first message (its name)
    path: str
    sealed: bool
    last: int = 0  # seq of its last message (0: none yet)
    count: int = 0  # messages in it
    bytes: int = 0  # their ``message_bytes``
    size: int = 0  # bytes of the file that are valid frames
    prev: int | None = None  # the newest seq queued before it was made (None: not recorded)


def header(client_id: str, first: int, prev: int | None) -> bytes:
    """A segment's header payload (framed by the caller)."""
    return json.dumps([_HEADER_TAG, _VERSION, client_id, first, prev]).encode()


def read_header(payload: bytes, first: int) -> tuple[str, int | None] | None:
    """(client id, prev) of a header payload of the segment named ``first``; None: no valid
    header (prev None: written before segments named it)."""
    try:
        arr = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not (isinstance(arr, list) and len(arr) in (4, 5) and arr[0] == _HEADER_TAG
            and arr[1] == _VERSION and isinstance(arr[2], str) and arr[3] == first
            and type((arr + [0])[4]) is int):
        return None
    return arr[2], arr[4] if len(arr) == 5 else None


def gap(segs: list[Segment], spool_next: int, damaged: list[int]) -> int | None:
    """The newest seq of messages not read back that no segment holds (one deleted), by each
    segment's ``prev``; None: none. One kept aside as damaged (reported then) is no gap."""
    seen = max(spool_next - 1, 0)  # every message up to it was read back (0: none)
    for seg in segs:
        if seg.prev is not None and seg.prev > seen and not any(seen < f <= seg.prev for f in damaged):
            return seg.prev
        seen = max(seen, seg.last)
    return None


def check_regular(seg: Segment) -> os.stat_result:
    """A segment is a regular file (not a FIFO, a link, a directory): else ``StateError``."""
    try:
        st = os.lstat(seg.path)
    except OSError as exc:
        raise StateError(f"disk queue segment {seg.path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"disk queue segment {seg.path} is not a regular file; kept")
    return st


def check_sealed(seg: Segment, st: os.stat_result) -> None:
    """A sealed segment is the size its name says, and its name is consistent: else
    ``StateError`` (the file kept)."""
    if st.st_size != seg.size:
        raise StateError(f"disk queue segment {seg.path} is {st.st_size} bytes, its name says"
                         f" {seg.size} (cut short or damaged); kept")
    if seg.count <= 0 or seg.first > seg.last or seg.bytes < 0:
        raise StateError(f"disk queue segment {seg.path}: its name is not consistent")
