"""State files in a directory other users share (/tmp, sticky): what another user plants is
refused, never restored nor written into (a security hunt; each case failed before its fix):

* a symlink planted at the disk queue's directory ``P.queue`` was followed: the never-sent
  messages' segments were made in the directory it named (another user's);
* a ``P.queue`` directory another user made (mode 0777) was used as it was; one of ours with a
  wider mode is narrowed to 0700;
* a state file and journal another user made (mode 0666) were restored (their planted message
  sent as ours) and our next record appended to them (readable by that user);
* a gateway directory of another user's was used; a new one was made mode 0755 under umask 022
  (``recovery.makedirs_durable`` gave 0700 to the last directory only).

Cases with another user's files need root (``chown``); they are skipped otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mqttsession import Client, StateError
from mqttsession.gateway import Gateway

pytestmark = pytest.mark.integration

OTHER = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="another user's files need root (chown)")


def _client(path: Path, cid: str = "shared") -> Client:
    c = Client(client_id=cid, clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.config("QueueInMemory=2")  # past 2 never-sent messages: the disk queue
    return c


def _stored(state: Path) -> None:
    """A stored session at ``state`` holding one message (in memory: no disk queue yet)."""
    c = _client(state)
    try:
        c.restore_session("")
        c.publish_message("t/x", 1, "first")
    finally:
        c.close()


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_a_symlink_at_the_disk_queue_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir(mode=0o777)
    state = tmp_path / "s"
    _stored(state)
    os.symlink(elsewhere, f"{state}.queue")
    c = _client(state)
    try:
        with pytest.raises(StateError, match="symbolic link"):
            c.restore_session("")
    finally:
        c.close()
    late = _client(tmp_path / "t", "late")  # planted after the restore found no queue
    try:
        late.restore_session("")
        os.symlink(elsewhere, f"{tmp_path / 't'}.queue")
        with pytest.raises(StateError, match="symbolic link"):
            for i in range(5):
                late.publish_message("t/x", 1, f"private {i}")
        assert late.queue_stats().messages == 2  # the two in memory, nothing else taken
    finally:
        late.close()
    assert os.listdir(elsewhere) == []


def test_our_disk_queue_directory_is_narrowed_to_0700(tmp_path: Path) -> None:
    state = tmp_path / "s"
    c = _client(state)
    try:
        c.restore_session("")
        for i in range(5):
            c.publish_message("t/x", 1, f"m{i}")
    finally:
        c.close()
    queue = Path(f"{state}.queue")
    assert _mode(queue) == 0o700
    os.chmod(queue, 0o777)
    again = _client(state)
    try:
        again.restore_session("")
        assert again.queue_stats().messages == 5 and _mode(queue) == 0o700
    finally:
        again.close()


@as_root
def test_another_users_disk_queue_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    _stored(state)
    queue = Path(f"{state}.queue")
    queue.mkdir(mode=0o777)
    os.chown(queue, OTHER, OTHER)
    c = _client(state)
    try:
        with pytest.raises(StateError, match=f"uid {OTHER}"):
            c.restore_session("")
    finally:
        c.close()
    assert os.listdir(queue) == [] and os.lstat(queue).st_uid == OTHER


@as_root
def test_another_users_state_file_is_neither_restored_nor_written(tmp_path: Path) -> None:
    state = tmp_path / "s"
    planter = _client(state, "victim")  # the planted session: a message to send "as ours"
    try:
        planter.restore_session("")
        planter.publish_message("cmd/unlock", 1, "planted")
    finally:
        planter.close()
    for p in (state, Path(f"{state}.journal")):
        if p.exists():
            os.chown(p, OTHER, OTHER)
            os.chmod(p, 0o666)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    c = _client(state, "victim")
    try:
        with pytest.raises(StateError, match=f"uid {OTHER}"):
            c.restore_session("")
        assert not c.outgoing_messages
    finally:
        c.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()
            if p.is_file() and p.name in before} == before
    assert os.lstat(state).st_uid == OTHER and _mode(state) == 0o666


def test_a_new_gateway_directory_is_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Gateway(tmp_path / "a" / "gw"):
            pass
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "gw") == 0o700 and _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "gw" / "queues") == 0o700


@as_root
def test_another_users_gateway_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "gw"
    with Gateway(d) as gw:
        gw.client("dev").publish_message("t/x", 1, "held")
    os.chown(d, OTHER, OTHER)
    with pytest.raises(StateError, match=f"uid {OTHER}"):
        Gateway(d)
    theirs = tmp_path / "theirs"  # (review: ``queues`` was made in it before the refusal)
    theirs.mkdir(mode=0o777)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(StateError, match=f"uid {OTHER}"):
        Gateway(theirs)
    assert os.listdir(theirs) == []
    os.chown(d, 0, 0)
    os.chown(d / "sessions.log", OTHER, OTHER)
    with pytest.raises(StateError, match=f"uid {OTHER}"):
        Gateway(d)
    os.chown(d / "sessions.log", 0, 0)
    with Gateway(d) as gw:  # (nothing was moved aside: all there once it is ours again)
        assert gw.client("dev").queue_stats().messages == 1


def test_a_gateway_path_through_a_new_directory_and_dotdot_works(tmp_path: Path) -> None:
    """``Gateway("base/app/../gw")`` with ``app`` not made yet: made as ``os.makedirs`` makes
    it (review: the 0700 rewrite of ``makedirs_durable`` refused it, "not a directory")."""
    with Gateway(f"{tmp_path}/app/../gw") as gw:
        gw.client("dev").publish_message("t/x", 1, "held")
    with Gateway(tmp_path / "gw") as gw:
        assert gw.client("dev").queue_stats().messages == 1
