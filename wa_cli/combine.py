"""The engine every reducing command shares: a per-key linear combination, streamed in chunks.

A uniform or weighted mean, an EMA over a trajectory (whose result is Σ c_i θ_i with effective
weights c_i) and a graft (α u + (1 − α) v) are all linear combinations of the inputs' tensors for
one key. This module computes ``Σ w_i θ_i / Σ w_i`` chunk by chunk, so the memory a run needs is a
few chunk-sized buffers, whatever the number of checkpoints or the size of a tensor.

Precision (DESIGN.md): sums are kept in a wider type than the input (float32 for 16-bit inputs,
float64 for float32) and cast once to the output dtype. Summing the raw weights and dividing once by
their total keeps k identical inputs bit-identical to themselves (k·x and k·x/k are exact).
On CPU the time goes to page faults of fresh allocations and dtype conversion, not the additions
(PEERS.md), so buffers are allocated once per run and reused for every key and chunk, and chunks are
sized to stay in cache across the N inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from wa_cli.dtypes import Precision, accumulator_dtype
from wa_cli.plan import KeyPlan, Plan

# Elements per chunk: 1M float32 (4 MB) keeps the accumulator and a staging chunk in L2/L3 while
# the N inputs are added into it.
DEFAULT_CHUNK_ELEMENTS = 1 << 20

WeightsFn = Callable[[KeyPlan], Sequence[float]]
ProgressFn = Callable[[int], None]


@dataclass
class CombineStats:
    """What a run did, for the report."""

    bytes_read: int = 0
    bytes_written: int = 0
    combined: int = 0
    copied: int = 0
    non_finite: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def planned_read_bytes(plan: Plan, weights: WeightsFn) -> int:
    """How many input bytes a combination will read (for progress bars)."""
    total = 0
    for entry in plan.keys:
        nbytes = entry.numel * entry.dtype.itemsize
        if entry.interpolate:
            total += nbytes * sum(1 for w in weights(entry) if w != 0)
        else:
            total += nbytes
    return total


def linear_combination(
    plan: Plan,
    weights: WeightsFn,
    *,
    precision: Precision = "auto",
    device: torch.device | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressFn | None = None,
    stats: CombineStats | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, chunk)`` for every key of ``plan``: ``Σ w_i θ_i / Σ w_i`` over its sources.

    ``weights(entry)`` gives one non-negative weight per source of ``entry`` (aligned with
    ``entry.sources``); a zero weight skips reading that input. Non-float keys are copied from
    ``entry.copy_from``. Chunks are flat CPU tensors of the output dtype, valid only until the
    next one is requested (the buffers are reused): pass them to a writer, or copy them.

    Example:
        >>> chunks = linear_combination(plan, lambda e: [1.0] * len(e.sources))  # doctest: +SKIP
        >>> write_safetensors("a.safetensors", plan.output_tensors(), chunks, {})  # doctest: +SKIP
    """
    stats = stats if stats is not None else CombineStats()
    device = device or torch.device("cpu")
    start = time.perf_counter()
    if device.type == "cuda":
        from wa_cli.combine_cuda import CudaReducer

        reducer: _Reducer = CudaReducer(device, chunk_elements)
    else:
        reducer = _Reducer(chunk_elements)
    for entry in plan.keys:
        if entry.numel == 0:
            continue
        if entry.interpolate:
            w = [float(x) for x in weights(entry)]
            if len(w) != len(entry.sources):
                raise ValueError(f"{len(w)} weights for {len(entry.sources)} sources")
            yield from reducer.combine(
                plan, entry, w, accumulator_dtype(entry.dtype, precision), stats, progress
            )
            stats.combined += 1
        else:
            yield from reducer.copy(plan, entry, stats, progress)
            stats.copied += 1
    stats.seconds = time.perf_counter() - start


class _Reducer:
    """CPU reduction with buffers allocated once and reused for every key and chunk."""

    def __init__(self, chunk_elements: int):
        self.chunk = chunk_elements
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, nbytes: int) -> torch.Tensor:
        """A reusable uint8 buffer of at least ``nbytes`` (grown, never shrunk)."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
            self._buffers[name] = buf
        return buf[:nbytes]

    def work_buffer(self, name: str, nbytes: int) -> torch.Tensor:
        """A buffer on the compute device (the CPU here)."""
        return self.buffer(name, nbytes)

    def release(self, x: torch.Tensor) -> None:
        """Called once the reduction has consumed ``x`` (the GPU path reuses its staging slot)."""

    def read(self, plan: Plan, source: int, entry: KeyPlan, start: int, count: int) -> torch.Tensor:
        """A chunk of one input on the compute device."""
        size = entry.dtype.itemsize
        staging = self.buffer("staging", count * size)
        plan.checkpoints[source].read_into(entry.key, staging, start * size)
        return staging.view(entry.dtype)

    def combine(
        self,
        plan: Plan,
        entry: KeyPlan,
        weights: list[float],
        acc_dtype: torch.dtype,
        stats: CombineStats,
        progress: ProgressFn | None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"weights for {entry.key!r} sum to {total}")
        active = [(s, w) for s, w in zip(entry.sources, weights) if w != 0]
        for start in range(0, entry.numel, self.chunk):
            count = min(self.chunk, entry.numel - start)
            acc = self.work_buffer("acc", count * acc_dtype.itemsize).view(acc_dtype)
            for n, (source, w) in enumerate(active):
                x = self.read(plan, source, entry, start, count)
                if n == 0:
                    acc.copy_(x)
                    if w != 1.0:
                        acc.mul_(w)
                else:
                    acc.add_(x, alpha=w)
                self.release(x)
                stats.bytes_read += x.numel() * x.element_size()
                if progress:
                    progress(x.numel() * x.element_size())
            if total != 1.0:
                acc.div_(total)
            out = self.finish(entry, acc, stats)
            yield entry.key, out

    def finish(self, entry: KeyPlan, acc: torch.Tensor, stats: CombineStats) -> torch.Tensor:
        """Cast the accumulator chunk to the output dtype, once, and count non-finite values."""
        if entry.out_dtype == acc.dtype:
            out = acc
        else:
            out = self.work_buffer("out", acc.numel() * entry.out_dtype.itemsize)
            out = out.view(entry.out_dtype)
            out.copy_(acc)
        if not bool(torch.isfinite(out.sum(dtype=acc.dtype))):
            bad = int(out.numel() - torch.isfinite(out).sum())
            if bad:
                stats.non_finite[entry.key] = stats.non_finite.get(entry.key, 0) + bad
        stats.bytes_written += out.numel() * out.element_size()
        return out

    def copy(
        self, plan: Plan, entry: KeyPlan, stats: CombineStats, progress: ProgressFn | None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for start in range(0, entry.numel, self.chunk):
            count = min(self.chunk, entry.numel - start)
            x = self.read(plan, entry.copy_from, entry, start, count)
            nbytes = x.numel() * x.element_size()
            stats.bytes_read += nbytes
            stats.bytes_written += nbytes
            if progress:
                progress(nbytes)
            yield entry.key, x
