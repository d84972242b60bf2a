"""Power-function profiles and post-hoc EMA weights against independent float64 oracles.

The oracles integrate the profiles numerically (scipy's adaptive quadrature, split at every
breakpoint) instead of using the closed forms under test, and the per-step recursion
β_t = (1 − 1/t)^(γ+1) is run step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wa_cli.errors import WaError
from wa_cli.methods.ema.coefficients import ema_coefficients
from wa_cli.methods.ema.power import (
    Kernel,
    Profile,
    gamma_of_sigma_rel,
    inner,
    quadrature_weights,
    reconstruct,
    sigma_rel_of_gamma,
)

integrate = pytest.importorskip("scipy.integrate")

STEPS = [0, 40, 100, 130, 300, 310, 620, 1000]  # uneven saves, the last one the EMA's end


def _quad(f, a: float, b: float, points=()) -> float:
    inside = sorted(p for p in points if a < p < b)
    edges = [a, *inside, b]
    return sum(
        integrate.quad(f, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
        for lo, hi in zip(edges[:-1], edges[1:])
    )


def _power_density(t: float, gamma: float):
    return lambda tau: (gamma + 1) / t * (tau / t) ** gamma if 0 <= tau <= t else 0.0


def _hat(steps, i):
    def h(tau):
        if tau <= steps[0]:
            return 1.0 if i == 0 else 0.0
        if tau >= steps[-1]:
            return 1.0 if i == len(steps) - 1 else 0.0
        return float(np.interp(tau, steps, np.eye(len(steps))[i]))

    return h


def _box(steps, i):
    lo = -math.inf if i == 0 else steps[i - 1]
    return lambda tau: 1.0 if lo < tau <= steps[i] else 0.0


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_gamma_is_the_largest_real_root_of_the_papers_cubic(sigma_rel):
    gamma = gamma_of_sigma_rel(sigma_rel)
    s2 = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    real = max(r.real for r in roots if abs(r.imag) < 1e-9)
    assert gamma == pytest.approx(real, rel=1e-10)
    assert sigma_rel_of_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-13)


def test_sigma_rel_outside_its_range_is_refused():
    for bad in (0.0, -0.1, 0.3, math.nan):
        with pytest.raises(WaError, match="sigma_rel"):
            gamma_of_sigma_rel(bad)


@pytest.mark.parametrize(("ta", "ga", "tb", "gb"), [(100, 3.0, 100, 10.0), (40, 0.5, 300, 7.0)])
def test_inner_product_equals_the_integral(ta, ga, tb, gb):
    pa, pb = _power_density(ta, ga), _power_density(tb, gb)
    expected = _quad(lambda x: pa(x) * pb(x), 0, max(ta, tb), points=[ta, tb])
    assert inner(Profile(ta, ga), Profile(tb, gb)) == pytest.approx(expected, rel=1e-11)


@pytest.mark.parametrize("rule", ["linear", "step"])
@pytest.mark.parametrize("gamma", [0.0, 2.5, 16.97])
def test_power_quadrature_weights_equal_the_integrals(rule, gamma):
    t = STEPS[-1]
    p = _power_density(t, gamma)
    basis = _hat if rule == "linear" else _box
    expected = [
        _quad(lambda x, h=basis(STEPS, i): p(x) * h(x), 0, t, points=STEPS)
        for i in range(len(STEPS))
    ]
    got = quadrature_weights(STEPS, Kernel(t, gamma=gamma), rule)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert sum(got) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("rule", ["linear", "step"])
def test_exponential_quadrature_weights_equal_the_integrals(rule):
    t, half_life = STEPS[-1], 150.0
    rate = math.log(2) / half_life
    p = lambda x: rate * math.exp(-rate * (t - x)) if x <= t else 0.0  # noqa: E731
    basis = _hat if rule == "linear" else _box
    # The mass before the first save belongs to the first checkpoint in both rules.
    before = math.exp(-rate * (t - STEPS[0]))
    expected = [
        _quad(lambda x, h=basis(STEPS, i): p(x) * h(x), STEPS[0], t, points=STEPS)
        + (before if i == 0 else 0.0)
        for i in range(len(STEPS))
    ]
    got = quadrature_weights(STEPS, Kernel(t, rate=rate), rule)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_exponential_step_rule_is_todays_half_life_ema():
    half_life = 150.0
    got = quadrature_weights(STEPS, Kernel(STEPS[-1], rate=math.log(2) / half_life), "step")
    today = ema_coefficients(len(STEPS), half_life=half_life, steps=STEPS)
    np.testing.assert_allclose(got, today, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 6.94])
def test_linear_rule_is_exact_for_a_linear_drift(gamma):
    a, b = 0.3, -2e-3
    weights = quadrature_weights(STEPS, Kernel(STEPS[-1], gamma=gamma), "linear")
    estimate = sum(w * (a + b * s) for w, s in zip(weights, STEPS))
    exact = a + b * STEPS[-1] * (gamma + 1) / (gamma + 2)  # ∫ p_T(τ)(a + bτ) dτ
    assert estimate == pytest.approx(exact, abs=1e-14)


def test_step_rule_over_every_step_is_the_per_step_power_ema():
    gamma, total = 6.94, 400
    rng = np.random.default_rng(0)
    thetas = np.cumsum(rng.standard_normal(total))  # θ_1..θ_T, a random walk
    ema = thetas[0]  # step 1 copies the weights
    for t in range(2, total + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = beta * ema + (1 - beta) * thetas[t - 1]
    steps = list(range(1, total + 1))
    weights = quadrature_weights(steps, Kernel(total, gamma=gamma), "step")
    assert float(np.dot(weights, thetas)) == pytest.approx(ema, rel=1e-12, abs=1e-12)


def test_reconstruction_equals_an_independent_solve():
    snapshots = [Profile(t, g) for t in (200, 400, 600, 800) for g in (16.97, 6.94)]
    target = Profile(800, gamma_of_sigma_rel(0.07))  # between the snapshots

    def numeric_inner(a: Profile, b: Profile) -> float:
        pa, pb = _power_density(a.t, a.gamma), _power_density(b.t, b.gamma)
        return _quad(lambda x: pa(x) * pb(x), 0, max(a.t, b.t), points=[a.t, b.t])

    gram = np.array([[numeric_inner(a, b) for b in snapshots] for a in snapshots])
    rhs = np.array([numeric_inner(a, target) for a in snapshots])
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    x /= x.sum()
    got = reconstruct(snapshots, target)
    np.testing.assert_allclose(got.weights, x, rtol=1e-6, atol=1e-8)

    def residual(tau: float) -> float:
        fit = sum(w * _power_density(s.t, s.gamma)(tau) for w, s in zip(x, snapshots))
        return (_power_density(target.t, target.gamma)(tau) - fit) ** 2

    error = math.sqrt(
        _quad(residual, 0, 800, points=[200, 400, 600]) / numeric_inner(target, target)
    )
    assert got.relative_error == pytest.approx(error, rel=1e-4, abs=1e-7)
    assert got.relative_error < 0.05


def test_a_snapshot_matching_the_target_gets_all_the_weight():
    got = reconstruct([Profile(500, 3.0), Profile(500, 12.0)], Profile(500, 12.0))
    np.testing.assert_allclose(got.weights, [0.0, 1.0], atol=1e-9)
    assert got.relative_error < 1e-6
