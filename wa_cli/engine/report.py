"""What a reducing run reports, and the check that its output is none of its inputs.

Split from :mod:`wa_cli.engine.run` so that the single-process run and the torchrun writer
(:mod:`wa_cli.engine.parallel_write`) both build reports without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wa_cli.engine.combine import CombineStats
from wa_cli.engine.plan import Plan
from wa_cli.engine.precision import Precision
from wa_cli.io.guard import ReadPath
from wa_cli.io.reader import Checkpoint

BN_HINT = (
    "the inputs hold BatchNorm statistics, which were averaged like weights; "
    "`wa bn-recalibrate` gives the new weights their own statistics"
)


@dataclass(frozen=True)
class Recipe:
    """What a method asks the engine to write, besides the inputs and the options: its name and
    parameters (recorded in the report), the output's metadata, each input's weight in the
    result (for the report), and the hint shown when the inputs hold BatchNorm statistics."""

    method: str
    params: dict[str, Any]
    metadata: dict[str, str]
    input_weights: list[float] | None = None
    bn_hint: str = BN_HINT


@dataclass
class RunReport:
    """What a run did: shown as a summary, or as JSON with ``--json``."""

    method: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, Any]
    input_weights: list[float] | None
    keys: int
    stats: CombineStats
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    # Under torchrun: what each rank read and how long it took (rank 0's report only).
    ranks: list[dict[str, Any]] | None = None
    selection: list[dict[str, Any]] = field(default_factory=list)  # kept inputs: step, value
    # A method that writes several files (graft of 3+): one report per file, and its plan.
    parts: list[RunReport] = field(default_factory=list)
    plan: Any = None

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        out: dict[str, Any] = {
            "method": self.method,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "params": self.params,
            "weights": self.input_weights,
            "keys": self.keys,
            "combined": s.combined,
            "copied": s.copied,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_written,
            "seconds": round(s.seconds, 4),
            "gb_per_s": round(s.bytes_read / s.seconds / 1e9, 3) if s.seconds > 0 else None,
            "non_finite": s.non_finite,
            "notes": self.notes,
            "warnings": self.warnings,
            "hints": self.hints,
            "selection": self.selection,
        }
        if self.ranks is not None:
            out["ranks"] = self.ranks
        return out


def input_reads(inputs: Plan | Sequence[Checkpoint]) -> list[ReadPath]:
    """What the output guard protects for these checkpoints (files and shard folders)."""
    checkpoints = inputs.checkpoints if isinstance(inputs, Plan) else inputs
    return [r for ckpt in checkpoints for r in ckpt.read_paths()]


def build_report(
    plan: Plan,
    stats: CombineStats,
    written: Sequence[Path],
    recipe: Recipe,
    precision: Precision = "auto",
) -> RunReport:
    """The report of a finished combination (one process, or every rank's stats merged)."""
    report = RunReport(
        method=recipe.method,
        inputs=[str(c.path) for c in plan.checkpoints],
        outputs=[str(p) for p in written],
        params=recipe.params,
        input_weights=recipe.input_weights,
        keys=len(plan.keys),
        stats=stats,
        notes=list(plan.notes),
    )
    if precision == "float32" and any(
        k.interpolate and k.dtype == torch.float32 for k in plan.keys
    ):
        report.notes.append(
            "--precision float32 summed float32 tensors in float32: every addition rounds, so "
            "k identical inputs may not average to themselves bit for bit (auto sums in float64)"
        )
    if stats.non_finite:
        total = sum(stats.non_finite.values())
        counts = stats.non_finite
        worst = sorted(counts, key=lambda k: counts[k], reverse=True)[:3]
        report.warnings.append(
            f"the output holds {total} non-finite value(s) in {len(stats.non_finite)} tensor(s) "
            f"(most in {', '.join(repr(k) for k in worst)})"
        )
    if plan.holds_bn_statistics:
        report.hints.append(recipe.bn_hint)
    return report
