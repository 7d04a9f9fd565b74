"""Pins of README.rst "Sessions and asyncio" / "Many sessions in one process" (a behaviour
audit): claims no other test would fail on, checked without a broker.

* the TLS context made from the paths: TLS 1.2 or later, the broker's certificate and host
  name checked;
* an ``AsyncSession`` given no options uses ``Options.from_env()``;
* the compaction bounds by default: a state file's journal 1 MiB, an ``AsyncGateway`` /
  ``Gateway`` session's records in the shared log 64 KiB;
* damage in the middle of ``sessions.log``: ``Gateway(state_dir)`` raises ``StateError``, keeps
  the log aside as ``sessions.log.damaged-<time>``, and every session starts over.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from mqttsession import AsyncSession, Gateway
from mqttsession.errors import StateError
from mqttsession.journal import Journal
from mqttsession.sharedlog import LOG_NAME, SharedLog


def test_the_tls_context_from_paths_is_tls_1_2_or_later_and_checks_the_host() -> None:
    """README: "The TLS context made from the paths (TLS 1.2 or later, the broker's
    certificate and host name checked)"."""
    from mqttsession import dialing  # noqa: PLC0415

    ctx = dialing.client_context(None, None, None)  # (no paths: the system's CAs)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert dialing.client_context(None, None, None) is ctx  # (made once, shared)


def test_an_async_session_given_no_options_reads_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "Entry points given no options use ``Options.from_env()``" (``AsyncSession``)."""
    monkeypatch.setenv("MQTTSESSION_ADDRESS", "192.0.2.7:1999")
    monkeypatch.setenv("MQTTSESSION_REQUEST_TIMEOUT", "7")
    monkeypatch.setenv("MQTTSESSION_KEEP_ALIVE", "17")
    s = AsyncSession(client_id="from-env")  # (not started: no network)
    assert s.options.address == "192.0.2.7:1999"
    assert s.options.request_timeout_seconds == 7
    assert s.options.keep_alive == 17


def test_the_default_compaction_bounds_are_1_mib_and_64_kib(tmp_path: Path) -> None:
    """README: compaction "by default once its journal passes 1 MiB, an ``AsyncGateway``
    session's once its records in the shared log pass 64 KiB"."""
    j = Journal(str(tmp_path / "s.session"), "cid", sync=False)
    try:
        j.recover()
        assert j.bound == 1024 * 1024
    finally:
        j.close()
    (tmp_path / "gw").mkdir()
    log = SharedLog(str(tmp_path / "gw"))
    try:
        view = log.session("dev")
        view.recover()
        assert view.bound == 64 * 1024
    finally:
        log.close()


def test_damage_in_the_middle_of_the_shared_log_starts_every_session_over(
        tmp_path: Path) -> None:
    """README: damage in the middle of ``sessions.log`` "makes ``Gateway(state_dir)`` raise
    ``StateError`` and keeps the whole log aside as ``sessions.log.damaged-<time>``, so every
    session starts over at the next start"."""
    d = tmp_path / "gw"
    with Gateway(d) as gw:
        for cid in ("a", "b", "c"):
            c = gw.client(cid, clean_session=False)
            for n in range(5):
                c.publish_data(f"t/{cid}", 1, b"x%d" % n)  # (offline: held in the store)
            c.close()
        assert gw.stored_sessions() == ["a", "b", "c"]
    log = d / LOG_NAME
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x20  # a byte gone bad in the middle, good frames after it
    log.write_bytes(bytes(data))
    with pytest.raises(StateError, match="damaged"):
        Gateway(d)
    kept = [p for p in d.iterdir() if p.name.startswith(LOG_NAME + ".damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)
    with Gateway(d) as gw:  # the next start: every session over, none restored
        assert gw.stored_sessions() == []
        c = gw.client("a", clean_session=False)
        assert c.queue_stats().messages == 0
