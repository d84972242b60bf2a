"""Per-checkpoint metric values from a CSV or JSON file (``--metrics FILE``).

Part of :mod:`wa_cli.select`: top-k selection by a validation metric (timm's
``avg_checkpoints.py`` ranks by a metric but assumes higher is better; ``wa`` asks for the
direction). Values come from each checkpoint's metadata or from a file mapping checkpoint names
or paths to values, read here.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import NoReturn

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.guard import note_read
from wa_cli.io.hostile import json_reason, parse_json, read_bounded

_FILE_COLUMNS = ("file", "name", "path", "checkpoint")


def parse_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise WaError(f"{where}: {value!r} is not a number", ExitCode.BAD_INPUT)
    try:
        return float(value)
    except ValueError as e:
        raise WaError(f"{where}: {value!r} is not a number", ExitCode.BAD_INPUT) from e


def _put(out: dict[str, float], key: str, value: float, source: Path) -> None:
    if key in out:
        raise WaError(
            f"metrics file '{source}' lists '{key}' twice (keep one value per checkpoint)",
            ExitCode.BAD_INPUT,
        )
    out[key] = value


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _refuse_header(path: Path, first: list[str]) -> NoReturn:
    """Say what is wrong with a first row whose first column names no checkpoint.

    A training log keyed by step (``step,val_acc``) has a header: refusing it for having none
    sent users looking for the wrong fix.
    """
    example = "e.g. 'file,val_loss' then 'ckpt_100.safetensors,0.53', one row per checkpoint"
    if len(first) > 1 and not all(_is_number(c) for c in first[1:]):
        raise WaError(
            f"metrics file '{path}' keys its rows by '{first[0]}'; wa matches rows to "
            f"checkpoints by file name or path, so the first column must be one of "
            f"{', '.join(_FILE_COLUMNS)} ({example}; see docs/selection.md)",
            ExitCode.BAD_INPUT,
        )
    raise WaError(
        f"metrics file '{path}' has no header row (expected a first row naming the columns, "
        f"{example})",
        ExitCode.BAD_INPUT,
    )


def _load_csv(path: Path, text: str, metric: str | None) -> dict[str, float]:
    rows = [
        [c.strip() for c in r] for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)
    ]
    if not rows or rows[0][0].lower() not in _FILE_COLUMNS:
        _refuse_header(path, rows[0] if rows else [])
    header = rows[0]
    columns = header[1:]
    if metric is not None and metric in columns:
        col = header.index(metric)
    elif (metric is None and len(columns) == 1) or (metric is not None and columns == ["value"]):
        col = 1
    else:
        wanted = f"no column '{metric}'" if metric is not None else "several value columns"
        raise WaError.naming(
            "metrics file '{path}' has {wanted} (columns: {columns}); pick one with {metric} NAME",
            ExitCode.BAD_INPUT,
            path=str(path),
            wanted=wanted,
            columns=listing(columns),
        )
    out: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise WaError(
                f"metrics file '{path}', row {line}: {len(row)} cells, the header has "
                f"{len(header)}",
                ExitCode.BAD_INPUT,
            )
        if row[col] == "":
            continue  # no value: an error only if the checkpoint is needed
        _put(out, row[0], parse_number(row[col], f"metrics file '{path}', row {line}"), path)
    return out


def _load_json(path: Path, text: str, metric: str | None) -> dict[str, float]:
    try:
        data = parse_json(text)
    except ValueError as e:
        raise WaError(
            f"metrics file '{path}' is not valid JSON: {json_reason(e)}", ExitCode.BAD_INPUT
        ) from e
    if not isinstance(data, dict):
        raise WaError(
            f"metrics file '{path}' must hold a JSON object mapping checkpoint names to values",
            ExitCode.BAD_INPUT,
        )
    nested = [v for v in data.values() if isinstance(v, dict)]
    if nested and metric is None:
        keys = sorted({k for v in nested for k in v})
        if len(keys) != 1:
            raise WaError.naming(
                "metrics file '{path}' holds several metrics ({keys}); pick one with {metric} NAME",
                ExitCode.BAD_INPUT,
                path=str(path),
                keys=listing(keys),
            )
        metric = keys[0]
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            value = value.get(metric)
        if value is None:
            continue  # no value: an error only if the checkpoint is needed
        _put(out, name, parse_number(value, f"metrics file '{path}', entry '{name}'"), path)
    return out


def load_metrics_file(path: str | os.PathLike[str], metric: str | None = None) -> dict[str, float]:
    """Read per-checkpoint metric values from a CSV or JSON file.

    * CSV: a header row ``file,value`` or ``file,<metric>[,<metric>...]`` (the first column may
      also be called ``name``, ``path`` or ``checkpoint``), then one row per checkpoint.
    * JSON: an object ``{"ckpt_1.safetensors": 0.53, ...}`` or
      ``{"ckpt_1.safetensors": {"val_loss": 0.53, "val_acc": 0.81}, ...}``.

    Keys may be file names, names without suffix, or paths. With several metrics in the file,
    ``metric`` picks one. Empty cells and ``null`` mean "no value" (an error later only if that
    checkpoint's value is needed).

    Args:
        path: The ``.csv`` or ``.json`` file.
        metric: The column or key to read; may be omitted when the file holds one metric.

    Returns:
        A map from checkpoint name or path to value.

    Raises:
        WaError: BAD_INPUT for an unreadable or non-UTF-8 file, a missing header or column, a
            non-number, a name listed twice; USAGE for another file type.

    Example:
        >>> load_metrics_file("metrics.csv", "val_loss")  # doctest: +SKIP
        {'ckpt_1.safetensors': 0.61, 'ckpt_2.safetensors': 0.53}
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise WaError(
            f"metrics file '{path}' must end in .csv or .json (one value per checkpoint)",
            ExitCode.USAGE,
        )
    note_read(path)
    try:
        text = read_bounded(path, what="metrics file").decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise WaError(
            f"metrics file '{path}' is not UTF-8 text (byte {e.start}); expected a CSV or JSON "
            "text file with one value per checkpoint",
            ExitCode.BAD_INPUT,
        ) from e
    return _load_csv(path, text, metric) if suffix == ".csv" else _load_json(path, text, metric)
