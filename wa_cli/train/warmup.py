"""Learning-rate warmup and decay schedules, as ``torch.optim.lr_scheduler.LambdaLR`` factories.

* Linear warmup, then constant, linear or cosine decay with an optional floor ``min_lr``.
* Goyal et al. 2017 (arXiv 1706.02677): for a k-times larger batch, start from eta/k (not 0) and
  ramp linearly to eta over 5 epochs.
* Untuned warmup for Adam (Ma & Yarats 2019, arXiv 1910.04209): omega_t = 1 - exp(-(1 - beta2) t)
  or min(1, t (1 - beta2) / 2), t = 1, 2, ...: the warmup length follows from beta2 alone.
* SWA (Izmailov et al. 2018, arXiv 1803.05407): hold eta, decay linearly to ``swa_lr``, hold it
  while the trajectory is collected.

Every factory returns a plain ``LambdaLR``: step it once per optimizer step (or once per epoch and
count W, T in epochs). Lambda ``s`` is the number of ``scheduler.step()`` calls so far, i.e. the
0-based index of the next optimizer step, so ``f(0)`` is the factor of the very first update.
Floors given as learning rates (``min_lr``, ``swa_lr``) are turned into factors per parameter
group, dividing by that group's base lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from wa_cli.errors import ExitCode, WaError

Decay = Literal["constant", "linear", "cosine"]


def _check(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (low <= value <= high):
        raise WaError(f"{name} must be in [{low}, {high}], got {value}", ExitCode.USAGE)


def _base_lrs(optimizer: Optimizer) -> list[float]:
    # LambdaLR stores the base lr as `initial_lr` on its first construction; honour it on resume.
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


def warmup_factor(
    step: int,
    warmup_steps: int,
    total_steps: int | None = None,
    decay: Decay = "constant",
    floor: float = 0.0,
    start_factor: float = 0.0,
) -> float:
    """The lr multiplier at ``step``: linear warmup from ``start_factor``, then ``decay``.

    Warmup (s < W): f = start_factor + (1 - start_factor) * s / max(1, W).
    After: constant 1; linear max(0, (T - s) / max(1, T - W)); or cosine 0.5 (1 + cos(pi p)),
    p = min(1, (s - W) / max(1, T - W)); both decays are floored at ``floor``.

    Example:
        >>> warmup_factor(5, warmup_steps=10)
        0.5
        >>> warmup_factor(60, 10, total_steps=110, decay="cosine")
        0.5
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / max(1, warmup_steps)
    if decay == "constant":
        return 1.0
    if total_steps is None:
        raise WaError(f"decay={decay!r} needs total_steps", ExitCode.USAGE)
    span = max(1, total_steps - warmup_steps)
    if decay == "linear":
        f = max(0.0, (total_steps - step) / span)
    elif decay == "cosine":
        p = min(1.0, (step - warmup_steps) / span)
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise WaError(
            f"decay must be 'constant', 'linear' or 'cosine', got {decay!r}", ExitCode.USAGE
        )
    return max(f, floor)


def linear_warmup(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int | None = None,
    decay: Decay = "constant",
    min_lr: float = 0.0,
    start_factor: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup over ``warmup_steps``, then constant, linear or cosine decay to ``min_lr``.

    Example:
        >>> sched = linear_warmup(opt, warmup_steps=500, total_steps=10_000, decay="cosine",
        ...                       min_lr=1e-5)  # doctest: +SKIP
    """
    _check("warmup_steps", warmup_steps, 0)
    _check("start_factor", start_factor, 0.0, 1.0)
    _check("min_lr", min_lr, 0.0)
    if decay != "constant" and total_steps is None:
        raise WaError(f"decay={decay!r} needs total_steps", ExitCode.USAGE)
    if total_steps is not None and total_steps < warmup_steps:
        raise WaError(
            f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})", ExitCode.USAGE
        )

    def make(base: float) -> Callable[[int], float]:
        floor = min_lr / base if base > 0 else 0.0
        return lambda s: warmup_factor(s, warmup_steps, total_steps, decay, floor, start_factor)

    return LambdaLR(optimizer, [make(b) for b in _base_lrs(optimizer)], last_epoch=last_epoch)


def goyal_warmup(
    optimizer: Optimizer,
    scale: float,
    steps_per_epoch: int,
    warmup_epochs: int = 5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Goyal et al.'s gradual warmup: from eta/scale to eta over ``warmup_epochs``, then eta.

    ``scale`` is k, the factor by which batch size and lr were scaled up (eta = k * eta_small), so
    the run starts at the small-batch lr. Combine with a decay via :func:`linear_warmup` and
    ``start_factor=1/k`` directly.

    Example:
        >>> sched = goyal_warmup(opt, scale=32, steps_per_epoch=len(loader))  # doctest: +SKIP
    """
    _check("scale", scale, 1.0)
    return linear_warmup(
        optimizer,
        warmup_steps=warmup_epochs * steps_per_epoch,
        start_factor=1.0 / scale,
        last_epoch=last_epoch,
    )


def untuned_warmup(
    optimizer: Optimizer,
    kind: Literal["exponential", "linear"] = "linear",
    beta2: float | None = None,
    last_epoch: int = -1,
) -> LambdaLR:
    """Ma & Yarats' untuned warmup for Adam: its length is set by beta2, 2 / (1 - beta2) steps.

    exponential: omega_t = 1 - exp(-(1 - beta2) t); linear: omega_t = min(1, t (1 - beta2) / 2),
    with t = s + 1 the 1-based step. ``beta2`` defaults to the optimizer's first group's betas[1].

    Example:
        >>> sched = untuned_warmup(torch.optim.Adam(params), kind="exponential")  # doctest: +SKIP
    """
    if beta2 is None:
        betas = optimizer.param_groups[0].get("betas")
        if betas is None:
            raise WaError(
                f"{type(optimizer).__name__} has no betas; pass beta2=... for untuned warmup",
                ExitCode.USAGE,
            )
        beta2 = float(betas[1])
    _check("beta2", beta2, 0.0, 1.0 - 1e-12)
    rate = 1.0 - beta2
    if kind == "exponential":
        fn: Callable[[int], float] = lambda s: 1.0 - math.exp(-rate * (s + 1))  # noqa: E731
    elif kind == "linear":
        fn = lambda s: min(1.0, (s + 1) * rate / 2.0)  # noqa: E731
    else:
        raise WaError(f"kind must be 'exponential' or 'linear', got {kind!r}", ExitCode.USAGE)
    return LambdaLR(optimizer, fn, last_epoch=last_epoch)


def swa_schedule(
    optimizer: Optimizer,
    swa_lr: float,
    hold_steps: int,
    anneal_steps: int,
    last_epoch: int = -1,
) -> LambdaLR:
    """SWA's schedule: hold eta for ``hold_steps``, decay linearly to ``swa_lr``, then hold it.

    f = 1 for s < H; 1 - (1 - r) (s - H) / max(1, A) for H <= s < H + A; r after, r = swa_lr / eta.
    The SWA paper's code (timgaripov/swa) uses H = 0.5 swa_start and A = 0.4 swa_start epochs
    and collects one checkpoint per epoch from ``swa_start`` on.

    Example:
        >>> sched = swa_schedule(opt, swa_lr=0.01, hold_steps=80, anneal_steps=64)  # doctest: +SKIP
    """
    _check("swa_lr", swa_lr, 0.0)
    _check("hold_steps", hold_steps, 0)
    _check("anneal_steps", anneal_steps, 0)

    def make(base: float) -> Callable[[int], float]:
        r = swa_lr / base if base > 0 else 1.0

        def f(s: int) -> float:
            if s < hold_steps:
                return 1.0
            if s < hold_steps + anneal_steps:
                return 1.0 - (1.0 - r) * (s - hold_steps) / max(1, anneal_steps)
            return r

        return f

    return LambdaLR(optimizer, [make(b) for b in _base_lrs(optimizer)], last_epoch=last_epoch)
