"""Test setup: real-broker fixtures, and readable hypothesis failures.

When a hypothesis test fails, hypothesis' pytest plugin imports ``hypothesis.extra._patching``
(and with it libcst), which emits a DeprecationWarning from mypy_extensions; with
``filterwarnings = error`` that becomes a pytest INTERNALERROR hiding the real failure. Importing
it once here with that warning silenced keeps failure reports readable.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mqttsession.testing.fake_broker import FakeBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst not installed: the plugin skips patches then
        pass

pytest_plugins = ["mqttsession.testing.pytest_plugin"]


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    """A scripted loopback broker (``mqttsession.testing.FakeBroker``), stopped after the test."""
    from mqttsession.testing.fake_broker import FakeBroker

    broker = FakeBroker()
    try:
        yield broker
    finally:
        broker.stop()
