"""How related two models are: per-layer cosine similarity of their weights, measured cheaply.

Part of :mod:`wa_cli.methods.graft`. Filter Grafting (Meng et al. 2020) grafts networks *during*
training, which keeps their filters aligned. Grafting two finished, independently initialised
runs mixes filters that do not correspond (the hidden units of two independent networks are in
arbitrary order), and destroys accuracy: 75% ± 16 against 99% in an earlier evidence run
(docs/commands.md). Weights of independent initialisations are nearly orthogonal (cosine ≈ 0, of
the order of 1/√n for n weights), while fine-tunes of one initialisation, or runs grafted during
training, stay close (cosine near 1). So the cosine of each weight matrix between the two models,
over a bounded prefix of its elements, says which case a graft is in.
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
