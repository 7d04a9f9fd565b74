"""The package's shape, as issue 11 and the developers' guide fix it: the pure modules import no
I/O, only ``_paho.py`` touches paho's internals, and no module grows past its bound."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mqttsession

PACKAGE = Path(mqttsession.__file__).parent
# sans-I/O: no paho, sockets, threads, event loops (the engine takes the time as an argument)
PURE = {
    "_fields", "_wire", "actions", "codec", "engine", "errors", "events", "expiry", "failover",
    "outgoing", "pacing", "queuelimits", "records", "reserving", "segments", "stalls", "state",
    "subscriptions",
    "transitions", "validation",
}
IO_MODULES = {"paho", "socket", "ssl", "select", "selectors", "threading", "asyncio",
              "concurrent", "subprocess"}
# pure helpers of impure modules a pure module may use
PURE_HELPERS = {"options": {"format_address", "parse_address"}}
MAX_LINES = 700
LONGER_ALLOWED = {"_wire.py", "compat/scenarios.py"}  # the wire codec, the compat scenarios
MAX_CLIENT_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``, relative ones as ``.name``, those under
    ``if TYPE_CHECKING:`` included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("name", sorted(PURE))
def test_a_pure_module_imports_no_io_and_only_pure_modules(name: str) -> None:
    for module, names in _imports(PACKAGE / f"{name}.py"):
        if module.startswith("."):
            local = [module[1:]] if module[1:] else names
            if module[1:] in PURE_HELPERS:
                assert set(names) <= PURE_HELPERS[module[1:]], f"{name}.py imports {names}"
            else:
                assert set(local) <= PURE, f"{name}.py imports {local} (not pure)"
        else:
            assert module.split(".")[0] not in IO_MODULES, f"{name}.py imports {module}"


def test_only_the_paho_adapter_touches_paho_internals() -> None:
    for path in _modules():
        if path.name == "_paho.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bases = {ast.unparse(b) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                 for b in n.bases}
        assert not {b for b in bases if "mqtt." in b or "paho" in b}, \
            f"{path.name} subclasses a paho class: {bases}"
        for module, names in _imports(path):
            if module.startswith("paho"):
                private = [n for n in names if n.startswith("_")] + \
                    [m for m in module.split(".") if m.startswith("_")]
                assert not private, f"{path.name} imports {private} from {module}"


def test_no_module_is_over_its_bound_and_the_client_stays_thin() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert set(long) <= LONGER_ALLOWED, long
    tree = ast.parse((PACKAGE / "client.py").read_text(encoding="utf-8"))
    client = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Client")
    assert client.end_lineno is not None
    assert client.end_lineno - client.lineno + 1 < MAX_CLIENT_LINES
