"""Filter Grafting between checkpoints on disk: two passes, one tensor at a time.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868; code
fxmeng/filter-grafting); the math is in ``wa_cli.methods.graft.alpha``. ``plan_graft`` checks the
inputs from their headers (keys, shapes, dtypes), decides from key names alone which tensors'
entropies give each key its alpha (``AlphaPlan.entropy_keys``), and reads only those, one tensor at
a time.
``graft_to_files`` then streams every output through the same engine and atomic writer as
``wa average``: per key, the weights [alpha, 1 - alpha] over (receiver, donor); non-float tensors
keep the receiver's values.

Two models write one output (the two grafts coincide); N >= 3 models graft in a ring (model i
receives from model i - 1, model 0 from model N - 1), all from the pre-graft weights, and write N
outputs into a folder, each atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wa_cli.engine import distributed
from wa_cli.engine.device import resolve_device
from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.engine.params import choice
from wa_cli.engine.params import dtype as check_dtype
from wa_cli.engine.plan import ARCHITECTURE_HINT, KeyPlan, Plan, build_plan
from wa_cli.engine.provenance import provenance
from wa_cli.engine.run import (
    Recipe,
    RunReport,
    combine_to_file,
    input_reads,
)
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.atomic import transaction
from wa_cli.io.dtypes import dtype_name
from wa_cli.io.guard import refuse_file_link
from wa_cli.io.names import distinct_names
from wa_cli.io.output_check import check_output
from wa_cli.io.reader import Checkpoint
from wa_cli.methods.graft.alpha import (
    AlphaPlan,
    Rule,
    alphas_from_entropies,
    check_graft_params,
    entropy_pairs,
    module_of,
    plan_alphas,
    ring_pairs_to_write,
)
from wa_cli.methods.graft.entropy import check_bins, checkpoint_measure
from wa_cli.methods.graft.relatedness import unrelated_warnings
from wa_cli.methods.inputs import Inputs, as_input_list, open_inputs
from wa_cli.select.expand import require_one_per_folder

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".grafted.safetensors"
GRAFT_BN_HINT = (
    "the inputs hold BatchNorm statistics, which were grafted like weights; "
    "`wa bn-recalibrate` gives the grafted weights their own statistics"
)


@dataclass
class AlphaRow:
    """One alpha decision: the keys that share it, whose entropies decide it, and the alphas.

    Attributes:
        name: the module (when all its floating keys share one alpha) or the key.
        keys: the floating keys this row's alpha applies to.
        source: the key whose entropies give the alpha, or None for a fixed alpha.
        entropies: H(source) per input, in nats (None for a fixed alpha).
        alphas: the receiver's alpha for each graft written (aligned with ``GraftPlan.pairs``).
    """

    name: str
    keys: list[str]
    source: str | None
    entropies: list[float] | None
    alphas: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keys": self.keys,
            "from": self.source,
            "entropy": self.entropies,
            "alpha": self.alphas,
        }


@dataclass
class GraftPlan:
    """Everything ``graft_to_files`` will do, known before a byte is written."""

    checkpoints: list[Checkpoint]
    names: list[str]
    rule: Rule
    a: float
    c: float
    bins: int
    check: Plan
    alpha_plan: AlphaPlan
    pairs: list[tuple[int, int]]  # (receiver, donor) of each output
    alphas: list[dict[str, float]]  # per pair: {floating key: alpha}
    rows: list[AlphaRow]
    dtype: torch.dtype | None = None
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # a dry run's: the files it would write

    def params(self) -> dict[str, Any]:
        return {"rule": self.rule, "a": self.a, "c": self.c, "bins": self.bins}


def plan_graft(
    inputs: Inputs,
    *,
    rule: Rule = "module",
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
) -> GraftPlan:
    """Check the inputs and compute every alpha: the first pass of a graft (``--dry-run``).

    Reads only the tensors whose entropies the rule needs, one at a time.

    Args:
        inputs: two or more checkpoints (paths or opened), in ring order.
        rule: "module" (default), "tensor" or "paper" (see ``wa_cli.methods.graft.alpha``).
        a: amplitude A, 0 <= a < 1 (paper: 0.4; 0 gives a plain mean).
        c: steepness, c > 0 (paper: 500).
        bins: histogram bins B >= 2 (paper: 10).
        dtype: output dtype of floating tensors (lets inputs of different float dtypes graft).
        device: where the entropies are computed.

    Returns:
        A ``GraftPlan``: the alpha table, the pairs to write, and warnings (paper rule).

    Raises:
        WaError: fewer than two inputs, bad a/c/bins, or incompatible checkpoints.

    Example:
        >>> plan = plan_graft(["a.safetensors", "b.safetensors"])  # doctest: +SKIP
        >>> [(r.name, r.alphas) for r in plan.rows]  # doctest: +SKIP
    """
    choice("rule", rule, Rule)
    check_graft_params(a, c)
    check_bins(bins)
    dtype = check_dtype("dtype", dtype)
    dev = resolve_device(device)
    require_one_per_folder(as_input_list(inputs))  # a folder of a run's checkpoints: which one?
    ckpts = open_inputs(inputs)
    if len(ckpts) < 2:
        for ck in ckpts:
            ck.close()
        raise WaError(
            f"grafting needs at least two checkpoints, got {len(ckpts)} "
            "(give a receiver and a donor: wa graft A.safetensors B.safetensors -o OUT)"
        )
    try:
        # Receiver first: its non-float tensors are the ones kept.
        check = build_plan(
            ckpts, non_float="first", dtype=dtype, key_mismatch_hint=ARCHITECTURE_HINT
        )
        warnings: list[str] = []
        alpha_plan = plan_alphas(
            [k.key for k in check.keys],
            {k.key for k in check.keys if k.interpolate},
            rule=rule,
            bins=bins,
            ordered=all(ck.key_order_known for ck in ckpts),
            warn=warnings.append,
        )
        if distributed.active() is None:
            entropies = [_entropies(ck, alpha_plan, dev) for ck in ckpts]
        else:  # torchrun: each rank measures its module groups; every rank gets them all
            from wa_cli.methods.graft.parallel import shared_entropies

            entropies = shared_entropies(
                check, ckpts, alpha_plan, {"rule": rule, "a": a, "c": c, "bins": bins},
                lambda ck, keys: _entropies(ck, alpha_plan, dev, keys),
            )  # fmt: skip
        pairs = ring_pairs_to_write(len(ckpts))
        alphas = [
            alphas_from_entropies(alpha_plan, entropy_pairs(entropies, r, d), a=a, c=c)
            for r, d in pairs
        ]
        # Finished independent runs graft badly: say so (methods/graft/relatedness.py).
        names = distinct_names([ck.path for ck in ckpts])
        warnings.extend(unrelated_warnings(check, pairs, names))
    except BaseException:
        for ck in ckpts:  # the second pass closes them on success
            ck.close()
        raise
    rows = _rows(alpha_plan, entropies, alphas)
    return GraftPlan(
        checkpoints=ckpts,
        names=names,
        rule=rule, a=a, c=c, bins=bins,
        check=check, alpha_plan=alpha_plan, pairs=pairs, alphas=alphas, rows=rows,
        dtype=dtype, warnings=warnings,
    )  # fmt: skip


def _entropies(
    ckpt: Checkpoint, plan: AlphaPlan, device: torch.device, keys: Sequence[str] | None = None
) -> dict[str, float]:
    # Streamed chunk by chunk: memory is bounded by a chunk, not by the largest tensor.
    out = {}
    for key in plan.entropy_keys if keys is None else keys:
        measured = checkpoint_measure(
            ckpt, key, bins=plan.bins, half_open=plan.half_open, device=device
        )
        out[key] = measured.entropy
    ckpt.close()
    return out


def _rows(
    plan: AlphaPlan, entropies: list[dict[str, float]], alphas: list[dict[str, float]]
) -> list[AlphaRow]:
    """One row per module whose floating keys share a source, else one row per key."""
    by_module: dict[str, list[str]] = {}
    for k in plan.source:
        by_module.setdefault(module_of(k), []).append(k)
    groups: list[tuple[str, list[str]]] = []
    for mod, keys in by_module.items():
        if plan.rule != "tensor" and len({plan.source[k] for k in keys}) == 1:
            groups.append((mod or keys[0], keys))
        else:
            groups.extend((k, [k]) for k in keys)
    rows = []
    for name, keys in groups:
        src = plan.source[keys[0]]
        rows.append(
            AlphaRow(
                name=name,
                keys=keys,
                source=src,
                entropies=None if src is None else [e[src] for e in entropies],
                alphas=[al[keys[0]] for al in alphas],
            )
        )
    return rows


def output_paths(plan: GraftPlan, output: str | os.PathLike[str]) -> list[Path]:
    """Where each graft goes: ``output`` itself for two models, else ``output/<name>.grafted...``.

    Example:
        >>> output_paths(plan, "grafted")  # doctest: +SKIP
        [PosixPath('grafted/a.grafted.safetensors'), ...]
    """
    out = Path(output)
    if len(plan.pairs) == 1:
        return [out]
    if out.suffix == ".safetensors" or (out.exists() and not out.is_dir()):
        raise WaError(
            f"{len(plan.pairs)} models graft into {len(plan.pairs)} outputs, so -o must name a "
            f"folder, got '{out}' (e.g. -o grafted/)",
            ExitCode.USAGE,
        )
    stems = distinct_names([ck.path for ck in plan.checkpoints], sep="_")
    return [out / f"{stems[r]}{OUTPUT_SUFFIX}" for r, _ in plan.pairs]


def graft_to_files(
    plan: GraftPlan,
    output: str | os.PathLike[str],
    reduce: ReduceOptions,
    write: WriteOptions,
) -> list[RunReport]:
    """Write the grafts of ``plan``, streaming and atomically per file: the second pass.

    Two inputs write one file, ``output``; N >= 3 inputs write N files into the folder
    ``output`` (created if needed), named ``<input stem>.grafted.safetensors``. Every output is
    checked (not an input, not existing without ``write.force``) before the first is written.
    The provenance of each records A, c, the rule, the receiver, the donor and every alpha.

    Args:
        plan: the first pass, from :func:`plan_graft` (its checkpoints are closed here).
        output: a file (two inputs) or a folder (three or more).
        reduce: the accumulator (``precision``) and where the combination runs (``device``).
        write: ``force``, ``progress`` (per output, as input is consumed) and ``command``
            (recorded in the metadata).

    Returns:
        One ``RunReport`` per output.

    Example:
        >>> plan = plan_graft(["a.st", "b.st"])  # doctest: +SKIP
        >>> out = ReduceOptions(), WriteOptions()  # doctest: +SKIP
        >>> reports = graft_to_files(plan, "g.safetensors", *out)  # doctest: +SKIP
    """
    refuse_file_link(output)
    ckpts = plan.checkpoints
    paths = output_paths(plan, output)
    pair_plans = [
        build_plan([ckpts[r], ckpts[d]], non_float="first", dtype=plan.dtype) for r, d in plan.pairs
    ]
    for path in paths:  # several outputs: their folder is made below
        existing = len(paths) == 1 or path.parent.is_dir()
        check_output(path, reads=input_reads(plan.check), force=write.force, existing=existing)
    if len(paths) > 1:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
    reports: list[RunReport] = []
    with transaction():  # N outputs: all or none (a full disk at the last leaves no other)
        _write_all(plan, paths, pair_plans, reports, reduce, write)
    return reports


def _write_all(
    plan: GraftPlan,
    paths: list[Path],
    pair_plans: list[Plan],
    reports: list[RunReport],
    opts: ReduceOptions,
    out: WriteOptions,
) -> None:
    ckpts, names = plan.checkpoints, plan.names
    precision = opts.precision
    for path, pair_plan, (r, d), alphas in zip(
        paths, pair_plans, plan.pairs, plan.alphas, strict=True
    ):
        by_name = {row.name: alphas[row.keys[0]] for row in plan.rows}
        params = {
            **plan.params(), "receiver": names[r], "donor": names[d], "alphas": by_name,
            "precision": precision,
            "dtype": dtype_name(plan.dtype) if plan.dtype else None,
        }  # fmt: skip
        metadata = provenance([ckpts[r], ckpts[d]], "graft", params, out.command)
        recipe = Recipe("graft", params, metadata, bn_hint=GRAFT_BN_HINT)
        report = combine_to_file(pair_plan, pair_weights(alphas), path, recipe, opts, out)
        values = sorted(set(by_name.values()))
        if values:
            report.notes.append(
                f"{names[r]} <- {names[d]}: alpha {values[0]:.4g} to {values[-1]:.4g} over "
                f"{len(by_name)} group(s) (rule {plan.rule})"
            )
        reports.append(report)


def pair_weights(alphas: dict[str, float]) -> Callable[[KeyPlan], list[float]]:
    """The engine's weights for one pair: [alpha, 1 - alpha] over (receiver, donor)."""

    def for_entry(entry: KeyPlan) -> list[float]:
        alpha = alphas[entry.key]
        return [alpha, 1.0 - alpha]

    return for_entry
