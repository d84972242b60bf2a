"""Post-hoc EMA over files: a power-function EMA of any width, chosen after training.

Karras et al. 2024 (EDM2), Section 3 and Appendix C; the math is in :mod:`.power`. Two kinds of
input, told apart by their metadata:

* **a raw trajectory** (checkpoints of the training weights): the power profile ending at step T
  (the last selected step, or ``at_step``) is integrated against an interpolation of the saved
  trajectory (:func:`~.power.quadrature_weights`, ``linear`` by default: the measurement in
  ``docs/posthoc-ema.md``). The profile's mass before the first checkpoint ("extrapolated") is
  reported, with a warning above 10 %.
* **EMA snapshots** (``wa_ema_sigma_rel`` or ``wa_ema_gamma`` in every input's metadata, as
  :class:`~wa_cli.train.PowerEMA` writes; or ema-pytorch ``PostHocEMA`` files ``{index}.{step}.pt``
  with ``snapshot_sigma_rels`` giving each index's σ_rel): the snapshots at or before T are
  combined by least squares (:func:`~.power.reconstruct`), the fit error reported, with a warning
  above 5 %.

Either way the result is Σ w_i θ_i through the averaging engine (exact, streaming, atomic).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.engine.plan import build_plan
from wa_cli.engine.run import RunReport
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import Checkpoint, ReadOptions
from wa_cli.methods.average import source_weights
from wa_cli.methods.ema.power import (
    Kernel,
    Profile,
    Quadrature,
    gamma_of_sigma_rel,
    quadrature_weights,
    reconstruct,
    sigma_rel_of_gamma,
)
from wa_cli.methods.inputs import Inputs, open_inputs
from wa_cli.methods.trajectory import reduce_to_file
from wa_cli.select import order_trajectory

EXTRAPOLATED_WARNING = 0.10
FIT_WARNING = 0.05
_EMA_PYTORCH_NAME = re.compile(r"^(\d+)\.(\d+)\.pt$")


@dataclass
class PosthocWeights:
    """Which inputs are used, with which weights, and how trustworthy the result is."""

    used: list[int]
    weights: list[float]
    steps: list[int]
    target_step: int
    gamma: float
    kind: str  # "quadrature" or "reconstruction"
    extrapolated: float | None = None
    fit_error: float | None = None
    warnings: list[str] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        return {
            "posthoc": self.kind,
            "sigma_rel": sigma_rel_of_gamma(self.gamma),
            "gamma": self.gamma,
            "at_step": self.target_step,
            "steps": self.steps,
            "extrapolated": self.extrapolated,
            "fit_error": self.fit_error,
        }


def target_gamma(sigma_rel: float | None, gamma: float | None) -> float:
    """γ from exactly one of ``sigma_rel`` and ``gamma``."""
    if (sigma_rel is None) == (gamma is None):
        raise WaError(
            "give exactly one of sigma_rel and gamma", ExitCode.USAGE,
            params=("sigma_rel", "gamma"),
        )  # fmt: skip
    if sigma_rel is not None:
        return gamma_of_sigma_rel(sigma_rel)
    assert gamma is not None
    sigma_rel_of_gamma(gamma)  # validates: a finite number >= 0
    return float(gamma)


def snapshot_gammas(
    ckpts: Sequence[Checkpoint], snapshot_sigma_rels: Sequence[float] | None
) -> list[float] | None:
    """Each input's EMA exponent when the inputs are snapshots, else None (a raw trajectory)."""
    if snapshot_sigma_rels is not None:
        found = []
        for c in ckpts:
            m = _EMA_PYTORCH_NAME.match(c.name)
            if m is None or int(m.group(1)) >= len(snapshot_sigma_rels):
                raise WaError(
                    f"'{c.name}' is not an ema-pytorch snapshot '{{index}}.{{step}}.pt' with an "
                    f"index below {len(snapshot_sigma_rels)} (snapshot_sigma_rels gives one "
                    "sigma_rel per index)",
                    params=("snapshot_sigma_rels",),
                )
            found.append(gamma_of_sigma_rel(snapshot_sigma_rels[int(m.group(1))]))
        return found
    marked = [c for c in ckpts if {"wa_ema_sigma_rel", "wa_ema_gamma"} & set(c.metadata)]
    if not marked:
        return None
    if len(marked) != len(ckpts):
        raw = next(c for c in ckpts if c not in marked)
        raise WaError(
            f"'{raw.name}' is not an EMA snapshot but '{marked[0].name}' is (wa_ema_sigma_rel "
            "metadata): give snapshots only, or a raw trajectory only",
            ExitCode.INCOMPATIBLE,
        )
    return [_recorded_gamma(c) for c in ckpts]


def _recorded_gamma(c: Checkpoint) -> float:
    try:
        if "wa_ema_gamma" in c.metadata:
            return float(c.metadata["wa_ema_gamma"])
        return gamma_of_sigma_rel(float(c.metadata["wa_ema_sigma_rel"]))
    except (ValueError, WaError) as e:
        raise WaError(f"'{c.name}' records an invalid EMA width: {e}", ExitCode.BAD_INPUT) from e


def posthoc_weights(
    steps: Sequence[int],
    gamma: float,
    *,
    snapshot: Sequence[float] | None = None,
    at_step: int | None = None,
    quadrature: Quadrature = "linear",
) -> PosthocWeights:
    """The weights of a post-hoc EMA over inputs at ``steps`` (snapshot exponents if any)."""
    target = max(steps) if at_step is None else at_step
    if target not in steps:
        raise WaError(
            f"at_step={target} is not a saved step (saved: {_span(steps)})", ExitCode.USAGE,
            params=("at_step",),
        )  # fmt: skip
    used = sorted((i for i, s in enumerate(steps) if s <= target), key=lambda i: steps[i])
    if snapshot is None:
        return _quadrature(steps, used, target, gamma, quadrature)
    profiles = [Profile(steps[i], snapshot[i]) for i in used]
    fit = reconstruct(profiles, Profile(target, gamma))
    out = PosthocWeights(used, fit.weights, [steps[i] for i in used], target, gamma,
                         "reconstruction", fit_error=fit.relative_error)  # fmt: skip
    if fit.relative_error > FIT_WARNING:
        out.warnings.append(
            f"the snapshots fit the target profile only to {fit.relative_error:.1%} "
            f"(above {FIT_WARNING:.0%}): the result may differ from a true EMA of that width"
        )
    return out


def _quadrature(
    steps: Sequence[int], used: list[int], target: int, gamma: float, rule: Quadrature
) -> PosthocWeights:
    saved = [steps[i] for i in used]
    if len(set(saved)) != len(saved):
        raise WaError("two checkpoints share a step; post-hoc EMA needs one per step",
                      ExitCode.USAGE, params=("order",))  # fmt: skip
    kernel = Kernel(float(target), gamma=gamma)
    weights = quadrature_weights(saved, kernel, rule)
    before = kernel.mass_before(saved[0])
    out = PosthocWeights(used, weights, saved, target, gamma, "quadrature", extrapolated=before)
    if before > EXTRAPOLATED_WARNING:
        out.warnings.append(
            f"{before:.1%} of the profile lies before the first checkpoint (step {saved[0]}), "
            "where the trajectory is unknown: that share was given to the first checkpoint"
        )
    return out


def _span(steps: Sequence[int]) -> str:
    ordered = sorted(steps)
    return ", ".join(map(str, ordered)) if len(ordered) <= 6 else f"{ordered[0]}..{ordered[-1]}"


def _steps(ckpts: Sequence[Checkpoint], *, snapshots: bool, named: bool) -> list[int]:
    """Each input's step: from ema-pytorch's file names (its recorded ``step`` is a float16
    tensor, inexact above 2048), else as every command reads steps (snapshots may share one)."""
    if named:
        return [int(_EMA_PYTORCH_NAME.match(c.name).group(2)) for c in ckpts]  # type: ignore[union-attr]
    entries = order_trajectory(ckpts, "given" if snapshots else "auto")
    if any(e.step is None for e in entries):
        raise WaError(
            "post-hoc EMA needs each input's training step (step metadata or a number in the "
            "file name)", ExitCode.USAGE, params=("order",),
        )  # fmt: skip
    by_input = {id(e.item): e.step for e in entries}
    return [int(by_input[id(c)]) for c in ckpts]  # type: ignore[arg-type]


def posthoc_ema_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    sigma_rel: float | None = None,
    gamma: float | None = None,
    at_step: int | None = None,
    quadrature: Quadrature = "linear",
    snapshot_sigma_rels: Sequence[float] | None = None,
    read: ReadOptions | None = None,
    opts: ReduceOptions | None = None,
    out: WriteOptions | None = None,
) -> RunReport:
    """Post-hoc EMA of width ``sigma_rel`` (or exponent ``gamma``) ending at ``at_step``.

    With ``snapshot_sigma_rels`` (ema-pytorch ``PostHocEMA`` files), only the ``ema_model.``
    entries are read, under their model names (``initted`` and ``step`` are ema-pytorch's own
    counters), unless ``read`` says otherwise.

    Example:
        >>> report = posthoc_ema_to_file("snaps/*.safetensors", "ema_0.08.safetensors",
        ...                              sigma_rel=0.08)  # doctest: +SKIP
    """
    g = target_gamma(sigma_rel, gamma)
    opts = opts or ReduceOptions.checked()
    out = out or WriteOptions.checked()
    if read is None and snapshot_sigma_rels is not None:
        read = ReadOptions(variant="ema")  # ema_model.* under the model's names
    ckpts = open_inputs(inputs, options=read)
    snap = snapshot_gammas(ckpts, snapshot_sigma_rels)
    steps = _steps(ckpts, snapshots=snap is not None, named=snapshot_sigma_rels is not None)
    chosen = posthoc_weights(steps, g, snapshot=snap, at_step=at_step, quadrature=quadrature)
    used = [ckpts[i] for i in chosen.used]
    for i, c in enumerate(ckpts):
        if i not in chosen.used:
            c.close()
    plan = build_plan(used, keys=opts.keys, non_float=opts.non_float, dtype=opts.dtype)
    params = {**chosen.params(), "quadrature": quadrature if snap is None else None,
              **opts.params()}  # fmt: skip
    report = reduce_to_file(
        plan, source_weights(chosen.weights), output,
        method="posthoc_ema", params=params, input_weights=chosen.weights, opts=opts, out=out,
    )  # fmt: skip
    report.warnings.extend(chosen.warnings)
    return report
