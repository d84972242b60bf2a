"""Gradient Centralization (Yong et al., ECCV 2020, arXiv 2004.01461).

For a gradient G whose dim 0 indexes output channels, Phi(G)[o] = G[o] - mean(G[o]): every row of
a weight gradient gets zero mean, which constrains each weight row to a hyperplane (its row mean
never moves under SGD). GC applies to tensors with ndim > 1, GCC (``conv_only``) to ndim > 3; 1-D
tensors (biases, norm-layer scales and shifts) and tensors with fan-in 1 (Phi would zero them) are
left alone.

Where it acts. The paper's SGD applies Phi after L2 weight decay is added and before momentum:
d = Phi(g + wd * w), and that is the default here. An optimizer *step pre-hook* runs before
``optimizer.step()``, i.e. before the optimizer adds ``wd * w`` itself, so the hook writes
g' = Phi(g) - wd * mean_row(w); the optimizer then adds wd * w and obtains
Phi(g) + wd * (w - mean_row(w)) = Phi(g + wd * w), exactly the paper's update, without touching
the optimizer's settings. This folding is only right for coupled L2 decay (SGD, Adam, RMSprop,
...); decoupled decay (AdamW) never enters the gradient, so there the default centralizes g alone
(the decay then shrinks w outside the update, as AdamW intends) and ``fold_weight_decay=True``
is refused.

The other form, ``fold_weight_decay=False``, centralizes the raw gradient only: the update is
Phi(g) + wd * w, so the row means of the weights shrink by weight decay instead of staying fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from wa_cli.errors import ExitCode, WaError

logger = logging.getLogger(__name__)


def applies_to(tensor: torch.Tensor, conv_only: bool = False) -> bool:
    """Whether GC centralizes a tensor of this shape (ndim > 1, or > 3 for GCC; fan-in > 1).

    Example:
        >>> applies_to(torch.empty(16, 3, 3, 3)), applies_to(torch.empty(16))
        (True, False)
    """
    min_ndim = 4 if conv_only else 2
    return tensor.ndim >= min_ndim and tensor[0].numel() > 1


def _row_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=tuple(range(1, t.ndim)), keepdim=True)


def centralize_gradients(params: Iterable[torch.Tensor], conv_only: bool = False) -> None:
    """Replace each eligible parameter's ``.grad`` by Phi(grad), in place.

    Example:
        >>> loss.backward()  # doctest: +SKIP
        >>> centralize_gradients(model.parameters())
        >>> optimizer.step()
    """
    with torch.no_grad():
        for p in params:
            if p.grad is not None and applies_to(p, conv_only):
                p.grad.sub_(_row_mean(p.grad))


def enable_gradient_centralization(
    optimizer: Optimizer, conv_only: bool = False, fold_weight_decay: bool | None = None
) -> RemovableHandle:
    """Centralize gradients before every ``optimizer.step()``; returns the hook handle.

    Args:
        optimizer: any torch optimizer (or a :class:`~wa_cli.train.lookahead.Lookahead`).
        conv_only: GCC, only tensors with ndim > 3.
        fold_weight_decay: None (default): the paper's Phi(g + wd * w) for every group with
            coupled L2 decay, Phi(g) for groups with decoupled decay (AdamW). True: the paper's
            form, refused for decoupled decay. False: Phi(g) + wd * w (the optimizer's L2 term
            stays uncentralized; see the module docstring).

    Example:
        >>> handle = enable_gradient_centralization(opt)  # doctest: +SKIP
        >>> handle.remove()  # switch it off again
    """
    # AdamW by type too: older torch (before ``decoupled_weight_decay`` became a group setting)
    # has no such entry in AdamW's groups. A Lookahead is judged by what it wraps.
    inner = getattr(optimizer, "optimizer", optimizer)
    always_decoupled = isinstance(inner, torch.optim.AdamW)

    def decoupled(group: dict[str, Any]) -> bool:
        return bool(always_decoupled or group.get("decoupled_weight_decay"))

    if fold_weight_decay:
        for i, group in enumerate(optimizer.param_groups):
            if decoupled(group) and group.get("weight_decay", 0):
                raise WaError(
                    f"param group {i} of {type(inner).__name__} uses decoupled weight decay, "
                    "which never enters the gradient (use fold_weight_decay=None or False)",
                    ExitCode.USAGE,
                )

    def folds(group: dict[str, Any]) -> bool:
        if fold_weight_decay is None:
            return not decoupled(group)
        return fold_weight_decay

    def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                wd = float(group.get("weight_decay", 0.0)) if folds(group) else 0.0
                if group.get("maximize"):
                    wd = -wd  # the optimizer adds wd * w to -grad: fold with the opposite sign
                for p in group["params"]:
                    if p.grad is None or not applies_to(p, conv_only):
                        continue
                    p.grad.sub_(_row_mean(p.grad))
                    if wd:
                        p.grad.sub_(_row_mean(p), alpha=wd)

    return optimizer.register_step_pre_hook(hook)
