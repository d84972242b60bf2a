"""The one flow of every reducing command: open → select → dry run, or write → report.

``wa average`` and ``wa ema`` differ only in how they weigh the selected checkpoints and which
library function writes; :func:`run_reduction` does the rest the same way for both, so the two
commands cannot drift apart (the dry run makes the checks a real run makes, the selection is
attached to the report, and the per-checkpoint table is printed after it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wa_cli.cli.inputs import (
    Selection,
    attach_selection,
    dry_run_checks,
    emit_selection,
    format_rows,
    open_inputs,
    require_output,
    select_inputs,
    selection_report,
)
from wa_cli.cli.render import emit_run_report, progress_bar

if TYPE_CHECKING:
    from wa_cli.engine.report import RunReport
    from wa_cli.io.reader import Checkpoint
    from wa_cli.select import Entry


@dataclass(frozen=True)
class ReadFlags:
    """The reading flags every command shares (``--key``, ``--strip-prefix``, ...)."""

    key: str | None = None
    strip_prefix: list[str] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    allow_global: list[str] | None = None
    variant: str | None = None
    deepspeed_weights: str = "master"


@dataclass(frozen=True)
class Weighing:
    """What a method makes of the selected entries: inputs in the order to combine, the weight
    each gets in the result (for the table), the method's name, and an optional note."""

    items: list[Checkpoint]
    weights: Sequence[float]
    method: str
    note: str = ""


Write = Callable[[list["Checkpoint"], Path, Callable[[int, int], None] | None], "RunReport"]


def run_reduction(
    command: str,
    inputs: list[str],
    output: Path | None,
    sel: Selection,
    read: ReadFlags,
    *,
    default_order: str | None,
    weigh: Callable[[list[Entry[Checkpoint]]], Weighing],
    write: Write,
    check: dict[str, Any],
    dry_run: bool,
    json: bool,
    quiet: bool,
    table: Callable[[dict[str, Any]], str | None],
) -> None:
    """Run ``command``: ``check`` holds keys, non_float, dtype and max_shard_size for the dry run;
    ``table(selection)`` titles the per-checkpoint rows printed after the report (None: none)."""
    ckpts = open_inputs(
        inputs,
        key=read.key,
        strip_prefix=read.strip_prefix,
        include=read.include,
        exclude=read.exclude,
        allow_global=read.allow_global,
        variant=read.variant,
        deepspeed_weights=read.deepspeed_weights,
        dedupe=True,
    )
    entries = select_inputs(ckpts, sel, default_order=default_order)
    weighed = weigh(entries)
    report = selection_report(
        entries, weighed.weights, method=weighed.method, total=len(ckpts), metric=sel.metric,
        sel=sel,
    )  # fmt: skip
    if dry_run:
        report["notes"] = dry_run_checks(weighed.items, output, **check)
        emit_selection(report, json)
        return
    destination = require_output(output, command)
    with progress_bar(command, quiet) as progress:
        result = write(weighed.items, destination, progress)
    attach_selection(result, report)
    if weighed.note:
        result.notes.insert(0, weighed.note)
    emit_run_report(result, json, quiet)
    title = table(report)
    if not json and title is not None:
        print(f"  {title}")
        for line in format_rows(report["checkpoints"], sel.metric):
            print(line)
