"""Per-layer weight entropy of checkpoints: the rows behind ``wa inspect-entropy``.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868): the
information a layer carries is the entropy of its weights' histogram, and output filters with a
small L1 norm are "invalid". With two or more checkpoints each row also carries the alpha that
``wa graft`` would use (ring order: checkpoint i receives from i - 1), so the report doubles as a
graft preview. Entropies are computed tensor by tensor, reading one tensor at a time; this module
is pure data (no printing): the CLI renders it as a table, JSON, CSV or a plot.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from wa_cli.engine.plan import Plan
from wa_cli.errors import WaError
from wa_cli.io.dtypes import dtype_name
from wa_cli.io.reader import Checkpoint
from wa_cli.io.regex import checked_search
from wa_cli.methods.graft.alpha import (
    graft_alpha,
    module_of,
    plan_alphas,
)
from wa_cli.methods.graft.entropy import (
    checkpoint_measure,
)
from wa_cli.methods.plots import check_plot_available, new_figure, save_figure

By = Literal["tensor", "module"]
Sort = Literal["order", "name", "entropy"]


@dataclass
class EntropyRow:
    """One tensor (or one module, measured on its ``weight``) across the checkpoints.

    Attributes:
        name: the key (``by="tensor"``) or the module (``by="module"``).
        key: the tensor measured.
        shape, dtype, numel: of that tensor.
        entropy: H per checkpoint in the report's unit (None where a checkpoint lacks the key).
        invalid_filters: per checkpoint, output filters with L1 norm below the threshold
            (None for tensors with fewer than 2 dimensions).
        filters: number of output filters (dim 0) for ndim >= 2, else None.
        alpha: with two or more checkpoints, the receiver's alpha of each graft ``wa graft``
            writes (aligned with ``EntropyReport.pairs``), else empty.
    """

    name: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    entropy: list[float | None]
    invalid_filters: list[int | None]
    filters: int | None
    alpha: list[float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key, "shape": list(self.shape), "dtype": self.dtype,
            "numel": self.numel, "entropy": self.entropy, "invalid_filters": self.invalid_filters,
            "filters": self.filters, "alpha": self.alpha,
        }  # fmt: skip


@dataclass
class EntropyReport:
    """Entropy rows of one or more checkpoints, with the settings that produced them."""

    checkpoints: list[str]  # display names, distinct
    paths: list[str]
    by: By
    bins: int
    base: float | None
    l1_threshold: float
    a: float
    c: float
    pairs: list[tuple[int, int]]  # (receiver, donor) of each alpha column
    rows: list[EntropyRow]

    @property
    def unit(self) -> str:
        return "nats" if self.base is None else ("bits" if self.base == 2 else f"log{self.base:g}")

    @property
    def max_entropy(self) -> float:
        """ln B in the report's unit: the entropy of a histogram spread evenly over B bins."""
        return math.log(self.bins) / (1.0 if self.base is None else math.log(self.base))

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": self.checkpoints, "paths": self.paths, "by": self.by,
            "bins": self.bins, "unit": self.unit, "max_entropy": self.max_entropy,
            "l1_threshold": self.l1_threshold, "a": self.a, "c": self.c,
            "alpha_pairs": [list(p) for p in self.pairs],
            "rows": [r.to_json() for r in self.rows],
        }  # fmt: skip

    def pair_label(self, pair: tuple[int, int]) -> str:
        r, d = pair
        return f"{self.checkpoints[r]}<-{self.checkpoints[d]}"

    def to_csv(self) -> str:
        """One line per row: name, key, shape (``16x1x3x3``), dtype, numel, then per checkpoint
        ``entropy[<name>]`` and ``invalid[<name>]``, then ``alpha[<receiver><-<donor>]``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            ["name", "key", "shape", "dtype", "numel", "filters"]
            + [f"entropy[{n}]" for n in self.checkpoints]
            + [f"invalid[{n}]" for n in self.checkpoints]
            + [f"alpha[{self.pair_label(p)}]" for p in self.pairs]
        )
        for r in self.rows:
            w.writerow(
                [r.name, r.key, "x".join(map(str, r.shape)), r.dtype, r.numel, _blank(r.filters)]
                + [_blank(h) for h in r.entropy]
                + [_blank(n) for n in r.invalid_filters]
                + [_blank(x) for x in r.alpha]
            )
        return buf.getvalue()


def _blank(x: object) -> object:
    return "" if x is None else x


def compile_filter(pattern: str | None) -> Callable[[str], bool] | None:
    """``--filter REGEX`` → a search function (linear time, RE2: wa_cli.io.regex), or ``None``.

    Raises:
        WaError: naming ``pattern``, for an invalid regex or one the engine refuses.

    Example:
        >>> compile_filter("^conv")("conv1.weight")
        True
    """
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        kind = type(pattern).__name__
        raise WaError.naming("{pattern} must be a string, got {kind}", kind=kind)
    return checked_search(pattern, "pattern")


def named_keys(plan: Plan, by: By, regex: Callable[[str], bool] | None) -> list[tuple[str, str]]:
    """(row name, measured key) pairs: every floating tensor, or each module's chosen tensor."""
    floating = [k.key for k in plan.keys if k.interpolate]
    if by == "module":
        # The same choice `wa graft --rule module` makes: a module is measured on its weight.
        source = plan_alphas([k.key for k in plan.keys], floating, rule="module").source
        chosen = {module_of(key): src for key, src in source.items() if src is not None}
        named = [(mod or key, key) for mod, key in chosen.items()]
    else:
        named = [(k, k) for k in floating]
    if regex is not None:
        named = [(n, k) for n, k in named if regex(n)]
    return named


@dataclass(frozen=True)
class Measure:
    """How the report measures each row (checked by ``entropy_report``).

    Attributes:
        bins: histogram bins B.
        base: logarithm base of the entropies (None: nats).
        l1_threshold: output filters with an L1 norm below it are invalid.
        a, c: the graft amplitude and steepness of the alpha column.
        device: where the entropies are computed.
    """

    bins: int
    base: float | None
    l1_threshold: float
    a: float
    c: float
    device: torch.device


def measure_rows(
    ckpts: Sequence[Checkpoint],
    plan: Plan,
    named: list[tuple[str, str]],
    pairs: list[tuple[int, int]],
    measure: Measure,
) -> list[EntropyRow]:
    """One row per (name, key): its entropy and invalid filters per checkpoint, alpha per pair."""
    bins, base, l1_threshold = measure.bins, measure.base, measure.l1_threshold
    a, c, dev = measure.a, measure.c, measure.device
    info = {k.key: k for k in plan.keys}
    scale = 1.0 if base is None else math.log(base)
    rows = []
    for name, key in named:
        entry = info[key]
        nats: list[float | None] = []
        invalid: list[int | None] = []
        for i, ck in enumerate(ckpts):
            if i not in entry.sources:
                nats.append(None)
                invalid.append(None)
                continue
            # Streamed: memory is bounded by a chunk, whatever the tensor's size.
            m = checkpoint_measure(ck, key, bins=bins, l1_norms=True, device=dev)
            nats.append(m.entropy)
            invalid.append(None if m.l1_norms is None else int((m.l1_norms < l1_threshold).sum()))
        alpha = [_alpha(nats[r], nats[d], a, c) for r, d in pairs]
        rows.append(
            EntropyRow(
                name=name, key=key, shape=entry.shape,
                dtype=dtype_name(entry.dtype), numel=entry.numel,
                entropy=[None if h is None else h / scale + 0.0 for h in nats],
                invalid_filters=invalid,
                filters=entry.shape[0] if len(entry.shape) >= 2 else None, alpha=alpha,
            )
        )  # fmt: skip
    return rows


def _alpha(h_u: float | None, h_v: float | None, a: float, c: float) -> float | None:
    """The graft alpha of a pair, or None where one of them lacks the key."""
    return None if h_u is None or h_v is None else graft_alpha(h_u, h_v, a=a, c=c)


def plot_entropies(
    report: EntropyReport, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Entropy per row (layer), one series per checkpoint, written atomically in the format
    ``path``'s suffix names (:data:`PLOT_FORMATS`).

    Example:
        >>> plot_entropies(entropy_report(["a.safetensors"]), "entropy.png")  # doctest: +SKIP
    """
    check_plot_available(path)
    n = len(report.rows)
    fig = new_figure(max(6.0, 0.35 * n + 2), 4.5)
    ax = fig.add_subplot()
    xs = list(range(n))
    for i, name in enumerate(report.checkpoints):
        ys = [math.nan if (h := r.entropy[i]) is None else h for r in report.rows]
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(report.max_entropy, color="grey", linestyle=":", label=f"ln {report.bins}")
    ax.set_xticks(xs, [r.name for r in report.rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"weight entropy ({report.unit}, {report.bins} bins)")
    ax.set_title(f"entropy per {report.by}")
    ax.legend(fontsize=8)
    return save_figure(fig, path, force=force)
