"""``wa ema``: an exponential moving average over a saved trajectory (and Lookahead weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wa_cli.cli import options as opt

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
    from wa_cli.cli.inputs import Selection, note_copies, output_layout
    from wa_cli.cli.run import ReadFlags, Weighing, run_reduction
    from wa_cli.engine.precision import parse_user_dtype
    from wa_cli.methods.ema import decay_options, ema_coefficients, ema_to_file

    sel = Selection(order, last, every, from_step, to_step, top_k, metric, mode, metrics)
    decays = decay_options(decay, decay_per_step, half_life, alpha)  # checks --alpha
    steps: list[int | None] = []

    def weigh(entries: list[Any]) -> Weighing:
        steps[:] = [e.step for e in entries]
        # The coefficients (and every decay error) before any tensor is read or -o is checked.
        coefficients = ema_coefficients(
            len(entries),
            decay=decays["decay"],
            decay_per_step=decays["decay_per_step"],
            half_life=decays["half_life"],
            steps=steps,
        )
        return Weighing([e.item for e in entries], coefficients, "ema")

    # --copy-config without a folder output is a usage error before anything is read.
    output_layout([], shard_name=None, copy_config=copy_config, max_shard_size=max_shard_size)

    def write(items: list[Any], out: Path, progress: Any) -> Any:
        name, copies = output_layout(
            items, shard_name=None, copy_config=copy_config, max_shard_size=max_shard_size
        )
        result = ema_to_file(
            items, out, decay=decay, decay_per_step=decay_per_step, half_life=half_life,
            alpha=alpha, steps=steps, keys=keys, non_float=non_float, dtype=dtype,
            precision=precision, device=device, force=force, max_shard_size=max_shard_size,
            progress=progress, shard_name=name, copy_files=copies, output_format=output_format,
        )  # fmt: skip
        return note_copies(result, copies)

    run_reduction(
        "ema", inputs, output, sel,
        ReadFlags(key, strip_prefix, include, exclude, allow_global, variant),
        default_order="auto", weigh=weigh, write=write,
        check={"keys": keys, "non_float": non_float, "dtype": parse_user_dtype(dtype),
               "max_shard_size": max_shard_size},
        dry_run=dry_run, json=json, quiet=quiet,
        table=lambda report: "weights in the result:",
    )  # fmt: skip
