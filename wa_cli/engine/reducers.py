"""Running a linear combination: the reducer for the device, driven over the chunk schedule.

``engine.combine`` schedules chunks and reduces them on the CPU; ``engine.cuda`` builds a GPU
reducer on top of it. This module picks one by device (``make_reducer``) and runs it, so the import
graph points one way: reducers -> cuda -> combine, and combine knows of no device but the CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import torch

from wa_cli.engine.combine import (
    DEFAULT_CHUNK_ELEMENTS,
    GPU_CHUNK_ELEMENTS,
    ChunkTask,
    CombineStats,
    ProgressFn,
    Reducer,
    WeightsFn,
    coalesce,
    schedule,
)
from wa_cli.engine.cuda import CudaReducer
from wa_cli.engine.plan import Plan
from wa_cli.engine.precision import Precision, accumulator_dtype


def make_reducer(
    plan: Plan, tasks: list[ChunkTask], chunk_elements: int, device: torch.device
) -> Reducer:
    """The reducer for ``device``: the CUDA one (pinned prefetch, streams) or the CPU one."""
    if device.type == "cuda":
        return CudaReducer(plan, tasks, chunk_elements, device)
    return Reducer(plan, tasks, chunk_elements)


def linear_combination(
    plan: Plan,
    weights: WeightsFn,
    *,
    precision: Precision = "auto",
    device: torch.device | None = None,
    chunk_elements: int | None = None,
    progress: ProgressFn | None = None,
    stats: CombineStats | None = None,
    whole_spans: bool = False,
) -> Generator[tuple[str, torch.Tensor], None, None]:
    """Yield ``(key, chunk)`` for every key of ``plan``: ``Σ w_i θ_i / Σ w_i`` over its sources.

    ``weights(entry)`` gives one non-negative weight per source of ``entry`` (aligned with
    ``entry.sources``); a zero weight skips reading that input. Non-float keys are copied from
    ``entry.copy_from``. Chunks are flat CPU tensors of the output dtype, valid only until the
    next one is requested (the buffers are reused): pass them to a writer, or copy them.
    With ``whole_spans`` a span of small keys stored back to back comes as one chunk named by
    its first key, running on into the keys after it (for :func:`write_safetensors`, which
    writes it at once; 20,000 keys of 8 KB cost 0.25 s as separate chunks).

    Example:
        >>> chunks = linear_combination(plan, lambda e: [1.0] * len(e.sources))  # doctest: +SKIP
        >>> write_safetensors("a.safetensors", plan.output_tensors(), chunks, {})  # doctest: +SKIP
    """
    stats = stats if stats is not None else CombineStats()
    device = device or torch.device("cpu")
    start = time.perf_counter()
    if chunk_elements is None:
        # Launches and syncs per chunk cost more on a GPU: larger chunks there.
        chunk_elements = GPU_CHUNK_ELEMENTS if device.type == "cuda" else DEFAULT_CHUNK_ELEMENTS
    tasks = coalesce(schedule(plan, weights, chunk_elements), plan, chunk_elements)
    threads = torch.get_num_threads()
    reducer: Reducer | None = None
    try:
        reducer = make_reducer(plan, tasks, chunk_elements, device)
        if device.type != "cuda":
            # Leave a core to the prefetch thread: OpenMP workers spin while they wait, and on
            # two cores a second one contending with the reader made runs ~7x slower (measured).
            torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
        stats.combined = sum(1 for k in plan.keys if k.interpolate)
        stats.copied = len(plan.keys) - stats.combined
        for task in tasks:
            entry = task.entry
            if entry.interpolate:
                acc_dtype = accumulator_dtype(entry.dtype, precision, entry.out_dtype)
                out = reducer.combine(task, acc_dtype, stats)
            else:
                out = reducer.copy_input(task, entry.copy_from)
            read = task.read_bytes
            stats.bytes_read += read
            stats.bytes_written += out.numel() * out.element_size()
            if progress:
                progress(read)
            if whole_spans:
                yield entry.key, out
            else:
                yield from task.pieces(out)
    finally:
        if reducer is not None:
            reducer.close()
        torch.set_num_threads(threads)
        stats.seconds = time.perf_counter() - start
