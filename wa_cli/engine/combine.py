"""The engine every reducing command shares: a per-key linear combination, streamed in chunks.

A uniform or weighted mean, an EMA over a trajectory (whose result is Σ c_i θ_i with effective
weights c_i) and a graft (α u + (1 − α) v) are all linear combinations of the inputs' tensors for
one key. This module computes ``Σ w_i θ_i / Σ w_i`` chunk by chunk, so the memory a run needs is a
few chunk-sized buffers, whatever the number of checkpoints or the size of a tensor.

Precision (DESIGN.md): sums are kept in a wider type than the input (float32 for 16-bit inputs,
float64 for float32) and rounded once to the output dtype. Summing the raw weights and dividing once
by their total keeps k identical inputs bit-identical to themselves (k·x and k·x/k are exact).

Speed: on CPU the time goes to page faults of fresh allocations and to dtype conversion, not to the
additions (PEERS.md). So every buffer is allocated once per run and reused; a chunk is converted
into a reused accumulator-typed buffer before it is added (a mixed-dtype ``add_`` is about twice as
slow); chunks are small enough for the accumulator to stay in cache across the N inputs; and a
background thread reads the next chunks from disk while the current one is summed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wa_cli.engine.plan import KeyPlan, Plan
from wa_cli.engine.rounding import (
    SIXTEEN_BIT,
    input_shift,
    is_power_of_two,
    round_into,
    scale_weights,
)
from wa_cli.io.checkpoint import Checkpoint

# Elements per chunk: 256K keeps a float32 accumulator, its conversion buffer and the staging
# bytes (about 2.5 MB together) in cache while the N inputs are added into it.
DEFAULT_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 22
# Reads in flight ahead of the reduction (each holds one staging buffer).
PREFETCH_DEPTH = 4

WeightsFn = Callable[[KeyPlan], Sequence[float]]
Inputs = tuple[tuple[int, float], ...]  # (input index, weight), zero weights left out
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


@dataclass(frozen=True)
class ChunkTask:
    """One output chunk: elements [start, start + count) of ``entry``, from weighted inputs."""

    entry: KeyPlan
    start: int
    count: int
    inputs: tuple[tuple[int, float], ...]  # (input index, weight); zero weights left out
    total: float  # Σ w over the key's sources: the divisor
    # A coalesced span: these whole keys (``entry`` first), stored back to back in every input.
    members: tuple[KeyPlan, ...] = ()

    def byte_offset(self, source: int) -> int:
        return self.start * self.entry.dtype_of(source).itemsize

    def read(self, ckpt: Checkpoint, source: int, buf: torch.Tensor) -> None:
        """Fill ``buf`` with this chunk's bytes of input ``source``: one positional read."""
        if self.members:
            ckpt.read_span(self.entry.key, buf)
        else:
            ckpt.read_into(self.entry.key, buf, self.byte_offset(source))

    def pieces(self, out: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """The output chunk cut per key (a span holds several)."""
        if not self.members:
            yield self.entry.key, out
            return
        offset = 0
        for m in self.members:
            yield m.key, out[offset : offset + m.numel]
            offset += m.numel

    def nbytes(self, source: int) -> int:
        return self.count * self.entry.dtype_of(source).itemsize

    @property
    def read_bytes(self) -> int:
        return sum(self.nbytes(source) for source, _ in self.inputs)


def schedule(plan: Plan, weights: WeightsFn, chunk_elements: int) -> list[ChunkTask]:
    """Every chunk of every key, in output order; the reads follow this order exactly."""
    tasks = []
    seen: dict[tuple[tuple[int, ...], tuple[float, ...]], tuple[Inputs, float]] = {}
    for entry in plan.keys:
        if entry.interpolate:
            given = (entry.sources, tuple(weights(entry)))
            # Keys share weights (often all of them): work each distinct set out once.
            found = seen.get(given)
            if found is None:
                raw = tuple(float(x) for x in given[1])
                if len(raw) != len(entry.sources):
                    raise ValueError(f"{len(raw)} weights for {len(entry.sources)} sources")
                # Extreme weights (1e308, 5e-324) are rescaled by a power of two: same ratios.
                w = scale_weights(raw)
                total = math.fsum(w)
                if not total > 0:
                    raise ValueError(f"weights for {entry.key!r} sum to {total}")
                inputs = tuple((s, x) for s, x in zip(entry.sources, w) if x != 0)
                found = seen[given] = (inputs, total)
            inputs, total = found
        else:
            inputs, total = ((entry.copy_from, 1.0),), 1.0
        numel = entry.numel
        if 0 < numel <= chunk_elements:  # most keys: one chunk
            tasks.append(ChunkTask(entry, 0, numel, inputs, total))
            continue
        for start in range(0, numel, chunk_elements):
            tasks.append(ChunkTask(entry, start, min(chunk_elements, numel - start), inputs, total))
    return tasks


def coalesce(tasks: list[ChunkTask], plan: Plan, limit: int) -> list[ChunkTask]:
    """Merge runs of whole small keys stored back to back in every input into span tasks.

    Keys join a span when they share the weights, the dtypes of every input and the output
    dtype, and each input stores them contiguously in one file (the usual case: every checkpoint
    of a run has one layout). A span is read with one positional read per input, reduced as one
    flat tensor and written key by key from that buffer; elementwise arithmetic makes the output
    byte-identical to the per-key path. Anything else (other offsets, pickles, non-float keys,
    chunks of large keys) stays as it was.
    """
    out: list[ChunkTask] = []
    run: list[ChunkTask] = []
    size = 0
    arithmetic: tuple[object, ...] | None = None  # what the last task of the run computes
    ends: list[tuple[Path, int]] | None = None  # where its bytes end, per input

    def flush() -> None:
        if len(run) > 1:
            first = run[0]
            members = tuple(t.entry for t in run)
            out.append(ChunkTask(first.entry, 0, size, first.inputs, first.total, members))
        else:
            out.extend(run)
        run.clear()

    locate = [c.location for c in plan.checkpoints]
    for task in tasks:
        entry = task.entry
        whole = entry.interpolate and task.start == 0 and task.count == entry.numel
        # (file, offset) of the key in each input read; a pickle's storages have none. Inputs
        # of one layout are contiguous where the first is: it alone is looked at.
        read = task.inputs[:1] if plan.same_layout else task.inputs
        found = [locate[s](entry.key) for s, _ in read] if whole else [None]
        starts = [w for w in found if w is not None]
        if task.count >= limit or len(starts) < len(found):  # a large key, a copy, a pickle
            flush()
            out.append(task)
            arithmetic = ends = None
            continue
        same = (task.inputs, task.total, entry.dtype, entry.out_dtype, entry.source_dtypes)
        if run and same == arithmetic and starts == ends and size + task.count <= limit:
            run.append(task)
            size += task.count
        else:
            flush()
            run.append(task)
            size = task.count
        arithmetic = same
        if entry.source_dtypes:
            ends = [(f, at + task.nbytes(s)) for (f, at), (s, _) in zip(starts, read)]
        else:
            nbytes = task.count * entry.dtype.itemsize
            ends = [(f, at + nbytes) for f, at in starts]
    flush()
    return out


def planned_read_bytes(plan: Plan, weights: WeightsFn) -> int:
    """How many input bytes a combination will read (for progress bars)."""
    tasks = schedule(plan, weights, chunk_elements=1 << 62)
    return sum(t.read_bytes for t in tasks)


def widest_input(tasks: list[ChunkTask]) -> int:
    """The largest element size any input chunk has (staging buffers are sized for it)."""
    return max((t.entry.dtype_of(s).itemsize for t in tasks for s, _ in t.inputs), default=1)


class Prefetcher:
    """Reads the chunks a schedule needs, in order, on a background thread.

    ``depth`` buffers form a ring: up to ``depth - 1`` reads run ahead while the caller uses the
    buffer it was last given, which stays valid until it asks for the next one.
    """

    def __init__(
        self,
        plan: Plan,
        tasks: list[ChunkTask],
        buffer_bytes: int,
        depth: int = PREFETCH_DEPTH,
        pin_memory: bool = False,
    ):
        self.checkpoints = plan.checkpoints
        self.reads = ((t, i) for t in tasks for i, _ in t.inputs)
        self.ring = [
            torch.empty(max(buffer_bytes, 1), dtype=torch.uint8, pin_memory=pin_memory)
            for _ in range(depth)
        ]
        self.slot = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wa-read")
        self.pending: deque[tuple[ChunkTask, int, Future[None], torch.Tensor]] = deque()
        for _ in range(depth - 1):
            self._submit()

    def _submit(self) -> None:
        item = next(self.reads, None)
        if item is None:
            return
        task, source = item
        buf = self.ring[self.slot][: task.nbytes(source)]
        self.slot = (self.slot + 1) % len(self.ring)
        future = self.pool.submit(task.read, self.checkpoints[source], source, buf)
        self.pending.append((task, source, future, buf))

    def next(self, task: ChunkTask, source: int) -> torch.Tensor:
        """The bytes of ``source``'s chunk of ``task`` (must be the next read in the schedule)."""
        expected, expected_source, future, buf = self.pending.popleft()
        if expected is not task or expected_source != source:
            raise RuntimeError("reads requested out of schedule order")
        future.result()
        self._submit()
        return buf

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Reducer:
    """CPU reduction with buffers allocated once per run and reused for every key and chunk."""

    def __init__(
        self,
        plan: Plan,
        tasks: list[ChunkTask],
        chunk_elements: int,
        *,
        device: torch.device | None = None,
        pin_memory: bool = False,
    ):
        # Everything device-specific comes in as arguments: __init__ calls no method a device
        # reducer overrides, so one built on top (engine.cuda) sets up after this returns.
        self.device = device or torch.device("cpu")
        widest = widest_input(tasks)
        self.prefetcher = Prefetcher(plan, tasks, chunk_elements * widest, pin_memory=pin_memory)
        # Accumulator, conversion and output buffers, sized for float64 (the widest accumulator).
        self.work = {name: self.empty(chunk_elements * 8) for name in ("acc", "tmp", "out")}

    def empty(self, nbytes: int) -> torch.Tensor:
        """A byte buffer on the compute device."""
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def work_buffer(self, name: str, count: int, dtype: torch.dtype) -> torch.Tensor:
        return self.work[name][: count * dtype.itemsize].view(dtype)

    def next_input(self, task: ChunkTask, source: int) -> torch.Tensor:
        """A chunk of one input, typed, on the compute device."""
        return self.prefetcher.next(task, source).view(task.entry.dtype_of(source))

    def copy_input(self, task: ChunkTask, source: int) -> torch.Tensor:
        """A chunk of a non-float tensor, copied as is (on the host: it needs no arithmetic)."""
        return self.prefetcher.next(task, source).view(task.entry.dtype_of(source))

    def done_with(self, x: torch.Tensor) -> None:
        """Called once the reduction has consumed ``x`` (the GPU path reuses its staging)."""

    def combine(self, task: ChunkTask, acc_dtype: torch.dtype, stats: CombineStats) -> torch.Tensor:
        acc = self.work_buffer("acc", task.count, acc_dtype)
        for n, (source, w) in enumerate(task.inputs):
            x = self.next_input(task, source)
            self.add_into(acc, x, w, first=n == 0)
            self.done_with(x)
        return self.finish(task, acc, stats)

    def add_into(self, acc: torch.Tensor, x: torch.Tensor, w: float, *, first: bool) -> None:
        """``acc = w·x`` (the first input) or ``acc += w·x``; ``x`` is widened to the
        accumulator's dtype through a work buffer when it is narrower."""
        if first:
            acc.copy_(x)
            if w != 1.0:
                acc.mul_(w)
        elif x.dtype == acc.dtype:
            acc.add_(x, alpha=w)
        else:
            tmp = self.work_buffer("tmp", acc.numel(), acc.dtype)
            tmp.copy_(x)
            acc.add_(tmp, alpha=w)

    def finish(self, task: ChunkTask, acc: torch.Tensor, stats: CombineStats) -> torch.Tensor:
        """Divide by the total weight, round once to the output dtype, count non-finite values."""
        out_dtype = task.entry.out_dtype
        # A finite sum of the accumulator means no NaN or inf in it (the common case, one
        # reduction); otherwise elements that overflowed are recomputed exactly below.
        acc_finite = bool(torch.isfinite(acc.sum()))
        overflowed = None if acc_finite else ~torch.isfinite(acc)
        out = self.divide_and_round(task, acc)
        if overflowed is not None and bool(overflowed.any()):
            self.recompute_overflowed(task, out, overflowed)
        # Only a narrower output dtype (--dtype float16) can still overflow when rounding.
        narrower = torch.finfo(out_dtype).max < torch.finfo(task.entry.dtype).max
        if narrower or not acc_finite:
            bad = int(out.numel() - int(torch.isfinite(out).sum()))
            if bad:
                for key, piece in task.pieces(out):
                    n = int(piece.numel() - int(torch.isfinite(piece).sum()))
                    if n:
                        stats.non_finite[key] = stats.non_finite.get(key, 0) + n
        return out

    def divide_and_round(self, task: ChunkTask, acc: torch.Tensor) -> torch.Tensor:
        """acc / Σw in the output dtype with one rounding from the accumulator's quotient."""
        out_dtype, total = task.entry.out_dtype, task.total
        if out_dtype == acc.dtype:
            return acc.div_(total) if total != 1.0 else acc
        out = self.work_buffer("out", task.count, out_dtype)
        if out_dtype in SIXTEEN_BIT and (acc.dtype == torch.float64 or not is_power_of_two(total)):
            # A float32 quotient rounded again to 16 bits is a double rounding: divide in
            # float64 and round to odd on the way through float32 (see engine.rounding).
            if acc.dtype != torch.float64:
                acc = self.work_buffer("tmp", task.count, torch.float64).copy_(acc)
            round_into(out, acc.div_(total) if total != 1.0 else acc)
        elif total != 1.0:
            torch.div(acc, total, out=out)  # exact division or a single rounding
        else:
            out.copy_(acc)
        return out

    def recompute_overflowed(self, task: ChunkTask, out: torch.Tensor, where: torch.Tensor) -> None:
        """Σ wᵢxᵢ left the accumulator's range: redo the chunk in float64 with inputs scaled by
        2^-s (Σw · 2^-s <= 1, so no partial sum exceeds the inputs' own range), scale back."""
        shift = input_shift(task.total)
        acc = torch.zeros(task.count, dtype=torch.float64)
        for source, w in task.inputs:
            x = self.reread(task, source).to(torch.float64)
            acc.add_(x.mul_(2.0**-shift), alpha=w)  # a power of two: exact
        mean = acc.div_(task.total).mul_(2.0**shift)
        exact = round_into(torch.empty(task.count, dtype=out.dtype), mean).to(out.device)
        out.copy_(torch.where(where, exact, out))

    def reread(self, task: ChunkTask, source: int) -> torch.Tensor:
        """One input's chunk again, on the host (read by the prefetch thread, after its queue)."""
        buf = torch.empty(task.nbytes(source), dtype=torch.uint8)
        ckpt = self.prefetcher.checkpoints[source]
        self.prefetcher.pool.submit(task.read, ckpt, source, buf).result()
        return buf.view(task.entry.dtype_of(source))

    def close(self) -> None:
        self.prefetcher.close()
