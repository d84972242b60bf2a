"""``entropy_report``: per-layer weight entropy of checkpoints, the verb behind
``wa inspect-entropy``.

Part of :mod:`wa_cli.methods.graft`. The inputs are read and selected as every verb reads and
selects them (:mod:`wa_cli.methods.request`); the rows are measured by
:mod:`wa_cli.methods.graft.report`.
"""

from __future__ import annotations

import os

import torch
from typing_extensions import Unpack

from wa_cli.engine.params import choice
from wa_cli.engine.plan import KeysMode, build_plan
from wa_cli.engine.report import input_reads
from wa_cli.gc_pause import paused_gc
from wa_cli.io.names import distinct_names
from wa_cli.io.output_check import check_output
from wa_cli.methods.graft.alpha import check_graft_params, ring_pairs_to_write
from wa_cli.methods.graft.entropy import check_base, check_bins, check_threshold
from wa_cli.methods.graft.report import (
    By,
    EntropyReport,
    Measure,
    Sort,
    compile_filter,
    measure_rows,
    named_keys,
    plot_entropies,
)
from wa_cli.methods.inputs import Inputs
from wa_cli.methods.plots import check_plot_available
from wa_cli.methods.request import ReadArgs, Request, SelectArgs
from wa_cli.methods.selection import close_opened, select_checkpoints


class EntropyArgs(ReadArgs, SelectArgs, total=False):
    """The keyword arguments of :func:`entropy_report`."""

    by: By
    bins: int
    base: float | None
    l1_threshold: float
    pattern: str | None
    sort: Sort
    keys: KeysMode
    a: float
    c: float
    device: str | torch.device
    plot: str | os.PathLike[str] | None
    force: bool


_OWN = ("by", "bins", "base", "l1_threshold", "pattern", "sort", "a", "c", "plot")


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def entropy_report(inputs: Inputs, **options: Unpack[EntropyArgs]) -> EntropyReport:
    """Entropy of every floating tensor (or module) of one or more checkpoints.

    By module, a module is measured on its ``weight`` (else its first floating tensor), as
    ``wa graft --rule module`` does; by tensor, each floating tensor is measured, and the alpha
    column is then ``wa graft --rule tensor``'s. Alphas use nats whatever ``base`` is.

    Args:
        inputs: checkpoints (paths or opened); two or more add the alpha columns.
        **options: ``by``: one row per ``"tensor"`` (default) or per ``"module"``. ``bins``:
            histogram bins B >= 2 (paper: 10). ``base``: logarithm base of the entropies
            (None: nats; 2: bits). ``l1_threshold``: filters with L1 norm below this are
            invalid (paper: 0.1 or 0.01). ``pattern``: keep rows whose name matches this
            regular expression (searched, RE2 syntax). ``sort``: ``"order"`` (the checkpoint's
            key order), ``"name"``, or ``"entropy"`` (lowest first, on the first checkpoint).
            ``keys``: ``"strict"``, ``"intersection"`` or ``"union"``. ``a``, ``c``: the graft
            amplitude and steepness of the alpha column. ``device``: where entropies are computed
            (default ``"cpu"``). ``plot``: also write a plot there (.png, .pdf, .svg, .eps or
            .ps; needs matplotlib); ``force`` replaces one. Reading and selection as for
            ``wa.average``.

    Returns:
        An ``EntropyReport``.

    Raises:
        WaError: bad bins, base, threshold, pattern, a or c; incompatible checkpoints.

    Example:
        >>> report = entropy_report(["run_a/last.safetensors"], by="module")  # doctest: +SKIP
        >>> [(r.name, r.entropy[0]) for r in report.rows]  # doctest: +SKIP
    """
    request = Request.of("entropy_report", {"device": "cpu", **options}, own=_OWN)
    if request.dry_run or request.write.output_folder_options() or request.write.progress:
        raise TypeError("entropy_report() writes no checkpoint: it takes plot= and force= only")
    by = choice("by", options.get("by", "tensor"), By)
    sort = choice("sort", options.get("sort", "order"), Sort)
    bins, base = options.get("bins", 10), options.get("base")
    l1_threshold = options.get("l1_threshold", 0.1)
    a, c = options.get("a", 0.4), options.get("c", 500.0)
    check_bins(bins)
    check_graft_params(a, c)
    if base is not None:
        check_base(base)
    check_threshold(l1_threshold)
    regex = compile_filter(options.get("pattern"))
    plot = options.get("plot")
    if plot is not None:
        check_plot_available()
        check_output(plot, force=request.write.force, layout="plot")  # before any input is read
    ckpts = select_checkpoints(inputs, request.read, request.selection).items
    try:
        if plot is not None:
            check_output(plot, reads=input_reads(ckpts), force=request.write.force, layout="plot")
            check_plot_available(plot)  # its suffix names a format wa writes (before any work)
        # Checks key sets and shapes from headers; entropy does not care about dtypes, so floating
        # inputs of different dtypes are allowed (a target dtype lifts the dtype check).
        plan = build_plan(ckpts, keys=request.reduce.keys, dtype=torch.float64)
        named = named_keys(plan, by, regex)
        pairs = ring_pairs_to_write(len(ckpts)) if len(ckpts) >= 2 else []
        measure = Measure(bins, base, l1_threshold, a, c, request.reduce.device)
        rows = measure_rows(ckpts, plan, named, pairs, measure)
    finally:
        close_opened(ckpts, inputs, keep=())
    if sort == "name":
        rows.sort(key=lambda r: r.name)
    elif sort == "entropy":
        rows.sort(key=lambda r: (r.entropy[0] is None, r.entropy[0] or 0.0))
    report = EntropyReport(
        checkpoints=distinct_names([ck.path for ck in ckpts]),
        paths=[str(ck.path) for ck in ckpts],
        by=by, bins=bins, base=base, l1_threshold=l1_threshold, a=a, c=c, pairs=pairs, rows=rows,
    )  # fmt: skip
    if plot is not None:
        plot_entropies(report, plot, force=request.write.force)
    return report
