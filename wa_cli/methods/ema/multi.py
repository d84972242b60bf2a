"""Several post-hoc EMA widths from one read of the inputs (``sigma_rel=[0.05, 0.1, ...]``).

Every width weighs the same selected inputs (those at or before the target step, which does not
depend on the width), so one plan serves all of them: :mod:`wa_cli.engine.multi` reads each chunk
once and combines it K ways, and :mod:`wa_cli.io.multi_writer` writes the K files in lockstep.
Each output is byte-identical to the one-width run's, with its own provenance (``posthoc_ema``,
that width's parameters). CPU only; single files only (no shards, no DCP).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wa_cli.engine.report import RunReport
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.ema.posthoc import PosthocRequest, _weighing, posthoc_run
from wa_cli.methods.request import Request
from wa_cli.methods.selection import DryRun, attach_selection, close_opened, select_checkpoints
from wa_cli.methods.trajectory import check_layout, run_trajectory


def is_several(sigma_rel: object) -> bool:
    """True when ``sigma_rel`` is a list of widths rather than one number."""
    return isinstance(sigma_rel, Sequence) and not isinstance(sigma_rel, str)


def output_name(sigma_rel: float) -> str:
    """The file each width is written to inside the output folder.

    Example:
        >>> output_name(0.05)
        'ema_sigma_0.05.safetensors'
    """
    return f"ema_sigma_{sigma_rel:g}.safetensors"


def _widths(options: Mapping[str, Any]) -> list[float]:
    widths = [float(s) for s in options["sigma_rel"]]
    if not widths or len({output_name(s) for s in widths}) != len(widths):
        raise WaError.naming(
            "{sigma_rel=}{widths!r} must list distinct widths",
            ExitCode.USAGE,
            widths=list(options["sigma_rel"]),
        )
    return widths


def check_device(options: Mapping[str, Any]) -> None:
    """Several widths run on the CPU (engine.multi): an explicit GPU device is refused."""
    if "cuda" in str(options.get("device") or ""):
        raise WaError.naming(
            "several {sigma_rel} values in one pass run on the CPU only (give one width per "
            "run for {device=}'cuda')",
            ExitCode.USAGE,
        )


def _check_single_files(request: Request) -> None:
    w = request.write
    if w.max_shard_size is not None or w.copy_config or w.output_format != "safetensors":
        raise WaError.naming(
            "several {sigma_rel} values write one safetensors file each: {max_shard_size}, "
            "{copy_config} and {output_format=}'dcp' need one width per run",
            ExitCode.USAGE,
        )


def posthoc_many(
    inputs: Any,
    output: str | os.PathLike[str] | None,
    request: Request,
    options: Mapping[str, Any],
) -> list[RunReport | DryRun]:
    """One report per width (``output`` is a folder receiving :func:`output_name` files)."""
    widths = _widths(options)
    posthocs = [PosthocRequest.of({**options, "sigma_rel": s}) for s in widths]
    folder = None if output is None else Path(output)
    paths = [None if folder is None else folder / output_name(s) for s in widths]
    if request.dry_run or folder is None:  # each width's plan (or the missing-output error)
        return [run_trajectory(inputs, p, request, *posthoc_run(ph, request))  # type: ignore[misc, arg-type]
                for p, ph in zip(paths, posthocs)]  # fmt: skip
    if folder.suffix:
        raise WaError.naming(
            "several {sigma_rel} values write one file each into a folder: '{folder}' has a "
            "suffix (name a folder)",
            ExitCode.USAGE,
            folder=folder,
        )
    check_layout(request.write)
    _check_single_files(request)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / output_name(s) for s in widths]
    for f in files:
        request.write.check_output(f)
    selected = select_checkpoints(inputs, request.read, request.selection, dry_run=False)
    try:
        chosen = [ph.weigh(selected.items) for ph in posthocs]  # type: ignore[union-attr]
        if any(c.used != chosen[0].used for c in chosen):  # the target step is the same for all
            raise RuntimeError("post-hoc widths chose different inputs")
        weighings = [_weighing(selected, c) for c in chosen]
    except BaseException:
        close_opened(selected.items, inputs, keep=())
        raise
    reports = _write(weighings, chosen, files, request, posthocs)
    return [  # one per width, in the order given
        attach_selection(report, selected.plan(w.weights, w.method), w.note)
        for report, w in zip(reports, weighings)
    ]


def _write(
    weighings: list[Any],
    chosen: list[Any],
    files: list[Path],
    request: Request,
    posthocs: list[Any],
) -> list[RunReport]:
    """Combine the shared plan K ways in one pass and write the K files together."""
    from wa_cli.engine.combine import CombineStats
    from wa_cli.engine.multi import linear_combinations
    from wa_cli.engine.plan import build_plan
    from wa_cli.engine.provenance import provenance
    from wa_cli.engine.report import Recipe, build_report, input_reads
    from wa_cli.io.multi_writer import write_safetensors_many
    from wa_cli.methods.average import source_weights
    from wa_cli.select.order import step_metadata

    r = request.reduce
    plan = build_plan(weighings[0].items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
    recipes = []
    for w, c, ph in zip(weighings, chosen, posthocs):
        weights = list(w.given_weights or ())
        params = {**c.params(), "quadrature": ph.quadrature, **r.params()}
        meta = {**provenance(plan.checkpoints, "posthoc_ema", params, request.write.command),
                **step_metadata(plan.checkpoints)}  # fmt: skip
        recipes.append(Recipe("posthoc_ema", params, meta, weights))
    stats = [CombineStats() for _ in files]
    try:
        for f in files:
            request.write.check_output(f, input_reads(plan))
        fns = [source_weights(rec.input_weights or []) for rec in recipes]
        chunks = linear_combinations(plan, fns, precision=r.precision, stats=stats)
        with contextlib.closing(chunks):
            write_safetensors_many(
                files, plan.output_tensors(), chunks, [rec.metadata for rec in recipes],
                force=request.write.force, reads=input_reads(plan),
            )  # fmt: skip
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
    reports = []
    for f, s, rec, c in zip(files, stats, recipes, chosen):
        report = build_report(plan, s, [f], rec, r.precision)
        report.warnings.extend(c.warnings)
        reports.append(report)
    return reports
