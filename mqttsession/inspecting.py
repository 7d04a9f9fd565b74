"""``mqttsession inspect``: a saved session shown, read-only (a state file with its journal and
disk queue, the ``save_session()`` text on standard input, or a gateway directory)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable, TypeVar

from .codec import SavedState, load_state
from .errors import StateError
from .expiry import effective_interval
from .validation import topic_bytes

__all__ = ["FILE_SOURCE", "GATEWAY_SOURCE", "STDIN_SOURCE", "inspect", "read_saved"]

log = logging.getLogger("mqttsession.cli")

STDIN_SOURCE = "standard input: the save_session() text alone (no journal, no disk queue)"
FILE_SOURCE = "the state file: its snapshot, its journal and its disk queue"
GATEWAY_SOURCE = "a gateway directory: the sessions of its shared log and their disk queues"


def _inspect_obj(s: SavedState, now: float, sizes: dict[str, int], source: str) -> dict[str, Any]:
    def msg(m: Any) -> dict[str, Any]:
        d = {"packet_id": m.packet_id, "topic": m.topic, "qos": m.qos, "bytes": len(m.payload),
             "retain": m.retain}
        if hasattr(m, "seq"):
            d.update(seq=m.seq, phase=m.phase.value)
        return d

    payload_bytes = sum(len(m.payload) for m in s.outgoing + s.incoming)
    return {
        "source": source, "client_id": s.client_id, "protocol_version": s.protocol_version,
        "clean_session": s.clean_session, "session_expiry_interval": s.session_expiry_interval,
        "effective_expiry_interval": effective_interval(s.protocol_version, s.clean_session,
                                                        s.session_expiry_interval),
        "expired": s.expired(now), "broker": s.broker, "connected_at": s.connected_at,
        "disconnected_at": s.disconnected_at, "last_activity": s.last_activity,
        "never_sent": [msg(m) for m in s.never_sent], "in_flight": [msg(m) for m in s.in_flight],
        "incoming": [msg(m) for m in s.incoming], "subscriptions": dict(s.subscriptions),
        "payload_bytes": payload_bytes,
        "queue": {"messages": len(s.outgoing) + s.on_disk,
                  "bytes": sum(len(m.payload) + topic_bytes(m.topic) + len(m.properties)
                               for m in s.outgoing) + s.on_disk_bytes,
                  "on_disk": s.on_disk},
        "sizes": {**sizes, "payload_bytes": payload_bytes},
    }


def _size(path: str) -> int:
    """``path``'s size, a link's own; 0 when it is gone (a live client deleted it meanwhile)."""
    with contextlib.suppress(FileNotFoundError):
        return os.lstat(path).st_size
    return 0


def read_saved(path: str) -> tuple[SavedState, dict[str, int]]:
    """The saved session and the sizes of what it was read from; read-only (no lock taken, a
    damaged file reported, never moved aside), read again when a live client's file went away."""
    from . import recovery
    from .journal import JOURNAL_SUFFIX, read_state
    from .spool import QUEUE_SUFFIX

    if path == "-":  # refused past MAX_STATE_BYTES as a file is, read no further
        limit, chunks, total = recovery.MAX_STATE_BYTES, [], 0
        while chunk := sys.stdin.buffer.read(min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise StateError(f"standard input is more than the {limit} bytes a state file"
                                 " may be; not read")
        return load_state(b"".join(chunks)), {"input_bytes": total}
    if not os.path.exists(path):
        raise StateError(f"{path}: no such file")
    if os.path.isdir(path):
        raise StateError(f"{path}: is a directory, not a state file")
    queue = path + QUEUE_SUFFIX

    def read() -> tuple[SavedState, dict[str, int]]:
        state = SavedState.of(read_state(path))
        sizes = {"snapshot_bytes": _size(path), "journal_bytes": _size(path + JOURNAL_SUFFIX)}
        if os.path.isdir(queue):  # (a dangling link counted too)
            sizes["disk_queue_bytes"] = sum(_size(os.path.join(queue, n)) for n in os.listdir(queue))
        return state, sizes

    return _again(read, path)


_T = TypeVar("_T")


def _gone(exc: BaseException) -> bool:
    """Whether a ``FileNotFoundError`` is behind ``exc`` (a file went away under the read)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, FileNotFoundError):
        cause = cause.__cause__
    return cause is not None


def _again(read: Callable[[], _T], path: str) -> _T:
    """``read()``, again when a file went away under it (a live client's, deleted meanwhile)."""
    for attempt in range(6):
        try:
            return read()
        except (OSError, StateError) as exc:
            if not _gone(exc):
                raise
            log.debug("%s changed while it was read (%s): again", path, exc)
        time.sleep(0.01 * 2 ** attempt)
    raise StateError(f"{path}: the session changed while it was read; try again")


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _inspect_gateway(directory: str, as_json: bool) -> tuple[int, list[str]]:
    """``inspect DIR`` of a ``Gateway``'s directory: its sessions, one line each."""
    from .hosting import queue_path
    from .recovery import with_queue
    from .sessionlog import read_sessions

    damaged: dict[str, str] = {}

    def counted(cid: str, st: Any) -> SavedState:
        try:
            return SavedState.of(with_queue(st, queue_path(directory, cid)))
        except (OSError, StateError) as exc:
            if _gone(exc):  # (a live gateway deleted a file meanwhile: read all again)
                raise
            damaged[cid] = f"its disk queue is not counted: {exc}"
            return SavedState.of(st)

    def read() -> dict[str, SavedState]:
        damaged.clear()
        return {cid: counted(cid, st) for cid, st in sorted(read_sessions(directory).items())}

    sessions = _again(read, directory)
    info = {cid: _inspect_obj(s, time.time(), {}, GATEWAY_SOURCE) for cid, s in sessions.items()}
    for cid, why in damaged.items():
        info[cid]["error"] = why
    code = 2 if damaged else 0  # (the others listed all the same)
    if as_json:
        return code, [json.dumps({"source": GATEWAY_SOURCE, "directory": directory,
                                  "sessions": list(info.values())}, indent=2)]
    out = [f"read from:        {GATEWAY_SOURCE}", f"sessions:         {len(info)}"]
    out.append(f"    {'client id':<32} {'never sent':>10} {'in flight':>9} {'incoming':>8}"
               f" {'subscriptions':>13} {'of them on disk':>15}")
    for cid, i in info.items():
        out.append(f"    {cid!r:<32} {len(i['never_sent']) + i['queue']['on_disk']:>10}"
                   f" {len(i['in_flight']):>9} {len(i['incoming']):>8} {len(i['subscriptions']):>13}"
                   f" {'?' if cid in damaged else i['queue']['on_disk']:>15}")
    for cid, why in damaged.items():
        out.append(f"{cid!r}: {why}")
    return code, out


def inspect(args: argparse.Namespace) -> tuple[int, list[str]]:
    """``mqttsession inspect FILE`` (or ``-``, or a gateway directory): its exit code and the
    lines of its report (the command prints them)."""
    from .sharedlog import LOG_NAME

    if os.path.isdir(args.file) and os.path.exists(os.path.join(args.file, LOG_NAME)):
        return _inspect_gateway(args.file, args.json)
    s, sizes = read_saved(args.file)
    info = _inspect_obj(s, time.time(), sizes, STDIN_SOURCE if args.file == "-" else FILE_SOURCE)
    if args.json:
        return 0, [json.dumps(info, indent=2)]
    out: list[str] = []
    out.append(f"read from:        {info['source']}")
    exp = {True: "yes", False: "no", None: "unknown"}[info["expired"]]
    if s.protocol_version != 5:
        exp = "n/a (MQTT 3.1.1 sessions do not expire)"
    interval, sent = s.session_expiry_interval, info["effective_expiry_interval"]
    shown = ("never (0xFFFFFFFF)" if interval == 0xFFFFFFFF else f"{interval} s"
             if interval is not None else f"unset ({sent} s sent)" if sent else "absent (0)")
    out.append(f"client id:        {s.client_id!r}")
    out.append(f"protocol:         {'MQTT 5' if s.protocol_version == 5 else 'MQTT 3.1.1'}")
    out.append(f"clean session:    {s.clean_session}")
    out.append(f"expiry interval:  {shown}  (expired: {exp})")
    out.append(f"broker:           {s.broker or 'unknown'}")
    out.append(f"last connect:     {_when(s.connected_at)}; last disconnect: {_when(s.disconnected_at)}")
    for key, label in (("never_sent", "never sent"), ("in_flight", "in flight"),
                       ("incoming", "incoming QoS 2")):
        items = info[key]
        out.append(f"{label + ':':<18}{len(items)}")
        for m in items[:20]:
            extra = f" {m['phase']}" if "phase" in m else ""
            out.append(f"    id {m['packet_id']:>5} qos {m['qos']} {m['topic']!r} {m['bytes']} B{extra}")
        if len(items) > 20:
            out.append(f"    ... {len(items) - 20} more")
    out.append(f"subscriptions:    {len(s.subscriptions)}")
    for f, q in sorted(s.subscriptions.items()):
        out.append(f"    {f!r} qos {q}")
    out.append(f"payload bytes:    {info['payload_bytes']}")
    q = info["queue"]
    out.append(f"outgoing queue:   {q['messages']} messages, {q['bytes']} bytes (what MaxQueuedMessages"
               " / MaxQueuedBytes count)")
    if s.on_disk:
        out.append(f"    of which {s.on_disk} wait in the disk queue ({args.file}.queue/), never sent")
    out.append("sizes:            " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items()))
    return 0, out
