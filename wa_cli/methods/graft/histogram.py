"""Exact equal-width histograms at memory speed, streamed chunk by chunk.

Two bin rules (see ``wa_cli.methods.graft.entropy``):

* closed: element x lands in bin min(floor((x - lo) / s), B - 1), computed in float64 with
  s = (hi - lo) / B (lo, hi: the tensor's min and max);
* reference (the paper rule, fxmeng/filter-grafting's loop): bin i holds lo + i·s <= x <
  lo + (i+1)·s with s and every edge computed in the tensor's own dtype, so elements at or past
  the float edge lo + B·s fall in no bin, and the maximum can land in bin B - 1 when that edge
  rounds above it.

How it stays exact and fast:

* 8- and 16-bit dtypes (bfloat16, float16, float8, small integers) have at most 65,536 distinct
  values. One pass counts every bit pattern (a ``bincount`` of the raw bits, about memory speed);
  the min, the max and both rules are then applied to the table of distinct values, exactly as the
  formulas say. The tensor is read once.
* Wider dtypes take a min/max pass, then a threshold pass: the bin of x is the number of
  thresholds T_j <= x, where T_j is the smallest value of the dtype the rule puts in bin j or
  higher (found by bisection over the dtype's ordered values, with the rule itself as the test:
  both rules are monotone in x). A fast float estimate of the bin is corrected against the
  thresholds until no element is on the wrong side, so only elements within rounding distance of
  an edge ever move, and the counts equal the formula's.

Memory is one chunk of the input plus a few chunk-sized temporaries, whatever the tensor's size.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

Chunks = Callable[[], Iterable[torch.Tensor]]  # re-iterable: each call streams the tensor again
# Below this many elements the formulas run on the elements themselves: a 65,536-entry table
# costs more than the tensor.
DIRECT_ELEMENTS = 1 << 14


class NonFinite(ValueError):
    """The tensor holds NaN or inf (entropy is undefined)."""


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float


def uses_table(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is counted by bit pattern (at most 2^16 distinct values)."""
    return dtype.itemsize <= 2


def _pattern_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.uint8 if dtype.itemsize == 1 else torch.int16


@functools.cache
def table_values(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern of a 1- or 2-byte dtype, by unsigned pattern, as that dtype."""
    n = 1 << (8 * dtype.itemsize)
    patterns = torch.arange(n, dtype=torch.int32).to(_pattern_dtype(dtype))
    if dtype == torch.bool:
        return patterns.to(torch.bool)  # only patterns 0 and 1 occur
    return patterns.view(dtype)


def pattern_counts(chunks: Iterable[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """How often each bit pattern occurs (int64, indexed by the unsigned pattern)."""
    n = 1 << (8 * dtype.itemsize)
    total: torch.Tensor | None = None
    scratch: torch.Tensor | None = None
    for chunk in chunks:
        if chunk.numel() == 0:
            continue
        bits = chunk.reshape(-1).view(_pattern_dtype(dtype))
        if dtype.itemsize == 2:
            if scratch is None or scratch.numel() < bits.numel() or scratch.device != bits.device:
                scratch = torch.empty(bits.numel(), dtype=torch.int32, device=bits.device)
            wide = scratch[: bits.numel()]
            wide.copy_(bits.view(torch.uint16))  # patterns as 0..65535
            bits = wide
        counts = torch.bincount(bits, minlength=n)
        total = counts if total is None else total.add_(counts)
    if total is None:
        return torch.zeros(n, dtype=torch.int64)
    return total


def counts_from_table(
    values: torch.Tensor, counts: torch.Tensor, bins: int, reference: bool
) -> list[int]:
    """Apply a bin rule to each distinct value once, weighting by how often it occurs."""
    present = counts > 0
    vals, occ = values[present.to(values.device)], counts[present]
    compute = reference_dtype(vals.dtype)
    v64 = vals.to(torch.float64)
    if not bool(torch.isfinite(v64).all()):
        raise NonFinite
    lo, hi = float(v64.min()), float(v64.max())
    if reference:
        edges = reference_edges(vals.to(compute).min(), vals.to(compute).max(), bins)
        return _loop_counts(vals.to(compute), edges, occ)
    if lo == hi:
        return [int(occ.sum())] + [0] * (bins - 1)
    step = (hi - lo) / bins
    idx = ((v64 - lo).div_(step).floor_()).to(torch.int64).clamp_(max=bins - 1)
    out = torch.zeros(bins, dtype=torch.int64, device=occ.device)
    out.index_add_(0, idx.to(occ.device), occ)
    return out.tolist()


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference loop's arithmetic runs in: the tensor's own where torch computes
    in it (float16, bfloat16, float32, float64), else float32 (float8 and integers: exact)."""
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return dtype
    return torch.float64 if dtype.itemsize > 2 else torch.float32


def reference_edges(lo: torch.Tensor, hi: torch.Tensor, bins: int) -> list[torch.Tensor]:
    """lo + i·s for i = 0..B, s = (hi - lo) / B: 0-d tensors, rounded as the reference rounds."""
    scale = (hi - lo) / bins
    return [lo + i * scale for i in range(bins + 1)]


def _loop_counts(x: torch.Tensor, edges: list[torch.Tensor], weight: torch.Tensor) -> list[int]:
    """The reference loop itself: bin i = lo + i·s <= x < lo + (i+1)·s, by comparisons."""
    out = []
    for i in range(len(edges) - 1):
        inside = (x >= edges[i]) & (x < edges[i + 1])
        out.append(int(weight[inside.to(weight.device)].sum()))
    return out


# --- wide dtypes: min/max, thresholds, corrected estimates ------------------------------------


def value_range(chunks: Iterable[torch.Tensor]) -> Range | None:
    """Exact min and max (float64), or None for an empty tensor; ``NonFinite`` on NaN/inf."""
    lo = hi = None
    for chunk in chunks:
        if chunk.numel() == 0:
            continue
        a, b = torch.aminmax(chunk)
        fa, fb = float(a), float(b)
        if not (math.isfinite(fa) and math.isfinite(fb)):
            raise NonFinite
        lo = fa if lo is None else min(lo, fa)
        hi = fb if hi is None else max(hi, fb)
    return None if lo is None or hi is None else Range(lo, hi)


_FORMATS = {torch.float32: ("<f", "<I", 32), torch.float64: ("<d", "<Q", 64)}


def _key(value: float, dtype: torch.dtype) -> int:
    """An integer that orders the values of ``dtype`` (float32/float64) as the reals do."""
    f, i, width = _FORMATS[dtype]
    (bits,) = struct.unpack(i, struct.pack(f, value))
    sign = 1 << (width - 1)
    return bits if bits < sign else -(bits - sign)


def _value(key: int, dtype: torch.dtype) -> float:
    f, i, width = _FORMATS[dtype]
    bits = key if key >= 0 else (-key) | (1 << (width - 1))
    (value,) = struct.unpack(f, struct.pack(i, bits))
    return float(value)


def closed_thresholds(r: Range, bins: int, dtype: torch.dtype) -> list[float]:
    """T_j (j = 1..B-1): the smallest value of ``dtype`` whose float64 bin is j or more."""
    step = (r.hi - r.lo) / bins

    def bin_of(v: float) -> int:
        return math.floor((v - r.lo) / step)

    lo_key, hi_key = _key(r.lo, dtype), _key(r.hi, dtype)
    out = []
    for j in range(1, bins):
        if bin_of(r.hi) < j:
            out.append(math.inf)
            continue
        a, b = lo_key, hi_key  # bin_of(value(b)) >= j; find the smallest such key
        while a < b:
            mid = (a + b) // 2
            if bin_of(_value(mid, dtype)) >= j:
                b = mid
            else:
                a = mid + 1
        out.append(_value(a, dtype))
    return out


def threshold_counts(
    chunks: Iterable[torch.Tensor], thresholds: list[float], r: Range, bins: int
) -> list[int]:
    """Counts of index = #{T_j <= x} over all chunks (index len(T) = past every threshold)."""
    m = len(thresholds)
    total: torch.Tensor | None = None
    lookup: torch.Tensor | None = None
    for x in _slices(chunks):
        if lookup is None or lookup.device != x.device:
            # lower[i] = T_i (T_0 = -inf), lower[i + 1] = T_{i+1} (T_{m+1} = +inf).
            lookup = torch.tensor(
                [-math.inf, *thresholds, math.inf], dtype=x.dtype, device=x.device
            )
        idx = _estimate(x, r, bins, m)
        for _ in range(m + 2):  # each round moves a misplaced element one bin; usually one
            up = x >= lookup[idx + 1]
            down = x < lookup[idx]
            wrong = up | down
            if not bool(wrong.any()):
                break
            idx += up.to(idx.dtype) - down.to(idx.dtype)
        counts = torch.bincount(idx, minlength=m + 1)
        total = counts if total is None else total.add_(counts)
    if total is None:
        return [0] * bins
    return total[:bins].tolist()


# Elements per pass of the bin correction: its int64 indices, gathered thresholds and masks take
# about 30 bytes an element, so a 2^20-element chunk at once held 30 MB of temporaries (a
# 500 MB float32 tensor peaked at 310 MB RSS; 255 MB in slices of 2^18).
_SLICE = 1 << 18


def _slices(chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        flat = chunk.reshape(-1)
        for start in range(0, flat.numel(), _SLICE):
            yield flat[start : start + _SLICE]


def _estimate(x: torch.Tensor, r: Range, bins: int, m: int) -> torch.Tensor:
    """floor((x - lo) · B / (hi - lo)) in x's dtype, clamped to [0, m]: off by at most a few."""
    t = (x - r.lo).mul_(bins / (r.hi - r.lo))
    # A subnormal range makes the scale overflow x's dtype (0 · inf = nan): any start in [0, m]
    # is fine, since the caller's correction rounds move each element to its exact bin.
    return t.nan_to_num_(nan=0.0).clamp_(0, m).to(torch.int64)


def reference_threshold_counts(
    chunks: Chunks, dtype: torch.dtype, r: Range, bins: int
) -> list[int]:
    """The reference rule for float32/float64 (and wide integers, in float64)."""
    if r.lo == r.hi:
        return [0] * bins  # every bin is [lo, lo): empty
    compute = reference_dtype(dtype)
    lo = torch.tensor(r.lo, dtype=compute)
    hi = torch.tensor(r.hi, dtype=compute)
    edges = reference_edges(lo, hi, bins)
    values = [float(e) for e in edges]
    monotone = all(math.isfinite(v) for v in values) and values == sorted(values)
    if not monotone:  # (hi - lo) overflowed the dtype: run the loop itself
        total = [0] * bins
        for chunk in chunks():
            x = chunk.reshape(-1).to(compute)
            ones = torch.ones(x.numel(), dtype=torch.int64, device=x.device)
            dev = [e.to(x.device) for e in edges]
            total = [a + b for a, b in zip(total, _loop_counts(x, dev, ones), strict=True)]
        return total
    # Bin i = lo + i·s <= x < lo + (i+1)·s: index = #{edges 1..B <= x}; index B is in no bin.
    return threshold_counts(_as(chunks(), compute), values[1:], r, bins)


def _as(chunks: Iterable[torch.Tensor], dtype: torch.dtype) -> Iterator[torch.Tensor]:
    for c in chunks:
        yield c if c.dtype == dtype else c.to(dtype)


def histogram(
    chunks: Chunks, dtype: torch.dtype, numel: int, bins: int, reference: bool
) -> list[int]:
    """The B counts of a tensor streamed by ``chunks`` under the closed or the reference rule.

    ``NonFinite`` when it holds NaN or inf. An empty tensor has all counts 0; a constant one has
    them all in bin 0 under the closed rule, in no bin under the reference rule.
    """
    with one_thread():
        if numel <= DIRECT_ELEMENTS:
            parts = [c.reshape(-1).clone() for c in chunks()]  # chunks reuse one buffer
            x = torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
            return direct_counts(x, bins, reference)
        return _histogram(chunks, dtype, bins, reference)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One OpenMP thread: these loops are memory-bound, and on a loaded machine spinning workers
    made them ten times slower (measured on 2 shared cores), as in the combine engine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _histogram(chunks: Chunks, dtype: torch.dtype, bins: int, reference: bool) -> list[int]:
    if dtype == torch.bool or uses_table(dtype):
        counts = pattern_counts(chunks(), dtype)
        if int(counts.sum()) == 0:
            return [0] * bins
        return counts_from_table(table_values(dtype).to(counts.device), counts, bins, reference)
    compute = torch.float64 if not dtype.is_floating_point else dtype
    r = value_range(_as(chunks(), compute))
    if r is None:
        return [0] * bins
    if reference:
        return reference_threshold_counts(chunks, dtype, r, bins)
    if r.lo == r.hi:
        n = sum(c.numel() for c in chunks())
        return [n] + [0] * (bins - 1)
    thresholds = closed_thresholds(r, bins, compute)
    return threshold_counts(_as(chunks(), compute), thresholds, r, bins)


def direct_counts(x: torch.Tensor, bins: int, reference: bool) -> list[int]:
    """Both rules on the elements themselves, as their formulas say (small tensors)."""
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.numel() == 0:
        return [0] * bins
    v64 = x.to(torch.float64)
    if not bool(torch.isfinite(v64).all()):
        raise NonFinite
    if reference:
        y = x.to(reference_dtype(x.dtype))
        ones = torch.ones(y.numel(), dtype=torch.int64, device=y.device)
        return _loop_counts(y, reference_edges(y.min(), y.max(), bins), ones)
    lo, hi = float(v64.min()), float(v64.max())
    if lo == hi:
        return [x.numel()] + [0] * (bins - 1)
    idx = ((v64 - lo).div_((hi - lo) / bins).floor_()).to(torch.int64).clamp_(max=bins - 1)
    return torch.bincount(idx, minlength=bins)[:bins].tolist()
