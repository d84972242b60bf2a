"""Filter Grafting as the notebook verbs: :func:`graft` yields a state dict, :func:`graft_to_file`
writes and returns one :class:`~wa_cli.engine.run.RunReport`, like ``average`` and ``ema``.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868). Both run
the two passes of :mod:`wa_cli.methods.graft.files`: the alphas from the entropies first, then the
streamed combination u' = α u + (1 − α) v per key through the engine ``wa average`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from wa_cli.engine.combine import CombineStats
from wa_cli.engine.options import ReduceOptions
from wa_cli.engine.plan import build_plan
from wa_cli.engine.precision import Precision
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.run import RunReport, assemble
from wa_cli.gc_pause import paused_gc
from wa_cli.methods.graft.alpha import Rule
from wa_cli.methods.graft.files import graft_to_files, pair_weights, plan_graft
from wa_cli.methods.inputs import Inputs
from wa_cli.params import bad, integer


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def graft(
    inputs: Inputs,
    *,
    receiver: int = 0,
    rule: Rule = "module",
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Graft checkpoints; yields the ``(key, tensor)`` pairs of one grafted model.

    The models form a ring (model i receives from model i − 1, model 0 from the last); the
    result is model ``receiver`` after grafting. With two models both grafts are the same model.

    Args:
        inputs: two or more checkpoints: paths, a glob, a folder, opened checkpoints.
        receiver: which model receives (its non-float tensors are kept).
        rule: ``"module"`` (one α per module), ``"tensor"`` or ``"paper"``.
        a: amplitude A, 0 <= a < 1 (paper: 0.4; 0 gives a plain mean).
        c: steepness, c > 0 (paper: 500).
        bins: histogram bins (paper: 10).
        dtype: output dtype of floating tensors (``"bfloat16"`` or a ``torch.dtype``).
        precision: accumulator (``"auto"``, ``"float32"``, ``"float64"``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Example:
        >>> state = dict(graft(["a/last.safetensors", "b/last.safetensors"]))  # doctest: +SKIP
    """
    opts = ReduceOptions.checked(dtype=dtype, precision=precision, device=device)
    dev = opts.device
    plan = plan_graft(inputs, rule=rule, a=a, c=c, bins=bins, dtype=opts.dtype, device=dev)
    n = len(plan.checkpoints)
    index = integer("receiver", receiver)
    if index is None or not -n <= index < n:
        for ck in plan.checkpoints:
            ck.close()
        raise bad("receiver", f"receiver={receiver!r} is not an index of the {n} inputs")
    index %= n
    # Two models write one graft, (0 <- 1); model 1's graft is the same model.
    which = 0 if len(plan.pairs) == 1 else index
    r, d = plan.pairs[which]
    pair = build_plan(
        [plan.checkpoints[r], plan.checkpoints[d]], non_float="first", dtype=plan.dtype
    )
    for i, ck in enumerate(plan.checkpoints):
        if i not in (r, d):
            ck.close()
    chunks = linear_combination(
        pair, pair_weights(plan.alphas[which]), precision=opts.precision, device=opts.device
    )
    return assemble(pair, chunks)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def graft_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    rule: Rule = "module",
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> RunReport:
    """Graft checkpoints into ``output``: a file for two models, a folder for three or more.

    Returns one :class:`RunReport` (as ``average_to_file`` and ``ema_to_file`` do): its
    ``outputs`` list every file written, its ``stats`` add up the runs, and its ``warnings`` hold
    the plan's (the paper rule's notes). Arguments as for :func:`graft`, plus the output options
    of ``average_to_file``.

    Example:
        >>> report = graft_to_file(["a.safetensors", "b.safetensors"], "g")  # doctest: +SKIP
    """
    from wa_cli.engine.options import WriteOptions

    opts = ReduceOptions.checked(dtype=dtype, precision=precision, device=device)
    out = WriteOptions.checked(force=force, progress=progress, command=command)
    dev = opts.device
    plan = plan_graft(inputs, rule=rule, a=a, c=c, bins=bins, dtype=opts.dtype, device=dev)
    plan, reports = graft_to_files(
        plan,
        output,
        precision=opts.precision,
        device=dev,
        force=out.force,
        progress=out.progress,
        command=out.command,
    )
    return merge_reports(reports, plan.warnings)


def merge_reports(reports: list[RunReport], warnings: list[str]) -> RunReport:
    """One report for several outputs of one graft: outputs, notes and statistics added up."""
    first = reports[0]
    stats = CombineStats()
    for r in reports:
        stats.bytes_read += r.stats.bytes_read
        stats.bytes_written += r.stats.bytes_written
        stats.combined += r.stats.combined
        stats.copied += r.stats.copied
        stats.seconds += r.stats.seconds
        stats.non_finite.update({f"{r.outputs[0]}:{k}": v for k, v in r.stats.non_finite.items()})
    params = first.params if len(reports) == 1 else {"runs": [r.params for r in reports]}
    return RunReport(
        method=first.method,
        inputs=list(dict.fromkeys(p for r in reports for p in r.inputs)),
        outputs=[p for r in reports for p in r.outputs],
        params=params,
        input_weights=first.input_weights,
        keys=first.keys,
        stats=stats,
        notes=[n for r in reports for n in r.notes],
        warnings=[*warnings, *(w for r in reports for w in r.warnings)],
        hints=list(reports[-1].hints),
    )
