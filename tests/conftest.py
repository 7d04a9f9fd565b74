"""Test setup: real-broker fixtures, and readable hypothesis failures.

When a hypothesis test fails, hypothesis' pytest plugin imports ``hypothesis.extra._patching``
(and with it libcst), which emits a DeprecationWarning from mypy_extensions; with
``filterwarnings = error`` that becomes a pytest INTERNALERROR hiding the real failure. Importing
it once here with that warning silenced keeps failure reports readable.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst not installed: the plugin skips patches then
        pass

pytest_plugins = ["mqttsession.testing.pytest_plugin"]
