"""Pins for CHANGELOG "Unreleased / Fixed" entries whose fix no other test failed without
(found by putting each bug back, session chfx3). Each test names its entry and the mutation
that fails it."""

from __future__ import annotations

import inspect
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import _wire
from mqttsession._paho import PahoConnection
from mqttsession._wire import PacketType
from mqttsession.actions import EngineSettings, Persist, Write
from mqttsession.engine import Engine
from mqttsession.errors import NewerFormatError
from mqttsession.mapped import MappedTail
from mqttsession.spool import Spool
from mqttsession.state import Reserved, SessionState

from ._support import at_line


def _connected(**settings: Any) -> Engine:
    """An engine for a persistent session, CONNACK'd with SessionPresent=0."""
    state = SessionState()
    state.configure(client_id="c", clean_session=False, protocol_version=4)
    e = Engine(EngineSettings(**settings), state)
    _connack(e, False)
    return e


def _connack(e: Engine, present: bool) -> None:
    e.reset()
    e.connecting("broker:1883")
    e.connack(0, "", present, 65535, None, 0.0)
    e.lost_incoming()
    e.resume()


def _reserved(actions: list[Any]) -> list[tuple[int, int]]:
    return [(r.first, r.last) for a in actions if isinstance(a, Persist)
            for r in a.records if isinstance(r, Reserved)]


def _published_ids(actions: list[Any]) -> list[int]:
    return [p.packet_id for p in (_wire.decode_packet(a.packet, 4) for a in actions
                                  if isinstance(a, Write)) if p.type == PacketType.PUBLISH]


def test_an_id_given_at_send_time_that_was_the_last_ones_again_is_reserved() -> None:
    """CHANGELOG "``SessionSync=interval``: ... or an id given at send time that was the last
    one's again, wrote no ``Reserved`` record". Every id held (1..65535, the last 65535), the
    reservation given up by a disconnect, a message published with no id free; the PUBACK of
    65535 frees the only id, 65535, given at send time: ``last_packet_id`` is back where it
    was, and the id must lie in a synced reservation before its PUBLISH. Fails with
    ``outgoing.py``'s send-time ``self._reserve(before, 0)`` given
    ``handed=self.state.last_packet_id != before`` (the old ``last == before`` test)."""
    e = _connected(reserve_packet_ids=256, max_inflight=65535)
    ids, _ = e.publish_many([("t", b"%d" % i, 1, False, b"") for i in range(65535)], 1.0)
    assert (ids[0], ids[-1], e.state.last_packet_id) == (1, 65535, 65535)
    e.disconnect(time.time())
    e.closed()
    assert e.state.reserved_first == 0  # every record on disk: no reservation
    _connack(e, True)
    pid, _ = e.publish("t", b"extra", 1, False)
    assert pid == 0  # no id free: it waits for one
    out = e.receive(_wire_ack(65535))
    assert _published_ids(out) == [65535]
    assert _reserved(out), "the id handed out at send time lies in no reservation"
    assert e.state.covers(65534, 65535)  # (the id after 65534 up to 65535: reserved)
    kinds = [type(a).__name__ for a in out]
    assert kinds.index("Persist") < kinds.index("Write")  # reserved before the PUBLISH


def _wire_ack(pid: int) -> Any:
    data = _wire.encode_ack(PacketType.PUBACK, pid, protocol=4)
    return _wire.decode_packet(data, 4)


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_an_interrupt_anywhere_in_unmapping_leaves_no_closed_map(tmp_path: Path) -> None:
    """CHANGELOG "Ctrl-C inside the disk queue's unmapping left a closed mapping: every later
    publish into the queue raised a raw ``ValueError`` ... (``MappedTail.drop`` forgets the
    map before closing it)". A Ctrl-C at each line of ``drop`` in turn, then the next ``put``
    works (mapped again or written). The integration pin passes without the fix: the
    publish's take-back calls ``drop`` again. Fails with ``drop`` as
    ``self._map.close(); self._map = None`` (the old order)."""
    path = tmp_path / "seg"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = 4 * mmap.PAGESIZE
        os.ftruncate(fd, size)
        tail = MappedTail()
        if not tail.put(fd, size, 0, b"first"):
            pytest.skip("this file system is not mapped (written instead)")
        src, first = inspect.getsourcelines(MappedTail.drop)
        fired_lines = 0
        for line in range(first + 1, first + len(src)):
            assert tail.put(fd, size, 0, b"again")  # (mapped: drop has a map to unmap)
            with at_line(MappedTail.drop, line, _interrupt, tail) as fired:
                try:
                    tail.drop()
                except KeyboardInterrupt:
                    pass
            fired_lines += bool(fired)
            tail.put(fd, size, 16, b"after")  # before the fix: ValueError (mmap closed)
        assert fired_lines >= 2
        tail.drop()
        assert os.pread(fd, 5, 16) == b"after"
    finally:
        os.close(fd)


def test_a_disk_queue_record_of_a_newer_version_is_newer_format_error() -> None:
    """CHANGELOG "(review of this release's fixes) ... a disk-queue record of a newer version
    raised a plain ``StateError``, now ``NewerFormatError``" (a downgrade leaves the files in
    place, not kept aside as damaged). A queue frame holding a record kind unknown here (a
    lower-case binary tag in a CRC-checked frame). Fails with ``Spool._message`` re-raising
    ``StateError(...)`` instead of ``type(exc)(...)``."""
    with pytest.raises(NewerFormatError, match="q-1.seg"):
        Spool._message(b"z\x00\x01newer", "q-1.seg")  # noqa: SLF001


class _NoHooks:
    """The hooks a connection that never connects asks for (none)."""


def test_no_network_thread_starts_once_the_connection_was_ended() -> None:
    """CHANGELOG "``close()`` racing ``connect()`` as paho's network thread was made but not
    yet started ...: ``loop_stop`` waits for a ``loop_start`` under way, and no network thread
    starts once the connection was ended". ``loop_stop()`` (a close) came first: the connect's
    ``loop_start()`` refuses, no paho thread runs. Fails with ``PahoConnection.loop_start``'s
    ``if self.ended`` check removed."""
    conn = PahoConnection(_NoHooks(), "ended-first", 4, True)  # type: ignore[arg-type]
    before = {t.ident for t in threading.enumerate()}
    conn.loop_stop()
    try:
        with pytest.raises(ConnectionAbortedError):
            conn.loop_start()
        started = [t.name for t in threading.enumerate()
                   if t.ident not in before and t.name.startswith("paho")]
        assert started == []
    finally:
        if conn._thread is not None:  # noqa: SLF001  (the bug back: stop what it started)
            conn._thread_terminate = True  # noqa: SLF001
            conn._thread.join(5)  # noqa: SLF001
