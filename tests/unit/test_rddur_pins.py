"""Pins of README.rst "Durability and speed", "Documentation, types and logs" and
"Development" (a behaviour audit): claims no other test would fail on, checked without a broker.

* "Development": a module imports only modules below it in the architecture list, read from
  the README (``events.py`` and ``errors.py`` apart; the list had ``pacing.py``,
  ``compacting.py``, ``aio.py``/``mesh.py``, ``journal.py`` and ``validation.py`` above
  modules that import them, until this audit);
* "Development": ``pacing.py`` is pure (``tests/unit/test_layout.py`` leaves it out);
* "Documentation, types and logs": each ``on_*`` attribute of a ``Client`` is
  ``Callable[[ItsEvent], None] | None``;
* "Durability and speed": the journal's zeros written ahead never pass ``JournalMaxBytes``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mqttsession
from mqttsession import events
from mqttsession.client import Client
from mqttsession.journal import AHEAD_BYTES, JOURNAL_SUFFIX, Journal

PACKAGE = Path(mqttsession.__file__).parent



def _architecture_list() -> list[set[str]]:
    """README "Development"'s architecture list, top to bottom: the modules each heading
    names (``client.py``, ``compat/``...; those named only in a description are not in it)."""
    readme = (PACKAGE.parent / "README.rst").read_text(encoding="utf-8")
    text = readme[readme.index("Architecture: each module has one job"):]
    text = text[:text.index("\nMarkers:\n")]
    layers = []
    for line in text.splitlines():
        if line.startswith("``"):
            layers.append({n.strip("`").removesuffix(".py").removesuffix("/")
                           for n in line.split(", ")})
    return layers


LAYERS = _architecture_list()
RANK = {name: i for i, group in enumerate(LAYERS) for name in group}
APART = {"events", "errors"}  # the shared vocabulary
# an import made inside a function, to break a cycle the module says so of
LAZY_ALLOWED = {("recovery", "spool"), ("recovery", "store")}
# what ``tests/unit/test_layout.py`` calls I/O for its pure modules
IO_MODULES = {"paho", "socket", "ssl", "select", "selectors", "threading", "asyncio",
              "concurrent", "subprocess"}


def _top(path: Path) -> str:
    """The package's top-level module (or subpackage) ``path`` belongs to."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _target(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's top-level modules an import statement in ``path`` names."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("mqttsession.")]
    if node.level == 0:
        if not (node.module or "").startswith("mqttsession"):
            return []
        parts = (node.module or "").split(".")
        return [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
    found = []
    for name in names:
        for candidate in (base / f"{name}.py", base / name / "__init__.py"):
            if candidate.exists():
                found.append(_top(candidate))
    return found


def _runtime_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) of each package import ``path`` makes at run time
    (those under ``if TYPE_CHECKING:`` are for the type checker only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
            out += [(m, node.lineno, id(node) in in_function) for m in _target(path, node)]
    return out


def test_every_heading_of_the_architecture_list_is_a_module_of_the_package() -> None:
    """The list below names real modules (a renamed one would make the layering test vacuous)."""
    for name in RANK:
        assert (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir(), name


def test_a_module_imports_only_modules_below_it_in_the_architecture_list() -> None:
    """README "Development": "a module imports only modules below it in this list
    (``events.py`` and ``errors.py``, the shared vocabulary, apart)" -- checked by parsing
    every module's run-time imports (not those for the type checker)."""
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _top(path)
        if me not in RANK:
            continue
        for module, line, lazy in _runtime_imports(path):
            if module == me or module in APART or module not in RANK:
                continue
            if RANK[module] < RANK[me] and not (lazy and (me, module) in LAZY_ALLOWED):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert upward == []


def test_pacing_is_pure() -> None:
    """README "Development": "connection attempts paced and backoff jittered (``pacing.py``,
    pure)": it imports no I/O and no module of the package."""
    for node in ast.walk(ast.parse((PACKAGE / "pacing.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"pacing.py imports .{node.module}"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in IO_MODULES | {"mqttsession"}, name


def test_every_client_event_attribute_is_typed_with_its_own_event() -> None:
    """README "Documentation, types and logs": "each ``on_*`` attribute is
    ``Callable[[ItsEvent], None] | None``" (so that ``mypy --strict`` catches a handler using a
    field its event lacks), every one a ``Client`` has, each with an event class of its own."""
    tree = ast.parse((PACKAGE / "client.py").read_text(encoding="utf-8"))
    client = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Client")
    annotated: dict[str, str] = {}
    for node in ast.walk(client):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute) \
                and node.target.attr.startswith("on_"):
            annotated[node.target.attr] = ast.unparse(node.annotation)
    c = Client(client_id="typed")
    try:
        present = {n for n in vars(c) if n.startswith("on_")}
    finally:
        c.close()
    assert present and present == set(annotated), (present, annotated)
    seen: set[str] = set()
    for attr, annotation in annotated.items():
        m = re.fullmatch(r"Callable\[\[(\w+)\], None\] \| None", annotation)
        assert m, f"{attr}: {annotation}"
        event = m.group(1)
        assert event.endswith("Event") and isinstance(getattr(events, event, None), type), event
        assert event not in seen or event == "MessageEvent", (attr, event)  # (in and out: one)
        seen.add(event)


@pytest.mark.parametrize("bound", [4096, 20_000, AHEAD_BYTES + 100])
def test_the_zeros_written_ahead_never_pass_journal_max_bytes(tmp_path: Path, bound: int) -> None:
    """README "Durability and speed": "the journal's file is written with zeros up to 64 KiB
    ahead of its records (never past ``JournalMaxBytes``)": after the compaction and after
    every durable append, the file is no longer than the bound, or than its records."""
    p = tmp_path / "bounded.state"
    journal = Path(str(p) + JOURNAL_SUFFIX)
    j = Journal(str(p), "bounded", sync=True, max_journal_bytes=bound)
    try:
        state = j.recover()
        j.compact(state)
        assert journal.stat().st_size <= bound
        grew = False
        for n in range(3 * bound // 120):
            j.append([state.accept("t/bounded", b"%080d" % n, 1)], state, sync=True)
            size, end = journal.stat().st_size, j.position()[1]
            assert size <= max(bound, end), (n, size, end)
            grew = grew or size > end  # zeros were written ahead at all
        assert grew
    finally:
        j.close()
