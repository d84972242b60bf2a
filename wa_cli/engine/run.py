"""One run of a reducing command: plan → streamed linear combination → atomic writer → report.

``wa average``, ``wa ema`` and ``wa graft`` differ only in the weights they give each input for
each key; everything else (checks, precision, non-float policy, devices, progress, provenance,
atomic output, the report) is this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import torch

from wa_cli.engine import distributed
from wa_cli.engine.combine import (
    CombineStats,
    ProgressFn,
    WeightsFn,
    planned_read_bytes,
)
from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.engine.plan import Plan
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.report import (
    BN_HINT,
    Recipe,
    RunReport,
    build_report,
    input_reads,
)
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.writer import write_safetensors

__all__ = [
    "BN_HINT",
    "RunReport",
    "assemble",
    "build_report",
    "combine_to_file",
    "input_reads",
    "Recipe",
]


def combine_to_file(
    plan: Plan,
    weights: WeightsFn,
    output: str | os.PathLike[str],
    recipe: Recipe,
    opts: ReduceOptions,
    out: WriteOptions,
) -> RunReport:
    """Write ``Σ w_i θ_i / Σ w_i`` per key of ``plan`` to ``output`` and report what happened.

    ``out.progress(bytes_done_now, bytes_total)`` is called as input bytes are consumed. Under
    torchrun every rank writes its share (:mod:`wa_cli.engine.parallel_write`).
    """
    dcp = out.output_format == "dcp"
    if distributed.active() is not None:  # torchrun: every rank writes its part
        from wa_cli.engine.parallel_write import combine_to_file_distributed

        if (out.shard_name or "model") != "model" or out.copy_files:
            raise WaError.naming(
                "{shard_name} and {copy_files} are not supported under torchrun yet "
                "(run without torchrun)",
                ExitCode.USAGE,
            )
        return combine_to_file_distributed(plan, weights, output, recipe, opts, out)
    output = Path(output)
    out.check_output(output, input_reads(plan))  # the output guard, before any tensor is read
    stats = CombineStats()
    advance: ProgressFn | None = None
    progress = out.progress
    if progress is not None:
        total = planned_read_bytes(plan, weights)
        advance = lambda n: progress(n, total)  # noqa: E731
    chunks = linear_combination(
        plan, weights,
        precision=opts.precision, device=opts.device, progress=advance, stats=stats,
        whole_spans=True,
    )  # fmt: skip
    try:
        # closing(): on a write error the engine's reader thread stops before files close.
        with contextlib.closing(chunks):
            if dcp:  # a DCP folder, written by torch's own writer
                from wa_cli.io.dcp_write import write_dcp

                written = write_dcp(
                    output, plan.output_tensors(), chunks, force=out.force, reads=input_reads(plan)
                )
            else:
                settings = out.settings(reads=input_reads(plan))
                written = write_safetensors(
                    output, plan.output_tensors(), chunks, recipe.metadata, settings
                )
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
    return build_report(plan, stats, written, recipe, opts.precision)


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
