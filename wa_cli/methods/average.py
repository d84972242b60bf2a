"""Uniform and weighted checkpoint averaging (SWA, Izmailov et al. 2018; SWAP's phase 3).

For the selected checkpoints θ_1..θ_N and weights w_i ≥ 0, per floating key
θ̄ = Σ w_i θ_i / Σ w_i, accumulated wider than the input and cast once to the output dtype; equal
to PyTorch's running-mean ``AveragedModel`` to floating-point tolerance (SPEC.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from wa_cli.engine.combine import linear_combination
from wa_cli.engine.device import resolve_device
from wa_cli.engine.plan import KeyPlan, KeysMode, NonFloatPolicy, build_plan
from wa_cli.engine.precision import Precision
from wa_cli.engine.provenance import provenance
from wa_cli.engine.rounding import normalized_weights
from wa_cli.engine.run import RunReport, assemble, combine_to_file
from wa_cli.errors import WaError
from wa_cli.io.reader import Checkpoint, open_checkpoints

PathOrCheckpoint = str | os.PathLike[str] | Checkpoint


def validate_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-input weights: ``n`` finite, non-negative numbers, not all zero (default all 1)."""
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise WaError(f"got {len(w)} weights for {n} inputs (give one weight per checkpoint)")
    bad = [x for x in w if not math.isfinite(x) or x < 0]
    if bad:
        raise WaError(f"weights must be finite and non-negative, got {bad[0]:g}")
    if not any(w):
        raise WaError("the weights are all zero (at least one must be positive)")
    return w


def source_weights(weights: list[float]):  # noqa: ANN201 - a WeightsFn
    """The weights of the inputs that hold a key (for ``--keys union``, some inputs lack it)."""

    def for_entry(entry: KeyPlan) -> list[float]:
        w = [weights[i] for i in entry.sources]
        if not any(w):
            raise WaError(
                f"key {entry.key!r} is held only by inputs of weight 0 (drop those inputs or "
                "use --keys intersection)"
            )
        return w

    return for_entry


def open_all(inputs: Sequence[PathOrCheckpoint]) -> list[Checkpoint]:
    """Checkpoints as given, paths opened (headers only)."""
    paths = [Path(c) for c in inputs if not isinstance(c, Checkpoint)]
    opened = iter(open_checkpoints(paths))
    return [c if isinstance(c, Checkpoint) else next(opened) for c in inputs]


def average(
    inputs: Sequence[PathOrCheckpoint],
    *,
    weights: Sequence[float] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Average checkpoints; yields ``(key, tensor)`` pairs one tensor at a time.

    Example:
        >>> swa = dict(average(["ckpt_1.safetensors", "ckpt_2.safetensors"]))  # doctest: +SKIP
    """
    ckpts = open_all(inputs)
    w = validate_weights(weights, len(ckpts))
    plan = build_plan(ckpts, keys=keys, non_float=non_float, dtype=dtype)
    chunks = linear_combination(
        plan, source_weights(w), precision=precision, device=resolve_device(device)
    )
    return assemble(plan, chunks)


def average_to_file(
    inputs: Sequence[PathOrCheckpoint],
    output: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
    force: bool = False,
    max_shard_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> RunReport:
    """Average checkpoints into a safetensors file (or shards), streaming and atomically.

    Example:
        >>> report = average_to_file(paths, "swa.safetensors")  # doctest: +SKIP
    """
    ckpts = open_all(inputs)
    w = validate_weights(weights, len(ckpts))
    plan = build_plan(ckpts, keys=keys, non_float=non_float, dtype=dtype)
    method = "mean" if len(set(w)) == 1 else "weighted_mean"
    params = {
        "weights": w, "keys": keys, "non_float": non_float, "precision": precision,
        "dtype": str(dtype).removeprefix("torch.") if dtype else None,
    }  # fmt: skip
    return combine_to_file(
        plan,
        source_weights(w),
        output,
        method=method,
        metadata=provenance(ckpts, method, params, command),
        params=params,
        input_weights=normalized_weights(w),
        precision=precision,
        device=resolve_device(device),
        force=force,
        max_shard_size=max_shard_size,
        progress=progress,
    )
