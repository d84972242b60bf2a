"""The GPU path of the combination engine: disk reads, host-to-device copies and sums overlap.

Each chunk of an input is read from disk into one of two pinned host buffers while the previous
chunk's copy (on a separate copy stream) and addition (on the compute stream) are still running.
Events order the reuse of every buffer: a pinned buffer is refilled only after its copy finished,
a device staging buffer only after the addition that read it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from wa_cli.combine import CombineStats, ProgressFn, _Reducer
from wa_cli.plan import KeyPlan, Plan

_MAX_ITEMSIZE = 8  # float64 / int64: buffers are sized once for the widest element


class CudaReducer(_Reducer):
    def __init__(self, device: torch.device, chunk_elements: int):
        super().__init__(chunk_elements)
        self.device = device
        self.cpu = _Reducer(chunk_elements)  # non-float copies never need the GPU
        nbytes = chunk_elements * _MAX_ITEMSIZE
        self.copy_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.current_stream(device)
        self.pinned = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.staged = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self.copied = [torch.cuda.Event() for _ in range(2)]
        self.consumed = [torch.cuda.Event() for _ in range(2)]
        self.work = {
            name: torch.empty(nbytes, dtype=torch.uint8, device=device) for name in ("acc", "out")
        }
        self.host_out = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.slot = 0
        self.in_use: dict[int, int] = {}  # data_ptr of a staged view → its slot

    def work_buffer(self, name: str, nbytes: int) -> torch.Tensor:
        return self.work[name][:nbytes]

    def read(self, plan: Plan, source: int, entry: KeyPlan, start: int, count: int) -> torch.Tensor:
        slot = self.slot
        self.slot ^= 1
        size = entry.dtype.itemsize
        nbytes = count * size
        self.copied[slot].synchronize()  # the last copy out of this pinned buffer is done
        host = self.pinned[slot][:nbytes]
        plan.checkpoints[source].read_into(entry.key, host, start * size)
        staged = self.staged[slot][:nbytes]
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.consumed[slot])  # the last sum that read it is done
            staged.copy_(host, non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        self.compute_stream.wait_event(self.copied[slot])
        x = staged.view(entry.dtype)
        self.in_use[x.data_ptr()] = slot
        return x

    def release(self, x: torch.Tensor) -> None:
        slot = self.in_use.pop(x.data_ptr())
        self.consumed[slot].record(self.compute_stream)

    def finish(self, entry: KeyPlan, acc: torch.Tensor, stats: CombineStats) -> torch.Tensor:
        out = super().finish(entry, acc, stats)
        host = self.host_out[: out.numel() * out.element_size()]
        host.copy_(out.view(torch.uint8), non_blocking=True)
        self.compute_stream.synchronize()  # the writer reads `host` as soon as it is yielded
        return host.view(entry.out_dtype)

    def copy(
        self, plan: Plan, entry: KeyPlan, stats: CombineStats, progress: ProgressFn | None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return self.cpu.copy(plan, entry, stats, progress)
