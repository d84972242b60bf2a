"""BatchNorm re-estimation: give averaged weights their own running statistics.

The running mean and variance of a weight average are not the average of the running statistics
(SWA, Izmailov et al. 2018, arXiv 1803.05407, section 3.2; SWAP, Gupta et al. 2020, arXiv
2001.02312, phase 3), so after averaging they are recomputed with one pass over training data.

The default is exactly ``torch.optim.swa_utils.update_bn``: every ``_BatchNorm`` module is reset,
its momentum set to ``None`` (a cumulative average over batches), the model runs in train mode
without gradients, and afterwards momenta and modes are restored. After B batches each layer holds
running_mean = (1/B) Σ_b μ_b and running_var = (1/B) Σ_b s²_b (unbiased per-batch variance).
``weighting="sample"`` is the SWA authors' own variant (timgaripov/swa ``utils.bn_update``): a batch
of b samples after n seen gets momentum b/(n + b), which weights batch statistics by batch size.
Unlike ``update_bn`` this also takes a ``forward(model, batch)`` for dict batches and multi-input
models (pytorch/pytorch#49082), restores every module's mode and the old statistics on error,
leaves the statistics of InstanceNorm layers it was not asked to re-estimate as they were (update_bn
lets them drift in train mode), and returns a report of how much each layer's statistics moved.

This module holds the verbs; the module walk is :mod:`wa_cli.methods.bn.layers`, the forward
passes and their weighting :mod:`wa_cli.methods.bn.passes`, the report types
:mod:`wa_cli.methods.bn.report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from wa_cli.methods.bn.batches import describe_batch as describe_batch
from wa_cli.methods.bn.layers import cumulative_averages, layer_changes
from wa_cli.methods.bn.layers import norm_layers as norm_layers
from wa_cli.methods.bn.options import WEIGHTINGS as WEIGHTINGS
from wa_cli.methods.bn.options import BNOptions, Weighting
from wa_cli.methods.bn.passes import Forward, run_passes
from wa_cli.methods.bn.report import NO_BN_NOTE as NO_BN_NOTE
from wa_cli.methods.bn.report import BNLayerChange as BNLayerChange
from wa_cli.methods.bn.report import BNReport

logger = logging.getLogger(__name__)


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: str | int | torch.device | None = None,
    weighting: Weighting = "batch",
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    include_instancenorm: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BNReport:
    """Recompute the BatchNorm running statistics of ``model`` with one pass over ``batches``.

    Args:
        model: the network, already on ``device`` (only the batches are moved, as in
            ``update_bn``).
        batches: an iterable of batches: a tensor (the input), a list/tuple (element 0 is the
            input), or anything ``forward`` understands.
        device: where to move the batch's tensors (nested in dicts/lists too) before the forward.
        weighting: ``"batch"`` (``update_bn``: every batch weighs the same) or ``"sample"``
            (batches weighted by their size, the SWA authors' code).
        max_batches: stop after this many batches (the next one is never requested).
        forward: ``forward(model, batch)`` replaces ``model(batch[0])``; the batch is passed whole.
        include_instancenorm: also re-estimate InstanceNorm layers that track running statistics.
        progress: called with the number of batches done after each batch.

    Returns:
        A :class:`BNReport`; without any BatchNorm layer it says so and no forward pass runs.

    Raises:
        WaError: a bad argument, a loader that yields nothing or raises, or a batch the model
            cannot take. The model's statistics, momenta and train/eval modes are then as before.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        >>> recalibrate_bn(net, [torch.randn(16, 4) for _ in range(3)]).batches
        3
    """
    options = BNOptions.checked(
        weighting=weighting, max_batches=max_batches, include_instancenorm=include_instancenorm
    )
    return reestimate(model, batches, options, device=device, forward=forward, progress=progress)


def reestimate(
    model: nn.Module,
    batches: Iterable[Any],
    options: BNOptions,
    *,
    device: str | int | torch.device | None = None,
    forward: Forward | None = None,
    progress: Callable[[int], None] | None = None,
) -> BNReport:
    """:func:`recalibrate_bn` with its options checked: the module walk around the passes."""
    names = norm_layers(model, options.include_instancenorm)
    if not names:
        logger.info("%s", NO_BN_NOTE)
        return BNReport(weighting=options.weighting, note=NO_BN_NOTE)
    start = time.perf_counter()
    with cumulative_averages(model, names) as before, torch.no_grad():
        count, samples = run_passes(model, batches, names, options, device, forward, progress)
    layers = layer_changes(names, before)
    seconds = time.perf_counter() - start
    logger.info(
        "re-estimated %d norm layers over %d batches in %.2f s", len(layers), count, seconds
    )
    return BNReport(layers, count, samples, seconds, options.weighting)


def update_bn(
    loader: Iterable[Any], model: nn.Module, device: str | int | torch.device | None = None
) -> BNReport:
    """``torch.optim.swa_utils.update_bn(loader, model, device)``, with the same result.

    Resets and re-estimates every BatchNorm layer's running statistics with one pass over
    ``loader`` (the input of a list/tuple batch is its element 0), as a cumulative average;
    momenta and train/eval modes are restored. The same arguments in the same order as torch's,
    so it can replace it; it returns the :class:`BNReport` of :func:`recalibrate_bn`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        >>> update_bn([torch.randn(16, 4) for _ in range(3)], net).batches
        3
    """
    return recalibrate_bn(model, loader, device=device)
