"""The one flow of a reducing verb over a trajectory: select → weigh → dry run, or write → report.

``average_to_file`` and ``ema_to_file`` differ only in how they weigh the selected checkpoints
and in the weights the engine combines them with; :func:`run_trajectory` does the rest the same
way for both (and so for ``wa average`` and ``wa ema``, which call them): a dry run makes the
checks a real run makes, the selection is attached to the report, the output layout (shard name,
config files copied beside the shards) is decided from the newest input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.selection import (
    DryRun,
    Selected,
    attach_selection,
    close_opened,
    select_checkpoints,
)

if TYPE_CHECKING:
    from wa_cli.engine.combine import WeightsFn
    from wa_cli.engine.options import ReduceOptions, WriteOptions
    from wa_cli.engine.plan import Plan
    from wa_cli.engine.report import RunReport
    from wa_cli.io.reader import Checkpoint
    from wa_cli.methods.inputs import Inputs
    from wa_cli.methods.request import Request


@dataclass(frozen=True)
class Weighing:
    """What a method makes of the selected checkpoints: the inputs in the order to combine, each
    selected one's weight in the result (for the table), the method's name, an optional note;
    and what the write needs in the order of ``items``: the caller's weights, the steps."""

    items: list[Checkpoint]
    weights: Sequence[float]
    method: str
    note: str = ""
    given_weights: list[float] | None = None
    steps: list[int | None] | None = None


Weigh = Callable[[Selected], Weighing]
Write = Callable[[Weighing, Path, "WriteOptions"], "RunReport"]


def check_layout(write: WriteOptions) -> None:
    """``copy_config`` writes a folder ``from_pretrained`` reads: it needs ``max_shard_size``."""
    if write.copy_config and write.max_shard_size is None:
        raise WaError.naming(
            "{copy_config} writes a folder that from_pretrained(DIR) reads: add "
            "{max_shard_size} (e.g. 5GB)",
            ExitCode.USAGE,
        )


def output_layout(items: Sequence[Checkpoint], write: WriteOptions) -> WriteOptions:
    """``write`` with the shard base name and the config files to copy decided.

    ``items`` are in training order when it is known: the newest input is the last one.
    """
    from wa_cli.io.companions import config_files, shard_name_of

    if write.max_shard_size is None or not items:
        return write
    name = write.shard_name or shard_name_of(items[0].files)
    if not write.copy_config or write.copy_files:
        return dataclasses.replace(write, shard_name=name)
    newest = items[-1]
    folder = Path(newest.path) if Path(newest.path).is_dir() else Path(newest.path).parent
    files = config_files(folder)
    if not any(f.name in ("config.json", "adapter_config.json") for f in files):
        logging.getLogger("wa_cli").warning(
            "--copy-config: '%s' holds no config.json (from_pretrained needs one)", folder
        )
    return dataclasses.replace(write, shard_name=name, copy_files=tuple(files))


def check_run(items: Sequence[Checkpoint], output: Path | None, request: Request) -> list[str]:
    """Every check a real run makes before writing: keys, shapes, dtypes, the non-float policy,
    the output's name and that it is no input. A dry run fails exactly where the run would.
    Returns the plan's notes (which file of each input is read, what is left out)."""
    from wa_cli.engine.plan import build_plan
    from wa_cli.engine.report import input_reads

    r = request.reduce
    plan = build_plan(items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
    if output is not None:  # writes nothing: an existing output is no failure
        request.write.check_output(output, input_reads(items), existing=False)
    return list(plan.notes)


def run_trajectory(
    inputs: Inputs,
    output: str | os.PathLike[str] | None,
    request: Request,
    weigh: Weigh,
    write: Write,
) -> RunReport | DryRun:
    """Select, weigh, then return the plan (``request.dry_run``) or write and report."""
    check_layout(request.write)  # a usage error before anything is read
    if output is not None and not request.dry_run:
        request.write.check_output(output)  # a refused -o before any input is read
    selected = select_checkpoints(inputs, request.read, request.selection, dry_run=request.dry_run)
    out = None if output is None else Path(output)
    try:
        weighed = weigh(selected)
        plan = selected.plan(weighed.weights, weighed.method)
        if request.dry_run:
            plan.notes = check_run(weighed.items, out, request)
            close_opened(selected.items, inputs, keep=())
            return plan
        if out is None:
            raise WaError.naming(
                "{output} is required (only {dry_run} runs without one)", ExitCode.USAGE
            )
    except BaseException:
        close_opened(selected.items, inputs, keep=())
        raise
    layout = output_layout(weighed.items, request.write)
    result = write(weighed, out, layout)
    if layout.copy_files:
        folder = layout.copy_files[0].parent
        names = ", ".join(f.name for f in layout.copy_files)
        result.notes.append(f"copied {names} from '{folder}'")
    return attach_selection(result, plan, weighed.note)


def reduce_to_file(
    plan: Plan,
    weights: WeightsFn,
    output: str | os.PathLike[str],
    *,
    method: str,
    params: dict[str, Any],
    input_weights: list[float],
    opts: ReduceOptions,
    out: WriteOptions,
) -> RunReport:
    """:func:`wa_cli.engine.run.combine_to_file` for a method over a trajectory: the output's
    metadata records the provenance and the inputs' step range (read here: the engine reads no
    steps)."""
    from wa_cli.engine.provenance import provenance
    from wa_cli.engine.run import Recipe, combine_to_file
    from wa_cli.select.order import step_metadata

    ckpts = plan.checkpoints
    meta = {**provenance(ckpts, method, params, out.command), **step_metadata(ckpts)}
    recipe = Recipe(method, params, meta, input_weights)
    return combine_to_file(plan, weights, output, recipe, opts, out)
