"""Weight entropy and filter norms, as Filter Grafting measures them.

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868; code
fxmeng/filter-grafting). The information a layer carries is the entropy of the histogram of its
weights: B equal bins over [min, max], p_j = count_j / N, H = -sum p_j ln p_j (nats). The paper's
filter-level diagnostic is the L1 norm of each output filter; filters below a small threshold are
"invalid" (they contribute almost nothing to the output).

Two bin rules. The closed rule (``wa``'s default, the module and tensor graft rules): element x
lands in bin floor((x - min) / s), s = (max - min) / B, computed in float64 whatever the tensor's
dtype or device (a float32 computation of the same formula moves elements that sit on a bin edge
into the neighbouring bin), the maximum in the last bin. The reference rule (``half_open``, the
paper graft rule): the reference code's loop, bin i = [min + i·s, min + (i+1)·s) with s and every
edge computed in the tensor's own dtype, so elements at or past the rounded edge min + B·s fall in
no bin (and the maximum lands in bin B - 1 when that edge rounds above it); its entropy is summed
in float32, as the reference does.

The counting itself (``wa_cli.methods.graft.histogram``) is exact and streamed: one pass for 8- and
16-bit dtypes, two for wider ones, memory bounded by a chunk. ``checkpoint_measure`` reads a
tensor from a checkpoint chunk by chunk, so a 500 MB tensor never sits in memory whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import Checkpoint
from wa_cli.methods.graft.histogram import NonFinite, histogram, uses_table

log = logging.getLogger(__name__)

# 2**20 elements per chunk: a few MB of scratch, small next to any model, large enough that the
# per-chunk overhead (a few kernel launches, one positional read) is negligible.
_CHUNK = 1 << 20
# Tensors up to this size are read from a checkpoint once and kept for a second pass.
_KEEP_BYTES = 32 << 20


# More bins than this cost memory (8 bytes each, per tensor) and say nothing more about a layer.
MAX_BINS = 1_000_000


def check_bins(bins: int) -> None:
    """Raise ``WaError`` unless ``bins`` is an integer from 2 (a histogram needs two bins) to
    ``MAX_BINS``."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise WaError.naming(
            "{bins} must be an integer from 2 to {max_bins}, got {got!r} (the paper uses 10)",
            ExitCode.USAGE,
            max_bins=MAX_BINS,
            got=bins,
        )


def bin_counts(
    t: torch.Tensor, *, bins: int = 10, half_open: bool = False, name: str | None = None
) -> list[int]:
    """Counts of the equal-width histogram of ``t`` over [min, max].

    Closed rule (default): element x lands in bin floor((x - min) / s), s = (max - min) / bins,
    computed in float64; the maximum goes to the last bin, so the counts sum to N.
    Half-open rule (the reference code's loop): bin j is [min + j s, min + (j+1) s) with s and the
    edges computed in the tensor's own dtype (float32 for float8 and integers), so elements at or
    past the rounded last edge fall in no bin: usually every maximum, but the maximum lands in the
    last bin when the rounded edge lies above it, as in the reference.
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
    _check_real(t.dtype, name)
    flat = t.detach().reshape(-1)

    def chunks() -> Iterator[torch.Tensor]:
        for start in range(0, flat.numel(), _CHUNK):
            yield flat[start : start + _CHUNK]

    return _histogram(chunks, flat.dtype, flat.numel(), bins, half_open, name)


def _check_real(dtype: torch.dtype, name: str | None) -> None:
    if dtype.is_complex:
        what = f"tensor {name!r}" if name else "tensor"
        raise WaError(f"{what} is complex; entropy needs real values", code=ExitCode.BAD_INPUT)


def _histogram(
    chunks: Callable[[], Iterable[torch.Tensor]],
    dtype: torch.dtype,
    numel: int,
    bins: int,
    half_open: bool,
    name: str | None,
) -> list[int]:
    try:
        return histogram(chunks, dtype, numel, bins, reference=half_open)
    except NonFinite:
        what = f"tensor {name!r}" if name else "tensor"
        raise WaError(
            f"{what} holds NaN or inf values; entropy is undefined "
            "(check the checkpoint: the run may have diverged)",
            code=ExitCode.BAD_INPUT,
        ) from None


def reference_entropy_from_counts(counts: list[int], n: int) -> float:
    """The reference code's sum: p_j = count_j / N and H -= p_j ln p_j, all in float32."""
    h = torch.zeros((), dtype=torch.float32)
    for c in counts:
        p = torch.tensor(float(c), dtype=torch.float32) / n
        if p != 0:
            h = h - p * torch.log(p)
    return float(h) + 0.0


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
    bits). A constant or empty tensor has H = 0; otherwise 0 <= H <= ln B. The counting runs on
    the tensor's own device, exactly, one chunk at a time.

    Args:
        t: any real tensor (a weight, a bias, a BN statistic), on any device.
        bins: number of bins B (>= 2; the paper uses 10).
        base: logarithm base; None for nats.
        half_open: the reference code's rule: edges in the tensor's dtype, elements past the last
            edge (usually the maximum) in no bin, so sum p_j <= 1; H summed in float32.
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
    return _entropy(counts, t.numel(), half_open, base)


def _entropy(counts: list[int], n: int, half_open: bool, base: float | None) -> float:
    if not half_open:
        return entropy_from_counts(counts, n, base=base)
    h = reference_entropy_from_counts(counts, n) if n > 0 else 0.0
    if base is not None:
        check_base(base)
        h /= math.log(base)
    return h + 0.0


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
    rows = w.detach().reshape(w.shape[0], math.prod(w.shape[1:]))  # -1 is ambiguous for 0 rows
    return rows.abs().sum(dim=1, dtype=torch.float64)


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
    x = math.nan if isinstance(base, bool) or not isinstance(base, int | float) else base
    if not (x > 0 and x != 1 and math.isfinite(x)):
        raise WaError.naming(
            "entropy {base} must be positive and not 1, got {got!r} (use 2 for bits)",
            ExitCode.USAGE,
            got=base,
        )


def check_threshold(threshold: float) -> None:
    """An invalid-filter L1 threshold: finite and >= 0."""
    x = (
        math.nan
        if isinstance(threshold, bool) or not isinstance(threshold, int | float)
        else threshold
    )
    if not (x >= 0 and math.isfinite(x)):
        raise WaError.naming(
            "{l1_threshold} must be a finite number >= 0, got {threshold!r} (the paper uses "
            "0.1 or 0.01)",
            ExitCode.USAGE,
            threshold=threshold,
        )


@dataclass
class Measured:
    """What one streamed read of a tensor gives: its entropy and, if asked, its filter norms."""

    entropy: float
    l1_norms: torch.Tensor | None  # float64 per output filter (dim 0), for ndim >= 2


def checkpoint_measure(
    ckpt: Checkpoint,
    key: str,
    *,
    bins: int = 10,
    half_open: bool = False,
    l1_norms: bool = False,
    device: torch.device | None = None,
) -> Measured:
    """Entropy (nats) of ``ckpt``'s tensor ``key``, read chunk by chunk, and its filter norms.

    The tensor is never held whole: 8/16-bit dtypes are read once, wider ones once when they fit
    a small budget, else twice (min/max, then the histogram). Filter L1 norms accumulate over the
    first read.

    Example:
        >>> ckpt = open_checkpoint("a.safetensors")  # doctest: +SKIP
        >>> checkpoint_measure(ckpt, "fc.weight", l1_norms=True).entropy  # doctest: +SKIP
    """
    check_bins(bins)
    info = ckpt.info(key)
    _check_real(info.dtype, key)
    device = device or torch.device("cpu")
    shape = tuple(info.shape)
    filters = len(shape) >= 2  # 1-D tensors (biases, norms) have no output filters
    row_len = math.prod(shape[1:]) if filters else 1
    norms = None
    if l1_norms and filters:
        norms = torch.zeros(shape[0], dtype=torch.float64, device=device)
    reader = _ChunkReader(ckpt, key, info.dtype, info.numel, row_len, device)
    passes = [0]

    def chunks() -> Iterator[torch.Tensor]:
        first = passes[0] == 0
        passes[0] += 1
        for start, chunk in reader.chunks():
            if first and norms is not None and row_len:
                _add_row_norms(norms, chunk, start, row_len)
            yield chunk

    counts = _histogram(chunks, info.dtype, info.numel, bins, half_open, key)
    entropy = _entropy(counts, info.numel, half_open, None)
    return Measured(entropy, norms)


class _ChunkReader:
    """Chunks of one tensor from a checkpoint into a reused buffer (kept whole when small)."""

    def __init__(
        self,
        ckpt: Checkpoint,
        key: str,
        dtype: torch.dtype,
        numel: int,
        row_len: int,
        device: torch.device,
    ):
        self.ckpt, self.key, self.dtype, self.numel, self.device = ckpt, key, dtype, numel, device
        # Whole rows per chunk when rows are small, so filter norms sum within one chunk.
        fits = 0 < row_len <= _CHUNK
        self.step = max(1, _CHUNK // row_len) * row_len if fits else _CHUNK
        self.kept: torch.Tensor | None = None
        if numel * dtype.itemsize <= _KEEP_BYTES and not uses_table(dtype):
            self.kept = ckpt.tensor(key).reshape(-1).to(device)  # read once, two passes
        self.buf: torch.Tensor | None = None

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.kept is not None:
            for start in range(0, self.numel, self.step):
                yield start, self.kept[start : start + self.step]
            return
        itemsize = self.dtype.itemsize
        if self.buf is None:
            self.buf = torch.empty(min(self.step, self.numel) * itemsize, dtype=torch.uint8)
        for start in range(0, self.numel, self.step):
            count = min(self.step, self.numel - start)
            view = self.buf[: count * itemsize]
            self.ckpt.read_into(self.key, view, start * itemsize)
            yield start, view.view(self.dtype).to(self.device)


def _add_row_norms(norms: torch.Tensor, chunk: torch.Tensor, start: int, row_len: int) -> None:
    """Add Σ|x| of the chunk's elements [start, start + len) to their rows' norms."""
    n = chunk.numel()
    pos = 0
    row, offset = divmod(start, row_len)
    if offset:  # the end of a row begun in an earlier chunk
        take = min(row_len - offset, n)
        norms[row] += _abs64(chunk[:take]).sum()
        pos, row = take, row + 1
    full = (n - pos) // row_len
    if full:
        block = chunk[pos : pos + full * row_len].reshape(full, row_len)
        # Widened first: a float64 reduction over 16-bit values runs ~3x slower (measured).
        norms[row : row + full] += _abs64(block).sum(dim=1)
        pos, row = pos + full * row_len, row + full
    if pos < n:  # the start of a row that continues in the next chunk
        norms[row] += _abs64(chunk[pos:]).sum()


def _abs64(t: torch.Tensor) -> torch.Tensor:
    """|t| in float64, never in place on the caller's tensor."""
    return t.abs() if t.dtype == torch.float64 else t.to(torch.float64).abs_()
