"""Power-function EMA profiles and post-hoc EMA weights: pure float64 math, no torch.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
Section 3 and Appendix C, re-derived here. An EMA at time t with exponent γ ≥ 0 averages the
trajectory with the profile p_t(τ) = (γ+1)/t · (τ/t)^γ on [0, t]; its relative width is
σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))). Tracked per step with β_t = (1 − 1/t)^(γ+1), the EMA at
step T is Σ_τ θ_τ (F(τ) − F(τ−1)) with F(τ) = (τ/T)^(γ+1): the "step" rule below with every step
saved.

Two uses:

* **Quadrature over a raw trajectory** (:func:`quadrature_weights`): weights for checkpoints saved
  at steps s_0 < … < s_{n−1}, integrating a kernel (power or exponential) against an
  interpolation of the trajectory: ``step`` (each checkpoint stands for the steps since the
  previous one) or ``linear`` (piecewise-linear "hat" functions between saves). The kernel's
  mass before s_0 goes to the first checkpoint in both.
* **Reconstruction from EMA snapshots** (:func:`reconstruct`): snapshots with profiles p_i are
  combined as Σ x_i p_i ≈ p_target by least squares over the closed-form inner products
  ⟨p_a, p_b⟩ = (γ_a+1)(γ_b+1)/(γ_a+γ_b+1) · t_a^γ_b / t_b^(γ_b+1) (t_a ≤ t_b), then x is
  rescaled to sum 1 (EDM2's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from wa_cli.errors import WaError

Quadrature = Literal["linear", "step"]
SIGMA_REL_MAX = 1.0 / math.sqrt(12.0)
"""σ_rel of γ = 0, the uniform mean over [0, t]: the widest power profile."""


def sigma_rel_of_gamma(gamma: float) -> float:
    """σ_rel of the power profile with exponent ``gamma``.

    Example:
        >>> round(sigma_rel_of_gamma(6.94), 4)
        0.1
    """
    gamma = _gamma(gamma)
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of_sigma_rel(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 whose profile has relative width ``sigma_rel`` in (0, 1/√12].

    γ is the largest real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²); σ_rel(γ) decreases
    monotonically on [0, ∞), so bisection on it finds that root to the last bit.

    Example:
        >>> round(gamma_of_sigma_rel(0.05), 2), gamma_of_sigma_rel(12 ** -0.5)
        (16.97, 0.0)
    """
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)):
        raise WaError.naming("{sigma_rel} must be a number, got {got!r}", got=sigma_rel)
    if not 0.0 < sigma_rel <= SIGMA_REL_MAX * (1 + 1e-12):
        raise WaError.naming(
            "{sigma_rel} must be in (0, {limit:.4f}] (1/sqrt(12) is the uniform mean), got {got!r}",
            limit=SIGMA_REL_MAX,
            got=sigma_rel,
        )
    if sigma_rel >= SIGMA_REL_MAX * (1 - 1e-12):  # 12 ** -0.5 itself may round below
        return 0.0
    low, high = 0.0, 1.0
    while sigma_rel_of_gamma(high) > sigma_rel:
        low, high = high, high * 2
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if sigma_rel_of_gamma(mid) > sigma_rel else (low, mid)
    return high


def _gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise WaError.naming("{gamma} must be a number >= 0, got {got!r}", got=gamma)
    if not math.isfinite(gamma):
        raise WaError.naming("{gamma} must be finite, got {got!r}", got=gamma)
    return float(gamma)


@dataclass(frozen=True)
class Profile:
    """A power-function EMA profile: exponent ``gamma`` ending at step ``t`` (> 0)."""

    t: float
    gamma: float


def inner(a: Profile, b: Profile) -> float:
    """⟨p_a, p_b⟩ = ∫ p_a(τ) p_b(τ) dτ in closed form (log space: t^γ overflows for long runs).

    Example:
        >>> round(inner(Profile(10, 0.0), Profile(10, 0.0)), 12)  # uniform on [0, 10], squared
        0.1
    """
    if a.t > b.t:
        a, b = b, a
    log = b.gamma * math.log(a.t) - (b.gamma + 1) * math.log(b.t)
    return (a.gamma + 1) * (b.gamma + 1) / (a.gamma + b.gamma + 1) * math.exp(log)


@dataclass(frozen=True)
class Reconstruction:
    """Snapshot weights for one target profile, and how well they fit it."""

    weights: list[float]
    relative_error: float
    """‖p_target − Σ x_i p_i‖ / ‖p_target‖ with the weights as used (after rescaling)."""


def reconstruct(snapshots: Sequence[Profile], target: Profile) -> Reconstruction:
    """Weights x with Σ x_i p_i ≈ p_target: least squares over the closed forms, sum 1.

    Snapshots after the target's step are the caller's to leave out (they would weigh the
    future); this function uses every snapshot it is given.

    Raises:
        WaError: no snapshot, or a snapshot at a step ≤ 0.

    Example:
        >>> r = reconstruct([Profile(100, 3.0), Profile(100, 10.0)], Profile(100, 3.0))
        >>> [abs(round(x, 9)) for x in r.weights], r.relative_error < 1e-6
        ([1.0, 0.0], True)
    """
    import numpy as np

    if not snapshots:
        raise WaError("post-hoc EMA needs at least one snapshot")
    if min(s.t for s in [*snapshots, target]) <= 0:
        raise WaError("post-hoc EMA needs snapshot steps > 0")
    gram = np.array([[inner(a, b) for b in snapshots] for a in snapshots], dtype=np.float64)
    rhs = np.array([inner(a, target) for a in snapshots], dtype=np.float64)
    # lstsq (SVD) rather than solve: two snapshots of nearly equal σ_rel make the Gram matrix
    # ill-conditioned, and the least-squares minimum-norm answer is the stable one.
    x, *_ = np.linalg.lstsq(gram, rhs, rcond=None)
    total = float(x.sum())
    if total == 0 or not math.isfinite(total):
        raise WaError("the snapshots cannot represent the target profile")
    x = x / total
    norm2 = inner(target, target)
    residual2 = norm2 - 2.0 * float(x @ rhs) + float(x @ gram @ x)
    return Reconstruction([float(v) for v in x], math.sqrt(max(residual2, 0.0) / norm2))


@dataclass(frozen=True)
class Kernel:
    """An EMA kernel ending at ``t``: power (``gamma``) or exponential (``rate`` = ln 2 / H)."""

    t: float
    gamma: float | None = None
    rate: float | None = None

    def mass_before(self, s: float) -> float:
        """∫ p over (−∞, s]: F(s)."""
        if self.gamma is not None:
            return (min(max(s, 0.0), self.t) / self.t) ** (self.gamma + 1)
        assert self.rate is not None
        return math.exp(-self.rate * (self.t - min(s, self.t)))

    def interval(self, a: float, b: float) -> tuple[float, float]:
        """(∫_a^b p, ∫_a^b p(τ) (τ − a)/(b − a) dτ) for a < b ≤ t."""
        if self.gamma is not None:
            g, t = self.gamma, self.t
            ua, ub = a / t, b / t
            m0 = ub ** (g + 1) - ua ** (g + 1)
            m1 = t * (g + 1) / (g + 2) * (ub ** (g + 2) - ua ** (g + 2))  # ∫_a^b τ p(τ) dτ
            return m0, (m1 - a * m0) / (b - a)
        assert self.rate is not None
        x = self.rate * (b - a)
        start = math.exp(-self.rate * (self.t - a))
        m0 = start * math.expm1(x)
        # ∫_0^1 v · x e^{xv} dv = (x e^x − (e^x − 1)) / x; its series near 0 avoids cancellation.
        if x < 1e-3:
            up = x / 2 + x * x / 3 + x**3 / 8 + x**4 / 30
        else:
            up = (x * math.exp(x) - math.expm1(x)) / x
        return m0, start * up


def quadrature_weights(steps: Sequence[float], kernel: Kernel, rule: Quadrature) -> list[float]:
    """Checkpoint weights for ``kernel`` over a trajectory saved at increasing ``steps`` ≤ t.

    ``step``: w_i = F(s_i) − F(s_{i−1}), w_0 = F(s_0). ``linear``: w_i = ∫ p h_i with h_i the
    hat function of save i. Both give the mass before s_0 to the first checkpoint and any mass
    after the last save (t beyond it) to the last, so the weights sum to 1.

    Example:
        >>> quadrature_weights([1, 2], Kernel(2, gamma=0.0), "step")
        [0.5, 0.5]
        >>> quadrature_weights([1, 2], Kernel(2, gamma=0.0), "linear")
        [0.75, 0.25]
    """
    if rule not in ("linear", "step"):
        raise WaError.naming("{quadrature} must be 'linear' or 'step', got {rule!r}", rule=rule)
    n = len(steps)
    if n == 0:
        raise WaError("an EMA needs at least one checkpoint")
    if any(b <= a for a, b in zip(steps[:-1], steps[1:])):
        raise WaError("post-hoc EMA needs strictly increasing steps")
    if steps[0] < 0 or steps[-1] > kernel.t:
        raise WaError(
            f"the EMA ends at step {kernel.t:g}: the steps must lie in [0, {kernel.t:g}], "
            f"got {steps[0]:g}..{steps[-1]:g}"
        )
    weights = [0.0] * n
    weights[0] = kernel.mass_before(steps[0])
    for i in range(1, n):
        m0, up = kernel.interval(steps[i - 1], steps[i])
        if rule == "step":
            weights[i] = m0
        else:
            weights[i - 1] += m0 - up
            weights[i] += up
    weights[-1] += 1.0 - kernel.mass_before(steps[-1])
    return weights
