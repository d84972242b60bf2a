"""EMA coefficients over a trajectory: pure float64 math.

Part of :mod:`wa_cli.methods.ema`. e_0 = θ_0, e_i = β_i e_{i−1} + (1 − β_i) θ_i is Σ c_i θ_i with
c_N = 1 − β_N, c_i = (1 − β_i) Π_{j>i} β_j, c_0 = Π_{j≥1} β_j (SPEC.md, "EMA over a trajectory";
the in-training form is PyTorch's ``get_ema_multi_avg_fn``). No torch here: ``wa ema --help``
shows :data:`LOOKAHEAD_HELP` without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wa_cli.errors import Param, WaError

LOOKAHEAD_HELP = (
    "Lookahead slow weights from a saved trajectory: --every K --alpha A is an EMA of every "
    "K-th checkpoint with decay 1 - A. For a run that did NOT train with Lookahead this is an "
    "EMA of every K-th checkpoint, not Lookahead: the fast weights were never pulled back."
)
"""Help text for ``wa ema --alpha`` (SPEC.md asks that it say what the result is and is not)."""


def _finite(flag: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WaError.naming(
            "{flag} must be a finite number, got {value!r}", flag=Param(flag), value=value
        )
    return float(value)


def _unit(flag: str, value: float) -> float:
    value = _finite(flag, value)
    if not 0.0 <= value <= 1.0:
        raise WaError.naming(
            "{flag} must be in [0, 1], got {value!r}", flag=Param(flag), value=value
        )
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
    alpha = _finite("alpha", alpha)
    if not 0.0 < alpha <= 1.0:
        raise WaError.naming(
            "{alpha} must be in (0, 1] (the slow-weight step), got {got!r}", got=alpha
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
        raise WaError(f"an EMA needs at least one checkpoint, got {n!r}")
    given = [
        f
        for f, v in (
            ("decay", decay),
            ("decay_per_step", decay_per_step),
            ("half_life", half_life),
        )
        if v is not None
    ]
    if len(given) != 1:
        which = " and ".join(f"{{{name}}}" for name in given) or "none"  # fixed names: code
        raise WaError.naming(
            "give exactly one of {decay}, {decay_per_step}, {half_life} (got " + which + ")"
        )
    if decay is not None:
        return [_unit("decay", decay)] * (n - 1)

    if half_life is not None:
        half_life = _finite("half_life", half_life)
        if half_life <= 0:
            raise WaError.naming(
                "{half_life} must be a positive number of steps, got {got!r}", got=half_life
            )
    else:
        assert decay_per_step is not None  # exactly one of the three is given (checked above)
        per_step = _unit("decay_per_step", decay_per_step)
    flag = given[0]
    if steps is None or any(s is None for s in steps):
        raise WaError.naming(
            "{flag} weighs checkpoints by their step gaps, but the checkpoints have no step "
            "numbers (add 'step' metadata or a number to the file names, or use {decay})",
            flag=Param(flag),
        )
    if len(steps) != n:
        raise WaError.naming("got {count} {steps} for {n} checkpoints", count=len(steps), n=n)
    decays: list[float] = []
    for prev, cur in zip(steps[:-1], steps[1:], strict=True):
        assert prev is not None and cur is not None  # no None step (checked above)
        gap = cur - prev
        if gap <= 0:
            raise WaError.naming(
                "{flag} needs strictly increasing steps, but step {cur} follows step {prev} "
                "(check {order}, or use {decay})",
                flag=Param(flag),
                cur=cur,
                prev=prev,
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
