"""Options shared by every command, declared once so they mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Checkpoints: .safetensors files, sharded folders or their index.json, .pt/.pth/"
        ".pth.tar/.bin/.ckpt pickles, run folders (checkpoint-N/, save_pretrained, DCP), "
        "folders of checkpoints, or quoted globs (expanded in natural order).",
        show_default=False,
    ),
]
Output = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="Output .safetensors file (a folder with --max-shard-size).",
        show_default=False,
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
DType = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="Output dtype of floating tensors: float32, float16, bfloat16, "
        "float64 (default: each tensor's own).",
    ),
]
Precision = Annotated[
    Literal["auto", "float32", "float64"],
    typer.Option(
        "--precision",
        help="Accumulator: auto = float32 for 16-bit inputs, float64 for float32 inputs "
        "(never narrower than the input or --dtype). float32 on float32 inputs rounds every "
        "sum: k identical inputs may then not average to themselves bit for bit.",
    ),
]
Device = Annotated[
    str,
    typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: the GPU when there is one)."),
]
NonFloat = Annotated[
    Literal["last", "first", "error"],
    typer.Option(
        "--non-float",
        help="Non-float tensors (num_batches_tracked, masks) are never "
        "interpolated: copy them from the last or first input, or fail if inputs differ.",
    ),
]
Keys = Annotated[
    Literal["strict", "intersection", "union"],
    typer.Option(
        "--keys",
        help="strict: all inputs hold the same keys; intersection: keep shared "
        "keys; union: each key over the inputs that hold it.",
    ),
]
MaxShardSize = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        help="Write Hugging Face style shards of at most this size "
        "(e.g. 5GB) plus model.safetensors.index.json into the -o folder.",
    ),
]
PickleKey = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="For .pt inputs: the nested dict holding the state dict, a.b.c for nested dicts "
        "(auto-detects state_dict, model, state_dict_ema, module).",
    ),
]
StripPrefix = Annotated[
    list[str] | None,
    typer.Option(
        "--strip-prefix",
        help="Drop this key prefix (repeatable: --strip-prefix model. --strip-prefix module.); "
        "'auto' drops the dotted prefix every key of every input shares.",
        show_default=False,
    ),
]
Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        help="Use only keys matching this regular expression (searched; repeatable).",
        show_default=False,
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Leave out keys matching this regular expression (searched; repeatable).",
        show_default=False,
    ),
]
AllowGlobal = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        help="Let pickles hold this data-only class, MODULE.NAME (repeatable). A class a "
        "pickle may construct can run code: name only classes you trust (README).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
Quiet = Annotated[
    bool, typer.Option("-q", "--quiet", help="No progress bar, no hints, no warning lines.")
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]

# Output for commands with --dry-run: required unless --dry-run is given (checked in the command).
OptionalOutput = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Output .safetensors file (a folder with --max-shard-size); not needed for --dry-run.",
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
        help="Trajectory order: auto (the step recorded inside the files, else the step in the "
        "file or folder name, else the recorded epoch, else natural name order), step, name or "
        "given. Default: auto for ema; for average, auto when "
        "a selection flag is given, else the given order.",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
Last = Annotated[
    int | None,
    typer.Option("--last", help="Keep the last N checkpoints.", rich_help_panel=_SELECT),
]
Every = Annotated[
    int | None,
    typer.Option(
        "--every",
        help="Keep every K-th checkpoint, counted from the first one kept (by position).",
        rich_help_panel=_SELECT,
    ),
]
FromStep = Annotated[
    int | None,
    typer.Option("--from-step", help="Keep steps >= S (inclusive).", rich_help_panel=_SELECT),
]
ToStep = Annotated[
    int | None,
    typer.Option("--to-step", help="Keep steps <= S (inclusive).", rich_help_panel=_SELECT),
]
TopK = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        help="Keep the K best checkpoints by --metric (direction: --mode), in trajectory order.",
        rich_help_panel=_SELECT,
    ),
]
Metric = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Metric for --top-k: a metadata entry of each checkpoint (e.g. val_loss), or a column "
        "of the --metrics file.",
        rich_help_panel=_SELECT,
    ),
]
Mode = Annotated[
    Literal["min", "max"] | None,
    typer.Option(
        "--mode",
        help="Which metric values are best: min (a loss) or max (an accuracy). Default: from the "
        "metric's name (loss, err, ppl, wer → min; acc, top1, f1, bleu, map, auc → max); "
        "required when the name does not say.",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
MetricsFile = Annotated[
    Path | None,
    typer.Option(
        "--metrics",
        help="CSV (file,value) or JSON ({file: value}) mapping checkpoints to metric values.",
        rich_help_panel=_SELECT,
        show_default=False,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the ordered selection (steps, metric values, each checkpoint's weight) and "
        "write nothing.",
        rich_help_panel=_SELECT,
    ),
]
