"""Which quadrature rule estimates a per-step EMA best from checkpoints saved every k steps?

A trajectory is simulated per step (a random walk with unit steps, plus a steady drift), the exact
per-step EMA at the last step is computed from every step (power profile with β_t = (1 − 1/t)^(γ+1),
or exponential with a fixed half-life), and each rule of :func:`quadrature_weights` estimates it
from the checkpoints saved every k steps. The table gives the RMS error over many walks, in units
of one step's noise, for k from 1 to 1000 (docs/posthoc-ema.md holds the measured table).

    python benchmarks/ema_quadrature.py [--total 100000] [--walks 64]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from wa_cli.methods.ema.power import Kernel, gamma_of_sigma_rel, quadrature_weights


def per_step_weights(total: int, kernel: Kernel) -> np.ndarray:
    """Weights of θ_1..θ_T in the per-step EMA at T (step 1 is the EMA's start)."""
    steps = np.arange(0, total + 1, dtype=np.float64)
    if kernel.gamma is not None:
        cdf = (steps / total) ** (kernel.gamma + 1)
    else:
        assert kernel.rate is not None
        cdf = np.exp(-kernel.rate * (total - steps))
    weights = np.diff(cdf)  # step τ stands for (τ − 1, τ]
    weights[0] += cdf[0]  # the mass before step 1 goes to the first step (e_1 = θ_1)
    return weights


def rms_errors(
    total: int, walks: int, kernel: Kernel, every: int, drift: float, seed: int = 0
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((total, walks))
    trend = np.linspace(0.0, drift * total, total)[:, None]  # a steady drift: linear is exact
    thetas = np.cumsum(noise, axis=0) + trend  # θ_1..θ_T
    exact = per_step_weights(total, kernel) @ thetas
    saved = list(range(every, total + 1, every))
    if saved[-1] != total:
        saved.append(total)
    saved = [1, *saved] if saved[0] != 1 else saved  # a run saves its first step too
    out = {}
    for rule in ("linear", "step"):
        w = np.array(quadrature_weights(saved, kernel, rule))  # type: ignore[arg-type]
        estimate = w @ thetas[np.array(saved) - 1]
        out[rule] = float(np.sqrt(np.mean((estimate - exact) ** 2)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--walks", type=int, default=64)
    args = parser.parse_args()
    kernels = {
        "power sigma_rel=0.05": Kernel(args.total, gamma=gamma_of_sigma_rel(0.05)),
        "power sigma_rel=0.15": Kernel(args.total, gamma=gamma_of_sigma_rel(0.15)),
        f"half-life {args.total // 20}": Kernel(args.total, rate=math.log(2) / (args.total // 20)),
    }
    print(f"RMS error against the per-step EMA, {args.total} steps, {args.walks} walks,")
    print("in units of one step's noise; drift in the same units per step")
    columns = ["linear, no drift", "step, no drift", "linear, drift 0.05", "step, drift 0.05"]
    print("| kernel | saved every k | " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, kernel in kernels.items():
        for every in (1, 10, 100, 1000):
            walk = rms_errors(args.total, args.walks, kernel, every, drift=0.0)
            drifting = rms_errors(args.total, args.walks, kernel, every, drift=0.05)
            cells = [walk["linear"], walk["step"], drifting["linear"], drifting["step"]]
            print(f"| {name} | {every} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
