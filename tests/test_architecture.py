"""The import graph: no cycle between modules; imports point down the layers of the architecture.

Walks every module's ``import`` statements with ``ast`` (all of them, also those inside functions
and under ``TYPE_CHECKING``), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "wa_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _top_level_only(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module-level imports of packages re-export their parts; keep edges between leaf modules."""
    return {
        m: {t for t in targets if not (m.startswith(t + ".") or t == "wa_cli")}
        for m, targets in graph.items()
    }


def test_io_imports_nothing_from_engine_methods_cli_select():
    for module, targets in _imports().items():
        if module.startswith("wa_cli.io"):
            upward = sorted(
                t
                for t in targets
                if t.startswith(("wa_cli.engine", "wa_cli.methods", "wa_cli.cli", "wa_cli.select"))
            )
            assert not upward, (module, upward)


def test_layers_point_down():
    # docs/architecture.md: cli -> methods -> engine -> select -> io -> errors, gc_pause.
    order = ["wa_cli.errors", "wa_cli.gc_pause", "wa_cli.io", "wa_cli.params", "wa_cli.select",
             "wa_cli.engine", "wa_cli.methods", "wa_cli.train", "wa_cli.cli"]  # fmt: skip

    def layer(module: str) -> int:
        return max(
            i
            for i, prefix in enumerate(order)
            if module == prefix
            or module.startswith(prefix + ".")
            or prefix == "wa_cli.errors"
            and module == "wa_cli"
        )

    graph = _imports()
    for module, targets in graph.items():
        if module in ("wa_cli", "wa_cli.__main__"):
            continue  # the lazy public API and the entry point name every layer
        for target in targets:
            if target in ("wa_cli",):
                continue  # __version__
            assert layer(target) <= layer(module), (module, "imports", target)


def test_no_import_cycle():
    graph = _top_level_only(_imports())
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_nothing_outside_cli_imports_typer_or_rich():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] in ("typer", "rich", "click") for n in names), path
