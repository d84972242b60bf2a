"""What a batch is to the re-estimation: its model input, its size, its device, its description.

``update_bn`` feeds the model a tensor batch, or element 0 of a list or tuple; a ``forward``
function gets the batch whole. Tensors nested in lists, tuples, namedtuples and mappings are moved
to the device, batch classes that move themselves (Hugging Face's ``BatchEncoding``) move
themselves, and the samples of a batch are the leading dimension of its first tensor (sample
weighting and the one-sample hint need them). Error messages describe a batch by type and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError, listing


def model_input(batch: Any, index: int) -> Any:
    """What ``update_bn`` feeds the model: the tensor, or element 0 of a list or tuple."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise WaError(f"batch {index} is an empty {type(batch).__name__}", ExitCode.BAD_INPUT)
        return batch[0]
    return batch


def to_device(value: Any, device: str | int | torch.device | None) -> Any:
    """``value`` with every tensor in it moved to ``device``, containers rebuilt as their type."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple takes fields
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if callable(getattr(value, "to", None)):
        # Batch classes that know how to move themselves (Hugging Face's BatchEncoding, a
        # Mapping, among them): their own method keeps their type and any non-tensor state.
        return value.to(device)
    if isinstance(value, Mapping):
        moved = {k: to_device(v, device) for k, v in value.items()}
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


def leading_size(value: Any) -> int | None:
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
