"""The BatchNorm module walk: which layers are re-estimated, and their state around the passes.

``torch.optim.swa_utils.update_bn`` resets every ``_BatchNorm`` module, sets its momentum to
``None`` (a cumulative average over batches) and puts the model in train mode; afterwards it
restores momenta and modes. :func:`cumulative_averages` does that for the layers of
:func:`norm_layers`, and more: every module's own mode comes back (a frozen submodule may have
been in eval mode), InstanceNorm layers that were not chosen keep their statistics (update_bn lets
them drift in train mode), and on an error the chosen layers get their old statistics back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.parameter import is_lazy

from wa_cli.methods.bn.report import BNLayerChange

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")

Snapshot = dict[str, torch.Tensor | None]


def norm_layers(model: nn.Module, include_instancenorm: bool = False) -> dict[_NormBase, str]:
    """The layers :func:`recalibrate_bn` re-estimates, with their names, in model order.

    ``_BatchNorm`` instances, plus InstanceNorm layers that track running statistics when
    ``include_instancenorm``; a model that is itself such a layer is named ``"(model)"``.

    Example:
        >>> list(norm_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))).values())
        ['1']
    """
    layers: dict[_NormBase, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) or (
            include_instancenorm
            and isinstance(module, _InstanceNorm)
            and module.track_running_stats
        ):
            layers[module] = name or "(model)"
    return layers


@contextmanager
def cumulative_averages(
    model: nn.Module, names: Mapping[_NormBase, str]
) -> Iterator[dict[_NormBase, Snapshot]]:
    """The chosen layers reset to cumulative averages and ``model`` in train mode, for a while.

    Yields the layers' statistics as they were (for the report's relative changes). Momenta,
    every module's train/eval mode and the other InstanceNorm layers' statistics are restored on
    leaving; the chosen layers' statistics too when the block raised.
    """
    before = {module: snapshot(module) for module in names}
    # Train mode makes InstanceNorm layers that were not asked for drift with their own momentum
    # (update_bn lets them); they keep their statistics, so only the chosen layers change.
    bystanders = {
        module: snapshot(module)
        for module in model.modules()
        if isinstance(module, _InstanceNorm) and module.track_running_stats and module not in names
    }
    momenta = {module: module.momentum for module in names}
    modes = {module: module.training for module in model.modules()}
    done = False
    try:
        for module in names:
            # A lazy layer resets itself on its first batch; one that tracks no statistics has
            # none to reset.
            if module.running_mean is not None and not is_lazy(module.running_mean):
                module.reset_running_stats()
            module.momentum = None
        model.train()
        yield before
        done = True
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        # Per module, not model.train(was_training): a frozen submodule may have been in eval mode.
        for any_module, training in modes.items():
            any_module.training = training
        for instance_norm, saved in bystanders.items():
            restore(instance_norm, saved)
        if not done:
            for layer, saved in before.items():
                restore(layer, saved)


def layer_changes(
    names: Mapping[_NormBase, str], before: Mapping[_NormBase, Snapshot]
) -> list[BNLayerChange]:
    """How far each layer that tracks statistics moved from ``before``, in model order."""
    return [
        BNLayerChange(
            name=name,
            kind=type(module).__name__,
            mean_change=relative_change(before[module]["running_mean"], module.running_mean),
            var_change=relative_change(before[module]["running_var"], module.running_var),
        )
        for module, name in names.items()
        if module.running_mean is not None
    ]


def snapshot(module: nn.Module) -> Snapshot:
    """A copy of the module's statistics (None for those it lacks or has not yet sized)."""
    saved: Snapshot = {}
    for name in STATISTICS:
        tensor = getattr(module, name, None)
        saved[name] = None if tensor is None or is_lazy(tensor) else tensor.detach().clone()
    return saved


def restore(module: nn.Module, saved: Snapshot) -> None:
    """Put the statistics of :func:`snapshot` back in place."""
    for name, value in saved.items():
        current = getattr(module, name, None)
        if value is not None and current is not None and not is_lazy(current):
            current.copy_(value)


def relative_change(old: torch.Tensor | None, new: torch.Tensor | None) -> float | None:
    """‖new − old‖ / ‖old‖ in float64; None when undefined."""
    if old is None or new is None or is_lazy(new):
        return None
    old64, new64 = old.detach().double().cpu(), new.detach().double().cpu()
    diff = float(torch.linalg.vector_norm(new64 - old64))
    scale = float(torch.linalg.vector_norm(old64))
    if scale == 0.0:
        # Relative to nothing is undefined unless nothing moved.
        return 0.0 if diff == 0.0 else None
    return diff / scale
