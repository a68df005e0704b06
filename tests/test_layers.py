"""Imports only go down the layers of design.md (cli > bench > lab > ice > nat > server >
client > turn > stun), no module imports itself back through others (no import cycles), and
the sans-IO core touches no sockets, clocks or event loops."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "natkit"
ORDER = ["stun", "turn", "client", "server", "nat", "ice", "lab", "bench", "cli"]
# Modules outside the layers that any layer may use.
SHARED = {"natkit", "natkit.errors"}
SANS_IO_FORBIDDEN = {"socket", "asyncio", "selectors", "threading", "subprocess", "time"}
# Pure conversions the core may take from a forbidden module.
SANS_IO_ALLOWED_NAMES = {"socket": {"AF_INET", "AF_INET6", "inet_ntop", "inet_pton"}}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "natkit" and parts[1] in ORDER:
        return ORDER.index(parts[1])
    return None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] in ORDER)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down(path: Path) -> None:
    own = ORDER.index(path.relative_to(ROOT).parts[0])
    for module in _imports(path):
        layer = _layer(module)
        assert layer is None or layer <= own, f"{path.relative_to(ROOT)} imports {module}"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if p.relative_to(ROOT).parts[0] in ("stun", "turn")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_sans_io_core_has_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                assert top not in SANS_IO_FORBIDDEN, f"{path.name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in SANS_IO_FORBIDDEN:
                names = {alias.name for alias in node.names}
                allowed = SANS_IO_ALLOWED_NAMES.get(top, set())
                assert names <= allowed, f"{path.name} imports {names - allowed} from {top}"


# Import cycles not removed yet, each with the track that owns it; remove an entry with the
# cycle. A cycle is listed as its modules, sorted.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {
    # iceux: candidates.py imports sdp.py inside functions, sdp.py imports its private _add_line
    ("natkit.ice.candidates", "natkit.ice.sdp"): "iceux",
}


def _module_name(path: Path) -> str:
    parts = ["natkit", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(
    tree: ast.Module, *, type_only: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Every import that can run: at module level and inside functions (a lazy import that
    closes a loop is still a cycle between the two modules), but not under
    ``if TYPE_CHECKING:`` (type-only, never executed) unless ``type_only``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not type_only:
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)
    return found


def _import_graph(*, type_only: bool = False) -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    packages = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in _runtime_imports(tree, type_only=type_only):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                package = name if name in packages else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:  # ``from pkg import module`` imports that module
                sub = f"{base}.{alias.name}"
                edges.add(sub if sub in paths else base)
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles() -> None:
    cycles = _cycles(_import_graph())
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles: " + "; ".join(" <-> ".join(c) for c in new)


def test_server_and_turn_need_no_cycle_even_for_types() -> None:
    """The relay's modules know each other one way only: the sockets see their server through
    a protocol, metrics see a stats() source, not the server class."""
    graph = _import_graph(type_only=True)
    mine = ("natkit.server", "natkit.turn")
    cycles = [c for c in _cycles(graph) if any(m.startswith(mine) for m in c)]
    assert not cycles, cycles


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [("a", "b", "c")]
    tree = ast.parse(
        "import x\nif TYPE_CHECKING:\n    import y\ntry:\n    import z\nexcept E:\n    pass\n"
        "def f():\n    import w\n"
    )
    names = {a.name for n in _runtime_imports(tree) for a in n.names}
    assert names == {"x", "z", "w"}
