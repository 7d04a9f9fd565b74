"""Calls made inside event callbacks (a callbacks hunt; each case failed before its fix), on
mosquitto:

* a gateway session's ``flush()`` of another, unconnected session inside a callback (the
  gateway's loop thread, which would have to connect it) blocked every session of the
  gateway, for good without a timeout: ``UsageError`` at once, as for a connected one;
* ``mesh.Session.close()`` inside a callback raised only after marking the session closed
  (never disconnected, a second ``close()`` did nothing): ``UsageError`` before anything;
* ``mesh.Session.subscribe()`` inside a callback blocked the network thread for the whole
  request timeout, then said "no SUBACK" though the subscription worked: it does not wait;
* an ``on_connected`` slower than ``connect()``'s timeout was reported as "no CONNACK".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, ConnectError, Gateway, Options, UsageError
from mqttsession.mesh import Connection

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def test_flush_of_an_unconnected_gateway_session_in_a_callback_is_refused(
        mosquitto: Any, tmp_path: Path) -> None:
    topic = f"mqs/{_procs.unique('gwf')}"
    with Gateway(tmp_path / "gw") as gw:
        a, b = gw.client("a"), gw.client("b")
        b.publish_data("o/x", 1, b"held")  # b: never connected, one message held
        got: list[object] = []
        done = threading.Event()

        def on_in(_e: Any) -> None:
            try:
                got.append(b.flush(5))
            except UsageError as exc:
                got.append(exc)
            done.set()

        a.on_message_in = on_in
        a.connect(mosquitto.host, mosquitto.port)
        a.subscribe(topic, 1)
        time.sleep(0.3)
        started = time.monotonic()
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "go")])
        assert done.wait(_procs.TIMEOUT)
        assert isinstance(got[0], UsageError), got
        assert time.monotonic() - started < 4  # (before: the whole flush timeout, 5 s)
        b.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert b.flush(_procs.TIMEOUT)


def test_mesh_close_and_subscribe_inside_a_callback(mosquitto: Any) -> None:
    conn = Connection(Options(address=mosquitto.address, request_timeout_seconds=4))
    s = conn.create_session()
    topic = f"mqs/{_procs.unique('mesh')}"
    results: list[object] = []

    def on_out(_e: Any) -> None:
        if results:
            return
        started = time.monotonic()
        s.subscribe(f"{topic}/more", 1)  # (before: 4 s, then "no SUBACK")
        results.append(time.monotonic() - started)
        try:
            s.close()
        except UsageError as exc:
            results.append(exc)

    s.client.on_message_out = on_out
    s.open()
    for i in range(3):
        s.publish(topic, f"m{i}", qos=1)
    deadline = time.monotonic() + _procs.TIMEOUT
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert results[0] < 2, results  # type: ignore[operator]
    assert isinstance(results[1], UsageError), results
    assert s.is_open and s.client.connected  # nothing changed by the refused close
    _procs.publish_direct(mosquitto.host, mosquitto.port, f"{topic}/more", [(1, "after")])
    m = s.receive(_procs.TIMEOUT)
    assert m is not None and m.message == b"after"
    s.close()
    assert not s.client.connected


def test_a_slow_on_connected_is_named_not_a_missing_connack(mosquitto: Any) -> None:
    c = Client(client_id=_procs.unique("slow"), clean_session=True)
    c.on_connected = lambda _e: time.sleep(2)
    try:
        with pytest.raises(ConnectError, match="on_connected") as err:
            c.connect(mosquitto.host, mosquitto.port, timeout=0.5)
        assert "no CONNACK" not in str(err.value)
        c.on_connected = None
        c.connect(mosquitto.host, mosquitto.port, timeout=5)
        assert c.connected
    finally:
        c.close()


def test_close_inside_on_message_in_acknowledges_the_message_first(
        mosquitto: Any, tmp_path: Path) -> None:
    """``close()`` inside ``on_message_in`` runs once the message's PUBACK is written (the
    callback's thread is delivering it): the broker does not send it again to the next
    session of that id. (Closed at once, the DISCONNECT went before the PUBACK and the
    next session got the message again: a lifecycle mutation hunt's gap.)"""
    topic = f"mqs/{_procs.unique('closein')}"
    cid, state = _procs.unique("closein"), str(tmp_path / "sub")
    got: list[bytes] = []
    closed = threading.Event()
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={state}")

    def on_in(e: Any) -> None:
        got.append(e.message)
        c.close()
        closed.set()

    c.on_message_in = on_in
    c.connect(mosquitto.host, mosquitto.port, timeout=10)
    c.subscribe(topic, 1)
    assert c.flush(_procs.TIMEOUT)
    _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "once")])
    assert closed.wait(_procs.TIMEOUT)
    deadline = time.monotonic() + _procs.TIMEOUT  # (the close runs after the callback)
    while c._file.journal is not None and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    again: list[bytes] = []
    d = Client(client_id=cid, clean_session=False)
    try:
        d.config(f"SessionStateFile={state}")
        d.restore_session("")
        d.on_message_in = lambda e: again.append(e.message)
        d.connect(mosquitto.host, mosquitto.port, timeout=10)
        _procs.publish_direct(mosquitto.host, mosquitto.port, topic, [(1, "after")])
        deadline = time.monotonic() + _procs.TIMEOUT
        while b"after" not in again and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        d.close()
    assert got == [b"once"]
    assert again == [b"after"], again  # (not b"once" again first)
