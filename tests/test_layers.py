"""Imports only go down the layers of design.md (cli > lab > ice > nat > server > client >
turn > stun), and the sans-IO core touches no sockets, clocks or event loops."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "natkit"
ORDER = ["stun", "turn", "client", "server", "nat", "ice", "lab", "cli"]
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
