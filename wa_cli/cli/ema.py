"""``wa ema``: an exponential moving average over a saved trajectory (and Lookahead weights)."""

from __future__ import annotations

from typing import Annotated

import typer

from wa_cli.cli import options as opt
from wa_cli.cli.render import byte_progress, emit_run_report

_DECAY = "Decay (give exactly one)"


def ema_command(
    inputs: opt.Inputs,
    output: opt.OptionalOutput = None,
    decay: Annotated[
        float | None,
        typer.Option(
            "--decay",
            rich_help_panel=_DECAY,
            help="Fixed decay D in [0, 1] per checkpoint.",
            metavar="D",
        ),
    ] = None,
    decay_per_step: Annotated[
        float | None,
        typer.Option(
            "--decay-per-step",
            rich_help_panel=_DECAY,
            help="Decay d per training step (uneven gaps).",
            metavar="d",
        ),
    ] = None,
    half_life: Annotated[
        float | None,
        typer.Option(
            "--half-life",
            rich_help_panel=_DECAY,
            help="Steps after which a weight halves.",
            metavar="H",
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            rich_help_panel=_DECAY,
            help="Lookahead: decay 1 - A (not Lookahead unless trained so).",
            metavar="A",
        ),
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
    """EMA over a trajectory: e_0 = θ_0, e_i = β_i e_{i-1} + (1 - β_i) θ_i.

    Inputs are put in trajectory order; the report lists each one's weight.

    \b
    Example:
      wa ema 'runs/a/ckpt_*.safetensors' --half-life 500 -o ema.safetensors
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
    coefficients = ema_coefficients(
        len(entries),
        decay=decays["decay"],
        decay_per_step=decays["decay_per_step"],
        half_life=decays["half_life"],
        steps=steps,
    )
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
