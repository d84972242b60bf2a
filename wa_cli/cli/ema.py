"""``wa ema``: an exponential moving average over a saved trajectory (and Lookahead weights)."""

from __future__ import annotations

from typing import Annotated

import typer

from wa_cli.cli import options as opt
from wa_cli.cli.app import app
from wa_cli.cli.render import byte_progress, emit_run_report
from wa_cli.methods.ema import LOOKAHEAD_HELP

_DECAY = "Decay (give exactly one)"


@app.command("ema")
def ema_command(
    inputs: opt.Inputs,
    output: opt.OptionalOutput = None,
    decay: Annotated[
        float | None,
        typer.Option(
            "--decay",
            help="Fixed decay D in [0, 1] per checkpoint: e_i = D e_{i-1} + (1 - D) θ_i. "
            "0 returns the last checkpoint, 1 the first.",
            rich_help_panel=_DECAY,
        ),
    ] = None,
    decay_per_step: Annotated[
        float | None,
        typer.Option(
            "--decay-per-step",
            help="Decay per training step d in [0, 1]: β_i = d^(s_i - s_{i-1}), so uneven gaps "
            "between saves weigh correctly (needs step numbers).",
            rich_help_panel=_DECAY,
        ),
    ] = None,
    half_life: Annotated[
        float | None,
        typer.Option(
            "--half-life",
            help="Steps after which a checkpoint's weight halves (> 0): --decay-per-step "
            "0.5^(1/H).",
            rich_help_panel=_DECAY,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", help=LOOKAHEAD_HELP, rich_help_panel=_DECAY),
    ] = None,
    order: opt.Order = None,
    last: opt.Last = None,
    every: opt.Every = None,
    from_step: opt.FromStep = None,
    to_step: opt.ToStep = None,
    top_k: opt.TopK = None,
    metric: opt.Metric = None,
    mode: opt.Mode = None,
    metrics: opt.MetricsFile = None,
    dry_run: opt.DryRun = False,
    keys: opt.Keys = "strict",
    non_float: opt.NonFloat = "last",
    dtype: opt.DType = None,
    precision: opt.Precision = "auto",
    device: opt.Device = "auto",
    max_shard_size: opt.MaxShardSize = None,
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    allow_global: opt.AllowGlobal = None,
    force: opt.Force = False,
    json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """EMA over a trajectory: e_0 = the first selected checkpoint, e_i = β_i e_{i-1} + (1-β_i) θ_i.

    Checkpoints are put in trajectory order (step metadata, else the number in the file name);
    the report lists each checkpoint's weight in the result (they sum to 1).

    Example: wa ema runs/a/ckpt_*.safetensors --half-life 500 -o ema.safetensors
    """
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
    from wa_cli.engine.precision import parse_user_dtype
    from wa_cli.io.writer import parse_size
    from wa_cli.methods.ema import decay_options, ema_coefficients, ema_to_file

    sel = Selection(order, last, every, from_step, to_step, top_k, metric, mode, metrics)
    decays = decay_options(decay, decay_per_step, half_life, alpha)  # checks --alpha
    ckpts = open_inputs(
        inputs,
        key=key,
        strip_prefix=strip_prefix,
        include=include,
        exclude=exclude,
        allow_global=allow_global,
        dedupe=True,
    )
    entries = select_inputs(ckpts, sel, default_order="auto")
    steps = [e.step for e in entries]
    # The coefficients (and every decay error) before any tensor is read or -o is checked.
    coefficients = ema_coefficients(len(entries), **decays, steps=steps)  # type: ignore[arg-type]
    report = selection_report(
        entries, coefficients, method="ema", total=len(ckpts), metric=metric, sel=sel
    )
    if dry_run:
        dry_run_checks(
            [e.item for e in entries], output, keys=keys, non_float=non_float,
            dtype=parse_user_dtype(dtype), max_shard_size=max_shard_size,
        )  # fmt: skip
        emit_selection(report, json)
        return
    output = require_output(output, "ema")
    with byte_progress("ema", quiet) as progress:
        result = ema_to_file(
            [e.item for e in entries],
            output,
            decay=decay,
            decay_per_step=decay_per_step,
            half_life=half_life,
            alpha=alpha,
            steps=steps,
            keys=keys,
            non_float=non_float,
            dtype=parse_user_dtype(dtype),
            precision=precision,
            device=device,
            force=force,
            max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
            progress=progress,
        )
    attach_selection(result, report)
    emit_run_report(result, json, quiet)
    if not json:
        print("  weights in the result:")
        for line in format_rows(report["checkpoints"], metric):
            print(line)
