"""What a trajectory's step numbers count: training steps, epochs, or numbers of unsaid unit.

Part of :mod:`wa_cli.select`. Step-aware decay (``--half-life H``, ``--decay-per-step d``) counts
in the unit of the steps it was given. On ``epoch_{e}.pt`` files those are epoch numbers, so
``--half-life 46`` meant 46 epochs: the first, worst checkpoint of a 50-epoch run got 0.81 of
the weight (issue 22). The report therefore says which unit the steps are in, and where the
numbers came from (:func:`step_unit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from wa_cli.errors import WaError
from wa_cli.select.order import C, _pick_source
from wa_cli.select.steps import epoch_in_metadata

Unit = Literal["step", "epoch", "unknown"]
"""``step``: training steps (recorded so, or named ``step=N``); ``epoch``: epoch numbers;
``unknown``: bare numbers in the names that say neither."""


@dataclass(frozen=True)
class StepUnit:
    """The unit of a trajectory's steps and, in words, where they came from."""

    unit: Unit
    source: str

    @property
    def plural(self) -> str:
        """``steps``, ``epochs`` or ``units`` (for spans: "4 epochs, 1 to 5")."""
        return {"step": "steps", "epoch": "epochs", "unknown": "units"}[self.unit]

    @property
    def counted(self) -> str:
        """What one unit is, in words: ``training step``, ``epoch``, ..."""
        return {
            "step": "training step",
            "epoch": "epoch",
            "unknown": "unit of the checkpoints' numbers (they do not say steps or epochs)",
        }[self.unit]


def step_unit(items: Sequence[C]) -> StepUnit | None:
    """The unit of the steps :func:`~wa_cli.select.order_trajectory` reads from ``items``.

    Bare numbers in names (``ep3.pt``) count as epochs when every file records an ``epoch``
    equal to its number; otherwise their unit is ``unknown``. ``None``: no steps at all.

    Example:
        >>> from pathlib import Path
        >>> from types import SimpleNamespace as N
        >>> names = ["epoch_1.pt", "epoch_2.pt"]
        >>> items = [N(name=n, path=Path(n), metadata={}) for n in names]
        >>> step_unit(items).unit
        'epoch'
    """
    if not items:
        return None
    try:
        steps, source, why = _pick_source(items, warn=False)
    except WaError:
        return None
    found = [s for s in steps if s is not None]
    if source == "order" or len(found) != len(items):
        return None
    if source == "metadata":
        return StepUnit("step", why)
    kinds = {s.kind for s in found}
    if source == "epoch" or kinds == {"epoch"}:
        return StepUnit("epoch", why)
    if kinds == {"step"}:
        return StepUnit("step", why)
    epochs = [epoch_in_metadata(it.metadata, it.name) for it in items]
    if all(e is not None and e.value == s.value for e, s in zip(epochs, found, strict=True)):
        return StepUnit("epoch", f"{why}, equal to the 'epoch' recorded inside the files")
    return StepUnit("unknown", why)
