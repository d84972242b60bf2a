"""Dtype policy: which tensors are interpolated, and in what precision.

Floating tensors are accumulated in a type wider than their own (float32 for 8/16-bit floats,
float64 for float32): fairseq and mergekit sum bf16 in bf16 and lose about 3 significant digits.
Non-float tensors (``num_batches_tracked``, masks) are never interpolated.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "float32", "float64"]


def is_interpolable(dtype: torch.dtype) -> bool:
    """Floating tensors are averaged; integers and booleans are copied by policy."""
    return dtype.is_floating_point


def accumulator_dtype(
    dtype: torch.dtype, precision: Precision = "auto", out_dtype: torch.dtype | None = None
) -> torch.dtype:
    """The type sums of ``dtype`` tensors are kept in: wider than the input unless overridden.

    Never narrower than the input or the output: bf16 inputs written as float64 sum in float64
    (1, 1, 2 average to float64's 4/3, not float32's). ``precision="float32"`` on float32 inputs
    sums in float32 itself, so k identical inputs may then no longer give themselves bit for bit.

    Example:
        >>> accumulator_dtype(torch.bfloat16)
        torch.float32
        >>> accumulator_dtype(torch.bfloat16, out_dtype=torch.float64)
        torch.float64
    """
    if precision == "float32":
        acc = torch.float32
    elif precision == "float64" or dtype == torch.float64 or dtype == torch.float32:
        acc = torch.float64
    else:
        acc = torch.float32
    widest = max(dtype.itemsize, out_dtype.itemsize if out_dtype is not None else 0)
    return torch.float64 if widest > acc.itemsize else acc
