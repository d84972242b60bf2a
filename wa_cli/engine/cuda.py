"""The GPU path of the combination engine.

The prefetch thread reads chunks from disk into a ring of pinned host buffers while the GPU works;
each chunk is copied to the device on a separate copy stream, and the compute stream adds it once
the copy is done. Events order the reuse of every buffer: a device staging buffer is refilled only
after the sum that read it, and a pinned buffer goes back to the prefetcher only after the copy out
of it finished. Each output chunk is copied back and synchronized before the writer takes it, so
disk reads overlap the GPU work, and copies overlap sums within a chunk, but chunks do not overlap
each other's write-back. Untested here: no GPU was available when this was written (see the `gpu`
tests).
"""

from __future__ import annotations

import torch

from wa_cli.engine.combine import ChunkTask, CombineStats, Reducer, widest_input
from wa_cli.engine.plan import Plan


class CudaReducer(Reducer):
    """The CPU reducer's arithmetic on a GPU: device buffers, pinned prefetch, two streams."""

    def __init__(
        self, plan: Plan, tasks: list[ChunkTask], chunk_elements: int, device: torch.device
    ):
        super().__init__(plan, tasks, chunk_elements, device=device, pin_memory=True)
        self.copy_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.current_stream(device)
        widest = widest_input(tasks)
        self.staged = [self.empty(chunk_elements * widest) for _ in range(2)]
        self.copied = [torch.cuda.Event() for _ in range(2)]
        self.consumed = [torch.cuda.Event() for _ in range(2)]
        self.slot = 0
        self.pending_copy: torch.cuda.Event | None = None
        self.host_out = torch.empty(chunk_elements * 8, dtype=torch.uint8, pin_memory=True)

    def _host_chunk(self, task: ChunkTask, source: int) -> torch.Tensor:
        # Asking the prefetcher for a chunk lets it refill the pinned buffer it gave out last:
        # the copy out of that buffer must have finished by then (and only by then).
        if self.pending_copy is not None:
            self.pending_copy.synchronize()
            self.pending_copy = None
        return self.prefetcher.next(task, source)

    def copy_input(self, task: ChunkTask, source: int) -> torch.Tensor:
        return self._host_chunk(task, source).view(task.entry.dtype_of(source))

    def next_input(self, task: ChunkTask, source: int) -> torch.Tensor:
        host = self._host_chunk(task, source)
        slot = self.slot
        self.slot ^= 1
        staged = self.staged[slot][: host.numel()]
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.consumed[slot])  # the last sum that read it is done
            staged.copy_(host, non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        self.pending_copy = self.copied[slot]
        self.compute_stream.wait_event(self.copied[slot])
        return staged.view(task.entry.dtype_of(source))

    def done_with(self, x: torch.Tensor) -> None:
        slot = 0 if x.data_ptr() == self.staged[0].data_ptr() else 1
        self.consumed[slot].record(self.compute_stream)

    def combine(self, task: ChunkTask, acc_dtype: torch.dtype, stats: CombineStats) -> torch.Tensor:
        # The events above order work on compute_stream: run the sums there, whatever stream
        # the caller happens to have made current.
        with torch.cuda.stream(self.compute_stream):
            out = super().combine(task, acc_dtype, stats)
        host = self.host_out[: out.numel() * out.element_size()]
        host.copy_(out.view(torch.uint8), non_blocking=True)
        self.compute_stream.synchronize()  # the writer reads `host` as soon as it is returned
        return host.view(out.dtype)
