"""Several linear combinations of the same inputs in one pass: each input chunk is read once.

A post-hoc EMA asked for several widths (``wa ema --sigma-rel 0.05,0.1 -o DIR``) weighs the same
checkpoints K ways. Running the engine K times reads every input K times; here the reader reads
each chunk of each input once (the union of the inputs any target uses) and every target adds it
into its own accumulator, with exactly the operations, in exactly the order, of the one-target
:class:`~wa_cli.engine.combine.Reducer`, so each output is byte-identical to a run of its own.

CPU only: the GPU reducer's stream and staging logic is not written for K accumulators (and no
GPU was available to test one), so ``device`` cuda is refused for several targets.
Spans of small keys are not coalesced (a speed-up only; the arithmetic is elementwise either way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence

import torch

from wa_cli.engine.combine import (
    DEFAULT_CHUNK_ELEMENTS,
    ChunkTask,
    CombineStats,
    Reducer,
    WeightsFn,
    schedule,
)
from wa_cli.engine.plan import Plan
from wa_cli.engine.precision import Precision, accumulator_dtype
from wa_cli.errors import ExitCode, WaError


def _union(tasks: Sequence[ChunkTask]) -> ChunkTask:
    """The chunk with every input any target reads, in source order (what is read, once)."""
    first = tasks[0]
    sources = sorted({s for t in tasks for s, _ in t.inputs})
    return ChunkTask(first.entry, first.start, first.count, tuple((s, 1.0) for s in sources), 1.0)


class MultiReducer(Reducer):
    """The CPU reducer with one set of work buffers per target."""

    def __init__(self, plan: Plan, union: list[ChunkTask], chunk_elements: int, targets: int):
        super().__init__(plan, union, chunk_elements)
        self.works = [
            {name: self.empty(chunk_elements * 8) for name in ("acc", "tmp", "out")}
            for _ in range(targets)
        ]

    def combine_many(
        self,
        union: ChunkTask,
        tasks: Sequence[ChunkTask],
        acc_dtype: torch.dtype,
        stats: Sequence[CombineStats],
    ) -> list[torch.Tensor]:
        """Each target's chunk: :meth:`Reducer.combine`'s arithmetic, each input read once."""
        weights = [dict(t.inputs) for t in tasks]
        started = [False] * len(tasks)
        for source, _ in union.inputs:
            x = self.next_input(union, source)
            for k, task in enumerate(tasks):
                w = weights[k].get(source)
                if w is None:  # this target gives the input weight 0
                    continue
                self.work = self.works[k]
                acc = self.work_buffer("acc", task.count, acc_dtype)
                self.add_into(acc, x, w, first=not started[k])
                started[k] = True
        outs = []
        for k, task in enumerate(tasks):
            self.work = self.works[k]
            acc = self.work_buffer("acc", task.count, acc_dtype)
            outs.append(self.finish(task, acc, stats[k]))
        return outs


def linear_combinations(
    plan: Plan,
    weights: Sequence[WeightsFn],
    *,
    precision: Precision = "auto",
    device: torch.device | None = None,
    stats: Sequence[CombineStats],
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Generator[list[torch.Tensor], None, None]:
    """Yield, per chunk of every key of ``plan`` in output order, one chunk per ``weights``.

    Like :func:`~wa_cli.engine.reducers.linear_combination`, but K outputs from one read of the
    inputs. The chunks are valid until the next list is requested. Each ``stats[k]`` counts its
    own output; ``bytes_read`` counts the bytes really read (the same in every one).

    Example:
        >>> chunks = linear_combinations(plan, [fn_a, fn_b], stats=[s_a, s_b])  # doctest: +SKIP
    """
    if device is not None and device.type != "cpu":
        raise WaError.naming(
            "several outputs in one pass run on the CPU only: give {device=}'cpu' (or one target)",
            ExitCode.USAGE,
        )
    start = time.perf_counter()
    per_target = [schedule(plan, w, chunk_elements) for w in weights]
    unions = [_union(tasks) for tasks in zip(*per_target)]
    threads = torch.get_num_threads()
    reducer: MultiReducer | None = None
    try:
        reducer = MultiReducer(plan, unions, chunk_elements, len(weights))
        # Leave a core to the prefetch thread (as engine.reducers does, measured there).
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
        combined = sum(1 for k in plan.keys if k.interpolate)
        for s in stats:
            s.combined, s.copied = combined, len(plan.keys) - combined
        for i, union in enumerate(unions):
            entry = union.entry
            tasks = [t[i] for t in per_target]
            if entry.interpolate:
                acc_dtype = accumulator_dtype(entry.dtype, precision, entry.out_dtype)
                outs = reducer.combine_many(union, tasks, acc_dtype, stats)
            else:
                outs = [reducer.copy_input(union, entry.copy_from)] * len(tasks)
            for s, out in zip(stats, outs):
                s.bytes_read += union.read_bytes
                s.bytes_written += out.numel() * out.element_size()
            yield outs
    finally:
        if reducer is not None:
            reducer.close()
        torch.set_num_threads(threads)
        for s in stats:
            s.seconds = time.perf_counter() - start
