"""``ReconnectDelayMin`` / ``ReconnectDelayMax`` (defect D7), no broker needed: ``inf`` / ``nan``
are refused by ``config()`` with ``UsageError`` (``connect()`` used to raise OverflowError), and a
delay under a second reaches paho's backoff as given (``int()`` made 0.5 a 0: a busy reconnect
loop), never under 0.05 s."""

from __future__ import annotations

import pytest

from mqttsession import Client, UsageError
from mqttsession.client import _connect_params


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "1e400", "-1"])
@pytest.mark.parametrize("name", ["ReconnectDelayMin", "ReconnectDelayMax"])
def test_a_delay_that_is_no_finite_number_is_refused(name: str, value: str) -> None:
    c = Client(client_id="rd")
    before = c.config(name)
    with pytest.raises(UsageError, match=f"{name} must be a finite number >= 0"):
        c.config(f"{name}={value}")
    assert c.config(name) == before
    c.close()


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    ("0.5", "0.9", (0.5, 0.9)),  # fractions kept
    ("0", "0", (0.05, 0.05)),  # 0: no busy loop
    ("0.2", "0.1", (0.2, 0.2)),  # the largest at least the first
    ("1", "30", (1.0, 30.0)),
])
def test_paho_gets_the_delays_as_given(lo: str, hi: str, expected: tuple[float, float]) -> None:
    c = Client(client_id="rd")
    c.config(f"ReconnectDelayMin={lo}")
    c.config(f"ReconnectDelayMax={hi}")
    assert c.config("ReconnectDelayMin") == lo  # read back as set
    conn = c._driver._new_connection(_connect_params(c))  # noqa: SLF001 - no network
    got: tuple[object, object] = (conn._reconnect_min_delay, conn._reconnect_max_delay)  # noqa: SLF001
    assert got == expected
    c.close()
