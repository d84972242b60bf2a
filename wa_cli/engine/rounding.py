"""Exact corners of the combination: weight scaling, one rounding to 16 bits, overflow re-checks.

* Equal weights are the uniform mean and become 1 each: with ``1e308, 1e308`` scaled to
  ``1.11…`` every product would round in the accumulator (a fused multiply-add then turns x, −x
  into ±3e-8·|x|, and a mean halfway between two bf16 values lands on the odd one).
* Other weights are rescaled by a power of two so that the largest lies in [1, 2), always:
  ``1e308, 1`` no longer sums to inf, and ``1e-30, 1e-29`` (whose products with 1e-20 underflow
  a float32 accumulator) no longer vanish. A power of two changes no ratio and no rounding
  (barring subnormals).
* float64 → bfloat16/float16: torch converts through float32 (two roundings). Rounding to float32
  with round-to-odd first (truncate toward zero, set the last bit when inexact) makes the second
  rounding the only one: float32 keeps more than two extra bits over either 16-bit format.
* An accumulator overflow (Σ wᵢxᵢ beyond the accumulator's range while the mean is in range) is
  recomputed in float64 with every input scaled by 2^-s, s = ⌈log2 Σw⌉, so no partial sum can leave
  the inputs' range; the mean is then scaled back (exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def scale_weights(weights: Sequence[float]) -> list[float]:
    """``weights`` times the power of two that puts the largest in [1, 2); equal weights all 1.

    Always, not only for extreme weights: ``1e-30`` times an input of ``1e-20`` underflows a
    float32 accumulator to 0 although the weight itself is a normal float32.

    Example:
        >>> scale_weights([1e308, 1e308]), scale_weights([5e-324, 5e-324])
        ([1.0, 1.0], [1.0, 1.0])
        >>> scale_weights([1.0, 2.0])
        [0.5, 1.0]
        >>> scale_weights([2.0**-100, 2.0**-101])
        [1.0, 0.5]
    """
    w = [float(x) for x in weights]
    top = max(w, default=0.0)
    if top <= 0 or not math.isfinite(top):
        return w
    if all(x == top for x in w):  # the uniform mean: products with 1 are exact
        return [1.0] * len(w)
    exponent = math.frexp(top)[1] - 1  # top = m · 2^exponent, 1 <= m < 2
    if exponent == 0:
        return w
    return [math.ldexp(x, -exponent) for x in w]


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """wᵢ / Σw, computed without overflow or underflow of the sum (for reports).

    Example:
        >>> normalized_weights([1e308, 1e308])
        [0.5, 0.5]
    """
    w = scale_weights(weights)
    total = math.fsum(w)
    return [x / total for x in w] if total > 0 else w


def is_power_of_two(x: float) -> bool:
    """Dividing by ``x`` is exact (barring subnormal results)."""
    return x > 0 and math.isfinite(x) and math.frexp(x)[0] == 0.5


def round_to_odd_float32(x: torch.Tensor) -> torch.Tensor:
    """float64 → float32, truncated toward zero with the last bit set when inexact.

    A later round-to-nearest to bfloat16 or float16 then gives the correctly rounded value of
    ``x`` itself (the classic round-to-odd argument: 24 bits >= 8 + 2 and 11 + 2).
    """
    y = x.to(torch.float32)
    back = y.to(torch.float64)
    inexact = back != x  # NaN compares unequal: setting its last bit keeps it a NaN
    away = inexact & (back.abs() > x.abs())
    y = torch.where(away, torch.nextafter(y, torch.zeros_like(y)), y)
    bits = y.view(torch.int32) | inexact.to(torch.int32)
    return bits.view(torch.float32)


def round_into(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Copy ``x`` into ``out`` rounding once (round-to-odd on the way from float64 to 16 bits)."""
    if x.dtype == torch.float64 and out.dtype in SIXTEEN_BIT:
        x = round_to_odd_float32(x)
    return out.copy_(x)


def input_shift(total: float) -> int:
    """s with Σw · 2^-s <= 1: inputs scaled by 2^-s cannot overflow a sum weighted by w."""
    return max(0, math.frexp(total)[1])
