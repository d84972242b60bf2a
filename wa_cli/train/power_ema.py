"""Power-function EMAs tracked during training, saved as snapshots for post-hoc EMA.

Karras et al. 2024 (EDM2), Section 3: an EMA whose profile is p_t(τ) ∝ τ^γ on [0, t] keeps a
fixed *relative* width σ_rel as training goes on, unlike a fixed decay. Tracked per step with
β_t = (1 − 1/t)^(γ+1) (step 1 copies the weights), and saved every N steps as
``{prefix}_{sigma_rel}_{step}.safetensors`` with ``step`` and ``wa_ema_sigma_rel`` metadata,
two such EMAs let ``wa ema --sigma-rel`` reconstruct any other width after training
(:mod:`wa_cli.methods.ema.power`).

Floating tensors are averaged in float32 or wider (a bf16 EMA with β near 1 rounds every update
to nothing); non-float buffers (``num_batches_tracked``) are copied from the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.ema.power import gamma_of_sigma_rel
from wa_cli.train.trajectory import save_checkpoint


class PowerEMA:
    """One or more power-function EMAs of a model's state, updated once per optimizer step.

    Args:
        model: the network whose ``state_dict`` is tracked.
        sigma_rels: the relative widths to track, each in (0, 1/√12] (EDM2 uses 0.05 and 0.10).
        directory: where :meth:`maybe_save` writes snapshots (optional).
        every: snapshot period in steps (with ``directory``).
        prefix: snapshot file name prefix.

    Example:
        >>> ema = PowerEMA(model, sigma_rels=(0.05, 0.10), directory="snaps", every=500)
        >>> for batch in loader:  # doctest: +SKIP
        ...     loss(model, batch).backward(); opt.step(); opt.zero_grad()
        ...     ema.update()
        ...     ema.maybe_save()
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sigma_rels: Sequence[float] = (0.05, 0.10),
        directory: str | os.PathLike[str] | None = None,
        every: int | None = None,
        prefix: str = "ema",
    ) -> None:
        if not sigma_rels:
            raise WaError("PowerEMA needs at least one sigma_rel", ExitCode.USAGE)
        if (directory is None) != (every is None) or (every is not None and every < 1):
            raise WaError("give directory and every (>= 1) together, or neither", ExitCode.USAGE)
        self.model = model
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [gamma_of_sigma_rel(s) for s in self.sigma_rels]
        self.directory = None if directory is None else Path(directory)
        self.every = every
        self.prefix = prefix
        self.step = 0
        self.averages: list[dict[str, torch.Tensor]] = [{} for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into every tracked EMA (call after each step)."""
        self.step += 1
        state = self.model.state_dict()
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1.0 - 1.0 / self.step) ** (gamma + 1.0)  # 0 at step 1: a copy
            for key, value in state.items():
                value = value.detach()
                if not value.is_floating_point():
                    average[key] = value.clone()
                    continue
                wide = value.to(torch.promote_types(value.dtype, torch.float32))
                if key not in average or beta == 0.0:
                    average[key] = wide.clone()
                else:
                    average[key].mul_(beta).add_(wide, alpha=1.0 - beta)

    def averaged_state(self, sigma_rel: float) -> dict[str, torch.Tensor]:
        """The EMA of width ``sigma_rel``, each tensor in the model's own dtype."""
        index = self._index(sigma_rel)
        state = self.model.state_dict()
        return {k: v.to(state[k].dtype) for k, v in self.averages[index].items()}

    def maybe_save(self, force: bool = False) -> list[Path]:
        """Write one snapshot per σ_rel when the step is a multiple of ``every``."""
        if self.directory is None or self.every is None or self.step % self.every or not self.step:
            return []
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for sigma_rel in self.sigma_rels:
            path = self.directory / f"{self.prefix}_{sigma_rel:g}_{self.step}.safetensors"
            meta = {"format": "pt", "step": str(self.step), "wa_ema_sigma_rel": repr(sigma_rel)}
            paths.append(save_checkpoint(path, self.averaged_state(sigma_rel), meta, force=force))
        return paths

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (the float32 averages, not the rounded snapshots)."""
        return {"step": self.step, "sigma_rels": list(self.sigma_rels), "averages": self.averages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the σ_rel values must match."""
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise WaError(
                f"PowerEMA state tracks sigma_rels {state['sigma_rels']}, not {self.sigma_rels}",
                ExitCode.USAGE,
            )
        self.step = int(state["step"])
        self.averages = [{k: v.clone() for k, v in a.items()} for a in state["averages"]]

    def _index(self, sigma_rel: float) -> int:
        try:
            return self.sigma_rels.index(float(sigma_rel))
        except ValueError:
            raise WaError(
                f"sigma_rel {sigma_rel} is not tracked (tracked: {self.sigma_rels})", ExitCode.USAGE
            ) from None
