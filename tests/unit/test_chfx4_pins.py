"""Fixed entries of CHANGELOG.rst ("Unreleased", "Fixed") that no test held: each test here
fails with the fix taken back (the mutation each docstring names), without a broker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mqttsession import UsageError, _wire, codec
from mqttsession._wire import PacketType
from mqttsession.engine import Engine, EngineSettings
from mqttsession.errors import ProtocolViolation
from mqttsession.events import ErrorEvent
from mqttsession.spool import QUEUE_SUFFIX
from mqttsession.state import SessionState

try:  # tests/unit may or may not be a package
    from .test_engine import ack_in, connect, connected, incoming, make, notified, packets
    from .test_inspect_pins import _inspect, _session
except ImportError:  # pragma: no cover - rootdir-relative import
    from test_engine import (ack_in, connect, connected, incoming,  # type: ignore[no-redef]
                             make, notified, packets)
    from test_inspect_pins import _inspect, _session  # type: ignore[no-redef]


def test_messages_dropped_offline_leave_nothing_behind() -> None:
    """Soak hunt: ``drop-oldest`` (or expired messages making room) through a long outage kept
    every dropped message's seq in the list of seqs to write until the next connect (400,000
    drops: 14 MB more). This test was dropped from test_queue_limits.py by commit 1d7ff60.
    Mutation: ``Outgoing._dropped`` returns before it trims ``_pending``."""
    e = Engine(EngineSettings(max_queued_messages=10, queue_full_policy="drop-oldest"),
               SessionState(client_id="c", clean_session=False))
    for n in range(5000):
        e.publish(f"t/{n % 7}", b"x", 1, False)
    assert len(e.state.outgoing) == 10
    assert len(e._pending) <= 2 * 10 + 64  # noqa: SLF001
    expiring = _wire.pack_properties([(0x02, 1)])
    v5 = Engine(EngineSettings(max_queued_messages=10),
                SessionState(client_id="c", clean_session=False, protocol_version=5))
    for n in range(3000):  # each second's publishes expire the second before's
        v5.publish("t", b"x", 1, False, expiring, now=1000.0 + n / 5)
    assert len(v5._pending) <= 2 * len(v5.state.outgoing) + 64  # noqa: SLF001


@pytest.mark.parametrize("code", [0x80, 0x87, 0x97])
def test_a_refused_pubrec_reports_the_qos2_message_dropped(code: int) -> None:
    """MQTT 5: a QoS 2 message the broker refused (PUBREC reason code 0x80 or more) was
    reported delivered (``on_message_out``), with no ``on_message_dropped``, no ``on_error``
    and no count. Only the PUBACK case had a test. Mutation: ``_pubrec``'s refused flag
    ``True`` made ``False``."""
    e = connected(protocol=5)
    pid, _ = e.publish("t/q2", b"x", 2, False)
    out = e.receive(ack_in(PacketType.PUBREC, pid, reason=code, protocol=5))
    assert not notified(out, "on_message_out")
    assert [d.reason for d in notified(out, "on_message_dropped")] == ["refused"]  # type: ignore[attr-defined]
    assert [x.error_code for x in notified(out, "on_error")] == [code]  # type: ignore[attr-defined]
    assert not e.state.outgoing and e.queue_stats(0.0).dropped == 1
    assert not [p for p in packets(out, 5) if p.type is PacketType.PUBREL]


@pytest.mark.parametrize("codes", [[0], [0, 0, 0]], ids=["short", "long"])
def test_an_unsuback_with_the_wrong_number_of_codes_is_a_violation(codes: list[int]) -> None:
    """MQTT 5 UNSUBACK with fewer or more reason codes than filters (3.11.3): a protocol
    violation, the session unchanged, the UNSUBSCRIBE sent again on the next connection. Only
    the SUBACK case had a test. Mutation: ``_count(...)`` in ``unsuback`` made ``pass``."""
    e = connected(5)
    e.subscribe(["a/1", "b/2"], 1)
    (unsub,) = [p for p in packets(e.unsubscribe(["a/1", "b/2"]), 5)
                if p.type is PacketType.UNSUBSCRIBE]
    assert unsub.packet_id is not None
    with pytest.raises(ProtocolViolation, match="reason codes for 2 topic filters"):
        e.receive(incoming(_wire.encode_unsuback(unsub.packet_id, codes, protocol=5), 5))
    e.connection_lost(1.0, 0, "violation")
    again = packets(connect(e, session_present=True), 5)
    assert {f for p in again if p.type is PacketType.UNSUBSCRIBE for f in p.filters or ()} \
        == {"a/1", "b/2"}


@pytest.mark.parametrize("limit", ["qos", "retain"])
def test_publish_many_over_the_last_connacks_limits_is_usage_error(limit: str) -> None:
    """A new publish over the limits of the last CONNACK (Maximum QoS 1, Retain Available 0)
    is ``UsageError``, nothing stored [MQTT-3.2.2-11, 3.2.2-14]: ``publish_many`` too (only
    ``publish`` had a test). Mutation: the ``unsupported`` check in ``publish_many`` made
    ``if False``."""
    e = make(5)
    e.reset()
    e.connecting("broker:1883")
    e.connack(0, "", False, 65535, None, 0.0, limits=(1, True) if limit == "qos" else (2, False))
    e.lost_incoming()
    e.resume()
    item = ("t", b"x", 2, False, b"") if limit == "qos" else ("t", b"x", 1, True, b"")
    with pytest.raises(UsageError, match="cannot be sent"):
        e.publish_many([("t/ok", b"fine", 1, False, b""), item], 0.0)
    assert not e.state.outgoing


def test_an_unsubscribe_made_before_a_restore_is_not_sent() -> None:
    """"A restored session no longer sends an UNSUBSCRIBE made before ``restore_session``
    replaced the session": the restored session's own subscriptions go, nothing of the
    session it replaced. Mutation: ``Subscriptions.restored`` keeps the old
    ``_unsent_unsubs`` (``self._unsent_unsubs | {...}``)."""
    saved = make()
    saved.subscribe(["keep/#"], 1)
    text = codec.encode(saved.state)
    e = make()
    e.unsubscribe(["gone/#"])  # offline: waits for the next connection
    e.restore(codec.decode(text), 0.0)
    sent = packets(connect(e, session_present=True))
    assert not [p for p in sent if p.type is PacketType.UNSUBSCRIBE], sent
    assert [p.filters for p in sent if p.type is PacketType.SUBSCRIBE] == [("keep/#",)]


@pytest.mark.parametrize("code", [0x87, 0x97])
def test_a_refused_subscription_reports_the_subacks_reason_code(code: int) -> None:
    """``on_error`` for a refused subscription carries the SUBACK's reason code (MQTT 5: 0x87,
    0x97, ...), not always 0x80. Mutation: ``self._e.error(code, ...)`` in ``suback`` made
    ``self._e.error(0x80, ...)``."""
    e = connected(5)
    (sub,) = packets(e.subscribe(["ok/1", "no/2"], 1), 5)
    assert sub.packet_id is not None
    out = e.receive(incoming(_wire.encode_suback(sub.packet_id, [1, code], protocol=5), 5))
    errors = [x for x in notified(out, "on_error") if isinstance(x, ErrorEvent)]
    assert [x.error_code for x in errors] == [code] and "'no/2'" in errors[0].description
    assert "no/2" not in e.state.subscriptions and "ok/1" in e.state.subscriptions


def test_inspect_takes_a_dangling_link_in_the_disk_queue(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``inspect`` no longer fails on a dangling entry in the queue directory (its size is the
    link's own). Mutation: ``inspecting._size`` as ``os.stat(path).st_size`` without the
    ``FileNotFoundError`` guard (what ``os.path.getsize`` did)."""
    path = _session(tmp_path / "q.state", settings=("QueueInMemory=1",), count=3)
    queue = str(path) + QUEUE_SUFFIX
    link = os.path.join(queue, "gone.tmp")
    os.symlink(tmp_path / "nowhere", link)
    code, out, err = _inspect(capsys, str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["queue"]["messages"] == 3 and info["queue"]["on_disk"] == 2, info
    expected = sum(os.lstat(os.path.join(queue, n)).st_size for n in os.listdir(queue))
    assert info["sizes"]["disk_queue_bytes"] == expected, info
