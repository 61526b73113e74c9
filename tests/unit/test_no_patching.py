"""Nothing in llmd patches a third-party library at run time or reaches into its privates.

A scan of llmd/'s source (no imports run). For each module it notes the names bound by
importing a third-party module or something from one (not the standard library, not
llmd), and refuses:

- an assignment (`=`, `+=`, annotated, `del`) to an attribute reached from such a name,
  e.g. `hypercorn.trio.run.TCPServer = ...`, `h11.Connection.send = ...`;
- `setattr(...)`/`delattr(...)` on such a name;
- a `._private` attribute (one underscore, not a dunder) reached from such a name, e.g.
  `trio._core`, and an import from a third-party module path with a private part;
- a subclass of a third-party class that overrides one of its `_private` methods.

It cannot follow values through variables: `x = h11.Connection(...); x._foo = 1` passes.
That is the honest limit of a syntax check; review catches the rest.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LLMD = Path(__file__).resolve().parents[2] / "llmd"


def _third_party(module: str | None, level: int) -> bool:
    if level or not module:
        return False
    top = module.split(".")[0]
    return top != "llmd" and top not in sys.stdlib_module_names and top != "__future__"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Each run-time patch or private reach into a third-party library in `source`."""
    tree = ast.parse(source, filename)
    foreign: set[str] = set()
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name, 0):
                    foreign.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        report(node, f"imports private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and _third_party(node.module, node.level):
            assert node.module is not None
            if any(_private(part) for part in node.module.split(".")):
                report(node, f"imports from private module {node.module}")
            for alias in node.names:
                foreign.add(alias.asname or alias.name)
                if _private(alias.name):
                    report(node, f"imports private name {node.module}.{alias.name}")

    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List, ast.Starred)):
                targets += target.elts if not isinstance(target, ast.Starred) else [target.value]
            elif isinstance(target, ast.Attribute) and _root(target) in foreign:
                report(node, f"assigns to {ast.unparse(target)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr") and node.args
                and _root(node.args[0]) in foreign):
            report(node, f"{node.func.id} on {ast.unparse(node.args[0])}")
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node) in foreign:
            report(node, f"reaches private {ast.unparse(node)}")
        if isinstance(node, ast.ClassDef) and any(_root(b) in foreign for b in node.bases):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                        _private(item.name):
                    report(item, f"{node.name} overrides private {item.name} of a "
                                 "third-party class")
    return found


def test_llmd_patches_no_third_party_library() -> None:
    found = []
    for path in sorted(LLMD.rglob("*.py")):
        found += violations(path.read_text(), str(path.relative_to(LLMD.parent)))
    assert found == []


def test_llmd_imports_no_hypercorn() -> None:
    for path in sorted(LLMD.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "hypercorn" for n in names), path


def test_the_scan_finds_what_the_hypercorn_patches_did() -> None:
    # What llmd/connections.py and llmd/app_queue.py did before llmd owned its server.
    old = """
import hypercorn.trio.run as _hypercorn_run
import hypercorn.protocol.h11 as _hypercorn_h11
import hypercorn.trio.task_group as _task_group
from hypercorn.config import Config
import trio

_hypercorn_run.TCPServer = serve_connection
_hypercorn_h11.H11Protocol._send_error_response = _send_error_response
_task_group.TaskGroup.spawn_app = _spawn_app
setattr(trio, "sleep", fake)
spawn = trio._core.spawn

class ServerConfig(Config):
    def _made(self):
        pass
"""
    found = violations(old)
    assert {int(line.split(":")[1]) for line in found} == {8, 9, 10, 11, 12, 15}, found
    assert violations("import h11\nimport os\nos.environ = {}\nx = h11.Connection(h11.SERVER)\n"
                      "x.foo = 1\nfrom . import server\nserver.limit = 2\n") == []
