"""Shared test oracles: independent recomputations the library's results are compared with.

Each is either PyTorch's own code (``get_ema_multi_avg_fn``), numpy's (``np.histogram``), or a
float64 transcription of SPEC.md's formula; none of them calls wa. The tiny seeded models live
here too, each under one name.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def torch_ema(states: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """PyTorch's in-training EMA (``get_ema_multi_avg_fn``) over the float tensors, in order.

    e_0 = θ_0, as ``AveragedModel``'s first update.
    """
    update = get_ema_multi_avg_fn(decay)
    keys = [k for k in states[0] if states[0][k].is_floating_point()]
    averaged = [states[0][k].clone() for k in keys]
    for n, state in enumerate(states[1:], start=1):
        update(averaged, [state[k] for k in keys], n)
    return dict(zip(keys, averaged, strict=True))


def ema_recursion64(values: list[torch.Tensor], betas: list[float]) -> torch.Tensor:
    """The EMA recursion e_0 = θ_0, e_i = β_i e_{i−1} + (1 − β_i) θ_i, in float64."""
    e = values[0].double()
    for beta, theta in zip(betas, values[1:], strict=True):
        e = beta * e + (1 - beta) * theta.double()
    return e


def np_entropy(t: torch.Tensor, bins: int = 10) -> float:
    """Closed-rule entropy in nats via numpy's histogram (an independent binning implementation)."""
    counts, _ = np.histogram(t.to(torch.float64).numpy().ravel(), bins=bins)
    p = counts[counts > 0] / t.numel()
    return float(-(p * np.log(p)).sum())


def spec_alpha(h_u: float, h_v: float, a: float = 0.4, c: float = 500.0) -> float:
    """Filter Grafting's α = (A/π)·arctan(c·(H(u) − H(v))) + 1/2 (SPEC.md)."""
    return a / math.pi * math.atan(c * (h_u - h_v)) + 0.5


def tiny_cnn(seed: int) -> nn.Module:
    """Conv2d → BatchNorm2d → ReLU → Linear on 3×5×5 inputs, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(100 + seed)
    return model


def fresh_cnn_6x6() -> nn.Module:
    """Conv2d → BatchNorm2d → ReLU → Linear on 3×6×6 inputs, BN statistics as constructed."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def bn_mlp() -> nn.Module:
    """A BatchNorm1d MLP on 6 features."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4), nn.BatchNorm1d(4)
    )
