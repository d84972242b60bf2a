"""What an EMA's report says about its steps: their unit, and a half-life longer than the run.

Part of :mod:`wa_cli.methods.ema`. ``--half-life H`` counts in the unit of the trajectory's steps;
on ``epoch_{e}.pt`` files those are epochs, and ``--half-life 46`` over 50 epochs gave the first,
worst checkpoint 0.81 of the weight without a word (issue 22). The report (and ``--json``) now
states the unit (:func:`wa_cli.select.units.step_unit`) and where the steps came from, and a
half-life longer than the trajectory's span gets a one-line warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wa_cli.errors import WaError
from wa_cli.select import order_trajectory
from wa_cli.select.units import StepUnit, step_unit

if TYPE_CHECKING:
    from wa_cli.engine.report import RunReport
    from wa_cli.io.reader import Checkpoint


@dataclass
class StepReport:
    """Entries for the run's params (and so its metadata), notes and warnings."""

    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def attach(self, report: RunReport) -> RunReport:
        report.notes.extend(self.notes)
        report.warnings.extend(self.warnings)
        return report


def _unit_of(ckpts: Sequence[Checkpoint], steps: Sequence[int | None]) -> StepUnit:
    """The unit of the steps read from the files, or "unknown" for steps the caller gave."""
    try:
        read = [e.step for e in order_trajectory(ckpts, "given", warn=False)]
    except WaError:
        read = []
    found = step_unit(ckpts) if read == list(steps) else None
    return found or StepUnit("unknown", "steps given by the caller")


def step_report(
    ckpts: Sequence[Checkpoint],
    steps: Sequence[int | None] | None,
    decays: dict[str, float | None],
    coefficients: Sequence[float],
) -> StepReport:
    """The unit of the steps a step-aware EMA used, and a warning for a half-life past the run.

    Empty for a fixed decay (no steps used).

    Example:
        >>> step_report(ckpts, [1, 2, 3], {"decay": None, "decay_per_step": None,
        ...     "half_life": 46.0}, coefficients).warnings  # doctest: +SKIP
        ["the half-life (46 epochs) is longer than the trajectory's span (2 epochs, ..."]
    """
    out = StepReport()
    if decays["decay"] is not None or not steps or any(s is None for s in steps):
        return out
    unit = _unit_of(ckpts, steps)
    known = [s for s in steps if s is not None]
    plural = unit.plural
    out.params = {"step_unit": unit.unit, "step_source": unit.source}
    half_life = decays["half_life"]
    if half_life is not None:
        out.notes.append(f"the half-life of {half_life:g} is counted per {unit.counted}")
    else:
        out.notes.append(f"the decay per step applies per {unit.counted}")
    span = max(known) - min(known)
    if half_life is not None and len(known) > 1 and half_life > span:
        out.warnings.append(
            f"the half-life ({half_life:g} {plural}) is longer than the trajectory's span "
            f"({span} {plural}, {min(known)} to {max(known)}): the result stays close to the "
            f"first checkpoint, which keeps {coefficients[0]:.2f} of the weight (the half-life "
            f"counts {plural} here: choose one within the span, or a fixed decay)"
        )
    return out
