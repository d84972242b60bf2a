"""Tests for wa_cli.methods.ema coefficients: against the recursion, PyTorch and Lookahead."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.ema import (
    LOOKAHEAD_HELP,
    ema_coefficients,
    lookahead_decay,
)


def trajectory(n: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 7, generator=g, dtype=torch.float64).to(dtype) for _ in range(n)]


def combine(coefficients: list[float], thetas: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros_like(thetas[0], dtype=torch.float64)
    for c, t in zip(coefficients, thetas, strict=True):
        out += c * t.double()
    return out


def recursion(thetas: list[torch.Tensor], betas: list[float]) -> torch.Tensor:
    """The definition, step by step: e_0 = θ_0, e_i = β_i e_{i−1} + (1 − β_i) θ_i."""
    e = thetas[0].double().clone()
    for beta, theta in zip(betas, thetas[1:], strict=True):
        e = beta * e + (1 - beta) * theta.double()
    return e


# ---------------------------------------------------------------------------- fixed decay


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_fixed_decay_equals_the_recursion(decay: float, n: int) -> None:
    thetas = trajectory(n)
    got = combine(ema_coefficients(n, decay=decay), thetas)
    torch.testing.assert_close(got, recursion(thetas, [decay] * (n - 1)), rtol=1e-12, atol=1e-12)


def test_decay_zero_is_the_last_and_decay_one_the_first() -> None:
    assert ema_coefficients(4, decay=0.0) == [0.0, 0.0, 0.0, 1.0]
    assert ema_coefficients(4, decay=1.0) == [1.0, 0.0, 0.0, 0.0]
    assert ema_coefficients(1, decay=0.5) == [1.0]


def test_small_case_by_hand() -> None:
    # e1 = .5 θ0 + .5 θ1; e2 = .5 e1 + .5 θ2 = .25 θ0 + .25 θ1 + .5 θ2.
    assert ema_coefficients(3, decay=0.5) == [0.25, 0.25, 0.5]
    # β = 0.9: c = [.81, .09, .1].
    assert ema_coefficients(3, decay=0.9) == pytest.approx([0.81, 0.09, 0.1], rel=1e-15)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99])
def test_matches_torch_ema_averaged_model_in_float32(decay: float) -> None:
    n = 12
    thetas = trajectory(n, torch.float32, seed=1)
    model = torch.nn.Linear(7, 5, bias=False)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    for theta in thetas:
        with torch.no_grad():
            model.weight.copy_(theta)
        ema.update_parameters(model)
    expected = ema.module.weight.detach()
    got = combine(ema_coefficients(n, decay=decay), thetas).float()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    decay=st.floats(0.0, 1.0, allow_nan=False),
)
def test_coefficients_sum_to_one_and_are_non_negative(n: int, decay: float) -> None:
    c = ema_coefficients(n, decay=decay)
    assert len(c) == n
    assert min(c) >= 0.0
    assert math.fsum(c) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------- step-aware decay


UNEVEN = [0, 10, 15, 40, 41, 100]


@pytest.mark.parametrize("d", [0.0, 0.5, 0.95, 1.0])
def test_decay_per_step_weighs_uneven_gaps(d: float) -> None:
    thetas = trajectory(len(UNEVEN), seed=2)
    betas = [d ** (b - a) for a, b in zip(UNEVEN, UNEVEN[1:], strict=False)]
    got = combine(ema_coefficients(len(UNEVEN), decay_per_step=d, steps=UNEVEN), thetas)
    torch.testing.assert_close(got, recursion(thetas, betas), rtol=1e-12, atol=1e-12)


def test_decay_per_step_equals_saving_every_step() -> None:
    # A checkpoint saved after 3 steps must weigh as if the EMA had run over 3 steps with the
    # same weights: β = d^3 = d·d·d.
    d = 0.8
    coarse = ema_coefficients(2, decay_per_step=d, steps=[0, 3])
    assert coarse == pytest.approx([d**3, 1 - d**3], rel=1e-15)


@pytest.mark.parametrize("half_life", [1.0, 7.5, 50.0])
def test_half_life_equals_decay_per_step_of_half_to_one_over_h(half_life: float) -> None:
    thetas = trajectory(len(UNEVEN), seed=3)
    d = 0.5 ** (1 / half_life)
    betas = [d ** (b - a) for a, b in zip(UNEVEN, UNEVEN[1:], strict=False)]
    got = combine(ema_coefficients(len(UNEVEN), half_life=half_life, steps=UNEVEN), thetas)
    torch.testing.assert_close(got, recursion(thetas, betas), rtol=1e-12, atol=1e-12)


def test_half_life_halves_the_weight() -> None:
    # One half-life between two saves: the old checkpoint keeps exactly half.
    assert ema_coefficients(2, half_life=250, steps=[1000, 1250]) == [0.5, 0.5]
    assert ema_coefficients(3, half_life=100, steps=[0, 100, 200]) == [0.25, 0.25, 0.5]


def test_steps_are_ignored_by_a_fixed_decay() -> None:
    assert ema_coefficients(2, decay=0.5, steps=[7, 3]) == [0.5, 0.5]


# ---------------------------------------------------------------------------- Lookahead


def test_lookahead_slow_weights_from_every_kth_checkpoint() -> None:
    # Slow weights φ ← φ + α(θ − φ) at every k-th checkpoint, starting from φ_0 = θ_0.
    k, alpha = 3, 0.8
    thetas = trajectory(10, seed=4)
    synced = thetas[::k]
    phi = synced[0].clone()
    for theta in synced[1:]:
        phi = phi + alpha * (theta - phi)
    coefficients = ema_coefficients(len(synced), decay=lookahead_decay(alpha))
    torch.testing.assert_close(combine(coefficients, synced), phi, rtol=1e-12, atol=1e-12)


def test_lookahead_alpha_one_is_the_last_checkpoint() -> None:
    assert ema_coefficients(3, decay=lookahead_decay(1.0)) == [0.0, 0.0, 1.0]


def test_lookahead_help_says_what_it_is_not() -> None:
    assert "1 - A" in LOOKAHEAD_HELP
    assert "did NOT train with Lookahead" in LOOKAHEAD_HELP
    assert "not Lookahead" in LOOKAHEAD_HELP


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, math.nan])
def test_lookahead_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(WaError, match="alpha") as e:
        lookahead_decay(alpha)
    assert e.value.code == ExitCode.USAGE


# ---------------------------------------------------------------------------- EMA errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": -0.01}, r"decay must be in \[0, 1\], got -0.01"),
        ({"decay": 1.5}, r"decay must be in \[0, 1\], got 1.5"),
        ({"decay": math.nan}, "decay must be a finite number, got nan"),
        ({"decay_per_step": 2.0, "steps": [0, 1, 2]}, r"decay_per_step must be in \[0, 1\]"),
        ({"half_life": 0.0, "steps": [0, 1, 2]}, "half_life must be a positive number"),
        ({"half_life": -3.0, "steps": [0, 1, 2]}, "half_life must be a positive number"),
        ({"half_life": math.inf, "steps": [0, 1, 2]}, "half_life must be a finite number"),
        ({}, "give exactly one of decay, decay_per_step, half_life \\(got none\\)"),
        ({"decay": 0.9, "half_life": 10.0}, "got decay and half_life"),
        ({"half_life": 10.0}, "half_life weighs checkpoints by their step gaps"),
        ({"decay_per_step": 0.9, "steps": [0, None, 2]}, "have no step numbers"),
        ({"decay_per_step": 0.9, "steps": [0, 5, 5]}, "step 5 follows step 5"),
        ({"half_life": 10.0, "steps": [0, 20, 10]}, "strictly increasing steps"),
    ],
)
def test_ema_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(WaError, match=message) as e:
        ema_coefficients(3, **kwargs)  # type: ignore[arg-type]
    assert e.value.code == ExitCode.USAGE


def test_ema_of_no_checkpoints_is_an_error() -> None:
    with pytest.raises(WaError, match="at least one checkpoint"):
        ema_coefficients(0, decay=0.5)
