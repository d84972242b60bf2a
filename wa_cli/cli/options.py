"""Options shared by every command, declared once so they mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

Inputs = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUTS",
        help="Checkpoint files, folders or quoted globs (docs/inputs.md).",
        show_default=False,
    ),
]
Output = Annotated[
    Path,
    typer.Option(
        "-o", "--output", metavar="FILE", help="Output .safetensors file.", show_default=False
    ),
]
# A plain flag (`--force`, never `--force true`), with no `--no-force` twin.
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
DType = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="float32|float16|bfloat16|float64 (default: own).",
        show_default=False,
    ),
]
Precision = Annotated[
    Literal["auto", "float32", "float64"],
    typer.Option(
        "--precision",
        metavar="P",
        help="Accumulator: auto (wider than input)|float32|float64.",
        show_default=False,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEV", help="auto (default)|cpu|cuda|cuda:N.", show_default=False
    ),
]
NonFloat = Annotated[
    Literal["last", "first", "error"],
    typer.Option(
        "--non-float",
        metavar="P",
        help="Non-float tensors: copy last (default)|first|error.",
        show_default=False,
    ),
]
Keys = Annotated[
    Literal["strict", "intersection", "union"],
    typer.Option(
        "--keys",
        metavar="MODE",
        help="Key sets: strict (default)|intersection|union.",
        show_default=False,
    ),
]
MaxShardSize = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        metavar="SIZE",
        help="Write shards (e.g. 5GB) + index into the -o folder.",
        show_default=False,
    ),
]
ShardName = Annotated[
    str | None,
    typer.Option(
        "--shard-name",
        metavar="NAME",
        help="Shard base name: model|diffusion_pytorch_model (default: input's).",
        show_default=False,
    ),
]
OutputFormat = Annotated[
    Literal["safetensors", "dcp"],
    typer.Option(
        "--format",
        metavar="FORMAT",
        help="Output: safetensors (default) | dcp (a DCP folder).",
        show_default=False,
    ),
]
CopyConfig = Annotated[
    bool,
    typer.Option(
        "--copy-config",
        help="Copy the newest input's config/tokenizer files.",
    ),
]
PickleKey = Annotated[
    str | None,
    typer.Option(
        "--key",
        metavar="KEY",
        help="Pickles, DCP: the sub-tree holding the weights.",
        show_default=False,
    ),
]
StripPrefix = Annotated[
    list[str] | None,
    typer.Option(
        "--strip-prefix",
        metavar="PREFIX",
        help="Drop this key prefix, or auto (repeatable).",
        show_default=False,
    ),
]
Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        metavar="REGEX",
        help="Use only keys matching REGEX (repeatable).",
        show_default=False,
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="REGEX",
        help="Leave out keys matching REGEX (repeatable).",
        show_default=False,
    ),
]
AllowGlobal = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        metavar="MOD.NAME",
        help="Trust this class in pickles (docs/inputs.md).",
        show_default=False,
    ),
]
Variant = Annotated[
    str | None,
    typer.Option(
        "--variant",
        metavar="raw|ema",
        help="Which copy of files holding raw and EMA weights.",
        show_default=False,
    ),
]
DeepSpeedWeights = Annotated[
    str,
    typer.Option(
        "--deepspeed-weights",
        metavar="W",
        help="DeepSpeed: master (fp32, default)|module.",
        show_default=False,
    ),
]
Bins = Annotated[
    int,
    typer.Option("--bins", help="Histogram bins (default: 10).", metavar="B", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
Quiet = Annotated[
    bool, typer.Option("-q", "--quiet", help="No progress bar, hints or warning lines.")
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]

# Output for commands with --dry-run: required unless --dry-run is given (checked in the command).
OptionalOutput = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Output .safetensors file (folder with shards).",
        show_default=False,
    ),
]

# Trajectory selection, shared by `wa average` and `wa ema` (applied in this order: step range,
# every K-th, last N, top-k).
_SELECT = "Selection"
Order = Annotated[
    str | None,
    typer.Option(
        "--order",
        metavar="ORDER",
        help="auto|step|name|given (docs/selection.md).",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
Last = Annotated[
    int | None,
    typer.Option(
        "--last", metavar="N", help="Keep the last N checkpoints.", rich_help_panel=_SELECT
    ),
]
Every = Annotated[
    int | None,
    typer.Option(
        "--every", metavar="K", help="Keep every K-th checkpoint.", rich_help_panel=_SELECT
    ),
]
FromStep = Annotated[
    int | None,
    typer.Option("--from-step", metavar="S", help="Keep steps >= S.", rich_help_panel=_SELECT),
]
ToStep = Annotated[
    int | None,
    typer.Option("--to-step", metavar="S", help="Keep steps <= S.", rich_help_panel=_SELECT),
]
TopK = Annotated[
    int | None,
    typer.Option(
        "--top-k", metavar="K", help="Keep the K best by --metric.", rich_help_panel=_SELECT
    ),
]
Metric = Annotated[
    str | None,
    typer.Option(
        "--metric",
        metavar="NAME",
        help="Metadata entry or --metrics column, e.g. val_loss.",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
Mode = Annotated[
    Literal["min", "max"] | None,
    typer.Option(
        "--mode",
        metavar="MODE",
        help="min|max is best (default: from the metric name).",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
MetricsFile = Annotated[
    Path | None,
    typer.Option(
        "--metrics",
        metavar="FILE",
        help="CSV or JSON of metric values per checkpoint.",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the selection and weights; write nothing.",
        rich_help_panel=_SELECT,
    ),
]
