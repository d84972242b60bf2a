"""Uniform and weighted checkpoint averaging (SWA, Izmailov et al. 2018; SWAP's phase 3).

For the selected checkpoints θ_1..θ_N and weights w_i ≥ 0, per floating key
θ̄ = Σ w_i θ_i / Σ w_i, accumulated wider than the input and cast once to the output dtype; equal
to PyTorch's running-mean ``AveragedModel`` to floating-point tolerance (SPEC.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from typing_extensions import Unpack

from wa_cli.engine.combine import WeightsFn
from wa_cli.engine.options import WriteOptions
from wa_cli.engine.plan import KeyPlan, build_plan
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.rounding import normalized_weights
from wa_cli.engine.run import RunReport, assemble
from wa_cli.errors import WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.methods.inputs import Inputs, PathOrCheckpoint
from wa_cli.methods.request import ReadArgs, ReduceArgs, Request, SelectArgs, WriteArgs
from wa_cli.methods.selection import (
    DryRun,
    Selected,
    close_opened,
    select_checkpoints,
    training_order_for_copies,
)
from wa_cli.methods.trajectory import (
    Weigh,
    Weighing,
    Write,
    check_run,
    reduce_to_file,
    run_trajectory,
)

__all__ = ["PathOrCheckpoint", "average", "average_to_file", "source_weights", "validate_weights"]


def validate_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-input weights: ``n`` finite, non-negative numbers, not all zero (default all 1)."""
    if weights is None:
        return [1.0] * n
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise WaError.naming(
            "{weights=}{got!r} must be a sequence of numbers, one per input", got=weights
        )
    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in weights):
        raise WaError.naming("{weights=}{got!r} must hold numbers only", got=list(weights))
    w = [float(x) for x in weights]
    if len(w) != n:
        raise WaError.naming(
            "{weights} has {n_w} values for {n} inputs (give one per checkpoint)", n_w=len(w), n=n
        )
    negative = [x for x in w if not math.isfinite(x) or x < 0]
    if negative:
        raise WaError.naming(
            "{weights} must be finite and non-negative, got {negative:g}", negative=negative[0]
        )
    if not any(w):
        raise WaError.naming("{weights} are all zero (at least one must be positive)")
    return w


def source_weights(weights: list[float]) -> WeightsFn:
    """The weights of the inputs that hold a key (for ``--keys union``, some inputs lack it)."""

    def for_entry(entry: KeyPlan) -> list[float]:
        w = [weights[i] for i in entry.sources]
        if not any(w):
            raise WaError.naming(
                "key {key!r} is held only by inputs of weight 0 (drop those inputs or use "
                "{keys=}'intersection')",
                key=entry.key,
            )
        return w

    return for_entry


class AverageArgs(ReadArgs, SelectArgs, ReduceArgs, total=False):
    """The keyword arguments of :func:`average`."""

    weights: Sequence[float] | None
    dry_run: bool


class AverageToFileArgs(AverageArgs, WriteArgs, total=False):
    """The keyword arguments of :func:`average_to_file`."""


def _weigh(weights: Sequence[float] | None, non_float: str) -> Weigh:
    """The mean's weights for the selected inputs, the inputs in training order for copies."""

    def weigh(selected: Selected) -> Weighing:
        raw = validate_weights(weights, len(selected.entries))
        method = "mean" if len(set(raw)) == 1 else "weighted_mean"
        given = None if weights is None else raw
        items, ordered, note = training_order_for_copies(selected, given, non_float)
        return Weighing(items, normalized_weights(raw), method, note, given_weights=ordered)

    return weigh


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def average(
    inputs: Inputs, **options: Unpack[AverageArgs]
) -> Iterator[tuple[str, torch.Tensor]] | DryRun:
    """Average checkpoints; yields ``(key, tensor)`` pairs one tensor at a time.

    Args:
        inputs: a path, a glob (``"runs/a/*.safetensors"``), a folder, an opened checkpoint, or
            a sequence of them, expanded as the ``wa`` command expands its arguments.
        **options: ``weights``: one non-negative weight per selected checkpoint (normalised;
            default: uniform). ``keys``: ``"strict"``, ``"intersection"`` or ``"union"``.
            ``non_float``: copy non-float tensors from the ``"last"`` (in training order when
            known) or ``"first"`` input, or ``"error"``. ``dtype``: output dtype of floating
            tensors (``torch.bfloat16`` or ``"bfloat16"``; default: each tensor's own).
            ``precision``: accumulator, ``"auto"`` (wider than the input), ``"float32"``,
            ``"float64"``. ``device``: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            Reading (``key``, ``strip_prefixes``, ``include``, ``exclude``, ``allow_globals``)
            and selection (``order``, ``last``, ``every``, ``from_step``, ``to_step``,
            ``top_k``, ``metric``, ``mode``, ``metrics``, ``drop_duplicates``) as ``wa average``
            (docs/python.md); or the option objects ``read=``, ``selection=``, ``reduce=``.
            ``dry_run=True`` returns the :class:`~wa_cli.methods.selection.DryRun` plan.

    Example:
        >>> swa = dict(average("runs/a/ckpt_*.safetensors"))  # doctest: +SKIP
        >>> last5 = dict(average("runs/a/ckpt_*.safetensors", last=5))  # doctest: +SKIP
    """
    request = Request.of("average", options, own=("weights",))
    if request.write.copy_config or request.write.copy_files:
        raise TypeError("average() writes nothing: copy_config belongs to average_to_file()")
    r = request.reduce
    selected = select_checkpoints(inputs, request.read, request.selection, dry_run=request.dry_run)
    weighed = _weigh(options.get("weights"), r.non_float)(selected)
    if request.dry_run:
        plan = selected.plan(weighed.weights, weighed.method)
        plan.notes = check_run(weighed.items, None, request)
        close_opened(weighed.items, inputs, keep=())
        return plan
    w = validate_weights(weighed.given_weights, len(weighed.items))
    plan_ = build_plan(weighed.items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
    chunks = linear_combination(plan_, source_weights(w), precision=r.precision, device=r.device)
    return assemble(plan_, chunks)


def _write(request: Request) -> Write:
    def write(weighed: Weighing, output: Path, out: WriteOptions) -> RunReport:
        r = request.reduce
        items = weighed.items
        w = validate_weights(weighed.given_weights, len(items))
        plan = build_plan(items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
        method = "mean" if len(set(w)) == 1 else "weighted_mean"
        params = {"weights": w, **r.params()}
        from wa_cli.methods.graft.relatedness import unrelated_mean_warnings

        unrelated = unrelated_mean_warnings(plan, w)  # independent seeds average to a broken model
        report = reduce_to_file(
            plan, source_weights(w), output,
            method=method, params=params, input_weights=normalized_weights(w), opts=r, out=out,
        )  # fmt: skip
        report.warnings.extend(unrelated)
        return report

    return write


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def average_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str] | None = None,
    **options: Unpack[AverageToFileArgs],
) -> RunReport | DryRun:
    """Average checkpoints into a safetensors file (or shards), streaming and atomically.

    Arguments as for :func:`average`, plus ``output`` (a ``.safetensors`` file, or a folder with
    ``max_shard_size``; only a dry run may leave it out), ``force`` (replace an existing
    output), ``max_shard_size`` (bytes or ``"5GB"``), ``shard_name``, ``copy_config`` (copy the
    newest input's ``config.json`` and tokenizer files beside the shards),
    ``progress(bytes_done_now, bytes_total)``, ``command`` (recorded in the metadata) and
    ``output_format`` (``"dcp"``: ``output`` is written as a ``torch.distributed.checkpoint``
    folder that ``dcp.load`` reads; single-process only); or the option object ``write=``.
    Returns the :class:`RunReport`, or with ``dry_run=True`` the
    :class:`~wa_cli.methods.selection.DryRun` plan (nothing written).

    Example:
        >>> report = average_to_file("runs/a/*.safetensors", "swa.safetensors")  # doctest: +SKIP
    """
    request = Request.of("average_to_file", options, own=("weights",))
    weigh = _weigh(options.get("weights"), request.reduce.non_float)
    return run_trajectory(inputs, output, request, weigh, _write(request))
