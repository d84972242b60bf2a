"""Filter Grafting as the notebook verbs: :func:`graft` yields a state dict, :func:`graft_to_file`
writes and returns one :class:`~wa_cli.engine.run.RunReport`, like ``average`` and ``ema``.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868). Both run
the two passes of :mod:`wa_cli.methods.graft.files`: the alphas from the entropies first, then the
streamed combination u' = α u + (1 − α) v per key through the engine ``wa average`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from typing_extensions import Unpack

from wa_cli.engine.combine import CombineStats
from wa_cli.engine.options import WriteOptions
from wa_cli.engine.params import integer
from wa_cli.engine.plan import build_plan
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.run import RunReport, assemble
from wa_cli.errors import WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.io.guard import refuse_file_link
from wa_cli.methods.graft.alpha import Rule
from wa_cli.methods.graft.files import (
    GraftPlan,
    graft_to_files,
    output_paths,
    pair_weights,
    plan_graft,
)
from wa_cli.methods.inputs import Inputs, as_input_list
from wa_cli.methods.request import ReadArgs, ReduceArgs, Request, SelectArgs, WriteArgs
from wa_cli.methods.selection import select_checkpoints
from wa_cli.select.expand import require_one_per_folder


class GraftArgs(ReadArgs, SelectArgs, ReduceArgs, total=False):
    """The keyword arguments of :func:`graft`."""

    receiver: int
    rule: Rule
    a: float
    c: float
    bins: int


class GraftToFileArgs(GraftArgs, WriteArgs, total=False):
    """The keyword arguments of :func:`graft_to_file`."""


_OWN = ("receiver", "rule", "a", "c", "bins")
_NO_WRITE = WriteOptions()


def _plan(inputs: Inputs, request: Request, options: Mapping[str, Any]) -> GraftPlan:
    """Select the inputs and compute every alpha (the first pass)."""
    rule: Any = options.get("rule", "module")  # checked by plan_graft
    a: Any = options.get("a", 0.4)
    c: Any = options.get("c", 500.0)
    bins: Any = options.get("bins", 10)
    if isinstance(inputs, list) and len(inputs) < 2:  # before opening anything
        plan_graft(inputs, rule=rule, a=a, c=c, bins=bins)
    require_one_per_folder(as_input_list(inputs))  # run1/ run2/: one checkpoint per run, named
    r = request.reduce
    ckpts = select_checkpoints(inputs, request.read, request.selection).items
    return plan_graft(ckpts, rule=rule, a=a, c=c, bins=bins, dtype=r.dtype, device=r.device)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def graft(inputs: Inputs, **options: Unpack[GraftArgs]) -> Iterator[tuple[str, torch.Tensor]]:
    """Graft checkpoints; yields the ``(key, tensor)`` pairs of one grafted model.

    The models form a ring (model i receives from model i − 1, model 0 from the last); the
    result is model ``receiver`` after grafting. With two models both grafts are the same model.

    Args:
        inputs: two or more checkpoints: paths, a glob, a folder, opened checkpoints.
        **options: ``receiver``: which model receives (its non-float tensors are kept).
            ``rule``: ``"module"`` (one α per module), ``"tensor"`` or ``"paper"``. ``a``:
            amplitude A, 0 <= a < 1 (paper: 0.4; 0 gives a plain mean). ``c``: steepness,
            c > 0 (paper: 500). ``bins``: histogram bins (paper: 10). ``dtype``: output dtype
            of floating tensors (``"bfloat16"`` or a ``torch.dtype``). ``precision``:
            accumulator (``"auto"``, ``"float32"``, ``"float64"``). ``device``: ``"auto"``,
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Reading and selection as for ``wa.average``.

    Example:
        >>> state = dict(graft(["a/last.safetensors", "b/last.safetensors"]))  # doctest: +SKIP
    """
    request = Request.of("graft", options, own=_OWN)
    if request.dry_run or request.write != _NO_WRITE:
        raise TypeError("graft() writes nothing: the output options belong to graft_to_file()")
    receiver = options.get("receiver", 0)
    plan = _plan(inputs, request, options)
    n = len(plan.checkpoints)
    index = integer("receiver", receiver)
    if index is None or not -n <= index < n:
        for ck in plan.checkpoints:
            ck.close()
        raise WaError.naming(
            "{receiver=}{got!r} is not an index of the {n} inputs", got=receiver, n=n
        )
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
    opts = request.reduce
    chunks = linear_combination(
        pair, pair_weights(plan.alphas[which]), precision=opts.precision, device=opts.device
    )
    return assemble(pair, chunks)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def graft_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str] | None = None,
    **options: Unpack[GraftToFileArgs],
) -> RunReport | GraftPlan:
    """Graft checkpoints into ``output``: a file for two models, a folder for three or more.

    Returns one :class:`RunReport` (as ``average_to_file`` and ``ema_to_file`` do): its
    ``outputs`` list every file written, its ``stats`` add up the runs, its ``warnings`` hold
    the plan's (the paper rule's notes), its ``parts`` the report of each file and its ``plan``
    the :class:`~wa_cli.methods.graft.files.GraftPlan`. Arguments as for :func:`graft`, plus
    ``force``, ``progress``, ``command`` and ``read``. With ``dry_run=True`` it writes nothing
    and returns the plan (every alpha; ``outputs``: the files a run would write).

    Example:
        >>> report = graft_to_file(["a.safetensors", "b.safetensors"], "g")  # doctest: +SKIP
    """
    request = Request.of("graft_to_file", options, own=_OWN[1:])  # no receiver: all are written
    if request.write.output_folder_options():
        raise TypeError("graft_to_file() takes no max_shard_size, shard_name or copy_config")
    if output is None and not request.dry_run:
        raise WaError.naming(
            "{output} is required (a file, or a folder for 3+ inputs), or {dry_run}"
        )
    if output is not None:
        refuse_file_link(output)  # a dangling -o link: refused before the entropies read all
    plan = _plan(inputs, request, options)
    if request.dry_run:
        plan.outputs = [str(p) for p in output_paths(plan, output)] if output is not None else []
        for ck in plan.checkpoints:
            ck.close()
        return plan
    assert output is not None  # checked above
    reports = graft_to_files(plan, output, request.reduce, request.write)
    merged = merge_reports(reports, plan.warnings)
    merged.parts, merged.plan = reports, plan
    return merged


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
