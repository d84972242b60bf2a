"""Messages that name parameters: ``decay`` in the library, ``--decay`` on the command line.

A ``WaError`` built by ``WaError.naming`` keeps the parameters its template names as fields, and
each front end spells them (``wa_cli.cli.flags.spell`` for the CLI): no text is ever rewritten,
so user content (paths, tensor names, values) shows verbatim, braces and flag-like words included.
The scan below holds every message in ``wa_cli`` to that: no ``params=`` list, no parameter
spelled inside the text, every parameter field a flag of ``FLAGS`` or a library-only name.
"""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import REPO, assert_one_line_error, run_wa
from wa_cli.cli.flags import FLAGS, spell
from wa_cli.engine.params import bad, choice
from wa_cli.errors import ExitCode, Param, WaError, parse_template, render

PACKAGE = REPO / "wa_cli"

# Parameters a message may name that have no flag: the command takes them otherwise (the inputs
# are its arguments) or only the library has them. The CLI shows their library names.
LIBRARY_ONLY = {
    "inputs",  # the command's positional arguments
    "finetunes",  # model_stock's fine-tunes (the CLI: its positional inputs)
    "steps",  # ema(steps=...): the CLI reads steps from the inputs
    "path",  # open_checkpoint(path)
    "filename",  # write_state_dict(state_dict, filename)
    "state_dict",  # write_state_dict(state_dict, filename)
    "progress",  # a callback
    "command",  # the provenance's command line, set by the CLI itself
    "receiver",  # graft_to_file(receiver=...): the CLI grafts its first input into the others
    "drop_duplicates",  # Selection(drop_duplicates=...): the CLI always drops them (a warning)
    "write",  # write=WriteOptions(...): the CLI builds it from its flags
}

# Modules no command reaches, whose words may match a flag by chance: the training helpers'
# ``decay`` is a learning-rate schedule's shape, not the EMA's ``--decay``.
NOT_IN_THE_CLI = ("wa_cli/train/",)


# ------------------------------------------------------------------------- the templates


def test_a_parameter_is_its_name_in_the_library_and_its_flag_in_the_cli() -> None:
    e = WaError.naming("{decay} must be in [0, 1], got {got!r}", got=1.5)
    assert (e.message, str(e), e.params) == (
        "decay must be in [0, 1], got 1.5",
        "decay must be in [0, 1], got 1.5",
        ("decay",),
    )
    assert e.render(spell) == "--decay must be in [0, 1], got 1.5"
    assert e.code == ExitCode.USAGE


def test_the_assign_form_is_followed_by_its_value() -> None:
    e = WaError.naming("{non_float=}{got!r} is not one of 'last'", ExitCode.BAD_INPUT, got="lst")
    assert e.message == "non_float='lst' is not one of 'last'"
    assert e.render(spell) == "--non-float 'lst' is not one of 'last'"
    assert e.code == ExitCode.BAD_INPUT


def test_values_are_never_read_as_fields_or_flags() -> None:
    tricky = "{decay} decay non_float= --alpha {} {0} }{"
    e = WaError.naming("{alpha} is wrong in {where}: {got!r}", where=tricky, got=tricky)
    assert e.message == f"alpha is wrong in {tricky}: {tricky!r}"
    assert e.render(spell) == f"--alpha is wrong in {tricky}: {tricky!r}"
    assert e.params == ("alpha",)


def test_conversions_and_format_specs_are_those_of_str_format() -> None:
    values: dict[str, Any] = {"x": 0.123456, "name": "a'b", "n": 7}
    template = "{x:.3f} {x!r} {name!r:>8} {name!s} {n:04d} {{literal}} {decay}"
    expected = "{x:.3f} {x!r} {name!r:>8} {name!s} {n:04d} {{literal}} decay".format(**values)
    e = WaError.naming(template, **values)
    assert e.message == expected
    assert e.render(spell) == expected.replace(" decay", " --decay")


def test_params_in_order_each_once() -> None:
    e = WaError.naming("give {alpha} or {decay}, not both ({alpha=}A is {decay=}1-A)")
    assert e.params == ("alpha", "decay")
    assert e.message == "give alpha or decay, not both (alpha=A is decay=1-A)"
    assert e.render(spell) == "give --alpha or --decay, not both (--alpha A is --decay 1-A)"


def test_a_parameter_named_at_run_time() -> None:
    e = WaError.naming("{p} must be finite, got {v}", p=Param("half_life"), v=float("inf"))
    assert (e.message, e.params) == ("half_life must be finite, got inf", ("half_life",))
    assert e.render(spell) == "--half-life must be finite, got inf"
    b = bad("max_shard_size", "{param=}{got!r} is not a size", got="5XB")
    assert b.message == "max_shard_size='5XB' is not a size"
    assert b.render(spell) == "--max-shard-size '5XB' is not a size"
    with pytest.raises(WaError) as c:
        choice("non_float", "lst", ("last", "first", "error"))
    assert c.value.render(spell) == "--non-float 'lst' is not one of 'last', 'first', 'error'"


def test_a_parameter_without_a_flag_keeps_its_library_name_in_the_cli() -> None:
    e = WaError.naming("{steps=}{got!r} must be a sequence of ints", got="x")
    assert e.render(spell) == e.message == "steps='x' must be a sequence of ints"


def test_a_plain_message_is_never_parsed() -> None:
    e = WaError("'{decay}.safetensors' is bad {} {", ExitCode.BAD_INPUT)
    assert e.message == e.render(spell) == "'{decay}.safetensors' is bad {} {"
    assert e.params == ()


def test_the_parts_travel_whole() -> None:
    """A message passed on (as a torchrun rank does) keeps its parameters for the CLI."""
    e = WaError.naming("{decay} must be in [0, 1], got {got}", got=2)
    again = WaError(("rank 1: ", *e.parts), e.code)
    assert again.message == "rank 1: decay must be in [0, 1], got 2"
    assert again.render(spell) == "rank 1: --decay must be in [0, 1], got 2"


def test_a_failure_shared_by_torchrun_ranks_keeps_its_parameters(monkeypatch) -> None:
    """Rank 1 fails a step: every rank raises it with the rank prefix, and the CLI still shows
    the flag (the gather itself is torch.distributed's; here it hands back what rank 1 sent)."""
    from wa_cli.engine import distributed

    monkeypatch.setattr(distributed, "_group", distributed.Group(1, 2, 1, 60.0))
    monkeypatch.setattr(distributed, "_gather", lambda item, what: [None, item])

    def fail() -> None:
        raise WaError.naming("{decay=}{got!r} must be in [0, 1]", got="{decay}")

    with pytest.raises(distributed.RankFailure) as e:
        distributed.step("checking", fail)
    assert e.value.rank == 1
    assert e.value.message == "rank 1: decay='{decay}' must be in [0, 1]"
    assert e.value.render(spell) == "rank 1: --decay '{decay}' must be in [0, 1]"


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("positional {}", {}),
        ("positional {0}", {}),
        ("unmatched {decay", {}),
        ("unmatched } brace", {}),
        ("a parameter takes no conversion: {decay!r}", {}),
        ("a parameter takes no spec: {decay:>4}", {}),
        ("'=' follows parameters: {got=}", {"got": 1}),
        ("attribute fields: {got.real}", {"got": 1}),
        ("nested specs: {got:{width}}", {"got": 1, "width": 3}),
        ("a value never used", {"got": 1}),
    ],
)
def test_a_malformed_template_is_a_bug(template: str, values: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WaError.naming(template, **values)


# --------------------------------------------------------------------- every message in wa_cli


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def _called(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"


def _literal_text(node: ast.expr) -> str | None:
    """The literal text of a str or f-string (interpolations left out), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "\0".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    return None


class _Any:
    """A stand-in value: formats with any conversion or spec."""

    def __format__(self, spec: str) -> str:
        return "<value>"

    def __repr__(self) -> str:
        return "<value>"


def _templates() -> list[tuple[str, str, dict[str, Any]]]:
    """Every literal template in wa_cli: (where, template, values with stand-ins)."""
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _called(node)
            values: dict[str, Any]
            if name == "naming" and node.args:
                template, values = node.args[0], {}
            elif name == "bad" and len(node.args) >= 2:
                template, values = node.args[1], {"param": Param("decay")}
            else:
                continue
            if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
                continue  # built from fixed names at run time (tested where it is raised)
            for k in node.keywords:
                if k.arg is not None and k.arg not in values:
                    is_param = isinstance(k.value, ast.Call) and _called(k.value) == "Param"
                    values[k.arg] = Param("decay") if is_param else _Any()
            found.append((_where(path, node), template.value, values))
    return found


def test_no_message_lists_its_parameters_or_spells_them_in_its_text() -> None:
    """``params=`` is gone; a plain message never writes a parameter as text (``name=value``,
    or a bare ``max_shard_size``): that belongs in a template, where the CLI shows the flag.
    (A bare word like ``keys`` or ``last`` is prose as often as a parameter: not checked.)"""
    names = "|".join(map(re.escape, FLAGS))
    snake = "|".join(re.escape(n) for n in FLAGS if "_" in n)
    spelled = re.compile(rf"(?<![\w.-])(({names})=|({snake})(?![\w-]))")
    wrong = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _called(node) not in ("WaError", "RankFailure"):
                continue
            if any(k.arg == "params" for k in node.keywords):
                wrong.append(f"{_where(path, node)}: params=")
            text = _literal_text(node.args[0]) if node.args else None
            where = str(path.relative_to(REPO))
            if text is not None and spelled.search(text) and not where.startswith(NOT_IN_THE_CLI):
                wrong.append(f"{_where(path, node)}: {text!r}")
    assert not wrong, "\n".join(wrong)


# Messages outside wa_cli/cli/ that may still write one of wa's flags as text, each with why.
# (Empty: every library message names its flags as template parameters.)
FLAG_TEXT_ALLOWED: set[tuple[str, str]] = set()


def _message_texts(tree: ast.Module) -> list[tuple[ast.AST, str]]:
    """The literal text of every message: the first argument of ``WaError``, ``RankFailure``,
    ``WaError.naming`` and ``bad`` (every literal piece of it), and module-level ``*_HINT``
    strings that messages are built from."""
    found: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = _called(node)
            arg = node.args[1] if name == "bad" and len(node.args) >= 2 else node.args[0]
            if name in ("WaError", "RankFailure", "naming", "bad"):
                found += [
                    (c, c.value)
                    for c in ast.walk(arg)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                ]
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, (ast.Constant, ast.JoinedStr)):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            text = _literal_text(stmt.value)
            if text is not None and any(n.endswith("HINT") for n in names):
                found.append((stmt, text))
    return found


def test_no_library_message_writes_a_flag_as_text() -> None:
    """``pass --force to replace it`` in a library message read ``--force`` in Python too: a
    message outside wa_cli/cli/ names a flag as a parameter field (``{force}``), which reads
    ``force`` in the library and ``--force`` on the command line (issue 19 item 4)."""
    flags = {f for v in FLAGS.values() for f in v.split("/") if f.startswith("--")}
    written = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, flags))})(?![\w-])")
    wrong = []
    for path, tree in _sources():
        where = str(path.relative_to(REPO))
        if where.startswith("wa_cli/cli/"):
            continue
        for node, text in _message_texts(tree):
            for flag in written.findall(text):
                if (where, flag) not in FLAG_TEXT_ALLOWED:
                    wrong.append(f"{_where(path, node)}: {flag} in {text!r}")
    assert not wrong, "\n".join(wrong)


def test_the_flag_scan_sees_flags_in_messages() -> None:
    tree = ast.parse(
        'raise WaError(f"output {x!r} exists (pass --force)")\n'
        'raise WaError.naming("{a} " + "use --keys union", a=1)\n'
        'HINT = "pass --order name"\n'
        'raise WaError("rerun with torchrun --rdzv-endpoint")\n'
    )
    flags = {f for v in FLAGS.values() for f in v.split("/") if f.startswith("--")}
    texts = " ".join(text for _, text in _message_texts(tree))
    assert [f for f in ("--force", "--keys", "--order", "--rdzv-endpoint") if f in texts] == [
        "--force",
        "--keys",
        "--order",
        "--rdzv-endpoint",
    ]
    assert "--rdzv-endpoint" not in flags and {"--force", "--keys", "--order"} <= flags


def test_there_are_templates_to_check() -> None:
    assert len(_templates()) > 100


def test_every_parameter_a_message_names_is_a_flag_or_library_only() -> None:
    wrong = []
    for where, template, values in _templates():
        params = parse_template(template, values)
        names = [p.name for p in params if isinstance(p, Param)]
        if not names:
            wrong.append(f"{where}: names no parameter (a plain WaError would do)")
        wrong += [f"{where}: {n!r}" for n in names if n not in FLAGS and n not in LIBRARY_ONLY]
    assert not wrong, "\n".join(wrong)


def test_every_parameter_named_at_run_time_is_a_flag_or_library_only() -> None:
    """The names passed to ``wa_cli.engine.params``' checks, to ``Param(...)`` and as ``param=``."""
    checks = {"bad", "choice", "dtype", "size", "integer", "number", "flag", "Param"}
    wrong = []
    for path, tree in _sources():
        imported = {
            a.asname or a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            and n.module in ("wa_cli.engine.params", "wa_cli.errors")
            for a in n.names
        }
        for node in ast.walk(tree):
            names: list[ast.expr] = []
            if isinstance(node, ast.Call) and node.args and _called(node) in checks:
                attr = isinstance(node.func, ast.Attribute)
                if attr or _called(node) in imported:
                    names.append(node.args[0])
            elif isinstance(node, ast.arguments):
                positional = reversed([*node.posonlyargs, *node.args])
                pairs: list[tuple[ast.arg, ast.expr | None]]
                pairs = [*zip(positional, reversed(node.defaults), strict=False)]
                pairs += zip(node.kwonlyargs, node.kw_defaults, strict=True)
                names += [d for a, d in pairs if a.arg == "param" and d is not None]
            for n in names:
                if not (isinstance(n, ast.Constant) and isinstance(n.value, str)):
                    continue  # a name chosen at run time: its callers are checked here
                if n.value not in FLAGS and n.value not in LIBRARY_ONLY:
                    wrong.append(f"{_where(path, n)}: {n.value!r}")
    assert not wrong, "\n".join(wrong)


def test_every_template_names_its_parameters_and_the_cli_its_flags() -> None:
    for where, template, values in _templates():
        parts = parse_template(template, values)
        library, cli = render(parts), render(parts, spell)
        for p in (p for p in parts if isinstance(p, Param)):
            assert p.library() in library, (where, library)
            assert spell(p) in cli, (where, cli)
            if p.name in FLAGS:
                assert FLAGS[p.name] in cli and f"{p.name}=" not in cli, (where, cli)


def test_every_field_of_every_template_is_a_name() -> None:
    for where, template, _ in _templates():
        for _, field, _, _ in string.Formatter().parse(template):
            assert field is None or field.removesuffix("=").isidentifier(), (where, field)


# ------------------------------------------------------------------------------ the command


def test_a_file_named_with_braces_and_a_flag_word_shows_verbatim(tmp_path, capsys) -> None:
    """``'{variant} variant.pth.tar' holds both ...`` (the old rewrite made it ``{--variant}``)."""
    state = {"w": torch.ones(2)}
    path = tmp_path / "{variant} variant.pth.tar"
    torch.save({"state_dict": state, "state_dict_ema": state, "epoch": 1}, path)
    r = run_wa(["average", path, path, "-o", tmp_path / "out.safetensors"], capsys)
    assert_one_line_error(r, 2, f"'{path}' holds both", "--variant raw or --variant ema")


def test_a_key_named_with_braces_shows_verbatim_beside_the_flag(tmp_path, capsys) -> None:
    """The message names ``--keys`` as a flag and the key ``{keys=} keys`` as it is."""
    key = "{keys=} keys"
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.ones(2), key: torch.ones(1)}, tmp_path / "b.safetensors")
    args = ["average", tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    r = run_wa([*args, "--weights", "1,0", "--keys", "union", "-o", tmp_path / "o"], capsys)
    assert_one_line_error(
        r, 2, f"key {key!r} is held only by inputs of weight 0", "use --keys 'intersection'"
    )


def test_a_value_with_flag_words_shows_verbatim(tmp_path, capsys) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    a = tmp_path / "a.safetensors"
    r = run_wa(["average", a, a, "--device", "cuda device=1", "-o", tmp_path / "o"], capsys)
    assert_one_line_error(r, 2, "--device 'cuda device=1' is not one of")
