"""Model Stock: the ratio between the mean of fine-tunes and their base, from their angle.

Jang, Yun and Han 2024, "Model Stock: All we need is just a few fine-tuned models" (ECCV), Eq. 4:
for N ≥ 2 fine-tunes θ_1..θ_N of one pre-trained θ_0, per tensor

    t = N·cos θ / (1 + (N − 1)·cos θ),    θ_H = t · mean(θ_1..θ_N) + (1 − t) · θ_0,

with θ the angle between the fine-tunes' offsets θ_i − θ_0. Like mergekit's ``model_stock``
(the reference followed here, per tensor rather than per output row), cos θ is the mean of the
pairwise cosines; a zero offset counts as cosine 0 (mergekit's epsilon does the same), and the
mean is clamped to [0, 1], since the paper's geometry needs an acute angle (a negative mean
cosine would make t negative or infinite: the fine-tunes then keep the base's values).

Two streaming passes over the inputs: the first reads each key's N + 1 tensors once to find its
t (float64 dot products summed over slices of one key at a time), the second is the engine's
ordinary weighted sum with per-key weights (1 − t, t/N, ..., t/N).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch
from typing_extensions import Unpack

from wa_cli.engine.combine import WeightsFn
from wa_cli.engine.plan import KeyPlan, Plan, build_plan
from wa_cli.engine.run import RunReport
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.inputs import Inputs, open_inputs
from wa_cli.methods.soup.request import SoupWriteArgs, soup_request
from wa_cli.methods.trajectory import reduce_to_file


def stock_ratio(cos_theta: float, n: int) -> float:
    """t = N cos θ / (1 + (N − 1) cos θ), with cos θ clamped to [0, 1].

    Example:
        >>> stock_ratio(1.0, 3), stock_ratio(0.0, 3), round(stock_ratio(0.5, 2), 4)
        (1.0, 0.0, 0.6667)
    """
    c = min(max(cos_theta, 0.0), 1.0)
    return n * c / (1.0 + (n - 1) * c)


_CHUNK = 1 << 20
"""Elements per slice of the float64 offsets: memory stays N slices, not N float64 copies."""


def mean_pairwise_cosine(base: torch.Tensor, finetunes: list[torch.Tensor]) -> float:
    """Mean of cos(θ_i − θ_0, θ_j − θ_0) over pairs i < j, in float64 (zero offsets: 0).

    The Gram matrix of the offsets is summed slice by slice, so a key's float64 offsets are never
    all in memory (N of them would be 2N times a float32 tensor: an embedding's worth each).
    """
    n = len(finetunes)
    flat_base = base.reshape(-1)
    flat = [t.reshape(-1) for t in finetunes]
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, flat_base.numel(), _CHUNK):
        stop = start + _CHUNK
        b = flat_base[start:stop].double()
        offsets = torch.stack([f[start:stop].double() - b for f in flat])
        gram += offsets @ offsets.T
    norms = gram.diagonal().sqrt().tolist()
    cosines = []
    for i, j in itertools.combinations(range(n), 2):
        denominator = norms[i] * norms[j]
        dot = float(gram[i, j])
        cosines.append(dot / denominator if denominator > 0 else 0.0)
    return sum(cosines) / len(cosines)


def stock_weights(plan: Plan) -> dict[str, list[float]]:
    """Per interpolated key, the weights (1 − t, t/N, ..., t/N) over (base, fine-tunes)."""
    n = len(plan.checkpoints) - 1
    weights: dict[str, list[float]] = {}
    for entry in plan.keys:
        if not entry.interpolate:
            continue
        _all_hold(entry, n + 1)
        tensors = [plan.checkpoints[i].tensor(entry.key) for i in entry.sources]
        t = stock_ratio(mean_pairwise_cosine(tensors[0], tensors[1:]), n)
        weights[entry.key] = [1.0 - t, *([t / n] * n)]
    return weights


def _all_hold(entry: KeyPlan, n: int) -> None:
    if len(entry.sources) != n:
        raise WaError.naming(
            "key {key!r} is not held by the base and every fine-tune; Model Stock needs them "
            "all ({keys=}'intersection' leaves such keys out)",
            ExitCode.INCOMPATIBLE,
            key=entry.key,
        )


def model_stock_to_file(
    base: Inputs,
    finetunes: Inputs,
    output: str | os.PathLike[str],
    **options: Unpack[SoupWriteArgs],
) -> RunReport:
    """Model Stock of ``finetunes`` (N ≥ 2) around ``base`` into a safetensors file.

    ``options``: reading (``key``, ``strip_prefixes``, ``include``, ..., for the base and the
    fine-tunes alike), combining (``dtype``, ``precision``, ...) and writing (``force``,
    ``max_shard_size``, ...) as for ``wa.average_to_file``, or the option objects ``read=``,
    ``reduce=``, ``write=`` (older names ``opts=``, ``out=``). The report's
    ``params["ratios"]`` holds each key's t; ``input_weights`` the mean weight of each input
    over the keys (the base first).

    Example:
        >>> model_stock_to_file("pre.safetensors", ["ft_a.safetensors", "ft_b.safetensors"],
        ...                     "stock.safetensors")  # doctest: +SKIP
    """
    request = soup_request("model_stock_to_file", options, own=())
    opts, out = request.reduce, request.write
    base_ckpts = open_inputs(base, options=request.read)
    tuned = open_inputs(finetunes, options=request.read)
    if len(base_ckpts) != 1:
        raise WaError.naming("model_stock needs one {base}, got {count}", count=len(base_ckpts))
    if len(tuned) < 2:
        raise WaError(f"model_stock needs at least 2 fine-tunes of the base, got {len(tuned)}")
    plan = build_plan([*base_ckpts, *tuned], keys=opts.keys, non_float=opts.non_float,
                      dtype=opts.dtype)  # fmt: skip
    per_key = stock_weights(plan)

    def weights(entry: KeyPlan) -> list[float]:
        return per_key[entry.key]

    fn: WeightsFn = weights
    ratios = {k: w[1] * (len(w) - 1) for k, w in per_key.items()}
    mean_t = sum(ratios.values()) / len(ratios) if ratios else 0.0
    params: dict[str, Any] = {"ratios": ratios, "mean_ratio": mean_t, **opts.params()}
    n = len(tuned)
    input_weights = [1.0 - mean_t, *([mean_t / n] * n)]
    return reduce_to_file(
        plan, fn, output,
        method="model_stock", params=params, input_weights=input_weights, opts=opts, out=out,
    )  # fmt: skip
