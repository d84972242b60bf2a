"""Uniform and weighted checkpoint averaging (SWA, Izmailov et al. 2018; SWAP's phase 3).

For the selected checkpoints θ_1..θ_N and weights w_i ≥ 0, per floating key
θ̄ = Σ w_i θ_i / Σ w_i, accumulated wider than the input and cast once to the output dtype; equal
to PyTorch's running-mean ``AveragedModel`` to floating-point tolerance (SPEC.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch

from wa_cli.engine.combine import WeightsFn
from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.engine.plan import KeyPlan, KeysMode, NonFloatPolicy, build_plan
from wa_cli.engine.precision import Precision
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.rounding import normalized_weights
from wa_cli.engine.run import RunReport, assemble, reduce_to_file
from wa_cli.errors import WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.methods.inputs import Inputs, PathOrCheckpoint, open_inputs
from wa_cli.params import bad

__all__ = ["PathOrCheckpoint", "average", "average_to_file", "source_weights", "validate_weights"]


def validate_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-input weights: ``n`` finite, non-negative numbers, not all zero (default all 1)."""
    if weights is None:
        return [1.0] * n
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise bad("weights", f"weights={weights!r} must be a sequence of numbers, one per input")
    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in weights):
        raise bad("weights", f"weights={list(weights)!r} must hold numbers only")
    w = [float(x) for x in weights]
    if len(w) != n:
        raise bad(
            "weights", f"weights has {len(w)} values for {n} inputs (give one per checkpoint)"
        )
    negative = [x for x in w if not math.isfinite(x) or x < 0]
    if negative:
        raise bad("weights", f"weights must be finite and non-negative, got {negative[0]:g}")
    if not any(w):
        raise bad("weights", "weights are all zero (at least one must be positive)")
    return w


def source_weights(weights: list[float]) -> WeightsFn:
    """The weights of the inputs that hold a key (for ``--keys union``, some inputs lack it)."""

    def for_entry(entry: KeyPlan) -> list[float]:
        w = [weights[i] for i in entry.sources]
        if not any(w):
            raise WaError(
                f"key {entry.key!r} is held only by inputs of weight 0 (drop those inputs or "
                "use keys='intersection')",
                params=("keys",),
            )
        return w

    return for_entry


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def average(
    inputs: Inputs,
    *,
    weights: Sequence[float] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Average checkpoints; yields ``(key, tensor)`` pairs one tensor at a time.

    Args:
        inputs: a path, a glob (``"runs/a/*.safetensors"``), a folder, an opened checkpoint, or
            a sequence of them, expanded as the ``wa`` command expands its arguments.
        weights: one non-negative weight per checkpoint (normalised; default: uniform).
        keys: ``"strict"``, ``"intersection"`` or ``"union"``.
        non_float: copy non-float tensors from the ``"last"`` or ``"first"`` input, or ``"error"``.
        dtype: output dtype of floating tensors (``torch.bfloat16`` or ``"bfloat16"``; default:
            each tensor's own).
        precision: accumulator: ``"auto"`` (wider than the input), ``"float32"``, ``"float64"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Example:
        >>> swa = dict(average("runs/a/ckpt_*.safetensors"))  # doctest: +SKIP
    """
    opts = ReduceOptions.checked(
        keys=keys, non_float=non_float, dtype=dtype, precision=precision, device=device
    )
    ckpts = open_inputs(inputs)
    w = validate_weights(weights, len(ckpts))
    plan = build_plan(ckpts, keys=opts.keys, non_float=opts.non_float, dtype=opts.dtype)
    chunks = linear_combination(
        plan, source_weights(w), precision=opts.precision, device=opts.device
    )
    return assemble(plan, chunks)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def average_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
    force: bool = False,
    max_shard_size: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
    shard_name: str | None = None,
    copy_files: Sequence[str | os.PathLike[str]] = (),
    output_format: str = "safetensors",
) -> RunReport:
    """Average checkpoints into a safetensors file (or shards), streaming and atomically.

    Arguments as for :func:`average`, plus ``output`` (a ``.safetensors`` file, or a folder with
    ``max_shard_size``), ``force`` (replace an existing output), ``max_shard_size`` (bytes or
    ``"5GB"``), ``progress(bytes_done_now, bytes_total)``, ``command`` (recorded in the
    metadata) and ``output_format`` (``"dcp"``: ``output`` is written as a
    ``torch.distributed.checkpoint`` folder that ``dcp.load`` reads; single-process only).

    Example:
        >>> report = average_to_file("runs/a/*.safetensors", "swa.safetensors")  # doctest: +SKIP
    """
    opts = ReduceOptions.checked(
        keys=keys, non_float=non_float, dtype=dtype, precision=precision, device=device
    )
    out = WriteOptions.checked(
        force=force, max_shard_size=max_shard_size, progress=progress, command=command,
        shard_name=shard_name, copy_files=copy_files, output_format=output_format,
    )  # fmt: skip
    ckpts = open_inputs(inputs)
    w = validate_weights(weights, len(ckpts))
    plan = build_plan(ckpts, keys=opts.keys, non_float=opts.non_float, dtype=opts.dtype)
    method = "mean" if len(set(w)) == 1 else "weighted_mean"
    params = {"weights": w, **opts.params()}
    from wa_cli.methods.graft.relatedness import unrelated_mean_warnings

    unrelated = unrelated_mean_warnings(plan, w)  # independent seeds average to a broken model
    report = reduce_to_file(
        plan, source_weights(w), output,
        method=method, params=params, input_weights=normalized_weights(w), opts=opts, out=out,
    )  # fmt: skip
    report.warnings.extend(unrelated)
    return report
