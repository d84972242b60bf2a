"""What a BatchNorm re-estimation reports: per-layer changes, batches, and the checkpoint it wrote.

:class:`BNReport` is the result of :func:`wa_cli.methods.bn.recalibrate.recalibrate_bn` (and of
``wa.update_bn``); :class:`BNCheckpointReport` wraps it for
:func:`wa_cli.methods.bn.checkpoint.recalibrate_checkpoint` with the input, the output and the
keys that were replaced. Both turn into JSON that stays valid when a change is not finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from wa_cli.methods.bn.options import Weighting

METHOD = "bn_recalibrate"
NO_BN_NOTE = "the model has no BatchNorm layer: nothing to re-estimate"


@dataclass(frozen=True)
class BNLayerChange:
    """How far one layer's running statistics moved: ‖new − old‖ / ‖old‖ (None when ‖old‖ = 0).

    A change is NaN or infinite when the old or new statistics hold non-finite values; JSON
    reports write such a change as null.
    """

    name: str
    kind: str
    mean_change: float | None
    var_change: float | None


@dataclass
class BNReport:
    """What :func:`recalibrate_bn` did: batches and samples seen, time taken, per-layer changes."""

    layers: list[BNLayerChange] = field(default_factory=list)
    batches: int = 0
    samples: int = 0
    seconds: float = 0.0
    weighting: Weighting = "batch"
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(report.to_json())``).

        Relative changes that are not finite become None (null), which keeps the output valid
        JSON (``json.dumps`` would write the invalid token ``NaN``).

        Example:
            >>> BNReport(note="no BatchNorm layer").to_json()["note"]
            'no BatchNorm layer'
        """
        return {
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 6),
            "weighting": self.weighting,
            "note": self.note,
            "layers": [
                {k: _finite_or_none(v) for k, v in asdict(layer).items()} for layer in self.layers
            ],
        }


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class BNCheckpointReport:
    """What :func:`recalibrate_checkpoint` did; ``output`` is None when nothing was written.

    ``non_finite`` counts NaN and infinite elements per written statistics key (in the output's
    dtype); ``warnings`` says so in a sentence, ``notes`` holds remarks such as left-out rows.
    """

    input: str
    output: str | None
    device: str
    bn: BNReport
    replaced: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: input, output, device, replaced keys, then the BN report's fields.

        Example:
            >>> BNCheckpointReport("a.safetensors", None, "cpu", BNReport()).to_json()["written"]
            False
        """
        return {
            "method": METHOD,
            "input": self.input,
            "output": self.output,
            "written": self.output is not None,
            "device": self.device,
            "params": self.params,
            "replaced_keys": self.replaced,
            "non_finite": self.non_finite,
            "notes": self.notes,
            "warnings": self.warnings,
            **self.bn.to_json(),
        }
