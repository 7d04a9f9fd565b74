"""MQTT 5 client-side session expiry: expiry.expired and the public session_expired(text, now).

Session Expiry Interval (MQTT 5.0 3.1.2.11.2): absent means 0, 0 ends the session when the
connection closes, 0xFFFFFFFF never expires; [MQTT-4.1.0-2] the server discards the session once
the interval has passed after the connection closed.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttsession import StateError, codec, load_state, session_expired
from mqttsession.expiry import disconnect_time, effective_interval, expired
from mqttsession.state import MAX_EXPIRY, SessionState

from ._support import FAST


def saved(
    protocol_version: int = 5,
    interval: int | None = 2,
    connected_at: float | None = 100.0,
    disconnected_at: float | None = 110.0,
    last_activity: float | None = 110.0,
    clean_session: bool = False,
) -> str:
    return codec.encode(SessionState(
        client_id="c",
        protocol_version=protocol_version,
        clean_session=clean_session,
        session_expiry_interval=interval,
        connected_at=connected_at,
        disconnected_at=disconnected_at,
        last_activity=last_activity,
    ))


def both(now: float, **kw: object) -> bool | None:
    """session_expired on the saved text, checked against expiry.expired and the view."""
    text = saved(**kw)  # type: ignore[arg-type]
    view = load_state(text)
    interval = effective_interval(view.protocol_version, view.clean_session,
                                  view.session_expiry_interval)
    direct = expired(view.protocol_version, interval, view.connected_at,
                     view.disconnected_at, view.last_activity, now)
    public = session_expired(text, now)
    assert public is direct
    assert view.expired(now) is direct
    return public


# --------------------------------------------------------------------------- MQTT 3.1.1


@pytest.mark.parametrize("interval", [None, 0, 2, MAX_EXPIRY])
@pytest.mark.parametrize("now", [0.0, 111.0, 1e9])
def test_mqtt311_has_no_expiry(interval: int | None, now: float) -> None:
    """MQTT 3.1.1 has no Session Expiry Interval: the answer cannot be known."""
    assert both(now, protocol_version=4, interval=interval) is None
    assert both(now, protocol_version=4, interval=interval, connected_at=None,
                disconnected_at=None, last_activity=None) is None


# --------------------------------------------------------------------------- MQTT 5 intervals


@pytest.mark.parametrize("interval", [None, 0])
@pytest.mark.parametrize("after", [0.0, 0.5, 3600.0])
def test_interval_absent_or_zero_ends_with_the_connection(interval: int | None, after: float):
    """3.1.2.11.2: absent means 0; 0 means the session ends when the connection closes. (A
    persistent session with none set is sent 3600 s by the Client: see below.)"""
    assert both(110.0 + after, interval=interval, clean_session=interval is None) is True
    assert expired(5, interval, 100.0, 110.0, 110.0, 110.0 + after) is True


def test_interval_unset_on_a_persistent_session_is_the_default() -> None:
    assert both(110.0 + 3600.0, interval=None) is False
    assert both(110.0 + 3601.0, interval=None) is True


@pytest.mark.parametrize("after", [0.0, 2.0, 1e9])
def test_interval_ffffffff_never_expires(after: float) -> None:
    assert both(110.0 + after, interval=MAX_EXPIRY) is False


def test_interval_2_expires_after_2_seconds_mqtt_4_1_0_2() -> None:
    """[MQTT-4.1.0-2] discarded once the interval has passed after the connection closed."""
    assert both(110.0 + 4, interval=2) is True
    assert both(110.0 + 1, interval=2) is False
    assert both(110.0, interval=2) is False
    assert both(110.0 + 2.5, interval=2) is True


def test_clock_gone_backwards_is_unknown() -> None:
    assert both(109.0, interval=2) is None
    assert both(0.0, interval=MAX_EXPIRY) is None
    assert both(0.0, interval=0) is None


def test_crash_while_connected_uses_last_activity() -> None:
    """No disconnect after the last connect: the connection closed no earlier than the last
    recorded activity."""
    kw = {"interval": 2, "connected_at": 100.0, "disconnected_at": None, "last_activity": 150.0}
    assert both(151.0, **kw) is False  # 1 s after the last activity
    assert both(154.0, **kw) is True  # 4 s after
    assert both(140.0, **kw) is None  # before the last activity: the clock went backwards


def test_crash_without_activity_uses_connect_time() -> None:
    kw = {"interval": 2, "connected_at": 100.0, "disconnected_at": None, "last_activity": None}
    assert both(101.0, **kw) is False
    assert both(104.0, **kw) is True


def test_never_connected_has_no_session_on_the_broker() -> None:
    kw = {"connected_at": None, "disconnected_at": None, "last_activity": None}
    for interval in (None, 0, 2, MAX_EXPIRY):
        assert both(1000.0, interval=interval, **kw) is True


def test_disconnect_before_the_last_connect_is_ignored() -> None:
    """Disconnected at 50, connected again at 100, crashed: 50 is an older connection's."""
    kw = {"interval": 2, "connected_at": 100.0, "disconnected_at": 50.0, "last_activity": 120.0}
    assert both(121.0, **kw) is False  # measured from 120, not from 50
    assert both(124.0, **kw) is True
    assert both(60.0, **kw) is None  # earlier than 120: clock went backwards
    kw_no_activity = {"interval": 2, "connected_at": 100.0, "disconnected_at": 50.0, "last_activity": None}
    assert both(101.0, **kw_no_activity) is False
    assert both(103.0, **kw_no_activity) is True


def test_disconnect_after_the_last_connect_is_exact() -> None:
    kw = {"interval": 2, "connected_at": 100.0, "disconnected_at": 110.0, "last_activity": 105.0}
    assert both(111.0, **kw) is False
    assert both(113.0, **kw) is True


def test_disconnect_time() -> None:
    assert disconnect_time(None, None, None) is None
    assert disconnect_time(100.0, 110.0, 110.0) == 110.0
    assert disconnect_time(100.0, 100.0, 100.0) == 100.0
    assert disconnect_time(100.0, 50.0, 120.0) == 120.0
    assert disconnect_time(100.0, None, 130.0) == 130.0
    assert disconnect_time(100.0, None, None) == 100.0
    assert disconnect_time(None, 70.0, None) == 70.0


def test_session_expired_uses_the_clock_when_now_is_omitted() -> None:
    recent = saved(interval=3600, disconnected_at=time.time() - 10, connected_at=0.0,
                   last_activity=None)
    assert session_expired(recent) is False
    old = saved(interval=2, disconnected_at=time.time() - 100, connected_at=0.0)
    assert session_expired(old) is True


def test_session_expired_takes_bytes() -> None:
    assert session_expired(saved(interval=2).encode("utf-8"), 120.0) is True


@pytest.mark.parametrize("bad", ["", "{}", "not json", None, 42, saved()[:-1]])
def test_session_expired_bad_input_raises_state_error(bad: object) -> None:
    with pytest.raises(StateError):
        session_expired(bad, 0.0)  # type: ignore[arg-type]


@FAST
@given(
    interval=st.one_of(st.none(), st.integers(0, MAX_EXPIRY)),
    closed=st.floats(-1e12, 1e12),
    elapsed=st.floats(-1e6, 1e10),
)
def test_expiry_rule_property(interval: int | None, closed: float, elapsed: float) -> None:
    now = closed + elapsed
    got = expired(5, interval, closed - 1.0, closed, None, now)
    if now < closed:
        assert got is None
    elif interval == MAX_EXPIRY:
        assert got is False
    elif not interval:
        assert got is True
    else:
        assert got is (now - closed > interval)
    assert expired(4, interval, closed - 1.0, closed, None, now) is None


def test_effective_interval_keeps_an_mqtt5_persistent_session() -> None:
    from mqttsession.expiry import DEFAULT_INTERVAL, effective_interval
    from mqttsession.options import DEFAULT_SESSION_EXPIRY

    assert DEFAULT_INTERVAL == DEFAULT_SESSION_EXPIRY == 3600  # Client and Options agree
    assert effective_interval(5, False, None) == 3600
    assert effective_interval(5, False, 0) == 0  # set explicitly: sent as set
    assert effective_interval(5, True, None) is None
    assert effective_interval(4, False, None) is None
