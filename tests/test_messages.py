"""Messages that name parameters: ``decay`` in the library, ``--decay`` on the command line.

A ``WaError`` built by ``WaError.naming`` keeps the parameters its template names as fields, and
each front end spells them (``wa_cli.cli.flags.spell`` for the CLI): no text is ever rewritten,
so user content (paths, tensor names, values) shows verbatim, braces and flag-like words included.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import REPO
from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, Param, WaError
from wa_cli.params import bad, choice

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
