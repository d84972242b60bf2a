"""``wa average``: the uniform or weighted mean of checkpoints (SWA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wa_cli.cli import options as opt


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
    shard_name: opt.ShardName = None,
    copy_config: opt.CopyConfig = False,
    output_format: opt.OutputFormat = "safetensors",
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    allow_global: opt.AllowGlobal = None,
    variant: opt.Variant = None,
    deepspeed_weights: opt.DeepSpeedWeights = "master",
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
        note_copies,
        output_layout,
        parse_weight_list,
        training_order_for_copies,
    )
    from wa_cli.cli.run import ReadFlags, Weighing, run_reduction
    from wa_cli.engine.precision import parse_user_dtype
    from wa_cli.engine.rounding import normalized_weights
    from wa_cli.methods.average import average_to_file, validate_weights

    sel = Selection(order, last, every, from_step, to_step, top_k, metric, mode, metrics)
    given = parse_weight_list(weights)
    ordered_weights: list[float] | None = None

    def weigh(entries: list[Any]) -> Weighing:
        nonlocal ordered_weights
        raw = validate_weights(given, len(entries))
        method = "mean" if len(set(raw)) == 1 else "weighted_mean"
        items, ordered_weights, note = training_order_for_copies(entries, given, sel, non_float)
        return Weighing(items, normalized_weights(raw), method, note)

    # --copy-config without a folder output is a usage error before anything is read.
    output_layout([], shard_name=shard_name, copy_config=copy_config, max_shard_size=max_shard_size)

    def write(items: list[Any], out: Path, progress: Any) -> Any:
        name, copies = output_layout(
            items, shard_name=shard_name, copy_config=copy_config, max_shard_size=max_shard_size
        )
        result = average_to_file(
            items, out, weights=ordered_weights, keys=keys, non_float=non_float, dtype=dtype,
            precision=precision, device=device, force=force, max_shard_size=max_shard_size,
            progress=progress, shard_name=name, copy_files=copies, output_format=output_format,
        )  # fmt: skip
        return note_copies(result, copies)

    run_reduction(
        "average", inputs, output, sel,
        ReadFlags(key, strip_prefix, include, exclude, allow_global, variant, deepspeed_weights),
        # The mean does not depend on the order: keep the given one (and read no steps) unless
        # a selection asks for trajectory order; --dry-run shows steps, so it reads them.
        default_order="auto" if sel.filters else ("given" if dry_run else None),
        weigh=weigh, write=write,
        check={"keys": keys, "non_float": non_float, "dtype": parse_user_dtype(dtype),
               "max_shard_size": max_shard_size},
        dry_run=dry_run, json=json, quiet=quiet,
        table=lambda report: "kept:" if report["mode"] is not None else None,
    )  # fmt: skip
