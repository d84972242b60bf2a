"""Coefficients of an EMA over a saved trajectory, and of a weighted mean.

An exponential moving average over ordered checkpoints θ_0..θ_N (SPEC.md, "EMA over a
trajectory"; the in-training form is PyTorch's ``get_ema_multi_avg_fn`` and timm's ModelEma),

    e_0 = θ_0,    e_i = β_i e_{i−1} + (1 − β_i) θ_i,

is a linear combination Σ c_i θ_i with c_N = 1 − β_N, c_i = (1 − β_i) Π_{j>i} β_j and
c_0 = Π_{j≥1} β_j, which sum to 1. Computing the coefficients first lets the averaging engine
read each tensor once and combine all N+1 checkpoints in one pass, with no running state.

β_i = D for a fixed ``--decay``; step-aware decay (``--decay-per-step d`` or ``--half-life H``,
d = 0.5^(1/H)) uses β_i = d^(s_i − s_{i−1}), so uneven gaps between saves weigh correctly.
Lookahead's slow weights (Zhang et al. 2019, arXiv 1907.08610), φ_t = (1 − α) φ_{t−1} + α θ_{tk},
are this EMA over every k-th checkpoint with decay 1 − α (:func:`lookahead_decay`).

:func:`ema` (a notebook generator) and :func:`ema_to_file` (streamed, atomic) hand those
coefficients to the same engine as ``wa average`` (:func:`wa_cli.pipeline.combine_to_file`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError

if TYPE_CHECKING:
    # The coefficients need no torch, and `wa ema --help` (which shows LOOKAHEAD_HELP) must not
    # pay for importing it: the engine is imported inside the functions that run it.
    import torch

    from wa_cli.average import PathOrCheckpoint
    from wa_cli.combine import WeightsFn
    from wa_cli.dtypes import Precision
    from wa_cli.io.reader import Checkpoint
    from wa_cli.pipeline import RunReport
    from wa_cli.plan import KeyPlan, KeysMode, NonFloatPolicy, Plan

LOOKAHEAD_HELP = (
    "Lookahead slow weights from a saved trajectory: --every K --alpha A is an EMA of every "
    "K-th checkpoint with decay 1 - A. For a run that did NOT train with Lookahead this is an "
    "EMA of every K-th checkpoint, not Lookahead: the fast weights were never pulled back."
)
"""Help text for ``wa ema --alpha`` (SPEC.md asks that it say what the result is and is not)."""


def _finite(flag: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WaError(f"{flag} must be a finite number, got {value!r}", ExitCode.USAGE)
    return float(value)


def _unit(flag: str, value: float) -> float:
    value = _finite(flag, value)
    if not 0.0 <= value <= 1.0:
        raise WaError(f"{flag} must be in [0, 1], got {value!r}", ExitCode.USAGE)
    return value


def lookahead_decay(alpha: float) -> float:
    """The EMA decay that reproduces Lookahead's slow-weight step ``alpha``: ``1 - alpha``.

    Args:
        alpha: Slow-weight step size α in (0, 1] (the paper's default 0.5; its code uses 0.8).

    Returns:
        The decay D = 1 − α, for :func:`ema_coefficients` over every k-th checkpoint.

    Example:
        >>> lookahead_decay(0.8)
        0.19999999999999996
    """
    alpha = _finite("--alpha", alpha)
    if not 0.0 < alpha <= 1.0:
        raise WaError(
            f"--alpha must be in (0, 1] (the slow-weight step), got {alpha!r}", ExitCode.USAGE
        )
    return 1.0 - alpha


def ema_decays(
    n: int,
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    steps: Sequence[int | None] | None = None,
) -> list[float]:
    """The per-checkpoint decays β_1..β_{n−1} (β_0 is unused: e_0 is a copy of θ_0).

    Arguments as for :func:`ema_coefficients`.

    Example:
        >>> ema_decays(3, decay_per_step=0.5, steps=[0, 1, 3])
        [0.5, 0.25]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise WaError(f"an EMA needs at least one checkpoint, got {n!r}", ExitCode.USAGE)
    given = [
        f
        for f, v in (
            ("--decay", decay),
            ("--decay-per-step", decay_per_step),
            ("--half-life", half_life),
        )
        if v is not None
    ]
    if len(given) != 1:
        which = f"got {' and '.join(given)}" if given else "got none"
        raise WaError(
            f"give exactly one of --decay, --decay-per-step, --half-life ({which})",
            ExitCode.USAGE,
        )
    if decay is not None:
        return [_unit("--decay", decay)] * (n - 1)

    if half_life is not None:
        half_life = _finite("--half-life", half_life)
        if half_life <= 0:
            raise WaError(
                f"--half-life must be a positive number of steps, got {half_life!r}",
                ExitCode.USAGE,
            )
    else:
        per_step = _unit("--decay-per-step", decay_per_step)  # type: ignore[arg-type]
    flag = given[0]
    if steps is None or any(s is None for s in steps):
        raise WaError(
            f"{flag} weighs checkpoints by their step gaps, but the checkpoints have no step "
            "numbers (add 'step' metadata or a number to the file names, or use --decay)",
            ExitCode.USAGE,
        )
    if len(steps) != n:
        raise ValueError(f"{len(steps)} steps for {n} checkpoints")
    decays: list[float] = []
    for prev, cur in zip(steps[:-1], steps[1:], strict=True):
        gap = cur - prev  # type: ignore[operator]
        if gap <= 0:
            raise WaError(
                f"{flag} needs strictly increasing steps, but step {cur} follows step {prev} "
                "(check --order, or use --decay)",
                ExitCode.USAGE,
            )
        # 0.5 ** (gap / H) rounds once; (0.5 ** (1 / H)) ** gap would compound the error of d.
        decays.append(0.5 ** (gap / half_life) if half_life is not None else per_step**gap)
    return decays


def ema_coefficients(
    n: int,
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    steps: Sequence[int | None] | None = None,
) -> list[float]:
    """Coefficients c_0..c_{n−1} with EMA(θ_0..θ_{n−1}) = Σ c_i θ_i, in float64.

    e_0 = θ_0, e_i = β_i e_{i−1} + (1 − β_i) θ_i, with β_i = ``decay``, or
    ``decay_per_step`` ** (s_i − s_{i−1}), or 0.5 ** ((s_i − s_{i−1}) / ``half_life``).
    The coefficients sum to 1; decay 0 gives [0, ..., 0, 1] (the last checkpoint) and decay 1
    gives [1, 0, ..., 0] (the first).

    Args:
        n: Number of checkpoints, in trajectory order.
        decay: Fixed decay D in [0, 1] for every checkpoint.
        decay_per_step: Decay per training step d in [0, 1] (needs ``steps``).
        half_life: Steps after which a checkpoint's weight halves, > 0 (needs ``steps``).
        steps: The checkpoints' training steps, strictly increasing (step-aware decay only).

    Returns:
        ``n`` float64 coefficients, oldest first.

    Raises:
        WaError: (USAGE) not exactly one of the three decays, a decay outside [0, 1], a
            half-life ≤ 0, steps missing or not strictly increasing under step-aware decay.

    Example:
        >>> ema_coefficients(3, decay=0.5)
        [0.25, 0.25, 0.5]
    """
    betas = ema_decays(
        n, decay=decay, decay_per_step=decay_per_step, half_life=half_life, steps=steps
    )
    # Walk back from the newest: c_i = (1 − β_i) · Π_{j>i} β_j. Products, not 1 − Σ, so tiny
    # weights of old checkpoints keep their relative precision.
    coefficients = [0.0] * n
    tail = 1.0
    for i in range(n - 1, 0, -1):
        beta = betas[i - 1]
        coefficients[i] = (1.0 - beta) * tail
        tail *= beta
    coefficients[0] = tail
    return coefficients


def weighted_mean_coefficients(weights: Sequence[float]) -> list[float]:
    """Normalise weights w_i ≥ 0 to coefficients w_i / Σ w in float64 (``wa average --weights``).

    Args:
        weights: One finite, non-negative weight per checkpoint, not all zero.

    Returns:
        The coefficients, summing to 1.

    Raises:
        WaError: (USAGE) no weights, a negative or non-finite weight, or all weights zero.

    Example:
        >>> weighted_mean_coefficients([1, 2, 1])
        [0.25, 0.5, 0.25]
    """
    if not weights:
        raise WaError("--weights needs one weight per checkpoint, got none", ExitCode.USAGE)
    values: list[float] = []
    for i, w in enumerate(weights, start=1):
        w = _finite(f"--weights value {i}", w)
        if w < 0:
            raise WaError(
                f"--weights value {i} is {w!r}; weights must be non-negative", ExitCode.USAGE
            )
        values.append(w)
    total = math.fsum(values)
    if total == 0:
        raise WaError(
            "--weights are all zero; give at least one checkpoint a positive weight",
            ExitCode.USAGE,
        )
    return [w / total for w in values]


def parse_weights(text: str, n: int) -> list[float]:
    """Parse ``--weights 1,2,1`` into one validated weight per checkpoint (not normalised).

    Args:
        text: Comma-separated numbers, in trajectory order.
        n: Number of selected checkpoints.

    Returns:
        The weights as floats.

    Raises:
        WaError: (USAGE) a value that is not a number, a count other than ``n``, or weights
            that :func:`weighted_mean_coefficients` rejects.

    Example:
        >>> parse_weights("1, 2, 1", 3)
        [1.0, 2.0, 1.0]
    """
    parts = [p.strip() for p in text.split(",")]
    weights: list[float] = []
    for i, part in enumerate(parts, start=1):
        try:
            weights.append(float(part))
        except ValueError:
            raise WaError(
                f"--weights value {i} is {part!r}, not a number (expected e.g. --weights 1,2,1)",
                ExitCode.USAGE,
            ) from None
    if len(weights) != n:
        raise WaError(
            f"--weights has {len(weights)} values but {n} checkpoints are selected "
            "(give one weight per checkpoint, in trajectory order; --dry-run lists them)",
            ExitCode.USAGE,
        )
    weighted_mean_coefficients(weights)
    return weights


# --------------------------------------------------------------------------------------------
# Running an EMA through the averaging engine
# --------------------------------------------------------------------------------------------


def decay_options(
    decay: float | None, decay_per_step: float | None, half_life: float | None, alpha: float | None
) -> dict[str, float | None]:
    """Keywords for :func:`ema_coefficients`, Lookahead's ``alpha`` turned into a decay.

    Example:
        >>> decay_options(None, None, None, 0.5)
        {'decay': 0.5, 'decay_per_step': None, 'half_life': None}
    """
    if alpha is not None:
        if decay is not None:
            raise WaError(
                "give --alpha or --decay, not both (--alpha A is --decay 1-A)", ExitCode.USAGE
            )
        decay = lookahead_decay(alpha)
    return {"decay": decay, "decay_per_step": decay_per_step, "half_life": half_life}


def ema_weights(
    steps: Sequence[int | None] | None,
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
) -> WeightsFn:
    """The engine's per-key weights for an EMA over checkpoints in trajectory order.

    A key held by every input gets :func:`ema_coefficients` of the whole trajectory. A key held
    by only some inputs (``--keys union``) gets the EMA of the sub-trajectory that holds it:
    its first holder is its e_0, and step-aware decay uses the gaps between holders. (Merely
    renormalising the full coefficients would fail for decay 0 when the last input lacks the
    key, and would weigh a key that appears mid-run as if it had been there all along.)

    Args:
        steps: The inputs' training steps (needed by step-aware decay only).
        decay: Fixed decay D.
        decay_per_step: Decay per training step d.
        half_life: Half-life in steps.

    Returns:
        A function from a :class:`~wa_cli.plan.KeyPlan` to one weight per ``entry.sources``.

    Example:
        >>> fn = ema_weights([0, 10, 20], decay=0.5)
        >>> fn(plan.keys[0])  # a key all three inputs hold  # doctest: +SKIP
        [0.25, 0.25, 0.5]
    """
    cache: dict[tuple[int, ...], list[float]] = {}

    def for_entry(entry: KeyPlan) -> list[float]:
        sources = entry.sources
        if sources not in cache:
            sub = None if steps is None else [steps[i] for i in sources]
            cache[sources] = ema_coefficients(
                len(sources),
                decay=decay,
                decay_per_step=decay_per_step,
                half_life=half_life,
                steps=sub,
            )
        return cache[sources]

    return for_entry


def _steps_of(ckpts: Sequence[Checkpoint], step_aware: bool) -> list[int | None] | None:
    from wa_cli.select import order_trajectory

    if not step_aware:
        return None
    # "given" keeps the caller's order and reads steps from metadata, else from the names.
    return [e.step for e in order_trajectory(ckpts, "given")]


def _prepare(
    inputs: Sequence[PathOrCheckpoint],
    steps: Sequence[int | None] | None,
    decays: dict[str, float | None],
    keys: KeysMode,
    non_float: NonFloatPolicy,
    dtype: torch.dtype | None,
) -> tuple[Plan, list[int | None] | None, list[float], WeightsFn]:
    from wa_cli.average import open_all
    from wa_cli.plan import build_plan

    ckpts = open_all(inputs)
    step_aware = decays["decay"] is None
    if steps is None:
        steps = _steps_of(ckpts, step_aware)
    elif len(steps) != len(ckpts):
        raise WaError(
            f"got {len(steps)} steps for {len(ckpts)} checkpoints (give one step per checkpoint)",
            ExitCode.USAGE,
        )
    steps = None if steps is None else list(steps)
    # Computed before the plan so that a bad decay fails before any header is compared.
    coefficients = ema_coefficients(len(ckpts), **decays, steps=steps)  # type: ignore[arg-type]
    plan = build_plan(ckpts, keys=keys, non_float=non_float, dtype=dtype)
    return plan, steps, coefficients, ema_weights(steps, **decays)  # type: ignore[arg-type]


def ema(
    inputs: Sequence[PathOrCheckpoint],
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    alpha: float | None = None,
    steps: Sequence[int | None] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """EMA of checkpoints in the order given; yields ``(key, tensor)`` pairs one at a time.

    e_0 = the first input, e_i = β_i e_{i−1} + (1 − β_i) θ_i, computed in one pass as
    Σ c_i θ_i (:func:`ema_coefficients`). Give exactly one of ``decay``, ``decay_per_step``,
    ``half_life`` or ``alpha`` (Lookahead's slow step, = decay 1 − α). Step-aware decay reads
    ``steps`` from each input's ``step`` metadata (else the last number in its name) unless
    given. The inputs are not reordered: sort them with :func:`wa_cli.select.order_trajectory`.

    Args:
        inputs: Checkpoint paths or opened checkpoints, oldest first.
        decay: Fixed decay D in [0, 1].
        decay_per_step: Decay per training step d in [0, 1].
        half_life: Steps after which a checkpoint's weight halves (> 0).
        alpha: Lookahead slow-weight step α in (0, 1].
        steps: The inputs' training steps (step-aware decay; default: read from the inputs).
        keys: ``strict``, ``intersection`` or ``union`` (see :func:`ema_weights`).
        non_float: Copy non-float tensors from the ``last`` or ``first`` input, or ``error``.
        dtype: Output dtype of floating tensors (default: each tensor's own).
        precision: Accumulator dtype (``auto``: wider than the input).
        device: Where to reduce.

    Returns:
        An iterator of ``(key, tensor)``; ``dict(ema(...))`` is a state dict.

    Example:
        >>> paths = ["ckpt_100.safetensors", "ckpt_200.safetensors"]
        >>> state = dict(ema(paths, decay=0.9))  # doctest: +SKIP
    """
    from wa_cli.combine import linear_combination
    from wa_cli.device import resolve_device
    from wa_cli.pipeline import assemble

    decays = decay_options(decay, decay_per_step, half_life, alpha)
    plan, _, _, weights = _prepare(inputs, steps, decays, keys, non_float, dtype)
    chunks = linear_combination(plan, weights, precision=precision, device=resolve_device(device))
    return assemble(plan, chunks)


def ema_to_file(
    inputs: Sequence[PathOrCheckpoint],
    output: str | os.PathLike[str],
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    alpha: float | None = None,
    steps: Sequence[int | None] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
    force: bool = False,
    max_shard_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> RunReport:
    """EMA of checkpoints (in the order given) into a safetensors file, streaming and atomically.

    Arguments as for :func:`ema`, plus the output options of
    :func:`wa_cli.average.average_to_file`. The report's ``input_weights`` are each input's
    coefficient in the result (they sum to 1).

    Example:
        >>> report = ema_to_file(paths, "ema.safetensors", half_life=500)  # doctest: +SKIP
        >>> report.input_weights  # doctest: +SKIP
        [0.03, 0.06, 0.13, 0.26, 0.52]
    """
    from wa_cli.device import resolve_device
    from wa_cli.pipeline import combine_to_file
    from wa_cli.provenance import provenance

    decays = decay_options(decay, decay_per_step, half_life, alpha)
    plan, steps_used, coefficients, weights = _prepare(
        inputs, steps, decays, keys, non_float, dtype
    )
    params: dict[str, Any] = {
        **decays, "alpha": alpha, "steps": steps_used, "keys": keys, "non_float": non_float,
        "precision": precision, "dtype": str(dtype).removeprefix("torch.") if dtype else None,
    }  # fmt: skip
    return combine_to_file(
        plan,
        weights,
        output,
        method="ema",
        metadata=provenance(plan.checkpoints, "ema", params, command),
        params=params,
        input_weights=coefficients,
        precision=precision,
        device=resolve_device(device),
        force=force,
        max_shard_size=max_shard_size,
        progress=progress,
    )
