"""Pick the checkpoints a run uses: step range, every K-th, last N, top-k by a metric.

Part of :mod:`wa_cli.select`. SWA (Izmailov et al. 2018, arXiv 1803.05407) averages the
checkpoints collected every ``c`` epochs from ``swa_start`` on; timm's ``avg_checkpoints.py``
keeps the top-k by a metric (assuming higher is better). Here every filter is explicit, applies in
a fixed order, keeps trajectory order, and top-k asks which direction is better.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypedDict, cast

from wa_cli.errors import ExitCode, Param, WaError, listing
from wa_cli.select.direction import Mode, resolve_mode
from wa_cli.select.metrics import parse_number
from wa_cli.select.order import C, Entry, checkpoint_stem

logger = logging.getLogger(__name__)


def _positive(param: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WaError.naming(
            "{param} must be a positive integer, got {value!r}",
            ExitCode.USAGE,
            param=Param(param),
            value=value,
        )


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
            for key in (*exact, e.name, checkpoint_stem(e.item)):
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
                values.append(parse_number(raw, f"checkpoint '{e.name}': metadata '{label}'"))
        if missing:
            raise WaError.naming(
                "metric '{label}' is missing from the metadata of {missing} "
                "(pass {metrics} FILE with one value per checkpoint)",
                ExitCode.BAD_INPUT,
                label=label,
                missing=listing(missing),
            )
    return [replace(e, value=v) for e, v in zip(entries, values, strict=True)]


class Picks(Protocol):
    """The filters :func:`select_trajectory` applies: :class:`wa_cli.Selection` is one (select/
    imports nothing from methods/, so it names the fields it reads)."""

    @property
    def last(self) -> int | None: ...
    @property
    def every(self) -> int | None: ...
    @property
    def from_step(self) -> int | None: ...
    @property
    def to_step(self) -> int | None: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def metric(self) -> str | None: ...
    @property
    def mode(self) -> str | None: ...


def select_trajectory(
    entries: Sequence[Entry[C]],
    picks: Picks,
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
       highest, e.g. an accuracy; ``None``: from the metric's name, ``val_loss`` → min,
       ``val_acc`` → max, and an error when the name does not say); ties go to the earlier
       checkpoint; a NaN value ranks last in both modes. The result stays in trajectory order.

    The metric is read from ``metrics`` (a map from file name, name without suffix, or path,
    as :func:`load_metrics_file` returns) when given, else from each checkpoint's ``metric``
    metadata entry. With ``metric`` or ``metrics`` but no ``top_k``, the values are read and
    attached (``Entry.value``) for the dry-run table.

    Args:
        entries: The ordered trajectory (:func:`order_trajectory`).
        picks: The filters, a :class:`wa_cli.Selection`: ``last`` (keep the last N), ``every``
            (every K-th), ``from_step`` and ``to_step`` (the first and last step kept),
            ``top_k`` (the k best by the metric), ``metric`` (metadata key, or the column of
            a metrics file), ``mode`` (``min`` or ``max``: which direction is better; default:
            from the metric's name, :func:`wa_cli.select.direction.mode_from_name`).
        metrics: Metric values by checkpoint name or path (the loaded ``Selection.metrics``).

    Returns:
        The selected entries, in trajectory order, with ``value`` set when a metric was read.

    Raises:
        WaError: USAGE for N/K/k ≤ 0, a bad mode, ``top_k`` without a metric, a step range
            on a trajectory without steps, or a selection left empty; BAD_INPUT for a metric
            value that is missing or not a number.

    Example:
        >>> entries = order_trajectory(ckpts)  # doctest: +SKIP
        >>> picked = select_trajectory(entries, Selection(every=2, last=5))  # doctest: +SKIP
        >>> best = select_trajectory(entries, Selection(top_k=3, metric="loss"))  # doctest: +SKIP
    """
    _check_selection(picks, metrics)
    last, every, top_k, metric = picks.last, picks.every, picks.top_k, picks.metric
    from_step, to_step, mode = picks.from_step, picks.to_step, cast("Mode | None", picks.mode)
    direction = resolve_mode(metric, mode) if top_k is not None else mode
    kept = list(entries)
    if not kept:
        raise WaError("no checkpoints to select from", ExitCode.USAGE)

    if from_step is not None or to_step is not None:
        kept = _step_range(kept, from_step, to_step)
    if every is not None:
        kept = kept[::every]
    if last is not None:
        kept = kept[-last:]
    if metric is not None or metrics is not None:
        kept = _read_values(kept, metric, metrics)
    if top_k is not None:
        kept = _best(kept, top_k, direction, metric or "value")
    return kept


def _check_selection(picks: Picks, metrics: Mapping[str, float] | None) -> None:
    """Refuse a bad N/K/k, mode or step range, and ``top_k`` without a metric."""
    mode, from_step, to_step = picks.mode, picks.from_step, picks.to_step
    if mode is not None and mode not in ("min", "max"):
        raise WaError.naming("{mode} must be 'min' or 'max', got {got!r}", ExitCode.USAGE, got=mode)
    _positive("last", picks.last)
    _positive("every", picks.every)
    _positive("top_k", picks.top_k)
    for param, value in (("from_step", from_step), ("to_step", to_step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise WaError.naming(
                "{param} must be an integer step, got {value!r}",
                ExitCode.USAGE,
                param=Param(param),
                value=value,
            )
    if from_step is not None and to_step is not None and from_step > to_step:
        raise WaError.naming(
            "{from_step=}{start} is after {to_step=}{end} (swap them)",
            ExitCode.USAGE,
            start=from_step,
            end=to_step,
        )
    if picks.top_k is not None and picks.metric is None and metrics is None:
        raise WaError.naming(
            "{top_k} needs a metric: pass {metric} NAME (read from each checkpoint's metadata) "
            "or {metrics} FILE (and {mode} min|max when its name does not say which is better)",
            ExitCode.USAGE,
        )


def _step_range(kept: list[Entry[C]], from_step: int | None, to_step: int | None) -> list[Entry[C]]:
    """The entries with steps in ``[from_step, to_step]``; every entry must have a step."""
    stepless = [e.name for e in kept if e.step is None]
    if stepless:
        raise WaError.naming(
            "{from_step}/{to_step} need step numbers, but {stepless} have none "
            "(no step recorded inside and no number in the file or folder name); "
            "select with {last} or {every} instead",
            ExitCode.USAGE,
            stepless=listing(stepless),
        )
    lo = from_step if from_step is not None else -math.inf
    hi = to_step if to_step is not None else math.inf
    steps = [e.step for e in kept]
    kept = [e for e in kept if lo <= e.step <= hi]  # type: ignore[operator]  # steps checked
    if not kept:
        bounds = {
            p: v for p, v in (("from_step", from_step), ("to_step", to_step)) if v is not None
        }
        given = " ".join(f"{{{p}=}}{{{p}_value}}" for p in bounds)  # fixed names: code, no input
        raise WaError.naming(
            given + " keeps no checkpoint: the {n} checkpoints have steps {low} to {high}",
            ExitCode.USAGE,
            **{f"{p}_value": v for p, v in bounds.items()},
            n=len(steps),
            low=min(steps),  # type: ignore[type-var]  # no None step here
            high=max(steps),  # type: ignore[type-var]
        )
    return kept


def _best(
    kept: list[Entry[C]], top_k: int, direction: Mode | None, label: str = "value"
) -> list[Entry[C]]:
    """The ``top_k`` best entries by value (NaN last, ties to the earlier), in trajectory order.

    A tie across the cut (the k-th and the (k+1)-th best share a value) is named in a warning.
    """
    if top_k > len(kept):
        logger.info("--top-k %d: only %d checkpoints; keeping all", top_k, len(kept))
    sign = 1.0 if direction == "min" else -1.0

    values = [math.nan if e.value is None else e.value for e in kept]

    def rank(i: int) -> tuple[bool, float, int]:
        # NaN (a diverged run) ranks last in both modes; ties go to the earlier checkpoint.
        v = values[i]
        return (math.isnan(v), 0.0 if math.isnan(v) else sign * v, i)

    ranked = sorted(range(len(kept)), key=rank)
    best = sorted(ranked[:top_k])
    _warn_tie_at_cut(kept, ranked, top_k, [rank(i)[:2] for i in range(len(kept))], label)
    if any(math.isnan(values[i]) for i in best):
        logger.warning("--top-k keeps checkpoints whose metric is NaN")
    return [kept[i] for i in best]


def _warn_tie_at_cut(
    kept: list[Entry[C]],
    ranked: list[int],
    top_k: int,
    keys: list[tuple[bool, float]],
    label: str,
) -> None:
    """One warning when entries of equal value straddle the k-th place: which were kept, which
    left out (the earliest win, a rule the user should know about)."""
    if top_k >= len(ranked):
        return
    cut = keys[ranked[top_k - 1]]
    if keys[ranked[top_k]] != cut:
        return
    tied = sorted(i for i in ranked if keys[i] == cut)
    chosen = set(ranked[:top_k])
    inside = [kept[i].name for i in tied if i in chosen]
    outside = [kept[i].name for i in tied if i not in chosen]
    value = kept[tied[0]].value
    logger.warning(
        "--top-k %d: %d checkpoints tie at %s %s across the cut; kept the earliest (%s), left "
        "out %s (ties go to the earliest checkpoints)",
        top_k,
        len(tied),
        label,
        "NaN" if value is None or math.isnan(value) else f"{value:g}",
        listing(inside),
        listing(outside),
    )


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
            :func:`wa_cli.methods.ema.ema_coefficients`), or ``None``.

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
