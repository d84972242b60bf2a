"""How related two models are: per-layer cosine similarity of their weights, measured cheaply.

Part of :mod:`wa_cli.methods.graft`. Filter Grafting (Meng et al. 2020) grafts networks *during*
training, which keeps their filters aligned. Grafting two finished, independently initialised
runs mixes filters that do not correspond (the hidden units of two independent networks are in
arbitrary order), and destroys accuracy: 75% ± 16 against 99% in an earlier evidence run
(docs/commands.md). Weights of independent initialisations are nearly orthogonal (cosine ≈ 0, of
the order of 1/√n for n weights), while fine-tunes of one initialisation, or runs grafted during
training, stay close (cosine near 1). So the cosine of each weight matrix between the two models,
over a bounded prefix of its elements, says which case a graft is in.

The same holds for a mean: averaging two independently trained seeds gave 10.3 % accuracy (issue
22), so ``wa average`` and ``wa ema`` warn through :func:`unrelated_mean_warnings` too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wa_cli.engine.plan import KeyPlan, Plan
from wa_cli.methods.graft.histogram import one_thread

SAMPLE_ELEMENTS = 1 << 16
"""Elements read per tensor and model (a prefix): for unrelated models the cosine of 65,536
weights is within about 0.004 of 0 (1/sqrt(n)), far from the 0.2 threshold."""
MAX_LAYERS = 256
"""Layers measured at most, evenly spread over the model: a median over 256 layers is settled,
and the check's reads stay bounded (at most 2 x 256 x 64K weights) whatever the model's size.
With 1M-element prefixes of every layer it had read 390 MB of a 2 x 416 MB graft's inputs."""
UNRELATED_BELOW = 0.2
"""Median per-layer cosine under which two models are taken as independently initialised."""
MEAN_PAIRS = 4
"""Pairs a mean measures at most: the first input against inputs evenly spread to the last (a
trajectory of one run stays related to its first checkpoint; a second run's do not)."""
MIN_ELEMENTS = 64
"""Smaller tensors (biases, scales) say little: a few numbers can agree by chance."""


@dataclass(frozen=True)
class Relatedness:
    """The per-layer cosine similarities of two models' weights (receiver, donor)."""

    pair: tuple[int, int]
    cosines: dict[str, float]

    @property
    def median(self) -> float | None:
        return statistics.median(self.cosines.values()) if self.cosines else None

    @property
    def unrelated(self) -> bool:
        m = self.median
        return m is not None and m < UNRELATED_BELOW


def _prefix(plan: Plan, index: int, entry: KeyPlan, n: int) -> torch.Tensor:
    dtype = entry.dtype_of(index)
    buf = torch.empty(n * dtype.itemsize, dtype=torch.uint8)
    plan.checkpoints[index].read_into(entry.key, buf)
    return buf.view(dtype).to(torch.float64)


def weight_keys(plan: Plan) -> list[str]:
    """The keys whose cosine is measured: floating weight matrices and kernels (ndim >= 2), at
    most :data:`MAX_LAYERS` of them, evenly spread over the model."""
    keys = [
        k.key
        for k in plan.keys
        if k.interpolate and len(k.shape) >= 2 and k.numel >= MIN_ELEMENTS and len(k.sources) > 1
    ]
    if len(keys) <= MAX_LAYERS:
        return keys
    return [keys[i * len(keys) // MAX_LAYERS] for i in range(MAX_LAYERS)]


def measure(plan: Plan, pair: tuple[int, int], keys: Sequence[str]) -> Relatedness:
    """Cosine similarity, per key, of the first :data:`SAMPLE_ELEMENTS` weights of two inputs."""
    with one_thread():  # memory-bound: spinning OpenMP workers cost 2-3x on shared cores
        return _measure(plan, pair, keys)


def _measure(plan: Plan, pair: tuple[int, int], keys: Sequence[str]) -> Relatedness:
    cosines: dict[str, float] = {}
    a, b = pair
    by_key = {k.key: k for k in plan.keys}
    for key in keys:
        entry = by_key[key]
        if a not in entry.sources or b not in entry.sources:
            continue
        n = min(entry.numel, SAMPLE_ELEMENTS)
        x, y = _prefix(plan, a, entry, n), _prefix(plan, b, entry, n)
        norms = float(x.norm() * y.norm())
        if norms > 0 and torch.isfinite(x).all() and torch.isfinite(y).all():
            cosines[key] = float(x @ y) / norms
    return Relatedness(pair, cosines)


def unrelated_warnings(
    plan: Plan, pairs: Sequence[tuple[int, int]], names: Sequence[str]
) -> list[str]:
    """One warning line per pair of inputs that look independently initialised.

    Example:
        >>> unrelated_warnings(check_plan, [(0, 1)], ["a", "b"])  # doctest: +SKIP
        ["'a' and 'b' look independently trained (median per-layer weight cosine 0.01 ..."]
    """
    keys = weight_keys(plan)
    if not keys:
        return []
    out = []
    try:
        for pair in pairs:
            found = measure(plan, pair, keys)
            if found.unrelated:
                r, d = pair
                out.append(
                    f"'{names[r]}' and '{names[d]}' look independently trained (median per-layer "
                    f"weight cosine {found.median:.2f} over {len(found.cosines)} layers): grafting "
                    "finished independent runs destroys accuracy (their filters do not "
                    "correspond); graft during training instead, e.g. every few epochs"
                )
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
    return out


def unrelated_mean_warnings(
    plan: Plan, weights: Sequence[float], method: str = "average"
) -> list[str]:
    """One warning when inputs of a mean (or EMA) look independently trained, else none.

    The first input with a non-zero weight is measured against at most :data:`MEAN_PAIRS`
    others, evenly spread up to the last one; the checkpoints stay open (the run reads them).

    Example:
        >>> unrelated_mean_warnings(plan, [1.0, 1.0])  # doctest: +SKIP
        ["'a' and 'b' look independently trained (median per-layer weight cosine 0.02 ..."]
    """
    used = [i for i, w in enumerate(weights) if w != 0]
    keys = weight_keys(plan)
    if len(used) < 2 or not keys:
        return []
    first, rest = used[0], used[1:]
    picks = sorted({rest[len(rest) - 1 - i * len(rest) // MEAN_PAIRS] for i in range(MEAN_PAIRS)})
    for other in reversed(picks):  # the last input first: where a second run usually sits
        found = measure(plan, (first, other), keys)
        if found.unrelated:
            names = [str(plan.checkpoints[i].path) for i in (first, other)]
            return [
                f"'{names[0]}' and '{names[1]}' look independently trained (median per-layer "
                f"weight cosine {found.median:.2f} over {len(found.cosines)} layers): the {method} "
                "of independent runs mixes weights that do not correspond and is usually a "
                "broken model; use checkpoints of one run (or of runs from one initialisation)"
            ]
    return []
