"""Weight entropy and filter norms, as Filter Grafting measures them.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868; code
fxmeng/filter-grafting). The information a layer carries is the entropy of the histogram of its
weights: B equal bins over [min, max], p_j = count_j / N, H = -sum p_j ln p_j (nats). The paper's
filter-level diagnostic is the L1 norm of each output filter; filters below a small threshold are
"invalid" (they contribute almost nothing to the output).

Bin indices follow the float64 formula floor((x - min) / s), s = (max - min) / B, whatever the
tensor's dtype or device: a float32 computation of the same formula moves elements that sit on a
bin edge into the neighbouring bin. Large tensors are converted to float64 one chunk at a time,
so the extra memory is bounded by the chunk, never by the tensor.
"""

from __future__ import annotations

import logging
import math

import torch

from wa_cli.errors import ExitCode, WaError

log = logging.getLogger(__name__)

# 2**20 float64 elements = 8 MB of scratch per chunk: small next to any model, large enough that
# the per-chunk overhead (a few kernel launches) is negligible.
_CHUNK = 1 << 20


def check_bins(bins: int) -> None:
    """Raise ``WaError`` unless ``bins`` is an integer >= 2 (a histogram needs two bins)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise WaError(
            f"bins must be an integer >= 2, got {bins!r} (the paper uses 10)", code=ExitCode.USAGE
        )


def bin_counts(
    t: torch.Tensor, *, bins: int = 10, half_open: bool = False, name: str | None = None
) -> list[int]:
    """Counts of the equal-width histogram of ``t`` over [min, max].

    Element x lands in bin floor((x - min) / s), s = (max - min) / bins, computed in float64.
    Closed rule (default): the maximum goes to the last bin, so the counts sum to N.
    Half-open rule (the reference code's): bins are [min + j s, min + (j+1) s), so every element
    equal to the maximum falls in no bin and the counts sum to N - #max.
    A constant tensor has all its elements in bin 0 (closed) or in no bin (half-open).

    Args:
        t: any real tensor, on any device; it is flattened.
        bins: number of bins B (>= 2).
        half_open: use the reference code's half-open bins.
        name: the tensor's key, used in error messages.

    Returns:
        B integer counts.

    Raises:
        WaError: bins < 2, a complex tensor, or a NaN/inf element.

    Example:
        >>> bin_counts(torch.tensor([0.0, 0.0, 0.0, 1.0]), bins=2)
        [3, 1]
    """
    check_bins(bins)
    what = f"tensor {name!r}" if name else "tensor"
    if t.is_complex():
        raise WaError(f"{what} is complex; entropy needs real values", code=ExitCode.BAD_INPUT)
    flat = t.detach().reshape(-1)
    counts = [0] * bins
    n = flat.numel()
    if n == 0:
        return counts
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    lo_t, hi_t = torch.aminmax(flat)
    lo, hi = float(lo_t), float(hi_t)  # float64 Python scalars, exact for every real dtype
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise WaError(
            f"{what} holds NaN or inf values; entropy is undefined "
            "(check the checkpoint: the run may have diverged)",
            code=ExitCode.BAD_INPUT,
        )
    if lo == hi:
        if not half_open:
            counts[0] = n
        return counts
    step = (hi - lo) / bins
    total = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)
    for start in range(0, n, _CHUNK):
        x = flat[start : start + _CHUNK].to(torch.float64)
        # In place on the float64 copy: one allocation per chunk besides the indices.
        idx = ((x - lo).div_(step).floor_()).to(torch.int64)
        if half_open:
            # Bin B collects what falls in no bin: the maximum itself (whatever the rounding of
            # (max - min) / s) and anything the formula puts at index >= B.
            idx = torch.where(x == hi, bins, idx.clamp_(max=bins))
        else:
            idx.clamp_(max=bins - 1)
        # idx >= 0 always: x >= lo, so (x - lo) / s >= 0 exactly.
        total += torch.bincount(idx, minlength=bins + 1)
    return total[:bins].tolist()


def entropy_from_counts(counts: list[int], n: int, *, base: float | None = None) -> float:
    """H = -sum_{p_j > 0} p_j ln p_j with p_j = counts[j] / n (nats, or in ``base``).

    ``n`` is the number of elements of the tensor, which exceeds sum(counts) under the half-open
    rule: the dropped maxima still count in the denominator, as in the reference code.

    Example:
        >>> round(entropy_from_counts([1, 1], 2, base=2), 12)
        1.0
    """
    if n <= 0:
        return 0.0
    h = 0.0
    for c in counts:
        if c > 0:
            p = c / n
            h -= p * math.log(p)
    if base is not None:
        check_base(base)
        h /= math.log(base)
    # -0.0 from a single full bin reads oddly in reports.
    return h + 0.0


def tensor_entropy(
    t: torch.Tensor,
    *,
    bins: int = 10,
    base: float | None = None,
    half_open: bool = False,
    name: str | None = None,
) -> float:
    """Entropy of the histogram of a tensor's values (Filter Grafting's layer information).

    B equal bins over [min, max], p_j = count_j / N, H = -sum p_j ln p_j in nats (``base=2``:
    bits). A constant or empty tensor has H = 0; otherwise 0 <= H <= ln B. The math runs on the
    tensor's own device, in float64, one chunk at a time.

    Args:
        t: any real tensor (a weight, a bias, a BN statistic), on any device.
        bins: number of bins B (>= 2; the paper uses 10).
        base: logarithm base; None for nats.
        half_open: the reference code's rule: the maximum falls in no bin, so sum p_j = 1 - #max/N.
        name: the tensor's key, used in error messages.

    Returns:
        The entropy as a Python float.

    Raises:
        WaError: bins < 2, a bad base, a complex tensor, or NaN/inf values.

    Example:
        >>> math.isclose(tensor_entropy(torch.arange(10.0)), math.log(10))  # one element per bin
        True
    """
    counts = bin_counts(t, bins=bins, half_open=half_open, name=name)
    return entropy_from_counts(counts, t.numel(), base=base)


def filter_l1_norms(w: torch.Tensor, *, name: str | None = None) -> torch.Tensor:
    """L1 norm of each output filter (dim 0) of a conv or linear weight, in float64.

    Args:
        w: a weight with ndim >= 2, e.g. (out, in, kh, kw) or (out, in).
        name: the tensor's key, used in error messages.

    Returns:
        A float64 tensor of shape (out,), on ``w``'s device.

    Raises:
        WaError: ``w`` has fewer than 2 dimensions (a bias or a BN vector has no filters).

    Example:
        >>> filter_l1_norms(torch.tensor([[1.0, -2.0], [0.0, 0.5]])).tolist()
        [3.0, 0.5]
    """
    if w.ndim < 2:
        what = f"tensor {name!r}" if name else "tensor"
        raise WaError(
            f"{what} has shape {tuple(w.shape)}; filter norms need a conv/linear weight with "
            "ndim >= 2 (dim 0 = output filters)",
            code=ExitCode.USAGE,
        )
    # float64 accumulation: a 16-bit sum over thousands of elements loses the small norms that
    # the invalid-filter threshold is about.
    return w.detach().reshape(w.shape[0], -1).abs().sum(dim=1, dtype=torch.float64)


def count_invalid_filters(
    w: torch.Tensor, threshold: float = 0.1, *, name: str | None = None
) -> int:
    """Number of output filters whose L1 norm is below ``threshold`` (the paper's "invalid").

    The paper reports thresholds 0.1 and 0.01.

    Example:
        >>> count_invalid_filters(torch.tensor([[1.0, -2.0], [0.0, 0.05]]))
        1
    """
    check_threshold(threshold)
    return int((filter_l1_norms(w, name=name) < threshold).sum())


def check_base(base: float) -> None:
    """A logarithm base for entropies: positive, finite and not 1."""
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise WaError(
            f"entropy base must be positive and not 1, got {base!r} (use 2 for bits)",
            code=ExitCode.USAGE,
        )


def check_threshold(threshold: float) -> None:
    """An invalid-filter L1 threshold: finite and >= 0."""
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise WaError(
            f"--l1-threshold must be a finite number >= 0, got {threshold!r} "
            "(the paper uses 0.1 or 0.01)",
            code=ExitCode.USAGE,
        )
