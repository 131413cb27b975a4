"""The package's import structure: no cycles, and no import from a lower layer to a higher one.

Every module of bridge/ is read with ``ast`` (nothing is imported): module-level imports,
imports under ``if TYPE_CHECKING:`` and imports inside functions all count, relative imports
are resolved. ``from package import name`` depends on ``package`` (its ``__init__`` runs) and
on ``package.name`` too when that is a module.

The layers, top to bottom (a module may import from its own layer and the ones below):

    cli, app, preflight, lab, examples
    api, console
    calls
    ncco.actions | exotel
    ncco (models, context, replies, the WebSocket leg)
    media | dial
    ari | webhooks | agents | cluster
    config, logging, metrics, ids
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "bridge"

#: Module-name prefixes by layer, top first. The longest matching prefix decides.
LAYERS: list[tuple[str, ...]] = [
    ("bridge.cli", "bridge.app", "bridge.preflight", "bridge.lab", "bridge.examples",
     "bridge.__main__"),
    ("bridge.api", "bridge.console"),
    ("bridge.calls",),
    ("bridge.ncco.actions", "bridge.exotel"),
    ("bridge.ncco",),
    ("bridge.media", "bridge.dial"),
    ("bridge.ari", "bridge.webhooks", "bridge.agents", "bridge.cluster"),
    ("bridge.config", "bridge.logging", "bridge.metrics", "bridge.ids", "bridge"),
]


#: Cycles tolerated for now, each with the change that removes it (none today: a new entry
#: needs a reason and a plan).
KNOWN_CYCLES: list[frozenset[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> Iterator[str]:
    """The bridge modules ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bridge":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "bridge":
                continue
            yield source  # its __init__ runs, whatever is taken from it
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    yield sub


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imports_of(name, path, names):
            assert target in names, f"{name} imports {target}, which is no module of bridge/"
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def layer_of(name: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (
                    best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def a_cycle_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One concrete import loop inside ``component``, for the failure message."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        following = sorted(t for t in edges[node] if t in members)
        if start in following:
            return [*path, start]
        step = next((t for t in following if t not in seen), following[0])
        if step in seen:
            return [*path[path.index(step):], step]
        path.append(step)
        seen.add(step)
        node = step


def test_cycle_finder_finds_a_loop() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert a_cycle_through(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    source = tmp_path / "bridge" / "ncco" / "actions" / "talk.py"
    source.parent.mkdir(parents=True)
    source.write_text("from ..models import Talk\nfrom . import _playback\n")
    modules = {"bridge.ncco.models", "bridge.ncco.actions._playback"}
    found = set(imports_of("bridge.ncco.actions.talk", source, modules))
    assert found == {"bridge.ncco.models", "bridge.ncco.actions",
                     "bridge.ncco.actions._playback"}


def test_no_import_cycles() -> None:
    edges = graph()
    loops = [" -> ".join(a_cycle_through(c, edges)) + f"  ({len(c)} modules: {', '.join(c)})"
             for c in cycles(edges) if frozenset(c) not in KNOWN_CYCLES]
    assert not loops, "import cycles:\n" + "\n".join(loops)


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    edges = graph()
    upward = sorted(f"{source} (layer {layer_of(source)}) imports {target} "
                    f"(layer {layer_of(target)})"
                    for source, targets in edges.items() for target in targets
                    if layer_of(target) < layer_of(source))
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
