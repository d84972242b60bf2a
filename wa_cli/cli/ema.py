"""``wa ema``: an exponential moving average over a saved trajectory (and Lookahead weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wa_cli.cli import options as opt

_DECAY = "Decay (give exactly one)"
_POSTHOC = "Post-hoc power EMA (docs/posthoc-ema.md)"


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
    sigma_rel: Annotated[
        str | None,
        typer.Option(
            "--sigma-rel",
            rich_help_panel=_POSTHOC,
            help="Power EMA of this width (S,S,... with -o DIR).",
            metavar="S",
        ),
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option(
            "--gamma", rich_help_panel=_POSTHOC, help="Its exponent instead.", metavar="G"
        ),
    ] = None,
    at_step: Annotated[
        int | None,
        typer.Option(
            "--at-step", rich_help_panel=_POSTHOC, help="End at this saved step.", metavar="T"
        ),
    ] = None,
    quadrature: Annotated[
        str | None,
        typer.Option(
            "--quadrature", rich_help_panel=_POSTHOC, help="linear (default) or step.", metavar="Q"
        ),
    ] = None,
    snapshot_sigma_rels: Annotated[
        str | None,
        typer.Option(
            "--snapshot-sigma-rels",
            rich_help_panel=_POSTHOC,
            help="σ_rel per ema-pytorch snapshot index.",
            metavar="S,S",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", rich_help_panel=_POSTHOC, help="Draw the profile.", metavar="FILE"),
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
    copy_config: opt.CopyConfig = False,
    output_format: opt.OutputFormat = "safetensors",
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    allow_global: opt.AllowGlobal = None,
    variant: opt.Variant = None,
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
    import wa_cli as wa
    from wa_cli.cli.inputs import (
        emit_reduction,
        plot_path,
        posthoc_options,
        posthoc_output,
        read_options,
    )
    from wa_cli.cli.render import progress_bar

    # An EMA needs trajectory order: the inputs are sorted unless --order says otherwise. A
    # post-hoc EMA weighs by the recorded steps itself, and snapshots of two widths share steps.
    posthoc = posthoc_options(sigma_rel, gamma, at_step, quadrature, snapshot_sigma_rels)
    order = order or ("given" if posthoc else "auto")
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
        copy_config=copy_config,
        output_format=output_format,
    )
    read = read_options(key, strip_prefix, include, exclude, allow_global, variant)
    several = len(posthoc.get("sigma_rel") or ()) > 1
    if several:  # one call: the inputs are read once for every width
        posthoc = {**posthoc, "sigma_rel": list(posthoc["sigma_rel"])}
    else:
        posthoc = {**posthoc, "sigma_rel": (posthoc.get("sigma_rel") or [None])[0]}
    with progress_bar("ema", quiet) as progress:
        results = wa.ema_to_file(
            inputs, posthoc_output(output, several, dry_run), decay=decay,
            decay_per_step=decay_per_step, half_life=half_life, alpha=alpha, read=read,
            selection=sel,
            reduce=reduce,
            write=write.with_progress(progress),
            dry_run=dry_run,
            **posthoc,
        )  # fmt: skip
    for result in results if isinstance(results, list) else [results]:
        emit_reduction(result, sel, json, quiet)
        if plot is not None and isinstance(result, wa.RunReport):
            wa.plot_posthoc(result, plot_path(plot, result.params, several), force=force)
