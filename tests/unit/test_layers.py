"""llmd's modules import each other without cycles (imports under TYPE_CHECKING aside)."""

from __future__ import annotations

import ast
from pathlib import Path

LLMD = Path(__file__).resolve().parents[2] / "llmd"


def _module(path: Path) -> str:
    parts = path.relative_to(LLMD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks are skipped
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmd"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmd")}
    return found & modules


def test_llmd_has_no_import_cycles():
    paths = {_module(p): p for p in LLMD.rglob("*.py")}
    graph = {m: _runtime_imports(p, set(paths)) - {m} for m, p in paths.items()}
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        trail.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(n):] + [n]))
            if n not in state:
                visit(n)
        trail.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
