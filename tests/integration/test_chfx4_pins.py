"""Fixed entries of CHANGELOG.rst ("Unreleased", "Fixed") that no test held: each test here
fails with the fix taken back (the mutation each docstring names)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mqttsession import Client, PublishManyError
from mqttsession.connecting import Connecting
from mqttsession.gateway import AsyncGateway
from mqttsession.sharedlog import SharedLog
from mqttsession.state import SessionState

from _powercut import DirRecorder, install
from test_interrupts import interrupt_at

pytestmark = pytest.mark.integration


def test_a_gateway_session_kept_aside_survives_a_power_cut(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """Power cuts and directories: a gateway's ``aside/`` folder, made when a session leaves
    the shared log (here: a record that does not apply), has its name synced in the gateway's
    directory before the session leaves the log; a power cut right after finds the session in
    ``aside/``. Mutation: ``SessionLog.keep_aside`` makes the folder with ``os.makedirs``
    instead of ``makedirs_durable`` (the folder gone at the cut, the session with it)."""
    base = tmp_path / "gw"
    base.mkdir()
    log = SharedLog(str(base))
    a = log.session("a")
    st = SessionState(client_id="a", clean_session=False)
    a.compact(st)
    rec = st.accept("t", b"one", 1)
    a.append([rec], st, sync=True)
    a.append([rec], st, sync=True)  # the same message twice: does not apply
    rec_os = DirRecorder(base)
    install(monkeypatch, rec_os)
    with pytest.raises(Exception, match="kept aside"):
        a.recover()
    rec_os.dir_image(tmp_path / "cut")
    log.close()
    rec_os.release()
    monkeypatch.undo()
    live = sorted(p.name for p in (base / "aside").iterdir())
    assert len(live) == 2, live  # the snapshot and its journal
    cut = tmp_path / "cut" / "aside"
    assert cut.is_dir(), sorted(str(p) for p in (tmp_path / "cut").rglob("*"))
    assert sorted(p.name for p in cut.iterdir()) == live
    assert all((cut / n).read_bytes() == (base / "aside" / n).read_bytes() for n in live)


def test_async_gateway_publish_many_with_a_forgotten_closed_session_fails_it_alone(
        tmp_path: Path) -> None:
    """``AsyncGateway.publish_many`` with a session closed and since forgotten (at the next
    ``session()``) raised ``UsageError`` and stored nothing; it fails alone
    (``PublishManyError``), the others stored. Only ``Gateway``'s had a test. Mutation: the
    check ``s._group is not self._sync`` made ``self._sessions.get(s.client_id) is not s``."""

    async def main() -> None:
        async with AsyncGateway(tmp_path / "agw") as gw:
            a = await gw.session("dev-a", connect=False)
            b = await gw.session("dev-b", connect=False)
            await b.close()
            await gw.session("dev-c", connect=False)  # dev-b leaves the gateway's map
            assert "dev-b" not in gw._sessions  # noqa: SLF001  (else this proves nothing)
            with pytest.raises(PublishManyError) as info:
                await gw.publish_many([(a, "t/a", 1, b"kept"), (b, "t/b", 1, b"closed")])
            assert info.value.ids[0] is not None and info.value.ids[1] is None
            assert [m.message for m in a.client.outgoing_messages] == [b"kept"]

    asyncio.run(main())


def test_an_interrupt_in_the_tcp_connect_leaves_no_connection_behind(mosquitto: Any) -> None:
    """"A ``connect()`` that fails in any way ... leaves no connection behind": Ctrl-C right
    after paho's TCP connect sent the CONNECT (before the network thread starts). The next
    ``connect()`` works; before, it was ``UsageError`` ("already connected" / "under way")
    for good. Mutation: ``_tcp_connect``'s ``except BaseException`` teardown made
    ``except ZeroDivisionError``."""
    c = Client(client_id="chfx4-tcp-kbi")
    try:
        with interrupt_at(Connecting._tcp_connect,
                          "self._check_ended(gen, conn, host, port)  # (ended in the TCP") \
                as fired, pytest.raises(KeyboardInterrupt):
            c.connect(mosquitto.host, mosquitto.port, 5)
        assert fired
        time.sleep(0.5)
        assert not c.connected
        assert not [t for t in threading.enumerate()
                    if t.name.startswith("paho-mqtt-client-chfx4-tcp-kbi")]
        c.connect(mosquitto.host, mosquitto.port, 5)
        assert c.connected
    finally:
        c.close()
