"""``wa bn-recalibrate``: give a checkpoint's weights their own BatchNorm statistics (SWA, SWAP)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from wa_cli.cli import options as opt

if TYPE_CHECKING:
    from wa_cli import BNCheckpointReport


def bn_recalibrate_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="The checkpoint: a .safetensors file, a sharded folder or its index.json, or a "
            ".pt/.pth/.pth.tar/.bin/.ckpt pickle.",
            show_default=False,
        ),
    ],
    output: opt.Output,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            show_default=False,
            help="Model factory 'module:fn' or 'file.py:fn'.",
            metavar="SPEC",
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            show_default=False,
            help="Loader factory 'module:fn', or a tensor file.",
            metavar="SPEC",
        ),
    ],
    model_kwargs: Annotated[
        str | None,
        typer.Option("--model-kwargs", help="Factory arguments as JSON.", metavar="JSON"),
    ] = None,
    data_kwargs: Annotated[
        str | None,
        typer.Option("--data-kwargs", help="Loader factory arguments as JSON.", metavar="JSON"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Rows per batch of a tensor file (default: 64).",
            metavar="N",
        ),
    ] = None,
    input_key: Annotated[
        str | None,
        typer.Option("--input-key", help="The inputs tensor of a tensor file.", metavar="KEY"),
    ] = None,
    drop_last: Annotated[
        bool,
        typer.Option("--drop-last", help="Drop an incomplete last tensor-file batch."),
    ] = False,
    batches: Annotated[
        int | None,
        typer.Option("--batches", min=1, help="Stop after N batches (default: all).", metavar="N"),
    ] = None,
    weighting: Annotated[
        Literal["batch", "sample"],
        typer.Option(
            "--weighting",
            help="batch (update_bn, default)|sample.",
            metavar="W",
            show_default=False,
        ),
    ] = "batch",
    forward: Annotated[
        str | None,
        typer.Option(
            "--forward", help="fn(model, batch) for dict or multi-input batches.", metavar="SPEC"
        ),
    ] = None,
    include_instancenorm: Annotated[
        bool,
        typer.Option("--include-instancenorm", help="Also InstanceNorm layers with running stats."),
    ] = False,
    device: opt.Device = "auto",
    max_shard_size: opt.MaxShardSize = None,
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    allow_global: opt.AllowGlobal = None,
    variant: opt.Variant = None,
    force: opt.Force = False,
    json_: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Re-estimate BatchNorm statistics with one pass over data (update_bn exactly).

    Only the BatchNorm buffers change; every other tensor is copied bit for bit.

    \b
    Example:
      wa bn-recalibrate swa.safetensors --model net.py:build \\
        --data net.py:loader -o swa_bn.safetensors
    """
    import wa_cli as wa
    from wa_cli.cli.inputs import read_options
    from wa_cli.cli.render import progress_bar, warn

    # auto is decided against the model's keys (recalibrate_checkpoint's fit_prefix), not the
    # checkpoint's alone: a model whose keys all start with one child must keep that prefix.
    fit_prefix = strip_prefix == ["auto"]
    prefixes = None if fit_prefix else strip_prefix
    read = read_options(key, prefixes, include, exclude, allow_global, variant)
    specs = wa.BNSpecs(
        model_kwargs=model_kwargs, data_kwargs=data_kwargs, batch_size=batch_size,
        input_key=input_key, drop_last=True if drop_last else None,
    )  # fmt: skip
    write = wa.WriteOptions.checked(force=force, max_shard_size=max_shard_size)
    with progress_bar("re-estimating BN", quiet, unit="batches") as progress:
        report = wa.recalibrate_checkpoint(
            checkpoint, output, model, data, specs=specs, read=read, write=write, device=device,
            weighting=weighting, max_batches=batches, forward=forward,
            include_instancenorm=include_instancenorm, progress=progress, fit_prefix=fit_prefix,
        )  # fmt: skip
    for message in report.warnings:
        warn(message)
    if json_:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    else:
        _print_summary(report)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3g}%"


def _print_summary(report: BNCheckpointReport) -> None:
    from rich.console import Console
    from rich.table import Table

    bn = report.bn
    if not bn.layers:
        what = f"wrote {report.output}: copied unchanged" if report.output else "nothing written"
        hint = "" if report.output else " (pass --force to write a copy anyway)"
        print(f"{bn.note}; {what}{hint}")
        return
    print(
        f"wrote {report.output}: re-estimated {len(bn.layers)} BatchNorm layer(s) "
        f"({len(report.replaced)} tensors) over {bn.batches} batches, {bn.samples} samples, "
        f"in {bn.seconds:.2f} s on {report.device} ({bn.weighting} weighting)"
    )
    table = Table(box=None, pad_edge=False)
    table.add_column("layer")
    table.add_column("kind")
    table.add_column("Δ running_mean", justify="right")
    table.add_column("Δ running_var", justify="right")
    for layer in bn.layers:
        table.add_row(
            layer.name, layer.kind, _percent(layer.mean_change), _percent(layer.var_change)
        )
    Console(file=sys.stdout, highlight=False).print(table)
    print("Δ: relative change ‖new − old‖ / ‖old‖ of the checkpoint's statistics")
    for note in report.notes:
        print(f"note: {note}")
