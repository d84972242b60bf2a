"""SWAP phase 3 across processes (Gupta et al. 2020, arXiv 2001.02312).

After W workers have trained independently (phase 2), every process replaces its model by the
uniform average of the W models, then BatchNorm statistics are re-estimated for the averaged
weights. Here the average is an all-reduce over a ``torch.distributed`` group: floating
parameters and floating buffers are summed in a wider type (float64 for float32, float32 for 16-bit,
as ``wa average`` does), divided by the group size and cast back; integer buffers
(``num_batches_tracked``) are never interpolated and keep each process's own value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from wa_cli.engine.precision import accumulator_dtype
from wa_cli.errors import ExitCode, WaError

logger = logging.getLogger(__name__)


@torch.no_grad()
def all_reduce_mean(tensors: list[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Replace each floating tensor, in place, by its mean over the processes of ``group``.

    Tensors are flattened into one buffer per accumulator dtype, so a model costs one or two
    collective calls, not one per tensor. Non-floating tensors are left untouched.

    Example:
        >>> all_reduce_mean([p.data for p in model.parameters()])  # doctest: +SKIP
    """
    world = dist.get_world_size(group)
    buckets: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point():
            buckets.setdefault(accumulator_dtype(t.dtype), []).append(t)
    for acc, members in buckets.items():
        flat = torch.cat([t.detach().reshape(-1).to(acc) for t in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat.div_(world)
        offset = 0
        for t in members:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))  # one rounding, to t's own dtype
            offset += n


def average_across_processes(
    model: nn.Module,
    group: dist.ProcessGroup | None = None,
    recalibrate: Callable[[nn.Module], object] | None = None,
    average_recalibrated_stats: bool = True,
) -> nn.Module:
    """SWAP phase 3: average ``model`` over all processes of ``group``, then re-estimate BN.

    Args:
        model: this process's model (same architecture on every process).
        group: the process group (default: the world).
        recalibrate: called as ``recalibrate(model)`` after averaging, e.g.
            ``lambda m: recalibrate_bn(m, loader, device=device)`` with
            ``wa_cli.methods.bn.recalibrate.recalibrate_bn`` (``device``: where ``model`` is;
            the batches are moved there).
        average_recalibrated_stats: after ``recalibrate``, average the floating buffers again, so
            every process ends with the same statistics. With the same number of BN batches on
            each process this equals one re-estimation over all their batches.

    Returns:
        ``model``, changed in place.

    Example:
        >>> device = torch.device("cuda", dist.get_rank())  # doctest: +SKIP
        >>> average_across_processes(
        ...     model, recalibrate=lambda m: recalibrate_bn(m, loader, device=device)
        ... )  # doctest: +SKIP
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise WaError(
            "torch.distributed is not initialized (call dist.init_process_group first)",
            ExitCode.USAGE,
        )
    tensors = [p.data for p in model.parameters()] + list(model.buffers())
    all_reduce_mean(tensors, group)
    logger.info("averaged %d tensors over %d processes", len(tensors), dist.get_world_size(group))
    if recalibrate is not None:
        recalibrate(model)
        if average_recalibrated_stats:
            all_reduce_mean(list(model.buffers()), group)
    return model
