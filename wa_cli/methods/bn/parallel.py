"""Data-parallel BatchNorm re-estimation under torchrun (SWAP's phase 3 at scale).

Rank r of W runs the forward passes of batches r, r + W, r + 2W, ... of the loader (a loader
whose sampler is a ``DistributedSampler`` is already split, and is used as it is). Each rank
re-estimates with :func:`wa_cli.methods.bn.recalibrate.recalibrate_bn`, which leaves every layer
holding the average of its per-batch statistics over the rank's batches, weighted per batch
(``update_bn``) or per sample. Those averages combine exactly: with w_r the rank's batches (or
samples),

    running_stat = Σ_r w_r · stat_r / Σ_r w_r,

which is what one process gets over all the batches (the same Σ over batches, summed in another
order, so equal to float tolerance). ``num_batches_tracked`` becomes the total number of batches.
The sums are gathered in float64 through the steps of ``wa_cli.engine.distributed`` (a few
kilobytes per layer); only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from wa_cli.engine import distributed
from wa_cli.errors import ExitCode, WaError, describe_exception
from wa_cli.methods.bn.layers import norm_layers, relative_change
from wa_cli.methods.bn.options import BNOptions
from wa_cli.methods.bn.passes import Forward
from wa_cli.methods.bn.recalibrate import reestimate
from wa_cli.methods.bn.report import BNLayerChange, BNReport

_END = object()


def already_split(batches: Any) -> bool:
    """Whether ``batches`` is a DataLoader whose sampler (or batch sampler's) is distributed."""
    from torch.utils.data import DataLoader, DistributedSampler

    if not isinstance(batches, DataLoader):
        return False
    samplers = (batches.sampler, getattr(batches.batch_sampler, "sampler", None))
    return any(isinstance(s, DistributedSampler) for s in samplers)


def rank_share(batches: Iterable[Any], max_batches: int | None) -> Iterable[Any]:
    """This rank's batches: r, r + W, ... below ``max_batches`` (a split loader: its own)."""
    group = distributed.active()
    assert group is not None
    if already_split(batches):
        if max_batches is None:
            return batches
        # The first max_batches batches overall are the first len(range(r, M, W)) of each rank.
        return itertools.islice(batches, len(range(group.rank, max_batches, group.world)))
    return itertools.islice(batches, group.rank, max_batches, group.world)


def write_on_rank_0(write: Callable[[], list[Any]]) -> list[Any]:
    """Rank 0 runs ``write`` (an atomic writer); every rank gets its result or its error."""
    group = distributed.active()
    assert group is not None
    return distributed.step("writing the checkpoint", lambda: write() if group.rank == 0 else [])[0]


def recalibrate_bn_distributed(
    model: nn.Module,
    batches: Iterable[Any],
    options: BNOptions,
    *,
    device: str | int | torch.device | None = None,
    forward: Forward | None = None,
    progress: Callable[[int], None] | None = None,
) -> BNReport:
    """:func:`recalibrate_bn` over this rank's share, then the statistics of all ranks combined."""
    group = distributed.active()
    assert group is not None
    start = time.perf_counter()
    weighting = options.weighting
    layers = norm_layers(model, options.include_instancenorm)
    before = {m: _stats(m) for m in layers}

    def local() -> dict[str, Any]:
        share = _peek(lambda: rank_share(batches, options.max_batches), group.rank)
        if share is None:  # fewer batches than ranks: this one adds nothing
            return {"batches": 0, "samples": 0, "sums": None}
        # This rank's share is already cut to max_batches.
        report = reestimate(
            model, share, dataclasses.replace(options, max_batches=None), device=device,
            forward=forward,
            progress=None if progress is None else lambda n: progress(n * group.world),
        )  # fmt: skip
        w = float(report.batches if weighting == "batch" else report.samples)
        sums = [[None if t is None else t.detach().double().cpu() * w for t in _stats(m)]
                for m in layers]  # fmt: skip
        return {"batches": report.batches, "samples": report.samples, "weight": w, "sums": sums}

    parts = distributed.step("re-estimating BatchNorm statistics", local)
    count = sum(p["batches"] for p in parts)
    if count == 0:
        raise distributed.RankFailure(
            "the data loader yielded no batches (BN statistics need at least one batch)",
            ExitCode.BAD_INPUT, 0,
        )  # fmt: skip
    _set_combined(layers, [p for p in parts if p["sums"] is not None], count)
    changes = []
    for module, name in layers.items():
        after = _stats(module)
        if after[0] is not None:
            changes.append(
                BNLayerChange(
                    name=name,
                    kind=type(module).__name__,
                    mean_change=relative_change(before[module][0], after[0]),
                    var_change=relative_change(before[module][1], after[1]),
                )
            )
    samples = sum(p["samples"] for p in parts)
    return BNReport(changes, count, samples, time.perf_counter() - start, weighting)


def _stats(module: nn.Module) -> list[torch.Tensor | None]:
    found = (getattr(module, "running_mean", None), getattr(module, "running_var", None))
    return [t.detach().clone() if isinstance(t, torch.Tensor) else None for t in found]


def _set_combined(layers: dict[_NormBase, str], parts: list[dict[str, Any]], count: int) -> None:
    total = sum(p["weight"] for p in parts)
    with torch.no_grad():
        for i, module in enumerate(layers):
            for j, name in enumerate(("running_mean", "running_var")):
                target = getattr(module, name, None)
                if target is None:
                    continue
                summed = sum(p["sums"][i][j] for p in parts)
                target.copy_((summed / total).to(target.dtype))
            tracked = getattr(module, "num_batches_tracked", None)
            if tracked is not None:
                tracked.fill_(count)


def _peek(batches: Callable[[], Iterable[Any]], rank: int) -> Iterator[Any] | None:
    """The batches, or None when there are none; a loader error is a one-line error."""
    try:
        iterator = iter(batches())
        first = next(iterator, _END)
    except TypeError as e:
        raise WaError(
            f"the data loader is not iterable ({e}; return a DataLoader, a list of batches or "
            "a generator)",
            ExitCode.BAD_INPUT,
        ) from e
    except WaError:
        raise
    except Exception as e:
        raise WaError(
            f"the data loader raised {describe_exception(e)} at batch {rank}", ExitCode.BAD_INPUT
        ) from e
    if first is _END:
        return None
    return itertools.chain([first], iterator)
