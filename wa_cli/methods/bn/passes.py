"""The forward passes that re-estimate BatchNorm statistics, and how each batch is weighted.

With ``weighting="batch"`` every batch weighs the same: BatchNorm keeps momentum ``None`` (a
cumulative average, ``update_bn`` exactly) and InstanceNorm, which treats ``None`` as no update,
gets the cumulative factor 1/(k+1) for batch k. With ``weighting="sample"`` (the SWA authors'
``utils.bn_update``) a batch of b samples after n seen gets momentum b/(n + b). The loader, the
model and the ``forward`` function are the user's code: each runs under
:func:`wa_cli.methods.bn.usercalls.user_code`, and what they raise becomes one ``WaError`` that
names the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from wa_cli.errors import ExitCode, WaError, describe_exception
from wa_cli.methods.bn.batches import describe_batch, leading_size, model_input, to_device
from wa_cli.methods.bn.options import BNOptions
from wa_cli.methods.bn.usercalls import user_code

Forward = Callable[[nn.Module, Any], Any]

_ONE_SAMPLE_HINT = (
    "BatchNorm cannot normalize a batch of one sample in training mode: use batches of at least "
    "two samples (a DataLoader can drop a short last batch with drop_last=True)"
)
# Template parts (WaError.naming): {forward} reads forward in the library, --forward in the CLI.
_FORWARD_HINT = (
    "a batch must be a tensor, or a list/tuple whose first element is the model's input; "
    "for dict batches and multi-input models give a forward function "
    "({forward} module:fn, called as fn(model, batch))"
)


def run_passes(
    model: nn.Module,
    batches: Iterable[Any],
    names: Mapping[_NormBase, str],
    options: BNOptions,
    device: str | int | torch.device | None,
    forward: Forward | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """One forward pass per batch (at most ``options.max_batches``); batches and samples seen."""
    # InstanceNorm treats momentum None as 0 (no update), so it gets the cumulative factor
    # 1/(k+1) explicitly; BatchNorm keeps None in batch mode, which is update_bn exactly.
    instance_norms = [m for m in names if isinstance(m, _InstanceNorm)]
    count = samples = 0
    for batch in _batches(batches, options.max_batches):
        # What is fed: the whole batch to a forward function, else update_bn's choice.
        payload = batch if forward is not None else model_input(batch, count)
        size = leading_size(payload)
        if options.weighting == "sample":
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
        _forward(model, batch, to_device(payload, device), count, forward)
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


def _forward(
    model: nn.Module,
    batch: Any,
    payload: Any,
    index: int,
    forward: Forward | None,
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
            one_sample = leading_size(payload) == 1 and "value per channel" in str(e)
            raise WaError.naming(
                "the model cannot take batch {index} ({batch}): {error} ("
                + (_ONE_SAMPLE_HINT if one_sample else _FORWARD_HINT)
                + ")",
                ExitCode.BAD_INPUT,
                index=index,
                batch=describe_batch(batch),
                error=describe_exception(e),
            ) from e
        name = getattr(forward, "__qualname__", None) or repr(forward)
        raise WaError(
            f"forward function '{name}' failed on batch {index} ({describe_batch(batch)}): "
            f"{describe_exception(e)}",
            ExitCode.BAD_INPUT,
        ) from e
