"""The import graph: no cycle between modules, and every import follows docs/architecture.toml.

Walks every module's ``import`` statements with ``ast`` (all of them, also those inside functions
and under ``TYPE_CHECKING``), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "wa_cli"
ARCHITECTURE = REPO / "docs" / "architecture.toml"


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
                # `from pkg import mod` imports pkg.mod; `from pkg import name` imports pkg.
                subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
                found.update(subs)
                if len(subs) < len(node.names):
                    found.add(base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _top_level_only(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module-level imports of packages re-export their parts; keep edges between leaf modules."""
    return {
        m: {t for t in targets if not (m.startswith(t + ".") or t == "wa_cli")}
        for m, targets in graph.items()
    }


def _description() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(ARCHITECTURE.read_text())


def _part(module: str, parts: dict) -> str:
    """The part whose longest module prefix matches (``wa_cli`` itself: the API)."""
    best, length = "", -1
    for name, part in parts.items():
        for prefix in part["modules"]:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = name, len(prefix)
    assert best, f"{module} belongs to no part of docs/architecture.toml"
    return best


def test_every_import_follows_an_allowed_arrow():
    """Every import between parts follows an arrow of docs/architecture.toml, or is listed as
    debt there (and every debt entry is still needed)."""
    desc = _description()
    parts = desc["parts"]
    debt = {(d["module"], t) for d in desc.get("debt", []) for t in d["imports"]}
    used: set[tuple[str, str]] = set()
    wrong = []
    for module, targets in _imports().items():
        source = _part(module, parts)
        for target in targets:
            dest = _part(target, parts)
            if dest == source or dest in parts[source]["imports"]:
                continue
            if (module, target) in debt:
                used.add((module, target))
                continue
            wrong.append((module, target))
    assert not wrong, f"imports against docs/architecture.toml: {sorted(wrong)}"
    assert used == debt, f"debt entries no longer needed: {sorted(debt - used)}"


def test_at_most_six_floors_and_no_cycle_between_parts():
    parts = _description()["parts"]
    floor: dict[str, int] = {}

    def height(name: str, seen: tuple[str, ...] = ()) -> int:
        assert name not in seen, "cycle between parts: " + " -> ".join((*seen, name))
        if name not in floor:
            below = [height(d, (*seen, name)) for d in parts[name]["imports"]]
            floor[name] = 1 + max(below, default=-1)
        return floor[name]

    assert max(height(p) for p in parts) + 1 <= 6, floor


def test_command_modules_import_only_the_api_cli_helpers_and_errors():
    allowed = ("wa_cli.cli", "wa_cli.errors")
    for module, targets in _imports().items():
        if not module.startswith("wa_cli.cli.") or module.rsplit(".", 1)[1] in _SHELL:
            continue
        bad = sorted(t for t in targets if t != "wa_cli" and not t.startswith(allowed))
        assert not bad, (module, bad)


# The application shell and the flag helpers; every other module of cli/ is one command.
_SHELL = {"app", "signals", "flags", "options", "render", "inputs", "__init__"}


def test_docs_architecture_shows_the_parts_of_the_data_file():
    desc = _description()
    table = ["| part | modules | may import | what |", "|---|---|---|---|"]
    for name, part in desc["parts"].items():
        modules = ", ".join(f"`{m}`" for m in part["modules"])
        arrows = ", ".join(part["imports"]) or "-"
        table.append(f"| {name} | {modules} | {arrows} | {part['about']} |")
    text = (REPO / "docs" / "architecture.md").read_text()
    assert "\n".join(table) in text, "docs/architecture.md: regenerate the table:\n" + "\n".join(
        table
    )


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


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # lines of code: the body without its docstring, blank lines, comments
MAX_PARAMETERS = 8


def _sizes() -> list[tuple[str, str]]:
    """Every module over the line limit and every function over a limit, as (kind, name)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        module = _module_name(path)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(("lines", module))
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            name = f"{module}.{node.name}"
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            code = lines[body[0].lineno - 1 : node.end_lineno] if body else []
            if (
                sum(1 for x in code if x.strip() and not x.strip().startswith("#"))
                > MAX_FUNCTION_LINES
            ):
                found.append(("function lines", name))
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
            params = [p for p in params if p.arg not in ("self", "cls")]
            # A command's parameters are its flags, declared once for typer to parse.
            command = module.startswith("wa_cli.cli.") and node.name.endswith("_command")
            if len(params) > MAX_PARAMETERS and not command:
                found.append(("parameters", name))
    return found


def test_size_limits():
    """No module over 400 lines, no function over 60 lines of code or 8 parameters (options
    travel in option objects), except the ones docs/architecture.toml lists, a list that only
    shrinks."""
    allowed = {(d["kind"], d["name"]) for d in _description().get("size_debt", [])}
    found = set(_sizes())
    assert not found - allowed, f"over the limits: {sorted(found - allowed)}"
    assert not allowed - found, f"size_debt entries no longer needed: {sorted(allowed - found)}"
