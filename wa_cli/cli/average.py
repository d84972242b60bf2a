"""``wa average``: the uniform or weighted mean of checkpoints (SWA)."""

from __future__ import annotations

from typing import Annotated

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
    import wa_cli as wa
    from wa_cli.cli.inputs import emit_reduction, parse_weight_list, read_options
    from wa_cli.cli.render import progress_bar

    sel = wa.Selection(
        order, last, every, from_step, to_step, top_k, metric, mode, metrics, drop_duplicates=True
    )  # the same checkpoint given twice is used once
    # torch is imported here, before the progress bar draws (a bar over an import says nothing).
    reduce = wa.ReduceOptions.checked(
        keys=keys, non_float=non_float, dtype=dtype, precision=precision, device=device
    )
    write = wa.WriteOptions.checked(
        force=force,
        max_shard_size=max_shard_size,
        shard_name=shard_name,
        copy_config=copy_config,
        output_format=output_format,
    )
    with progress_bar("average", quiet) as progress:
        result = wa.average_to_file(
            inputs, output, weights=parse_weight_list(weights),
            read=read_options(
                key, strip_prefix, include, exclude, allow_global, variant, deepspeed_weights
            ), selection=sel,
            reduce=reduce,
            write=write.with_progress(progress),
            dry_run=dry_run,
        )  # fmt: skip
    emit_reduction(result, sel, json, quiet)
