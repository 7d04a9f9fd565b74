"""A full disk under a live client (issue 10, point 1): a real tmpfs, mounted by the test.

The state file sits on a 256 KiB tmpfs. The disk is filled while the client holds messages in
flight; a publish then fails with ``PersistenceError``, the connection is cut, and every write
the network thread makes (the disconnect time, the CONNACK of each reconnect) fails too. No
exception may escape into paho's network thread: each failure is reported through
``on_error``, the connection is dropped without the dependent ack, and the client keeps retrying.
Once space is freed it reconnects by itself and delivers every message it had accepted.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import mqttsession
from mqttsession.errors import PersistenceError
from mqttsession.journal import read_state

try:  # tests/integration may or may not be a package
    from . import _procs
except ImportError:  # pragma: no cover - rootdir-relative import
    import _procs  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk() -> Iterator[str]:
    """A 256 KiB tmpfs, mounted for the test and unmounted after it (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where = tempfile.mkdtemp(prefix="mqs-disk-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", where],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def _fill(path: str) -> None:
    """Append to ``path`` until the file system has no space left."""
    with open(path, "ab", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


def test_full_disk_never_kills_the_network_thread(small_disk: str, mosquitto: Any,
                                                  mqtt_proxy_factory: Any) -> None:
    proxy = mqtt_proxy_factory(mosquitto)
    tag = _procs.unique("disk")
    topic = f"mqs/{tag}"
    counter = _procs.Counter(mosquitto.host, mosquitto.port, topic)
    state_file = os.path.join(small_disk, "session")
    filler = os.path.join(small_disk, "filler")
    c = mqttsession.Client(client_id=_procs.unique("gw"), clean_session=False)
    c.config(f"SessionStateFile={state_file}")
    c.config("ReconnectDelayMin=1")
    c.config("ReconnectDelayMax=1")
    log = _procs.EventLog(c)

    def text(n: int) -> str:
        return f"{tag}:{n:01500d}"  # 1.5 KB, still read as number n

    try:
        c.connect(proxy.host, proxy.port)
        for n in (1, 2):
            c.publish_message(topic, 1, text(n))
        assert c.flush(_procs.TIMEOUT)

        proxy.drop("c2s", "PUBLISH")  # what is accepted now stays in flight
        _fill(filler)
        accepted = []
        with pytest.raises(PersistenceError):
            for n in range(3, 200):
                c.publish_message(topic, 1, text(n))
                accepted.append(n)
        assert [_procs.number_of(tag, m.message) for m in c.outgoing_messages] == accepted
        _fill(filler)  # the failed write gave its pages back: take them too

        proxy.cut()  # on_disconnect now writes to the full disk
        log.wait("on_disconnected")
        errors = log.wait("on_error", 2)  # the disconnect record and a CONNACK, at least
        assert any("state file" in e.description for e in errors), errors
        connects_while_full = len(proxy.packets("c2s", "CONNECT"))
        _procs.wait_until(lambda: len(proxy.packets("c2s", "CONNECT")) >= connects_while_full + 2,
                          what="reconnect attempts while the disk is full")
        assert not c.connected

        proxy.clear_drops()
        os.unlink(filler)  # space again: the client resumes by itself
        _procs.wait_until(lambda: c.connected, what="reconnected after space was freed")
        assert c.flush(_procs.TIMEOUT)
        counter.wait_numbers(tag, [1, 2, *accepted])
    finally:
        c.close()
        counter.close()
    assert read_state(state_file).outgoing == {}
