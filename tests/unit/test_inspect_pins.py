"""``mqttsession inspect`` pinned field by field, without a broker: the expiry line of each kind of
session, the listing cut at 20 messages, the sizes it reports (a link's own, the journal's), the
bound of standard input, a plain directory refused, and a gateway directory listed in client id
order, a damaged queue shown as ``?``, a read made again when a file went away under it."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttsession import Client, Gateway, recovery
from mqttsession.cli import main
from mqttsession.errors import StateError
from mqttsession.journal import JOURNAL_SUFFIX
from mqttsession.spool import QUEUE_SUFFIX


def _session(path: Path, protocol: int = 5, *, settings: tuple[str, ...] = (), count: int = 1,
             properties: Properties | None = None) -> Path:
    """A closed persistent session at ``path`` holding ``count`` never-sent QoS 1 messages."""
    c = Client(client_id="pins", clean_session=False, protocol_version=protocol)
    c.config(f"SessionStateFile={path}")
    for setting in settings:
        c.config(setting)
    c.restore_session("")
    for n in range(count):
        c.publish_message("pins/t", 1, f"m{n}", properties=properties)
    c.close()
    return path


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _expiry_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("expiry interval:"))


def test_an_mqtt_311_session_has_no_expiry(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """MQTT 3.1.1 (protocol 4): no interval is sent ("absent (0)") and expiry is "n/a"."""
    path = _session(tmp_path / "v4.state", protocol=4)
    code, text, _ = _inspect(capsys, str(path))
    assert code == 0
    assert "protocol:         MQTT 3.1.1" in text.splitlines(), text
    assert _expiry_line(text) == ("expiry interval:  absent (0)  (expired: n/a (MQTT 3.1.1"
                                  " sessions do not expire))"), text


@pytest.mark.parametrize(("setting", "shown"), [("4294967295", "never (0xFFFFFFFF)"),
                                                ("0", "0 s")])
def test_the_expiry_interval_set_is_shown_as_set(tmp_path: Path, setting: str, shown: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """0xFFFFFFFF is "never"; an interval of 0 set is "0 s" (set, not "unset"/"absent")."""
    path = _session(tmp_path / "v5.state", settings=(f"SessionExpInterval={setting}",))
    code, text, _ = _inspect(capsys, str(path))
    assert code == 0
    assert _expiry_line(text).startswith(f"expiry interval:  {shown}  (expired: "), text


@pytest.mark.parametrize("count", [20, 21])
def test_the_listing_shows_20_messages_then_how_many_more(
        tmp_path: Path, count: int, capsys: pytest.CaptureFixture[str]) -> None:
    """At most 20 messages of a kind are listed, then "... N more"; with nothing in the disk
    queue no "of which ... wait in the disk queue" line; each listed message shows its phase."""
    path = _session(tmp_path / "many.state", settings=("QueueInMemory=100",), count=count)
    code, text, _ = _inspect(capsys, str(path))
    assert code == 0
    lines = text.splitlines()
    assert f"never sent:       {count}" in lines, text
    listed = [line for line in lines if line.startswith("    id ")]
    assert len(listed) == 20 and all(line.endswith(" B queued") for line in listed), text
    assert [line for line in lines if line.startswith("    ...")] == (
        ["    ... 1 more"] if count == 21 else []), text
    assert not any(line.startswith("    of which") for line in lines), text
    code, out, _ = _inspect(capsys, str(path), "--json")
    first = json.loads(out)["never_sent"][0]
    assert first["phase"] == "queued" and isinstance(first["seq"], int), first


def test_queue_bytes_count_the_messages_properties(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The outgoing queue's bytes are what MaxQueuedBytes counts: payload, topic AND the packed
    MQTT 5 properties of each message."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("key", "a value of some length")]
    queue_bytes = []
    for name, p in (("plain", None), ("props", props)):
        path = _session(tmp_path / f"{name}.state", properties=p)
        code, out, _ = _inspect(capsys, str(path), "--json")
        assert code == 0
        queue_bytes.append(json.loads(out)["queue"]["bytes"])
    plain, with_props = queue_bytes
    assert with_props > plain + len("a value of some length"), queue_bytes


def test_sizes_are_the_journals_and_a_links_own(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``journal_bytes`` is the journal file's size (not the snapshot's); a symbolic link in the
    disk queue folder counts its own size, not its target's."""
    path = _session(tmp_path / "q.state", settings=("QueueInMemory=1",), count=5)
    queue = str(path) + QUEUE_SUFFIX
    big = tmp_path / "big"
    big.write_bytes(b"b" * 100_000)
    os.symlink(big, os.path.join(queue, "y.tmp"))  # (a name the disk queue ignores)
    journal = str(path) + JOURNAL_SUFFIX
    assert os.path.getsize(journal) != path.stat().st_size  # (else the test proves nothing)
    code, out, err = _inspect(capsys, str(path), "--json")
    assert code == 0, err
    sizes = json.loads(out)["sizes"]
    assert sizes["journal_bytes"] == os.path.getsize(journal), sizes
    expected = sum(os.lstat(os.path.join(queue, n)).st_size for n in os.listdir(queue))
    assert sizes["disk_queue_bytes"] == expected < 100_000, sizes


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_stdin_of_exactly_the_bound_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Standard input is refused only PAST the bound of a state file: a text of exactly
    ``MAX_STATE_BYTES`` is read and shown."""
    data = _session(tmp_path / "s.state").read_bytes()
    monkeypatch.setattr(recovery, "MAX_STATE_BYTES", len(data))
    monkeypatch.setattr("sys.stdin", _Stdin(data))
    code, out, err = _inspect(capsys, "-", "--json")
    assert code == 0, err
    assert json.loads(out)["sizes"]["input_bytes"] == len(data)


def test_a_plain_directory_is_refused_as_a_directory(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A directory that is not a gateway's (no shared log): exit 2, "is a directory"."""
    folder = tmp_path / "folder"
    folder.mkdir()
    code, out, err = _inspect(capsys, str(folder))
    assert (code, out, err) == (2, "", f"mqttsession: {folder}: is a directory, not a state file\n")


def _gateway(directory: Path) -> None:
    """A gateway directory whose sessions were made in the order b, a (one message each)."""
    with Gateway(directory) as gw:
        for cid in ("b", "a"):
            gw.client(cid, clean_session=False).publish_message("pins/t", 1, "m")


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith("    '")]


def test_a_gateway_listing_is_in_client_id_order_and_marks_a_damaged_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Sessions listed by client id (not the shared log's order); the one whose disk queue could
    not be read shows "?" as its count on disk; exit 2."""
    _gateway(tmp_path)
    real = recovery.with_queue

    def with_queue(st: Any, path: str) -> Any:
        if os.path.basename(path).startswith("b"):
            raise StateError("disk queue damaged (made up)")
        return real(st, path)

    monkeypatch.setattr(recovery, "with_queue", with_queue)
    code, text, _ = _inspect(capsys, str(tmp_path))
    assert code == 2
    assert _rows(text) == [["'a'", "1", "0", "0", "0", "0"], ["'b'", "1", "0", "0", "0", "?"]], text
    code, out, _ = _inspect(capsys, "--json", str(tmp_path))
    assert [s["client_id"] for s in json.loads(out)["sessions"]] == ["a", "b"]


def test_a_gateway_read_again_forgets_the_damage_of_the_first_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A queue file gone under the read (a live gateway's doing) makes the whole read again,
    not a damaged session; what the first read found damaged is not kept: exit 0, no error."""
    _gateway(tmp_path)
    real = recovery.with_queue
    calls: list[str] = []

    def with_queue(st: Any, path: str) -> Any:
        calls.append(path)
        if len(calls) == 1:  # 'a', first read
            raise StateError("disk queue damaged (made up, once)")
        if len(calls) == 2:  # 'b', first read
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(st, path)

    monkeypatch.setattr(recovery, "with_queue", with_queue)
    code, out, err = _inspect(capsys, "--json", str(tmp_path))
    assert code == 0, err
    sessions = json.loads(out)["sessions"]
    assert [s["client_id"] for s in sessions] == ["a", "b"]
    assert all("error" not in s for s in sessions), sessions
    assert len(calls) == 4, calls
