"""One run of a reducing command: plan → streamed linear combination → atomic writer → report.

``wa average``, ``wa ema`` and ``wa graft`` differ only in the weights they give each input for
each key; everything else (checks, precision, non-float policy, devices, progress, provenance,
atomic output, the report) is this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wa_cli.engine import distributed
from wa_cli.engine.combine import (
    CombineStats,
    ProgressFn,
    WeightsFn,
    linear_combination,
    planned_read_bytes,
)
from wa_cli.engine.plan import Plan
from wa_cli.engine.precision import Precision
from wa_cli.io.guard import ReadPath, refuse_inputs
from wa_cli.io.reader import Checkpoint
from wa_cli.io.writer import write_safetensors

BN_HINT = (
    "the inputs hold BatchNorm statistics, which were averaged like weights; "
    "`wa bn-recalibrate` gives the new weights their own statistics"
)


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


def check_output_is_not_input(output: Path, inputs: Plan | Sequence[Checkpoint]) -> None:
    """An input is never overwritten, not even with --force (``inputs``: a plan or checkpoints)."""
    refuse_inputs(output, input_reads(inputs))


def input_reads(inputs: Plan | Sequence[Checkpoint]) -> list[ReadPath]:
    """What the output guard protects for these checkpoints (files and shard folders)."""
    checkpoints = inputs.checkpoints if isinstance(inputs, Plan) else inputs
    return [r for ckpt in checkpoints for r in ckpt.read_paths()]


def combine_to_file(
    plan: Plan,
    weights: WeightsFn,
    output: str | os.PathLike[str],
    *,
    method: str,
    metadata: dict[str, str],
    params: dict[str, Any],
    input_weights: list[float] | None = None,
    precision: Precision = "auto",
    device: torch.device | None = None,
    force: bool = False,
    max_shard_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    bn_hint: str = BN_HINT,
) -> RunReport:
    """Write ``Σ w_i θ_i / Σ w_i`` per key of ``plan`` to ``output`` and report what happened.

    ``progress(bytes_done_now, bytes_total)`` is called as input bytes are consumed;
    ``bn_hint`` is shown when the inputs hold BatchNorm statistics (they were combined too).
    """
    if distributed.active() is not None:  # torchrun: every rank writes its part
        from wa_cli.engine.parallel_write import combine_to_file_distributed

        return combine_to_file_distributed(
            plan, weights, output,
            method=method, metadata=metadata, params=params, input_weights=input_weights,
            precision=precision, device=device, force=force, max_shard_size=max_shard_size,
            progress=progress, bn_hint=bn_hint,
        )  # fmt: skip
    output = Path(output)
    check_output_is_not_input(output, plan)
    stats = CombineStats()
    advance: ProgressFn | None = None
    if progress is not None:
        total = planned_read_bytes(plan, weights)
        advance = lambda n: progress(n, total)  # noqa: E731
    chunks = linear_combination(
        plan, weights, precision=precision, device=device, progress=advance, stats=stats
    )
    try:
        # closing(): on a write error the engine's reader thread stops before files close.
        with contextlib.closing(chunks):
            written = write_safetensors(
                output, plan.output_tensors(), chunks, metadata,
                force=force, max_shard_size=max_shard_size, reads=input_reads(plan),
            )  # fmt: skip
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
    return build_report(
        plan, stats, written,
        method=method, params=params, input_weights=input_weights, bn_hint=bn_hint,
        precision=precision,
    )  # fmt: skip


def build_report(
    plan: Plan,
    stats: CombineStats,
    written: Sequence[Path],
    *,
    method: str,
    params: dict[str, Any],
    input_weights: list[float] | None,
    bn_hint: str = BN_HINT,
    precision: Precision = "auto",
) -> RunReport:
    """The report of a finished combination (one process, or every rank's stats merged)."""
    report = RunReport(
        method=method,
        inputs=[str(c.path) for c in plan.checkpoints],
        outputs=[str(p) for p in written],
        params=params,
        input_weights=input_weights,
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
        report.hints.append(bn_hint)
    return report


def assemble(
    plan: Plan, chunks: Generator[tuple[str, torch.Tensor], None, None]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn a chunk stream into whole ``(key, tensor)`` pairs (for notebook users).

    The plan's checkpoints are closed when the stream ends or is abandoned.
    """
    by_key = {k.key: k for k in plan.keys}
    current: torch.Tensor | None = None
    filled = 0
    key = ""
    try:
        with contextlib.closing(chunks):
            for k, chunk in chunks:
                if current is None:
                    key = k
                    entry = by_key[k]
                    current = torch.empty(entry.numel, dtype=entry.out_dtype)
                    filled = 0
                current[filled : filled + chunk.numel()].copy_(chunk.reshape(-1).cpu())
                filled += chunk.numel()
                if filled == current.numel():
                    yield key, current.reshape(by_key[key].shape)
                    current = None
        for entry in plan.keys:  # zero-sized tensors have no chunks
            if entry.numel == 0:
                yield entry.key, torch.empty(entry.shape, dtype=entry.out_dtype)
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
