"""Misuse that used to pass silently or fail obscurely (issue 15 point 7), no broker needed:

* after ``close()`` (or the end of a ``with`` block) ``publish_data`` / ``publish_message`` /
  ``publish_many`` / ``subscribe`` / ``unsubscribe`` / ``connect`` / ``restore_session`` /
  ``save_session`` raise
  ``UsageError``, and the released state file is not written again (a publish after close used to
  reopen it and append); ``close()`` stays idempotent. The same for a ``Session`` closed before it
  was opened, and an ``AsyncSession``;
* a ``SessionStateFile`` whose directory does not exist: ``UsageError`` naming the directory
  (it was ``PersistenceError`` about ``session.lock``), nothing created.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mqttsession import AsyncSession, Client, Connection, Options, PublishRequest, UsageError


def _files(where: Path) -> dict[str, bytes]:
    return {p.relative_to(where).as_posix(): p.read_bytes()
            for p in sorted(where.rglob("*")) if p.is_file()}


CALLS: dict[str, Callable[[Client], object]] = {
    "publish_data": lambda c: c.publish_data("t/a", 1, b"x"),
    "publish_data qos 0": lambda c: c.publish_data("t/a", 0, b"x"),
    "publish_message": lambda c: c.publish_message("t/a", 2, "x"),
    "publish_many": lambda c: c.publish_many([("t/a", 1, b"x"), PublishRequest("t/b", 1, b"y")]),
    "publish_many empty": lambda c: c.publish_many([]),
    "subscribe": lambda c: c.subscribe("t/#", 1),
    "unsubscribe": lambda c: c.unsubscribe("t/#"),
    "connect": lambda c: c.connect("127.0.0.1", 1, timeout=1),
    "restore_session": lambda c: c.restore_session(""),
    "save_session": lambda c: c.save_session(),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("how", ["close", "with"])
def test_after_close_the_client_refuses(tmp_path: Path, call: str, how: str) -> None:
    path = tmp_path / "gw.session"
    c = Client(client_id="closed-gw", clean_session=False)
    c.config(f"SessionStateFile={path}")
    c.restore_session("")
    c.publish_message("t/a", 1, "before")
    if how == "close":
        c.close()
    else:
        with c:
            pass
    before = _files(tmp_path)
    with pytest.raises(UsageError, match=r"after close\(\): the client is closed"):
        CALLS[call](c)
    assert _files(tmp_path) == before  # the released file was not opened or written again
    assert len(c.outgoing_messages) == 1
    c.close()  # idempotent
    assert _files(tmp_path) == before


def test_a_closed_client_never_writes_the_file_its_successor_owns(tmp_path: Path) -> None:
    """close() released the file; a new client (another process, say) owns it now: the old
    one's save_session used to overwrite it with the old session."""
    path = tmp_path / "gw.session"
    old = Client(client_id="gw-1", clean_session=False)
    old.config(f"SessionStateFile={path}")
    old.restore_session("")
    old.close()
    new = Client(client_id="gw-1", clean_session=False)
    new.config(f"SessionStateFile={path}")
    new.restore_session("")
    new.publish_message("t/a", 1, "the new owner's")
    try:
        with pytest.raises(UsageError):
            old.save_session()
        with pytest.raises(UsageError):
            old.publish_message("t/a", 1, "the old owner's")
    finally:
        new.close()
    again = Client(client_id="gw-1", clean_session=False)
    again.config(f"SessionStateFile={path}")
    again.restore_session("")
    assert [m.message for m in again.outgoing_messages] == [b"the new owner's"]
    again.close()


def test_close_twice_without_a_state_file() -> None:
    c = Client(client_id="no-file")
    c.close()
    c.close()
    with pytest.raises(UsageError):
        c.publish_message("t/a", 1, "x")
    assert c.outgoing_messages == ()


def test_a_session_closed_before_it_was_opened_refuses() -> None:
    connection = Connection(Options(address="127.0.0.1:1"))  # never connected to
    session = connection.create_session()
    session.close()
    for call in (lambda: session.publish("t/a", "x"), lambda: session.publish_many([("t/a", 1, "x")]),
                 lambda: session.subscribe("t/#"), lambda: session.unsubscribe("t/#"),
                 session.open):
        with pytest.raises(UsageError, match=f"session {session.session_id} is closed"):
            call()
    assert session.client.outgoing_messages == ()
    with pytest.raises(UsageError):
        session.client.publish_data("t/a", 1, b"x")  # the Client under it is closed too


def test_an_async_session_refuses_after_close(tmp_path: Path) -> None:
    async def main() -> None:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="closed-aio",
                                      state_file=tmp_path / "aio.session", connect=False)
        await s.publish("t/a", "held")
        await s.close()
        before = _files(tmp_path)
        with pytest.raises(UsageError):
            await s.publish("t/a", "x")
        with pytest.raises(UsageError):
            await s.publish_many([("t/a", 1, "x")])
        with pytest.raises(UsageError):
            await s.subscribe("t/#")
        with pytest.raises(UsageError):
            s.client.publish_message("t/a", 1, "x")
        assert _files(tmp_path) == before

    asyncio.run(main())


# ------------------------------------------------------------------ the state file's directory


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    where = tmp_path / "var" / "lib" / "gw"
    c = Client(client_id="gw-1", clean_session=False)
    c.config(f"SessionStateFile={where / 'session'}")  # setting it is fine: made later, maybe
    with pytest.raises(UsageError) as raised:
        c.restore_session("")
    text = str(raised.value)
    assert f"the directory {where} does not exist" in text, text
    assert f"os.makedirs({str(where)!r}, exist_ok=True)" in text, text
    with pytest.raises(UsageError, match=f"the directory {where} does not exist"):
        c.publish_message("t/a", 1, "x")  # opening the file on the first publish: the same
    assert c.outgoing_messages == ()  # nothing accepted
    with pytest.raises(UsageError, match=f"the directory {where} does not exist"):
        c.save_session()  # the file never opened: written whole, the same check
    assert list(tmp_path.iterdir()) == []  # nothing created
    where.mkdir(parents=True)  # once it exists, the same client goes on
    c.restore_session("")
    c.publish_message("t/a", 1, "x")
    c.close()
    assert (where / "session").is_file()


def test_a_file_where_the_directory_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "gw").write_text("not a directory")
    c = Client(client_id="gw-1", clean_session=False)
    c.config(f"SessionStateFile={tmp_path / 'gw' / 'session'}")
    with pytest.raises(UsageError, match=f"the directory {tmp_path / 'gw'} is not a directory"):
        c.restore_session("")


def test_an_async_session_names_the_missing_directory(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"

    async def main() -> None:
        with pytest.raises(UsageError, match=f"the directory {where} does not exist"):
            await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="aio-gw",
                                      state_file=where / "s", connect=False)

    asyncio.run(main())


@pytest.mark.parametrize("host,port,timeout", [
    ("localhost", "1883", 5.0), ("localhost", None, 5.0), (None, 1883, 5.0), (123, 1883, 5.0),
    ("", 1883, 5.0), ("localhost", 0, 5.0), ("localhost", 70000, 5.0), ("localhost", True, 5.0),
    ("localhost", 1883, "5"), ("localhost", 1883, 0), ("localhost", 1883, -1.0),
    ("localhost", 1883, float("nan")), ("localhost", 1883, float("inf")), ("localhost", 1883, 1e10),
])
def test_connect_with_arguments_of_the_wrong_kind_is_usage_error(host: object, port: object,
                                                                 timeout: object) -> None:
    """Before: a raw TypeError from the socket layer (or "no CONNACK within nan s"), and every
    later ``connect()`` then said "already connected" though it never connected."""
    c = Client(client_id="args", clean_session=True)
    try:
        for _ in range(2):  # and again: nothing was left half set up
            with pytest.raises(UsageError):
                c.connect(host, port, timeout)  # type: ignore[arg-type]
        assert not c.connected
    finally:
        c.close()


@pytest.mark.parametrize("setting, name", [("WillQOS=5", "WillQOS"), ("MaxInflight=0",
                         "MaxInflight"), ("SessionSyncInterval=0", "SessionSyncInterval")])
def test_a_bad_setting_is_named_as_spelled(setting: str, name: str) -> None:
    """The error names the setting as the docs spell it (before: "WillQos must be 0..2")."""
    c = Client(client_id="named")
    with pytest.raises(UsageError, match=f"^{name} must be"):
        c.config(setting)
    c.close()


@pytest.mark.parametrize("value", ["False", "0", 0, None])
def test_clean_session_takes_a_bool_only(value: object) -> None:
    """``bool("False")`` is True: a string made the session clean (the broker threw away its
    queue) without an error; ``None`` made it persistent."""
    with pytest.raises(UsageError, match="clean_session must be a bool"):
        Client(client_id="cs", clean_session=value)  # type: ignore[arg-type]
    c = Client(client_id="cs", clean_session=False)
    with pytest.raises(UsageError, match="clean_session must be a bool"):
        c.clean_session = value  # type: ignore[assignment]
    assert c.clean_session is False
    c.close()


def test_a_username_of_the_wrong_type_is_a_usage_error() -> None:
    """Before: paho's raw ``AttributeError`` ('int' object has no attribute 'encode')."""
    c = Client(client_id="user")
    c.username = 5  # type: ignore[assignment]
    with pytest.raises(UsageError, match="username must be str"):
        c.connect("127.0.0.1", 1, timeout=0.5)
    c.close()


def test_a_client_id_no_connect_can_carry_is_refused(tmp_path: Path) -> None:
    """A client id over 65,535 bytes of UTF-8 (MQTT 5 1.5.4): ``UsageError`` when it is set,
    in a ``Client`` and a gateway's session, nothing stored. Before: accepted and stored; its
    messages could never leave (connect: a raw struct error)."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    with pytest.raises(UsageError, match="80000 bytes"):
        Client(client_id="\u00e9" * 40000)
    c = Client(client_id="x")
    with pytest.raises(UsageError, match="65536 bytes"):
        c.client_id = "a" * 65536
    with pytest.raises(UsageError, match="65536 bytes"):
        c.client_id = "\U0001F600" * 16384  # four bytes each (review: a 3-byte guess passed it)
    c.client_id = "a" * 65535  # the most a CONNECT carries
    c.close()
    with Gateway(tmp_path / "gw") as gw:
        with pytest.raises(UsageError, match="at most 65535"):
            gw.client("\u00e9" * 40000)
        assert gw.stored_sessions() == []


def test_an_event_an_async_session_cannot_deliver_is_logged_without_its_payload(
        caplog: pytest.LogCaptureFixture) -> None:
    """A message event for an ``AsyncSession`` not started (or whose loop closed) is logged
    and dropped: by its kind, never with its payload (a security hunt: its ``repr`` held the
    message, which may be private)."""
    from mqttsession.events import MessageEvent

    s = AsyncSession(client_id="not-started")
    s.client.on_message_in(MessageEvent(5, "t/secret", 1, b"pin=1234", False, False))
    assert [r.getMessage() for r in caplog.records] == [
        "MessageEvent dropped: the session was never started"]


def test_an_idle_notice_an_async_session_cannot_deliver_is_named(
        caplog: pytest.LogCaptureFixture) -> None:
    """The notice that ends ``flush()`` waits carries no event: logged as what it is (it was
    "NoneType dropped: its event loop is closed" after a loop ended without ``close()``)."""
    s = AsyncSession(client_id="not-started")
    s.client._driver.on_idle()
    assert [r.getMessage() for r in caplog.records] == [
        "idle notice dropped: the session was never started"]


BAD_TEXT = "reading \udcff"  # (read with errors="surrogateescape": no UTF-8 for it)


@pytest.mark.parametrize("call", [
    lambda c: c.publish_message("a/b", 1, BAD_TEXT),
    lambda c: c.publish_many([("a/b", 1, BAD_TEXT)]),
    lambda c: c.publish_many([PublishRequest("a/b", 1, BAD_TEXT)]),
    lambda c: c.ack("x"),
    lambda c: c.ack(None),
    lambda c: c.flush("1"),
    lambda c: c.flush(-1),
    lambda c: c.flush(float("nan")),
], ids=["text", "many-text", "many-request", "ack-str", "ack-none", "flush-str",
        "flush-negative", "flush-nan"])
def test_common_mistakes_are_usage_errors(call: Callable[[Client], object]) -> None:
    """A paho-user hunt: raw ``UnicodeEncodeError``, ``AttributeError`` and ``TypeError``;
    nothing is held after them."""
    with Client(client_id="m", clean_session=False) as c:
        with pytest.raises(UsageError):
            call(c)
        assert not c.outgoing_messages


def test_an_async_session_refuses_text_without_utf8(tmp_path: Path) -> None:
    async def main() -> None:
        s = await AsyncSession.create(Options(address="127.0.0.1:1"), client_id="m-aio",
                                      state_file=tmp_path / "aio.session", connect=False)
        with pytest.raises(UsageError, match="not valid UTF-8"):
            await s.publish("a/b", BAD_TEXT)
        with pytest.raises(UsageError, match="not valid UTF-8"):
            await s.publish_many([("a/b", 1, BAD_TEXT)])
        assert not s.client.outgoing_messages
        await s.close()

    asyncio.run(main())


@pytest.mark.parametrize("given, filters", [
    ("a/b ", ["a/b "]), (" a", [" a"]), ("a, b ,c", ["a", "b", "c"]), ("x/#", ["x/#"]),
])
def test_one_filter_is_taken_as_given_and_a_list_is_trimmed(given: str,
                                                            filters: list[str]) -> None:
    """Spaces are part of a topic: ``subscribe("a/b ")`` subscribed to ``a/b`` (a hunt)."""
    with Client(client_id="m", clean_session=False) as c:
        c.subscribe(given, 1)
        assert sorted(c._engine.state.subscriptions) == sorted(filters)


def test_flush_with_an_infinite_timeout_waits_without_overflow() -> None:
    """``flush(float("inf"))`` raised a raw ``OverflowError`` (a review): no limit now."""
    c = Client(client_id="m-inf", clean_session=False)
    c.publish_data("t", 1, b"held")  # offline: flush waits until the client closes
    threading.Timer(0.2, c.close).start()
    assert c.flush(float("inf")) is False


@pytest.mark.parametrize("state_dir", [b"/tmp/gw-bytes", 123, "", "gw\x00x", None])
def test_a_gateway_state_dir_that_names_no_directory_is_refused(
        state_dir: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Gateway`` / ``AsyncGateway`` given bytes, a number, ``None``, a NUL or an empty name:
    ``UsageError`` naming ``state_dir``, nothing made. Before: a raw ``TypeError`` /
    ``ValueError``, and ``""`` made the current directory a gateway's (its log and queues)."""
    from mqttsession.gateway import AsyncGateway, Gateway  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    for kind in (Gateway, AsyncGateway):
        with pytest.raises(UsageError, match="state_dir must name a directory"):
            kind(state_dir)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_gateway_session_needs_a_client_id(tmp_path: Path) -> None:
    """``Gateway.client("")`` / ``client(None)``: ``UsageError``, nothing stored (a mutation
    hunt: only an integration test pinned it)."""
    from mqttsession.gateway import Gateway  # noqa: PLC0415

    with Gateway(tmp_path / "gw") as gw:
        for cid in ("", None):
            with pytest.raises(UsageError, match="its own client_id"):
                gw.client(cid)  # type: ignore[arg-type]
        assert gw.stored_sessions() == []
