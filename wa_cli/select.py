"""Which checkpoints a run uses, and in what order: expand, order, select.

SWA (Izmailov et al. 2018, arXiv 1803.05407) averages the checkpoints collected every ``c``
epochs from ``swa_start`` on; an EMA over a saved trajectory (SPEC.md) needs the checkpoints in
training order and, for step-aware decay, their step numbers. This module turns command-line
arguments into that ordered, filtered list, before any tensor is read:

1. :func:`expand_inputs`: paths, quoted globs and folders → checkpoint paths.
2. :func:`order_trajectory`: checkpoints → :class:`Entry` items in training order, with steps.
3. :func:`select_trajectory`: ``--from-step/--to-step`` → ``--every`` → ``--last`` → ``--top-k``.

The wrong checkpoints selected is a common complaint against other tools (top-k that assumes
higher is better, file-name conventions, "every file in the folder"), so every rule here is
explicit, and every ambiguity is an error that says which flag resolves it.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, Literal, Protocol, TypedDict, TypeVar

from wa_cli.errors import ExitCode, WaError, listing

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""File suffixes a folder is searched for."""

INDEX_SUFFIX = ".safetensors.index.json"
"""The index file that marks a Hugging Face style sharded checkpoint folder."""

_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"([0-9]+)")


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers by value: ``ckpt_2`` before ``ckpt_10``.

    Text runs compare case-insensitively; names that tie (``ckpt_01`` and ``ckpt_1``) are
    ordered by their exact spelling, so the order is total and reproducible.

    Args:
        name: A file name or path string.

    Returns:
        A tuple usable as a ``sorted`` key.

    Example:
        >>> sorted(["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt"], key=natural_key)
        ['ckpt_1.pt', 'ckpt_2.pt', 'ckpt_10.pt']
    """
    # re.split with a capture group alternates text, digits, text, ...: every position holds
    # the same type in every key, so tuples never compare an int with a str.
    parts = _DIGITS.split(name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (key, name)


def is_checkpoint_file(path: Path) -> bool:
    """Whether ``path``'s name looks like a checkpoint a folder expands to (not hidden)."""
    name = path.name
    return not name.startswith(".") and name.lower().endswith(CHECKPOINT_SUFFIXES)


def _index_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file()),
        key=lambda p: natural_key(p.name),
    )


def sharded_index(folder: Path) -> Path | None:
    """The ``*.safetensors.index.json`` of a sharded checkpoint folder, or ``None``.

    Raises:
        WaError: (BAD_INPUT) the folder holds more than one such index.

    Example:
        >>> sharded_index(Path("runs/a/step_1000"))  # doctest: +SKIP
        PosixPath('runs/a/step_1000/model.safetensors.index.json')
    """
    indexes = _index_files(folder)
    if len(indexes) > 1:
        names = listing([p.name for p in indexes])
        raise WaError(
            f"folder '{folder}' holds several sharded-checkpoint indexes ({names}); "
            "pass the index file of the checkpoint you mean instead of the folder",
            ExitCode.BAD_INPUT,
        )
    return indexes[0] if indexes else None


def _expand_folder(folder: Path) -> list[Path]:
    """A sharded folder is one checkpoint; any other folder expands to the checkpoints in it."""
    if sharded_index(folder) is not None:
        return [folder]
    found: list[Path] = []
    for child in folder.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            # A folder of sharded checkpoints (runs/a/step_100/, runs/a/step_200/, ...).
            if _index_files(child):
                found.append(child)
        elif child.is_file() and is_checkpoint_file(child):
            found.append(child)
    if not found:
        raise WaError(
            f"folder '{folder}' holds no checkpoint (expected files ending in "
            f"{', '.join(CHECKPOINT_SUFFIXES)} or a *{INDEX_SUFFIX} sharded checkpoint)",
            ExitCode.BAD_INPUT,
        )
    return sorted(found, key=lambda p: natural_key(p.name))


def _shards_of(index: Path) -> set[Path]:
    """The shard files an index names (so a glob matching both lists the checkpoint once)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {index.parent / str(name) for name in weight_map.values()}
    except (OSError, ValueError, AttributeError) as e:
        raise WaError(
            f"cannot read sharded-checkpoint index '{index}': {e} "
            "(expected a JSON object with a 'weight_map')",
            ExitCode.BAD_INPUT,
        ) from e


def _expand_glob(pattern: str) -> list[Path]:
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
    if not matches:
        raise WaError(
            f"pattern '{pattern}' matches no file (check the path; quote it so that wa, "
            "not the shell, expands it)",
            ExitCode.BAD_INPUT,
        )
    # A glob over a folder catches bystanders (logs, configs): keep checkpoints only, and list
    # a sharded checkpoint once, by its index, not once per shard.
    indexes = [m for m in matches if m.is_file() and m.name.endswith(INDEX_SUFFIX)]
    shards: set[Path] = set()
    for index in indexes:
        shards |= _shards_of(index)
    kept: list[Path] = []
    for m in matches:
        if m.is_dir():
            kept.extend(_expand_folder(m))
        elif m in indexes or (is_checkpoint_file(m) and m not in shards):
            kept.append(m)
    if not kept:
        raise WaError(
            f"pattern '{pattern}' matches {len(matches)} path(s) but no checkpoint "
            f"({listing([str(m) for m in sorted(matches, key=lambda p: natural_key(str(p)))])}); "
            f"checkpoints end in {', '.join(CHECKPOINT_SUFFIXES)}",
            ExitCode.BAD_INPUT,
        )
    return sorted(kept, key=lambda p: natural_key(str(p)))


def expand_inputs(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Turn command-line inputs into checkpoint paths.

    * A path that exists is taken as given, in the given order (the shell already expanded
      and sorted it), even if its name holds glob characters.
    * An argument with glob characters (``*``, ``?``, ``[``) that is not an existing path is a
      quoted glob: wa expands it (``**`` recurses) in natural order, ``ckpt_2`` before
      ``ckpt_10``, keeping only checkpoint files and folders.
    * A folder holding a ``*.safetensors.index.json`` is one (sharded) checkpoint; any other
      folder expands to its ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` files
      and its sharded sub-folders, in natural order, hidden names skipped.

    Args:
        args: Paths, globs or folders, as typed on the command line.

    Returns:
        The checkpoint paths, in expansion order (ordering by step is
        :func:`order_trajectory`'s job).

    Raises:
        WaError: USAGE for no inputs; BAD_INPUT for a missing path, a glob matching nothing, a
            folder holding no checkpoint.

    Example:
        >>> expand_inputs(["runs/a/ckpt_*.safetensors"])  # doctest: +SKIP
        [PosixPath('runs/a/ckpt_2.safetensors'), PosixPath('runs/a/ckpt_10.safetensors')]
    """
    if not args:
        raise WaError(
            "no input checkpoints given (pass files, a folder, or a quoted glob such as "
            "'runs/a/ckpt_*.safetensors')",
            ExitCode.USAGE,
        )
    paths: list[Path] = []
    for arg in args:
        text = os.fspath(arg)
        path = Path(text).expanduser()
        if path.is_dir():
            paths.extend(_expand_folder(path))
        elif path.exists():
            paths.append(path)
        elif _GLOB_CHARS.search(text):
            paths.extend(_expand_glob(os.path.expanduser(text)))
        else:
            raise WaError(f"input '{text}' does not exist (check the path)", ExitCode.BAD_INPUT)
    seen: set[Path] = set()
    for p in paths:
        if p in seen:
            logger.warning("input '%s' is given more than once; it is used each time", p)
        seen.add(p)
    return paths


# --------------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------------

STEP_KEY = "step"
"""The safetensors metadata entry that holds a checkpoint's training step."""

Order = Literal["auto", "step", "name", "given"]
StepSource = Literal["metadata", "name", "order"]
_ORDERS: tuple[str, ...] = ("auto", "step", "name", "given")
_ORDER_HINT = "pass --order name to sort by file name or --order given to keep the input order"


class CheckpointLike(Protocol):
    """What ordering and selection read from a checkpoint: its name, path and metadata."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...


C = TypeVar("C", bound=CheckpointLike)


@dataclass(frozen=True)
class Entry(Generic[C]):
    """One checkpoint of an ordered trajectory.

    Attributes:
        item: The checkpoint (anything with ``name``, ``path`` and ``metadata``).
        step: Its training step, or ``None`` when the trajectory has no step numbers.
        source: Where ``step`` came from: ``"metadata"`` (the ``step`` entry), ``"name"`` (the
            last integer in the file name) or ``"order"`` (no step; position only).
        value: The metric value, once :func:`select_trajectory` has read one.
    """

    item: C
    step: int | None
    source: StepSource
    value: float | None = None

    @property
    def name(self) -> str:
        return self.item.name


def _stem(item: CheckpointLike) -> str:
    """The name without its checkpoint suffix; a sharded checkpoint's index names its folder."""
    name = item.name
    if name.endswith(INDEX_SUFFIX):
        return Path(item.path).parent.name
    lower = name.lower()
    for suffix in CHECKPOINT_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def step_from_name(item: CheckpointLike) -> int | None:
    """The last integer in the file name without its suffix: ``epoch=3-step=1500.ckpt`` → 1500.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_name(SimpleNamespace(name="ckpt_10.pt", path=Path("ckpt_10.pt")))
        10
    """
    numbers = _DIGITS.findall(_stem(item))
    return int(numbers[-1]) if numbers else None


def step_from_metadata(item: CheckpointLike) -> int | None:
    """The integer ``step`` metadata entry, or ``None`` when there is none.

    Raises:
        WaError: (BAD_INPUT) the entry is present but not an integer.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_metadata(SimpleNamespace(name="a.safetensors", metadata={"step": "300"}))
        300
    """
    raw = item.metadata.get(STEP_KEY)
    if raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError as e:
        raise WaError(
            f"checkpoint '{item.name}': metadata '{STEP_KEY}' is {raw!r}, expected an integer "
            f"(fix the metadata, or {_ORDER_HINT})",
            ExitCode.BAD_INPUT,
        ) from e


def _check_unique(entries: list[Entry[C]], why: str) -> None:
    by_step: dict[int, list[str]] = {}
    for e in entries:
        if e.step is not None:
            by_step.setdefault(e.step, []).append(e.name)
    shared = [(s, names) for s, names in by_step.items() if len(names) > 1]
    if shared:
        parts = "; ".join(f"{listing(names)} share step {s}" for s, names in shared[:3])
        more = f" (and {len(shared) - 3} more steps)" if len(shared) > 3 else ""
        raise WaError(
            f"cannot order the checkpoints by step: {parts}{more} ({why}); {_ORDER_HINT}",
            ExitCode.USAGE,
        )


def _natural(entries: list[Entry[C]]) -> list[Entry[C]]:
    return sorted(entries, key=lambda e: (natural_key(e.name), natural_key(str(e.item.path))))


def order_trajectory(items: Sequence[C], order: Order = "auto") -> list[Entry[C]]:
    """Put checkpoints in training order and attach their step numbers.

    * ``auto``: by the ``step`` metadata when every input has one; else by the last integer in
      the file name when every input has one; else natural name order (no steps). Two inputs
      with the same step are an error, never a silent tie.
    * ``step``: by the ``step`` metadata, which every input must have.
    * ``name``: natural file-name order (``ckpt_2`` before ``ckpt_10``); steps are the last
      integer of each name when every name has one (they may then repeat), else ``None``.
    * ``given``: the input order; steps as in ``auto`` but never checked for duplicates.

    Args:
        items: Checkpoints with ``name``, ``path`` and ``metadata`` (the reader's objects).
        order: One of ``auto``, ``step``, ``name``, ``given``.

    Returns:
        One :class:`Entry` per input, in trajectory order.

    Raises:
        WaError: USAGE for an unknown order, missing steps under ``step``, or duplicate steps;
            BAD_INPUT for a ``step`` metadata entry that is not an integer.

    Example:
        >>> entries = order_trajectory(checkpoints)  # doctest: +SKIP
        >>> [(e.name, e.step, e.source) for e in entries]  # doctest: +SKIP
        [('ckpt_2.safetensors', 2, 'name'), ('ckpt_10.safetensors', 10, 'name')]
    """
    if order not in _ORDERS:
        raise WaError(f"--order must be one of {', '.join(_ORDERS)}, got {order!r}", ExitCode.USAGE)
    if not items:
        return []
    meta = [step_from_metadata(it) for it in items]
    names = [step_from_name(it) for it in items]
    n_meta = sum(s is not None for s in meta)

    if order == "step":
        missing = [it.name for it, s in zip(items, meta, strict=True) if s is None]
        if missing:
            raise WaError(
                f"--order step needs '{STEP_KEY}' metadata in every checkpoint; "
                f"{listing(missing)} have none (use --order auto or --order name)",
                ExitCode.USAGE,
            )
    if order == "name":
        source: StepSource = "name" if all(s is not None for s in names) else "order"
        steps = names if source == "name" else [None] * len(items)
        return _natural([Entry(it, s, source) for it, s in zip(items, steps, strict=True)])

    if n_meta == len(items):
        source, steps = "metadata", meta
        why = f"from '{STEP_KEY}' metadata"
    elif all(s is not None for s in names):
        source, steps = "name", names
        why = "from the last number in each file name"
        if n_meta:
            why += (
                f", because only {n_meta} of {len(items)} checkpoints carry '{STEP_KEY}' metadata"
            )
            logger.warning("steps come from the file names: %s", why)
    else:
        source, steps = "order", [None] * len(items)
        why = ""
        if n_meta:
            logger.warning(
                "only %d of %d checkpoints carry '%s' metadata and not every file name holds a"
                " number; using natural name order without steps",
                n_meta,
                len(items),
                STEP_KEY,
            )
    entries = [Entry(it, s, source) for it, s in zip(items, steps, strict=True)]
    if order == "given":
        return entries
    _check_unique(entries, why)
    if source == "order":
        return _natural(entries)
    return sorted(entries, key=lambda e: e.step)  # type: ignore[arg-type, return-value]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

_FILE_COLUMNS = ("file", "name", "path", "checkpoint")


def _number(value: object, where: str) -> float:
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


def _load_csv(path: Path, text: str, metric: str | None) -> dict[str, float]:
    rows = [
        [c.strip() for c in r] for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)
    ]
    if not rows or rows[0][0].lower() not in _FILE_COLUMNS:
        raise WaError(
            f"metrics file '{path}' has no header row (expected e.g. 'file,value' or "
            "'file,val_loss', one row per checkpoint)",
            ExitCode.BAD_INPUT,
        )
    header = rows[0]
    columns = header[1:]
    if metric is not None and metric in columns:
        col = header.index(metric)
    elif (metric is None and len(columns) == 1) or (metric is not None and columns == ["value"]):
        col = 1
    else:
        wanted = f"no column '{metric}'" if metric is not None else "several value columns"
        raise WaError(
            f"metrics file '{path}' has {wanted} (columns: {listing(columns)}); "
            "pick one with --metric NAME",
            ExitCode.BAD_INPUT,
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
        _put(out, row[0], _number(row[col], f"metrics file '{path}', row {line}"), path)
    return out


def _load_json(path: Path, text: str, metric: str | None) -> dict[str, float]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise WaError(f"metrics file '{path}' is not valid JSON: {e}", ExitCode.BAD_INPUT) from e
    if not isinstance(data, dict):
        raise WaError(
            f"metrics file '{path}' must hold a JSON object mapping checkpoint names to values",
            ExitCode.BAD_INPUT,
        )
    nested = [v for v in data.values() if isinstance(v, dict)]
    if nested and metric is None:
        keys = sorted({k for v in nested for k in v})
        if len(keys) != 1:
            raise WaError(
                f"metrics file '{path}' holds several metrics ({listing(keys)}); "
                "pick one with --metric NAME",
                ExitCode.BAD_INPUT,
            )
        metric = keys[0]
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            value = value.get(metric)
        if value is None:
            continue  # no value: an error only if the checkpoint is needed
        _put(out, name, _number(value, f"metrics file '{path}', entry '{name}'"), path)
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
        WaError: BAD_INPUT for an unreadable file, a missing header or column, a non-number,
            a name listed twice; USAGE for another file type.

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
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise WaError(
            f"cannot read metrics file '{path}': {e.strerror or e}", ExitCode.BAD_INPUT
        ) from e
    return _load_csv(path, text, metric) if suffix == ".csv" else _load_json(path, text, metric)


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------

Mode = Literal["min", "max"]


def _positive(flag: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WaError(f"{flag} must be a positive integer, got {value!r}", ExitCode.USAGE)


def _read_values(
    entries: list[Entry[C]], metric: str | None, metrics: Mapping[str, float] | None
) -> list[Entry[C]]:
    """Attach each entry's metric value, from the metrics map or else the metadata."""
    label = metric or "value"
    values: list[float | None] = []
    missing: list[str] = []
    if metrics is not None:
        table = {os.path.normpath(k): float(v) for k, v in metrics.items()}
        used: dict[str, str] = {}
        for e in entries:
            path = os.path.normpath(str(e.item.path))
            exact = (path, os.path.abspath(path))
            for key in (*exact, e.name, _stem(e.item)):
                if key in table:
                    # A bare name shared by two runs (run_a/last.pt, run_b/last.pt) would give
                    # both the same value: refuse rather than guess.
                    if key not in exact and used.get(key, path) != path:
                        raise WaError(
                            f"metrics entry '{key}' matches both '{used[key]}' and '{path}' "
                            "(key the metrics file by path)",
                            ExitCode.BAD_INPUT,
                        )
                    used[key] = path
                    values.append(table[key])
                    break
            else:
                values.append(None)
                missing.append(e.name)
        if missing:
            raise WaError(
                f"the metrics file has no {label} for {listing(missing)} (add a row per "
                "checkpoint, keyed by file name or path)",
                ExitCode.BAD_INPUT,
            )
    else:
        for e in entries:
            raw = e.item.metadata.get(label)
            if raw is None:
                missing.append(e.name)
                values.append(None)
            else:
                values.append(_number(raw, f"checkpoint '{e.name}': metadata '{label}'"))
        if missing:
            raise WaError(
                f"metric '{label}' is missing from the metadata of {listing(missing)} "
                "(pass --metrics FILE with one value per checkpoint)",
                ExitCode.BAD_INPUT,
            )
    return [replace(e, value=v) for e, v in zip(entries, values, strict=True)]


def select_trajectory(
    entries: Sequence[Entry[C]],
    *,
    last: int | None = None,
    every: int | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    top_k: int | None = None,
    metric: str | None = None,
    mode: Mode = "min",
    metrics: Mapping[str, float] | None = None,
) -> list[Entry[C]]:
    """Pick the checkpoints a run uses, keeping trajectory order.

    Filters apply in this order, each to what the previous one kept:

    1. ``from_step`` / ``to_step``: steps in ``[from_step, to_step]`` (inclusive; needs steps).
    2. ``every`` K: positions 0, K, 2K, ... of what is left, counted from the first kept
       checkpoint (SWA collects every c-th checkpoint from ``swa_start`` on). By position, not
       by step number.
    3. ``last`` N: the last N of what is left (all of them when fewer).
    4. ``top_k`` k: the k best by the metric (``mode`` ``min``: lowest, e.g. a loss; ``max``:
       highest, e.g. an accuracy); ties go to the earlier checkpoint; a NaN value ranks last
       in both modes. The result stays in trajectory order.

    The metric is read from ``metrics`` (a map from file name, name without suffix, or path,
    as :func:`load_metrics_file` returns) when given, else from each checkpoint's ``metric``
    metadata entry. With ``metric`` or ``metrics`` but no ``top_k``, the values are read and
    attached (``Entry.value``) for the dry-run table.

    Args:
        entries: The ordered trajectory (:func:`order_trajectory`).
        last: Keep the last N.
        every: Keep every K-th.
        from_step: First step to keep.
        to_step: Last step to keep.
        top_k: Keep the k best by the metric.
        metric: Metric name (metadata key, or the column of a metrics file).
        mode: ``min`` or ``max``: which direction is better.
        metrics: Metric values by checkpoint name or path.

    Returns:
        The selected entries, in trajectory order, with ``value`` set when a metric was read.

    Raises:
        WaError: USAGE for N/K/k ≤ 0, a bad mode, ``top_k`` without a metric, a step range
            on a trajectory without steps, or a selection left empty; BAD_INPUT for a metric
            value that is missing or not a number.

    Example:
        >>> entries = order_trajectory(ckpts)  # doctest: +SKIP
        >>> picked = select_trajectory(entries, every=2, last=5)  # doctest: +SKIP
        >>> best = select_trajectory(entries, top_k=3, metric="val_loss")  # doctest: +SKIP
    """
    if mode not in ("min", "max"):
        raise WaError(f"--mode must be 'min' or 'max', got {mode!r}", ExitCode.USAGE)
    _positive("--last", last)
    _positive("--every", every)
    _positive("--top-k", top_k)
    for flag, value in (("--from-step", from_step), ("--to-step", to_step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise WaError(f"{flag} must be an integer step, got {value!r}", ExitCode.USAGE)
    if from_step is not None and to_step is not None and from_step > to_step:
        raise WaError(
            f"--from-step {from_step} is after --to-step {to_step} (swap them)", ExitCode.USAGE
        )
    if top_k is not None and metric is None and metrics is None:
        raise WaError(
            "--top-k needs a metric: pass --metric NAME (read from each checkpoint's metadata) "
            "or --metrics FILE, and --mode min|max",
            ExitCode.USAGE,
        )
    kept = list(entries)
    if not kept:
        raise WaError("no checkpoints to select from", ExitCode.USAGE)

    if from_step is not None or to_step is not None:
        stepless = [e.name for e in kept if e.step is None]
        if stepless:
            raise WaError(
                f"--from-step/--to-step need step numbers, but {listing(stepless)} have none "
                f"(no '{STEP_KEY}' metadata and no number in the file name); "
                "select with --last or --every instead",
                ExitCode.USAGE,
            )
        lo = from_step if from_step is not None else -math.inf
        hi = to_step if to_step is not None else math.inf
        steps = [e.step for e in kept]
        kept = [e for e in kept if lo <= e.step <= hi]  # type: ignore[operator]
        if not kept:
            flags = " ".join(
                f"{flag} {v}"
                for flag, v in (("--from-step", from_step), ("--to-step", to_step))
                if v is not None
            )
            raise WaError(
                f"{flags} keeps no checkpoint: the {len(steps)} checkpoints have steps "
                f"{min(steps)} to {max(steps)}",  # type: ignore[type-var]
                ExitCode.USAGE,
            )
    if every is not None:
        kept = kept[::every]
    if last is not None:
        kept = kept[-last:]
    if metric is not None or metrics is not None:
        kept = _read_values(kept, metric, metrics)
    if top_k is not None:
        if top_k > len(kept):
            logger.info("--top-k %d: only %d checkpoints; keeping all", top_k, len(kept))
        sign = 1.0 if mode == "min" else -1.0

        values = [math.nan if e.value is None else e.value for e in kept]

        def rank(i: int) -> tuple[bool, float, int]:
            # NaN (a diverged run) ranks last in both modes; ties go to the earlier checkpoint.
            v = values[i]
            return (math.isnan(v), 0.0 if math.isnan(v) else sign * v, i)

        best = sorted(sorted(range(len(kept)), key=rank)[:top_k])
        if any(math.isnan(values[i]) for i in best):
            logger.warning("--top-k keeps checkpoints whose metric is NaN")
        kept = [kept[i] for i in best]
    return kept


class SelectionRow(TypedDict):
    """One row of the ``--dry-run`` table (and of its ``--json`` form)."""

    name: str
    path: str
    step: int | None
    source: str
    value: float | None
    weight: float | None


def selection_rows(
    entries: Sequence[Entry[C]], weights: Sequence[float] | None = None
) -> list[SelectionRow]:
    """The resolved selection as data for ``--dry-run``: name, step, metric value, weight.

    Args:
        entries: The selected entries (:func:`select_trajectory`).
        weights: Each checkpoint's coefficient in the result (e.g.
            :func:`wa_cli.ema.ema_coefficients`), or ``None``.

    Returns:
        One JSON-ready row per entry, in trajectory order.

    Example:
        >>> coefficients = ema_coefficients(len(picked), decay=0.9)  # doctest: +SKIP
        >>> rows = selection_rows(picked, coefficients)  # doctest: +SKIP
        >>> rows[0]["name"], rows[0]["weight"]  # doctest: +SKIP
        ('ckpt_2.safetensors', 0.081)
    """
    if weights is not None and len(weights) != len(entries):
        raise ValueError(f"{len(weights)} weights for {len(entries)} entries")
    return [
        SelectionRow(
            name=e.name,
            path=str(e.item.path),
            step=e.step,
            source=e.source,
            value=e.value,
            weight=None if weights is None else float(weights[i]),
        )
        for i, e in enumerate(entries)
    ]
