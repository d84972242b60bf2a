"""``wa average``: the uniform or weighted mean of checkpoints (SWA)."""

from __future__ import annotations

from typing import Annotated

import typer

from wa_cli.cli import options as opt

_SOUP = "Soups (docs/soups.md)"


def average_command(
    inputs: opt.Inputs,
    output: opt.OptionalOutput = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights", help="One weight per selected input, e.g. 1,2,1.", metavar="W,W,..."
        ),
    ] = None,
    greedy: Annotated[
        bool,
        typer.Option("--greedy", rich_help_panel=_SOUP, help="Greedy soup scored by --eval."),
    ] = False,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            rich_help_panel=_SOUP,
            help="WiSE-FT: best α on a grid (2 inputs).",
            metavar="A:B:STEP",
        ),
    ] = None,  # fmt: skip
    model_stock: Annotated[
        str | None,
        typer.Option(
            "--model-stock",
            rich_help_panel=_SOUP,
            help="Model Stock of fine-tunes of BASE.",
            metavar="BASE",
        ),
    ] = None,  # fmt: skip
    model: Annotated[
        str | None,
        typer.Option("--model", rich_help_panel=_SOUP, help="Model factory.", metavar="SPEC"),
    ] = None,
    evaluate: Annotated[
        str | None,
        typer.Option("--eval", rich_help_panel=_SOUP, help="fn(model) -> score.", metavar="SPEC"),
    ] = None,
    bn_data: Annotated[
        str | None,
        typer.Option(
            "--bn-data",
            rich_help_panel=_SOUP,
            help="Re-estimate BN before scoring.",
            metavar="SPEC",
        ),
    ] = None,  # fmt: skip
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
    from wa_cli.cli.soups import SoupFlags, run_soup

    soup = SoupFlags(greedy, sweep, model_stock, model, evaluate, bn_data, metric, mode)
    if soup.chosen:
        soup.refuse_with(weights=weights, last=last, every=every, top_k=top_k, dry_run=dry_run,
                         from_step=from_step, to_step=to_step, metrics=metrics)  # fmt: skip

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
    read = read_options(
        key, strip_prefix, include, exclude, allow_global, variant, deepspeed_weights
    )
    if soup.chosen:
        run_soup(soup, inputs, output, read, reduce, write, json, quiet)
        return
    with progress_bar("average", quiet) as progress:
        result = wa.average_to_file(
            inputs, output, weights=parse_weight_list(weights), read=read, selection=sel,
            reduce=reduce,
            write=write.with_progress(progress),
            dry_run=dry_run,
        )  # fmt: skip
    emit_reduction(result, sel, json, quiet)
