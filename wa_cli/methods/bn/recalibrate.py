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
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.parameter import is_lazy

from wa_cli.errors import ExitCode, WaError, describe_exception, listing
from wa_cli.methods.bn.usercalls import user_code
from wa_cli.params import choice

logger = logging.getLogger(__name__)

Weighting = Literal["batch", "sample"]
WEIGHTINGS: tuple[Weighting, ...] = ("batch", "sample")

NO_BN_NOTE = "the model has no BatchNorm layer: nothing to re-estimate"
_ONE_SAMPLE_HINT = (
    "BatchNorm cannot normalize a batch of one sample in training mode: use batches of at least "
    "two samples (a DataLoader can drop a short last batch with drop_last=True)"
)
_FORWARD_HINT = (
    "a batch must be a tensor, or a list/tuple whose first element is the model's input; "
    "for dict batches and multi-input models give a forward function "
    "(--forward module:fn, called as fn(model, batch))"
)


@dataclass(frozen=True)
class BNLayerChange:
    """How far one layer's running statistics moved: ‖new − old‖ / ‖old‖ (None when ‖old‖ = 0).

    A change is NaN or infinite when the old or new statistics hold non-finite values; JSON
    reports write such a change as null.
    """

    name: str
    kind: str
    mean_change: float | None
    var_change: float | None


@dataclass
class BNReport:
    """What :func:`recalibrate_bn` did: batches and samples seen, time taken, per-layer changes."""

    layers: list[BNLayerChange] = field(default_factory=list)
    batches: int = 0
    samples: int = 0
    seconds: float = 0.0
    weighting: Weighting = "batch"
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(report.to_json())``).

        Relative changes that are not finite become None (null), which keeps the output valid
        JSON (``json.dumps`` would write the invalid token ``NaN``).

        Example:
            >>> BNReport(note="no BatchNorm layer").to_json()["note"]
            'no BatchNorm layer'
        """
        return {
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 6),
            "weighting": self.weighting,
            "note": self.note,
            "layers": [
                {k: _finite_or_none(v) for k, v in asdict(layer).items()} for layer in self.layers
            ],
        }


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


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
    _check_arguments(weighting, max_batches)
    names = norm_layers(model, include_instancenorm)
    if not names:
        logger.info("%s", NO_BN_NOTE)
        return BNReport(weighting=weighting, note=NO_BN_NOTE)
    start = time.perf_counter()
    before = {module: _snapshot(module) for module in names}
    # Train mode makes InstanceNorm layers that were not asked for drift with their own momentum
    # (update_bn lets them); they keep their statistics, so only the chosen layers change.
    bystanders = {
        module: _snapshot(module)
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
        with torch.no_grad():
            count, samples = _run(
                model, batches, names, device, weighting, max_batches, forward, progress
            )
        done = True
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        # Per module, not model.train(was_training): a frozen submodule may have been in eval mode.
        for any_module, training in modes.items():
            any_module.training = training
        for instance_norm, saved in bystanders.items():
            _restore(instance_norm, saved)
        if not done:
            for layer, saved in before.items():
                _restore(layer, saved)
    layers = [
        BNLayerChange(
            name=name,
            kind=type(module).__name__,
            mean_change=_relative_change(before[module]["running_mean"], module.running_mean),
            var_change=_relative_change(before[module]["running_var"], module.running_var),
        )
        for module, name in names.items()
        if module.running_mean is not None
    ]
    seconds = time.perf_counter() - start
    logger.info(
        "re-estimated %d norm layers over %d batches in %.2f s", len(layers), count, seconds
    )
    return BNReport(layers, count, samples, seconds, weighting)


def _check_arguments(weighting: str, max_batches: int | None) -> None:
    choice("weighting", weighting, WEIGHTINGS)
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise WaError(
            f"max_batches must be a positive integer, got {max_batches!r}",
            ExitCode.USAGE,
            params=("max_batches",),
        )


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


def _run(
    model: nn.Module,
    batches: Iterable[Any],
    names: dict[_NormBase, str],
    device: str | int | torch.device | None,
    weighting: Weighting,
    max_batches: int | None,
    forward: Callable[[nn.Module, Any], Any] | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    # InstanceNorm treats momentum None as 0 (no update), so it gets the cumulative factor
    # 1/(k+1) explicitly; BatchNorm keeps None in batch mode, which is update_bn exactly.
    instance_norms = [m for m in names if isinstance(m, _InstanceNorm)]
    count = samples = 0
    for batch in _batches(batches, max_batches):
        # What is fed: the whole batch to a forward function, else update_bn's choice.
        payload = batch if forward is not None else _model_input(batch, count)
        size = _leading_size(payload)
        if weighting == "sample":
            if not size:
                raise WaError(
                    f"batch {count} ({describe_batch(batch)}) has no samples to weight "
                    "(use batch weighting, or give batches whose tensors have a leading dimension)",
                    ExitCode.BAD_INPUT,
                )
            for module in names:
                module.momentum = size / (samples + size)
        else:
            for module in instance_norms:
                module.momentum = 1.0 / (count + 1)
        _forward(model, batch, _to_device(payload, device), count, forward)
        count += 1
        samples += size or 0
        if progress is not None:
            progress(count)
    if count == 0:
        raise WaError(
            "the data loader yielded no batches (BN statistics need at least one batch)",
            ExitCode.BAD_INPUT,
        )
    for module in instance_norms:  # BatchNorm counts its own batches
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.fill_(count)
    return count, samples


def _batches(batches: Iterable[Any], max_batches: int | None) -> Iterator[Any]:
    """The user's batches, with an exception from the loader itself turned into a WaError."""
    loader = _name(batches)
    try:
        with user_code(f"the data loader {loader}"):
            iterator = iter(batches)
    except TypeError as e:
        raise WaError(
            f"the data loader returned a {type(batches).__name__}, which is not iterable "
            "(return a DataLoader, a list of batches or a generator)",
            ExitCode.BAD_INPUT,
        ) from e
    index = 0
    while max_batches is None or index < max_batches:
        try:
            with user_code(f"the data loader {loader} (at batch {index})"):
                batch = next(iterator)
        except StopIteration:
            return
        except WaError:
            raise
        except Exception as e:
            raise WaError(
                f"the data loader raised {describe_exception(e)} at batch {index}",
                ExitCode.BAD_INPUT,
            ) from e
        yield batch
        index += 1


def _name(obj: Any) -> str:
    """``'build'`` for a function, ``'Net'`` for a module or an iterable's type."""
    name = getattr(obj, "__qualname__", None)  # functions and generators; not instances
    return f"'{name if isinstance(name, str) else type(obj).__qualname__}'"


def _model_input(batch: Any, index: int) -> Any:
    """What ``update_bn`` feeds the model: the tensor, or element 0 of a list or tuple."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise WaError(f"batch {index} is an empty {type(batch).__name__}", ExitCode.BAD_INPUT)
        return batch[0]
    return batch


def _forward(
    model: nn.Module,
    batch: Any,
    payload: Any,
    index: int,
    forward: Callable[[nn.Module, Any], Any] | None,
) -> None:
    """One forward pass; ``batch`` as the loader gave it names the batch in an error message."""
    try:
        who = (
            f"the model {_name(model)}" if forward is None else f"forward function {_name(forward)}"
        )
        with user_code(f"{who} (at batch {index})"):
            if forward is None:
                model(payload)
            else:
                forward(model, payload)
    except WaError:
        raise
    except Exception as e:
        if forward is None:
            # torch's own words for a one-sample batch in a BatchNorm layer in training mode
            one_sample = _leading_size(payload) == 1 and "value per channel" in str(e)
            raise WaError(
                f"the model cannot take batch {index} ({describe_batch(batch)}): "
                f"{describe_exception(e)} ({_ONE_SAMPLE_HINT if one_sample else _FORWARD_HINT})",
                ExitCode.BAD_INPUT,
            ) from e
        name = getattr(forward, "__qualname__", None) or repr(forward)
        raise WaError(
            f"forward function '{name}' failed on batch {index} ({describe_batch(batch)}): "
            f"{describe_exception(e)}",
            ExitCode.BAD_INPUT,
        ) from e


def _to_device(value: Any, device: str | int | torch.device | None) -> Any:
    """``value`` with every tensor in it moved to ``device``, containers rebuilt as their type."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple takes fields
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if callable(getattr(value, "to", None)):
        # Batch classes that know how to move themselves (Hugging Face's BatchEncoding, a
        # Mapping, among them): their own method keeps their type and any non-tensor state.
        return value.to(device)
    if isinstance(value, Mapping):
        moved = {k: _to_device(v, device) for k, v in value.items()}
        try:
            return type(value)(moved)  # type: ignore[call-arg]  # a concrete Mapping class
        except TypeError:  # a mapping type that cannot be built from a dict (e.g. defaultdict)
            return moved
    return value


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value
    if isinstance(items, (list, tuple)) or isinstance(value, Mapping):
        for item in items:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _leading_size(value: Any) -> int | None:
    """Samples in a batch: the leading dimension of its first tensor (1 for a scalar)."""
    tensor = _first_tensor(value)
    if tensor is None:
        return None
    return int(tensor.shape[0]) if tensor.dim() else 1


def describe_batch(batch: Any) -> str:
    """A short description of a batch for error messages: type, shapes, dtypes.

    Example:
        >>> describe_batch((torch.zeros(8, 3), torch.zeros(8, dtype=torch.long)))
        'tuple of [Tensor (8, 3) float32, Tensor (8,) int64]'
    """
    if isinstance(batch, torch.Tensor):
        return f"Tensor {tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, Mapping):
        return f"{type(batch).__name__} with keys {listing([str(k) for k in batch])}"
    if isinstance(batch, (list, tuple)):
        parts = [describe_batch(item) for item in batch[:3]]
        more = f", ... {len(batch) - 3} more" if len(batch) > 3 else ""
        return f"{type(batch).__name__} of [{', '.join(parts)}{more}]"
    return type(batch).__name__


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor | None]:
    saved: dict[str, torch.Tensor | None] = {}
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        tensor = getattr(module, name, None)
        saved[name] = None if tensor is None or is_lazy(tensor) else tensor.detach().clone()
    return saved


def _restore(module: nn.Module, saved: dict[str, torch.Tensor | None]) -> None:
    for name, value in saved.items():
        current = getattr(module, name, None)
        if value is not None and current is not None and not is_lazy(current):
            current.copy_(value)


def _relative_change(old: torch.Tensor | None, new: torch.Tensor | None) -> float | None:
    if old is None or new is None or is_lazy(new):
        return None
    old64, new64 = old.detach().double().cpu(), new.detach().double().cpu()
    diff = float(torch.linalg.vector_norm(new64 - old64))
    scale = float(torch.linalg.vector_norm(old64))
    if scale == 0.0:
        # Relative to nothing is undefined unless nothing moved.
        return 0.0 if diff == 0.0 else None
    return diff / scale
