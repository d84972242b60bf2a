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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from wa_cli.engine.options import WriteOptions
from wa_cli.engine.run import RunReport
from wa_cli.errors import ExitCode, Param, WaError
from wa_cli.io.reader import Checkpoint
from wa_cli.methods.ema.power import (
    Kernel,
    Profile,
    Quadrature,
    gamma_of_sigma_rel,
    quadrature_weights,
    reconstruct,
    sigma_rel_of_gamma,
)
from wa_cli.methods.request import Request
from wa_cli.methods.selection import Selected
from wa_cli.methods.trajectory import Weigh, Weighing, Write, reduce_to_file
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
    snapshot_gammas: list[float] | None = None  # of the used snapshots (for the plot)

    def params(self) -> dict[str, Any]:
        return {
            "posthoc": self.kind,
            "sigma_rel": sigma_rel_of_gamma(self.gamma),
            "gamma": self.gamma,
            "at_step": self.target_step,
            "steps": self.steps,
            "extrapolated": self.extrapolated,
            "fit_error": self.fit_error,
            "snapshot_gammas": self.snapshot_gammas,
        }


def target_gamma(sigma_rel: float | None, gamma: float | None) -> float:
    """γ from exactly one of ``sigma_rel`` and ``gamma``."""
    if (sigma_rel is None) == (gamma is None):
        raise WaError.naming("give exactly one of {sigma_rel} and {gamma}", ExitCode.USAGE)
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
                raise WaError.naming(
                    "'{snapshot}' is not an ema-pytorch snapshot '{{index}}.{{step}}.pt' with an "
                    "index below {count} ({snapshot_sigma_rels} gives one sigma_rel per index)",
                    snapshot=c.name,
                    count=len(snapshot_sigma_rels),
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
        raise WaError.naming("{at_step=}{target} is not a saved step (saved: {saved})",
                             ExitCode.USAGE, target=target, saved=_span(steps))  # fmt: skip
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
                      ExitCode.USAGE)  # fmt: skip
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
            "file name)", ExitCode.USAGE,
        )  # fmt: skip
    by_input = {id(e.item): e.step for e in entries}
    return [int(by_input[id(c)]) for c in ckpts]  # type: ignore[arg-type]


@dataclass(frozen=True)
class PosthocRequest:
    """The post-hoc options of ``ema``/``ema_to_file`` (``sigma_rel`` or ``gamma`` given)."""

    gamma: float
    at_step: int | None = None
    quadrature: Quadrature = "linear"
    snapshot_sigma_rels: Sequence[float] | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> PosthocRequest | None:
        """None when neither ``sigma_rel`` nor ``gamma`` is given (an ordinary EMA)."""
        sigma_rel, gamma = options.get("sigma_rel"), options.get("gamma")
        if sigma_rel is None and gamma is None:
            for name in ("at_step", "snapshot_sigma_rels"):
                if options.get(name) is not None:
                    raise WaError.naming("{name} needs {sigma_rel} or {gamma}", ExitCode.USAGE,
                                         name=Param(name))  # fmt: skip
            return None
        decays = [n for n in ("decay", "decay_per_step", "half_life", "alpha") if options.get(n)]
        if decays:
            raise WaError.naming(
                "give {sigma_rel}/{gamma} (a power EMA) or {decay} (an exponential one), not both",
                ExitCode.USAGE, decay=Param(decays[0]),
            )  # fmt: skip
        quadrature = options.get("quadrature") or "linear"
        if quadrature not in ("linear", "step"):
            raise WaError.naming("{quadrature} must be 'linear' or 'step', got {got!r}",
                                 ExitCode.USAGE, got=quadrature)  # fmt: skip
        return cls(target_gamma(sigma_rel, gamma), options.get("at_step"),
                   cast(Quadrature, quadrature), options.get("snapshot_sigma_rels"))  # fmt: skip

    def weigh(self, items: Sequence[Checkpoint]) -> PosthocWeights:
        """The weights over ``items`` (the selected inputs, in any order)."""
        snap = snapshot_gammas(items, self.snapshot_sigma_rels)
        named = self.snapshot_sigma_rels is not None
        steps = _steps(items, snapshots=snap is not None, named=named)
        chosen = posthoc_weights(steps, self.gamma, snapshot=snap, at_step=self.at_step,
                                 quadrature=self.quadrature)  # fmt: skip
        chosen.snapshot_gammas = None if snap is None else [snap[i] for i in chosen.used]
        return chosen

    def weighing(self, selected: Selected) -> Weighing:
        """The engine's view of :meth:`weigh`'s result (see :func:`_weighing`)."""
        return _weighing(selected, self.weigh(selected.items))


def _weighing(selected: Selected, chosen: PosthocWeights) -> Weighing:
    """The used inputs (by step) with their weights; every selected input's weight (0 for
    those after the target step) for the table."""
    table = [0.0] * len(selected.items)
    for weight, i in zip(chosen.weights, chosen.used):
        table[i] = weight
    items = [selected.items[i] for i in chosen.used]
    return Weighing(items, table, "posthoc_ema", given_weights=list(chosen.weights),
                    steps=list(chosen.steps), note=_note(chosen))  # fmt: skip


def _note(chosen: PosthocWeights) -> str:
    sigma = sigma_rel_of_gamma(chosen.gamma)
    if chosen.kind == "reconstruction":
        return (f"power EMA sigma_rel {sigma:.4g} at step {chosen.target_step}, rebuilt from "
                f"{len(chosen.used)} snapshots (fit error {chosen.fit_error:.2%})")  # fmt: skip
    return (f"power EMA sigma_rel {sigma:.4g} at step {chosen.target_step} over "
            f"{len(chosen.used)} checkpoints ({chosen.extrapolated:.1%} extrapolated before the "
            "first)")  # fmt: skip


def posthoc_run(posthoc: PosthocRequest, request: Request) -> tuple[Weigh, Write]:
    """The weigh and write steps of :func:`~wa_cli.methods.trajectory.run_trajectory`."""
    chosen: list[PosthocWeights] = []

    def weigh(selected: Selected) -> Weighing:
        chosen[:] = [posthoc.weigh(selected.items)]
        return _weighing(selected, chosen[0])

    def write(weighed: Weighing, output: Path, out: WriteOptions) -> RunReport:
        from wa_cli.engine.plan import build_plan
        from wa_cli.methods.average import source_weights

        r = request.reduce
        plan = build_plan(weighed.items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
        weights = list(weighed.given_weights or ())
        params = {**chosen[0].params(), "quadrature": posthoc.quadrature, **r.params()}
        report = reduce_to_file(
            plan, source_weights(weights), output,
            method="posthoc_ema", params=params, input_weights=weights, opts=r, out=out,
        )  # fmt: skip
        report.warnings.extend(chosen[0].warnings)
        return report

    return weigh, write


def plot_posthoc(report: RunReport, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """The target power profile over steps, with what stands for it: the snapshots' combined
    profile (reconstruction) or each checkpoint's weight (quadrature), in ``path``'s format.

    Example:
        >>> report = ema_to_file(snaps, "e.safetensors", sigma_rel=0.1)  # doctest: +SKIP
        >>> plot_posthoc(report, "profile.png")  # doctest: +SKIP
    """
    import numpy as np

    from wa_cli.methods.plots import check_plot_available, new_figure, save_figure

    check_plot_available(path)
    p = report.params
    target, gamma, steps = float(p["at_step"]), float(p["gamma"]), list(p["steps"])
    taus = np.linspace(0.0, target, 400)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(taus, (gamma + 1) / target * (taus / target) ** gamma, label="target profile")
    weights = list(report.input_weights or [])
    if p.get("snapshot_gammas"):
        fit = sum(
            w * np.where(taus <= t, (g + 1) / t * (taus / t) ** g, 0.0)
            for w, t, g in zip(weights, steps, p["snapshot_gammas"])
        )
        ax.plot(taus, fit, linestyle="--", label=f"from snapshots (fit error {p['fit_error']:.1%})")
    else:
        twin = ax.twinx()
        twin.stem(steps, weights, linefmt="C1-", markerfmt="C1o", basefmt=" ")
        twin.set_ylabel("checkpoint weight")
    ax.set_xlabel("training step")
    ax.set_ylabel("profile density")
    ax.set_title(f"power EMA, sigma_rel {p['sigma_rel']:.4g}, at step {int(target)}")
    ax.legend(fontsize=8)
    return save_figure(fig, path, force=force)
