"""``wa average``: the uniform or weighted mean of checkpoints (SWA)."""

from __future__ import annotations

from typing import Annotated

import typer

from wa_cli.cli import options as opt
from wa_cli.cli.render import byte_progress, emit_run_report


def average_command(
    inputs: opt.Inputs,
    output: opt.OptionalOutput = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights", help="One weight per selected input, e.g. 1,2,1.", metavar="W,W,..."
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
    """Average checkpoints (SWA): Σ w_i θ_i / Σ w_i per tensor, streamed to -o.

    A selection flag or --order puts the inputs in trajectory order first.

    \b
    Example:
      wa average 'runs/a/ckpt_*.safetensors' --last 5 -o swa.safetensors
    """
    from wa_cli.cli.inputs import (
        Selection,
        attach_selection,
        dry_run_checks,
        emit_selection,
        format_rows,
        open_inputs,
        parse_weight_list,
        require_output,
        select_inputs,
        selection_report,
        training_order_for_copies,
    )
    from wa_cli.engine.precision import parse_user_dtype
    from wa_cli.engine.rounding import normalized_weights
    from wa_cli.io.writer import parse_size
    from wa_cli.methods.average import average_to_file, validate_weights

    sel = Selection(order, last, every, from_step, to_step, top_k, metric, mode, metrics)
    ckpts = open_inputs(
        inputs,
        key=key,
        strip_prefix=strip_prefix,
        include=include,
        exclude=exclude,
        allow_global=allow_global,
        dedupe=True,
    )
    # The mean does not depend on the order: keep the given one (and read no steps) unless a
    # selection asks for trajectory order; --dry-run shows steps, so it reads them.
    default_order = "auto" if sel.filters else ("given" if dry_run else None)
    entries = select_inputs(ckpts, sel, default_order=default_order)
    w = parse_weight_list(weights)
    raw = validate_weights(w, len(entries))
    method = "mean" if len(set(raw)) == 1 else "weighted_mean"
    report = selection_report(
        entries, normalized_weights(raw), method=method, total=len(ckpts), metric=metric, sel=sel
    )
    items, w, order_note = training_order_for_copies(entries, w, sel, non_float)
    if dry_run:
        dry_run_checks(
            items, output, keys=keys, non_float=non_float, dtype=parse_user_dtype(dtype),
            max_shard_size=max_shard_size,
        )  # fmt: skip
        emit_selection(report, json)
        return
    output = require_output(output, "average")
    with byte_progress("averaging", quiet) as progress:
        result = average_to_file(
            items,
            output,
            weights=w,
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
    if order_note:
        result.notes.insert(0, order_note)
    emit_run_report(result, json, quiet)
    if not json and report["mode"] is not None:
        print("  kept:")
        for line in format_rows(report["checkpoints"], metric):
            print(line)
