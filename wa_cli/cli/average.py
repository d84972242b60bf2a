"""``wa average``: the uniform or weighted mean of checkpoints (SWA)."""

from __future__ import annotations

from typing import Annotated

import typer

from wa_cli.cli import options as opt
from wa_cli.cli.app import app
from wa_cli.cli.render import byte_progress, emit_run_report


@app.command("average")
def average_command(
    inputs: opt.Inputs,
    output: opt.Output,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Comma-separated non-negative weights, one per input (normalized), e.g. 1,2,1.",
        ),
    ] = None,
    keys: opt.Keys = "strict",
    non_float: opt.NonFloat = "last",
    dtype: opt.DType = None,
    precision: opt.Precision = "auto",
    device: opt.Device = "auto",
    max_shard_size: opt.MaxShardSize = None,
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = False,
    force: opt.Force = False,
    json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Average checkpoints (SWA): θ̄ = Σ w_i θ_i / Σ w_i, per tensor, streamed to -o.

    Example: wa average runs/a/ckpt_*.safetensors -o swa.safetensors
    """
    from wa_cli.average import average_to_file
    from wa_cli.cli.inputs import open_inputs, parse_weight_list
    from wa_cli.dtypes import parse_user_dtype
    from wa_cli.io.writer import parse_size

    ckpts = open_inputs(inputs, key=key, strip_prefix=strip_prefix)
    with byte_progress("averaging", quiet) as progress:
        report = average_to_file(
            ckpts,
            output,
            weights=parse_weight_list(weights),
            keys=keys,
            non_float=non_float,
            dtype=parse_user_dtype(dtype),
            precision=precision,
            device=device,
            force=force,
            max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
            progress=progress,
        )
    emit_run_report(report, json, quiet)
