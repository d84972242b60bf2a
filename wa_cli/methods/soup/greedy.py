"""Greedy soups and WiSE-FT sweeps: averages chosen by scoring candidates on held-out data.

* Greedy soup (Wortsman et al. 2022, "Model soups", ICML, Recipe 1): score every input, order
  them by score (best first, ties in input order), start the soup with the best, then add each
  next input when the soup's score with it is at least as good as without (ties are kept: the
  paper's "does not get worse"; the authors' reference code compares strictly). Exactly 2N − 1
  evaluations, or N − 1 when every input's score is stored in it.
* WiSE-FT (Wortsman et al. 2022, CVPR): score (1 − α)·θ_0 + α·θ_1 for each α on a grid and keep
  the best (the smallest α among equal scores: the one closest to θ_0).

Candidates are built in memory: the user's model plus one float32 sum of the kept inputs and the
input being added, each candidate loaded into the model key by key (the sweep holds its two
inputs). The chosen result is then written by the engine as every average
is, so the output is exact and streamed; only the search is in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import Checkpoint
from wa_cli.methods.bn.usercode import load_state_dict_strict
from wa_cli.methods.soup.evaluate import Evaluator


@dataclass
class SoupStep:
    """One row of the greedy soup's table."""

    input: str
    score: float
    """The input's own score (evaluated, or stored in it)."""
    soup_score: float
    """The soup's score with this input added (for the first: its own score)."""
    kept: bool


@dataclass
class GreedySoup:
    """The greedy soup's choices: the table in score order and the kept inputs' indices."""

    steps: list[SoupStep]
    kept: list[int]
    evaluations: int
    mode: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "evaluations": self.evaluations,
            "kept": self.kept,
            "steps": [vars(s) for s in self.steps],
        }


def _state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return {key: ckpt.tensor(key) for key in ckpt.keys()}


def _load_mean(
    model: nn.Module,
    total: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    count: int,
) -> None:
    """Load ``(total + state) / count`` (``fixed`` for non-floating keys) into ``model``.

    Key by key into the model's own tensors, so no candidate state dict (a model's size) is ever
    built; a ``state`` that does not fit is explained by :func:`load_state_dict_strict`.
    """
    target = model.state_dict()
    if target.keys() != state.keys() or any(target[k].shape != v.shape for k, v in state.items()):
        load_state_dict_strict(model, state)  # raises the one-line explanation
    with torch.no_grad():
        for k, v in state.items():
            value = ((total[k] + v.float()) / count).to(v.dtype) if k in total else fixed[k]
            target[k].copy_(value)


def _scored(model: nn.Module, state: dict[str, torch.Tensor], evaluate: Evaluator) -> float:
    load_state_dict_strict(model, state)
    return evaluate(model)


def greedy_soup(
    ckpts: Sequence[Checkpoint],
    model: nn.Module,
    evaluate: Evaluator,
    *,
    stored_scores: Sequence[float] | None = None,
) -> GreedySoup:
    """Choose the greedy soup's ingredients among ``ckpts`` (the recipe in the module docstring).

    Args:
        ckpts: the candidates, opened (headers only; each is read when it is scored or added).
        model: the user's model; every candidate is loaded into it strictly before scoring.
        evaluate: the scoring hook (its ``mode`` says which way is better).
        stored_scores: each input's own score as stored in it (saves N evaluations).

    Example:
        >>> soup = greedy_soup(ckpts, build(), Evaluator(val_acc))  # doctest: +SKIP
        >>> soup.kept  # doctest: +SKIP
        [3, 0, 5]
    """
    n = len(ckpts)
    if n < 2:
        raise WaError(f"a greedy soup needs at least 2 inputs, got {n}")
    if stored_scores is not None and len(stored_scores) != n:
        raise WaError("one stored score per input is needed")
    scores = list(stored_scores) if stored_scores is not None else []
    if not scores:
        scores = [_scored(model, _state(c), evaluate) for c in ckpts]
    better_first = evaluate.mode == "max"
    order = sorted(range(n), key=lambda i: -scores[i] if better_first else scores[i])

    first = _state(ckpts[order[0]])
    # Only the sum and the best input's non-floating entries stay: no input is kept whole.
    total = {k: v.float() for k, v in first.items() if v.is_floating_point()}
    fixed = {k: v for k, v in first.items() if k not in total}
    del first
    kept, soup_score = [order[0]], scores[order[0]]
    steps = [SoupStep(ckpts[order[0]].name, soup_score, soup_score, True)]
    for i in order[1:]:
        state = _state(ckpts[i])
        _load_mean(model, total, fixed, state, len(kept) + 1)
        score = evaluate(model)
        keep = evaluate.better_or_equal(score, soup_score)
        steps.append(SoupStep(ckpts[i].name, scores[i], score, keep))
        if keep:
            for k in total:
                total[k] += state[k].float()
            kept.append(i)
            soup_score = score
        del state  # before the next input is read: one input in memory, not two
    notes = ["ties are kept (the paper's rule; the reference code compares strictly)"]
    return GreedySoup(steps, sorted(kept), evaluate.calls, str(evaluate.mode), notes)


def parse_grid(spec: str) -> list[float]:
    """``"A:B:STEP"`` as the values A, A + STEP, ... up to B (inclusive, within rounding).

    Example:
        >>> parse_grid("0:1:0.25")
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    parts = spec.split(":") if isinstance(spec, str) else []
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise WaError.naming("{sweep=}{spec!r} must be START:STOP:STEP (e.g. 0:1:0.1)",
                             ExitCode.USAGE, spec=spec) from None  # fmt: skip
    if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start:
        raise WaError.naming("{sweep=}{spec!r} needs finite START <= STOP and STEP > 0",
                             ExitCode.USAGE, spec=spec)  # fmt: skip
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > 10_000:
        raise WaError.naming(
            "{sweep=}{spec!r} has {count} points (at most 10000)", spec=spec, count=count
        )
    return [round(start + i * step, 12) for i in range(count)]


@dataclass
class Sweep:
    """Each α with its score, and the best α."""

    curve: list[tuple[float, float]]
    best: float
    evaluations: int
    mode: str

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "best_alpha": self.best,
            "evaluations": self.evaluations,
            "curve": [{"alpha": a, "score": s} for a, s in self.curve],
        }


def wise_ft_sweep(
    ckpts: Sequence[Checkpoint],
    model: nn.Module,
    evaluate: Evaluator,
    alphas: Sequence[float],
    interpolate: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], float], dict],
) -> Sweep:
    """Score ``interpolate(θ_0, θ_1, α)`` for each α; the best α (the smallest among ties)."""
    if len(ckpts) != 2:
        raise WaError(f"a sweep interpolates exactly 2 inputs (θ_0 and θ_1), got {len(ckpts)}")
    zero, one = _state(ckpts[0]), _state(ckpts[1])
    curve = [(a, _scored(model, interpolate(zero, one, a), evaluate)) for a in alphas]
    best_alpha, best_score = curve[0]
    for a, s in curve[1:]:
        if evaluate.better_or_equal(s, best_score) and s != best_score:
            best_alpha, best_score = a, s
    return Sweep(curve, best_alpha, evaluate.calls, str(evaluate.mode))


def interpolated(
    zero: dict[str, torch.Tensor], one: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 − α)·θ_0 + α·θ_1 per floating key, in float64 rounded once; other keys from θ_1."""
    return {
        k: ((1 - alpha) * zero[k].double() + alpha * v.double()).to(v.dtype)
        if v.is_floating_point()
        else v
        for k, v in one.items()
    }
