"""``Client.config()``: each setting's range ends (accepted / refused), the parsing of its
booleans, integers, durations and words, and the setters' own rules. No broker: where a rule
depends on a connection, a stand-in connection object or a recorder of the driver call is
used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttsession import Client, StateError, UsageError
from mqttsession._config import RESERVED_IDS
from mqttsession.recovery import load


@pytest.fixture
def c() -> Iterator[Client]:
    client = Client(client_id="pins")
    yield client
    client._driver.conn = None  # noqa: SLF001 - a stand-in connection never outlives a test
    client.close()


# (setting, lowest, highest) as ``config()`` documents them
INT_RANGES = [
    ("MaxInflight", 1, 2**31),
    ("WillQOS", 0, 2),
    ("ReceiveMaximum", 1, 65535),
    ("MaxQueuedMessages", 0, 2**62),
    ("MaxQueuedBytes", 0, 2**62),
    ("QoS0BacklogBytes", 0, 2**62),
    ("QueueInMemory", 0, 2**31),
    ("QueueSegmentBytes", 4096, 2**30),
    ("SessionSyncInterval", 1, 3_600_000),
    ("FailoverRepublish", 0, 65535),
    ("SessionExpInterval", 0, 0xFFFFFFFF),
    ("ProtocolVersion", 4, 5),
    ("JournalMaxBytes", 0, 2**31),  # the default range of an integer setting
    ("MaxMessageSize", 0, 2**31),
    ("DrainRateLimit", 0, 2**31),
]


@pytest.mark.parametrize(("name", "lo", "hi"), INT_RANGES, ids=[r[0] for r in INT_RANGES])
def test_integer_setting_range_ends(c: Client, name: str, lo: int, hi: int) -> None:
    """Both ends of a setting's range are taken and read back; one past either is refused,
    naming the setting, and changes nothing."""
    for value in (lo, hi):
        c.config(f"{name}={value}")
        assert c.config(name) == str(value)
    for value in (lo - 1, hi + 1):
        with pytest.raises(UsageError, match=name):
            c.config(f"{name}={value}")
        assert c.config(name) == str(hi)


@pytest.mark.parametrize(("text", "expected"), [
    ("true", "True"), ("1", "True"), ("yes", "True"), ("on", "True"), (" YES ", "True"),
    ("false", "False"), ("0", "False"), ("no", "False"), ("off", "False"), (" Off\t", "False"),
])
def test_every_boolean_word(c: Client, text: str, expected: str) -> None:
    """A boolean setting takes true/1/yes/on and false/0/no/off, any case, spaces around."""
    for name in ("Retain", "WillRetain", "FollowServerReference"):
        c.config(f"{name}={'False' if expected == 'True' else 'True'}")
        c.config(f"{name}={text}")
        assert c.config(name) == expected


def test_integer_words_may_have_spaces_around(c: Client) -> None:
    c.config("MaxInflight= 7 ")
    assert c.config("MaxInflight") == "7"


def test_a_duration_of_zero_is_taken(c: Client) -> None:
    """A float setting's range starts at 0 itself (RepublishInterval=0: only on reconnect)."""
    c.config("RepublishInterval=2.5")
    c.config("RepublishInterval=0")
    assert c.config("RepublishInterval") == "0"
    c.config("RepublishInterval=0.25")
    assert c.config("RepublishInterval") == "0.25"


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("ReleasedOnSessionLost", " DROP ", "drop"),
    ("ReleasedOnSessionLost", "Republish", "republish"),
    ("SessionSync", " Interval ", "interval"),
    ("SessionSync", "NONE", "none"),
    ("QueueFullPolicy", " Drop-Oldest ", "drop-oldest"),
])
def test_word_settings_ignore_case_and_spaces(c: Client, name: str, text: str,
                                              expected: str) -> None:
    c.config(f"{name}={text}")
    assert c.config(name) == expected


def test_an_empty_topic_delimiter_is_refused(c: Client) -> None:
    with pytest.raises(UsageError, match="TopicDelimiter"):
        c.config("TopicDelimiter=")
    assert c.config("TopicDelimiter") == ","
    c.config("TopicDelimiter=;")
    assert c.config("TopicDelimiter") == ";"


def test_protocol_version_setting_reaches_the_session(c: Client) -> None:
    c.config("ProtocolVersion=5")
    assert c.config("ProtocolVersion") == "5" and c.protocol_version == 5
    c.config("ProtocolVersion=4")
    assert c.config("ProtocolVersion") == "4" and c.protocol_version == 4


def test_packet_ids_are_reserved_only_for_interval_sync_with_a_state_file(
        c: Client, tmp_path: Path) -> None:
    """SessionSync=interval reserves packet ids in the state file; without a file, or under
    always / none, there is nothing to reserve — in whichever order the two are set."""
    def reserved() -> int:
        return c._engine_settings.reserve_packet_ids  # noqa: SLF001

    c.config("SessionSync=interval")
    assert reserved() == 0  # no state file yet
    c.config(f"SessionStateFile={tmp_path / 'session'}")
    assert reserved() == RESERVED_IDS
    c.config("SessionSync=always")
    assert reserved() == 0
    c.config("SessionSync=interval")
    assert reserved() == RESERVED_IDS
    c.config("SessionStateFile=")
    assert reserved() == 0


def test_manual_ack_cannot_change_while_connected(c: Client) -> None:
    """ManualAck set to what it is passes while connected; a change is refused."""
    c._driver.conn = object()  # type: ignore[assignment]  # noqa: SLF001 - stands for one
    c.config("ManualAck=False")
    with pytest.raises(UsageError, match="ManualAck cannot change while connected"):
        c.config("ManualAck=True")
    assert c.config("ManualAck") == "False"
    c._driver.conn = None  # noqa: SLF001
    c.config("ManualAck=True")
    c._driver.conn = object()  # type: ignore[assignment]  # noqa: SLF001
    with pytest.raises(UsageError, match="ManualAck cannot change while connected"):
        c.config("ManualAck=False")  # turning it off is a change too
    assert c.config("ManualAck") == "True"


def test_session_expiry_zero_while_connected_is_allowed(c: Client) -> None:
    """Connected under MQTT 5 with no expiry sent: 0 may be set (only 0 -> more is refused)."""
    c.config("ProtocolVersion=5")
    c._driver.conn = object()  # type: ignore[assignment]  # noqa: SLF001
    c._engine.sent_expiry = 0  # noqa: SLF001 - this connection's CONNECT carried none
    c.config("SessionExpInterval=0")
    assert c.config("SessionExpInterval") == "0"
    with pytest.raises(UsageError, match="SessionExpInterval cannot go from 0"):
        c.config("SessionExpInterval=5")


def test_only_a_lowered_sync_interval_rearms_the_timer(c: Client,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync armed under the old SessionSyncInterval is armed again only when the new one is
    shorter: the same or a longer one would put it off past its promise."""
    calls: list[int] = []
    monkeypatch.setattr(c._driver, "rearm_sync_timer", lambda: calls.append(1))  # noqa: SLF001
    c.config("SessionSyncInterval=1000")  # the default: not lowered
    c.config("SessionSyncInterval=2000")
    assert calls == []
    c.config("SessionSyncInterval=500")
    assert calls == [1]


@pytest.mark.parametrize("name", ["AutoReconnect=false", "ReconnectDelayMin=2",
                                  "ReconnectDelayMax=60"])
def test_reconnect_settings_reach_the_live_connection(c: Client, name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(c._driver, "reconnecting", lambda: calls.append(1))  # noqa: SLF001
    c.config(name)
    assert calls == [1]


def test_a_lowered_drain_rate_caps_the_tokens(c: Client) -> None:
    """DrainRateLimit lowered: the bucket holds no more than a second of the new rate; tokens
    already below it stay; 0 (no limit) leaves them."""
    engine = c._engine  # noqa: SLF001
    engine._tokens = 100.0  # noqa: SLF001
    c.config("DrainRateLimit=5")
    assert engine._tokens == 5.0  # noqa: SLF001
    engine._tokens = 2.0  # noqa: SLF001
    c.config("DrainRateLimit=10")
    assert engine._tokens == 2.0  # noqa: SLF001
    engine._tokens = 50.0  # noqa: SLF001
    c.config("DrainRateLimit=0")
    assert engine._tokens == 50.0  # noqa: SLF001


def test_queue_segment_bytes_reaches_an_open_disk_queue(c: Client, tmp_path: Path) -> None:
    c.config(f"SessionStateFile={tmp_path / 'session'}")
    c.publish_message("t", 1, "held")  # a session holding a message: its file opens at once
    spool = c._file.spool  # noqa: SLF001
    assert spool is not None
    c.config("QueueSegmentBytes=8192")
    assert spool.segment_bytes == 8192


def test_session_expiry_may_rise_while_connected_under_mqtt_3(c: Client) -> None:
    """The 0 -> more refusal is MQTT 5's (a DISCONNECT carrying it); 3.1.1 sends none."""
    c._driver.conn = object()  # type: ignore[assignment]  # noqa: SLF001
    c._engine.sent_expiry = 0  # noqa: SLF001
    c.config("SessionExpInterval=5")
    assert c.config("SessionExpInterval") == "5"


def test_session_expiry_is_kept_in_the_state_file(tmp_path: Path) -> None:
    """SessionExpInterval is session state: a restore from the file gives it back."""
    path = tmp_path / "s"
    a = Client(client_id="exp", clean_session=False)
    a.config(f"SessionStateFile={path}")
    a.restore_session("")
    a.config("SessionExpInterval=77")
    # in the file at once, not at close (a kill -9 now keeps it): read while ``a`` holds it
    there = load(str(path), "exp", StateError, read_only=True)[0]
    assert there.session_expiry_interval == 77
    a.close()
    b = Client(client_id="exp", clean_session=False)
    b.config(f"SessionStateFile={path}")
    b.restore_session("")
    try:
        assert b.config("SessionExpInterval") == "77"
    finally:
        b.close()


def test_state_file_path_is_stripped(c: Client, tmp_path: Path) -> None:
    c.config(f"SessionStateFile=  {tmp_path / 'session'}  ")
    assert c.config("SessionStateFile") == str(tmp_path / "session")
