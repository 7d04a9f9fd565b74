"""Acceptance pins (audit B) for resolved issues 10, 11 and 12 whose points had no test that would
fail if they regressed; no broker needed:

* issue 10, point 15: a paho-mqtt older than the claimed 2.2 gets an ImportError naming 2.2;
* issue 11, point 6: the dead code named by the issue stays removed;
* issue 12, point 7: a state file of an earlier format is read and migrated on the first write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mqttsession import Client, codec
from mqttsession.journal import read_state

from ._support import text_from_obj


def test_an_older_paho_gets_an_import_error_naming_2_2() -> None:
    """Issue 10, point 15: "an older paho gets an ImportError naming 2.2" (paho 2.0 / 2.1 say
    so in ``paho.mqtt.__version__``). The guard had gone with an import it protected (an
    acceptance audit)."""
    code = textwrap.dedent("""
        import paho.mqtt
        paho.mqtt.__version__ = "2.1.0"
        try:
            import mqttsession  # noqa: F401
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ImportError:") and "2.2" in out.stdout, out.stdout


def test_the_dead_code_named_by_issue_11_stays_removed() -> None:
    """Issue 11, point 6: ``PahoConnection.socket_open``, ``MQTTProxy.wait_for_connections``,
    ``raw.REASON_STRING`` and ``proxy._DIRECTIONS`` are gone."""
    from mqttsession import _paho
    from mqttsession.compat import raw
    from mqttsession.testing import proxy

    assert not hasattr(_paho.PahoConnection, "socket_open")
    assert not hasattr(proxy.MQTTProxy, "wait_for_connections")
    assert not hasattr(raw, "REASON_STRING")
    assert not hasattr(proxy, "_DIRECTIONS")


@pytest.mark.parametrize("version", [1, 2])
def test_a_state_file_of_an_older_format_is_read_and_migrated_on_the_first_write(
        tmp_path: Path, version: int) -> None:
    """Issue 12, point 7: a state file written in format 1 or 2 is restored with its messages,
    and after the first write the file is in today's format and holds them all."""
    made = Client(client_id="gw", clean_session=False)
    made.publish_message("t/a", 1, "one")
    state = codec.decode(made.save_session())
    made.close()
    path = tmp_path / "s"
    path.write_text(text_from_obj(codec.state_to_obj(state, version=version), version=version))

    c = Client(client_id="gw", clean_session=False)
    c.config(f"SessionStateFile={path}")
    try:
        c.restore_session("")
        assert [(m.topic, m.message) for m in c.outgoing_messages] == [("t/a", b"one")]
        c.publish_message("t/b", 1, "two")
    finally:
        c.close()
    assert path.read_text().startswith(f'{{"format":"mqttsession","version":{codec.VERSION},')
    assert [(m.topic, m.payload) for m in read_state(str(path)).outgoing.values()] == \
        [("t/a", b"one"), ("t/b", b"two")]
    again = Client(client_id="gw", clean_session=False)
    again.config(f"SessionStateFile={path}")
    try:
        again.restore_session("")
        assert [m.message for m in again.outgoing_messages] == [b"one", b"two"]
    finally:
        again.close()


def test_a_restart_reads_no_sealed_segment_past_the_read_back_point(tmp_path: Path) -> None:
    """Issue 12, point 1: a restart reads the segments' names, not the queue ("at most two
    segments: the one being read back and the open one"); sealed segments further on may hold
    anything until the drain reaches them: restoring reports nothing and counts every message."""
    path = tmp_path / "s"

    def client() -> Client:
        c = Client(client_id="gw", clean_session=False)
        c.config(f"SessionStateFile={path}")
        c.config("QueueInMemory=1")
        c.config("QueueSegmentBytes=4096")
        return c

    c = client()
    c.restore_session("")
    for n in range(200):
        c.publish_data("t/q", 1, b"%03d" % n + b"x" * 97)
    c.close()
    queue = Path(f"{path}.queue")
    sealed = sorted(p for p in queue.iterdir() if p.name.endswith(".seg"))
    assert len(sealed) >= 4, sealed
    for seg in sealed[1:]:  # the same size (as its name says), every frame garbage
        seg.write_bytes(b"\xff" * seg.stat().st_size)

    again = client()
    errors: list[object] = []
    again.on_error = errors.append
    try:
        again.restore_session("")
        assert again.queue_stats().messages == 200
        assert errors == []
        assert sorted(queue.iterdir()) == sorted([*sealed, *queue.glob("*.open")])
    finally:
        again.close()
