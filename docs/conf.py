"""Sphinx configuration for mqttsession's documentation.

Build (warnings are errors, as in CI)::

    python3 -m pip install -e ".[docs]"
    python3 -m sphinx -W --keep-going -b html docs /tmp/docs-out

Two checks make the reference impossible to let go stale: the config settings table is
generated at build time from ``mqttsession._config`` (the ``mqttsession-settings`` directive:
names, read-only or not, the defaults of a new ``Client``, the descriptions of
``SETTING_DOCS``), and a build whose pages do not document every name of
``mqttsession.__all__`` fails with a warning naming the missing ones.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # this checkout's package, whatever else is installed

import mqttsession  # noqa: E402
from mqttsession._config import CONFIG, SETTING_DOCS  # noqa: E402

project = "mqttsession"
author = "mqttsession contributors"
copyright = "mqttsession contributors, MIT licence"  # noqa: A001
release = version = mqttsession.__version__

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

log = logging.getLogger(__name__)




class MqttsessionSettings(SphinxDirective):
    """``.. mqttsession-settings::``: the ``Client.config()`` settings, from the code."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        missing = sorted(set(CONFIG) - set(SETTING_DOCS))
        if missing:
            log.warning("config settings without an entry in _config.SETTING_DOCS: %s",
                        ", ".join(missing), location=self.get_location())
        client = mqttsession.Client()
        try:
            lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 14 64", "",
                     "   * - setting", "     - default", "     - meaning"]
            for key in sorted(CONFIG, key=lambda k: SETTING_DOCS.get(k, (k, ""))[0].lower()):
                name, text = SETTING_DOCS.get(key, (key, ""))
                default = client.config(name)
                read_only = CONFIG[key][1] is None
                lines += [f"   * - ``{name}``",
                          f"     - {'(read-only)' if read_only else f'``{default}``' if default else '(empty)'}",
                          f"     - {text}"]
        finally:
            client.close()
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source="mqttsession._config"), 0, node)
        return list(node.children)


def check_public_names(app: Sphinx, env: Any) -> None:
    """Every name of ``mqttsession.__all__`` is documented somewhere (as ``mqttsession.X``)."""
    documented = set(env.get_domain("py").objects)
    missing = [n for n in mqttsession.__all__ if f"mqttsession.{n}" not in documented]
    if missing:
        log.warning("public names not documented: %s", ", ".join(missing))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("mqttsession-settings", MqttsessionSettings)
    app.connect("env-check-consistency", check_public_names)
    return {"parallel_read_safe": True}
