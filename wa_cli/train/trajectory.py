"""Save a training trajectory as ``ckpt_{step}.safetensors`` files that ``wa`` reads back.

SWA (Izmailov et al. 2018, arXiv 1803.05407) averages the weights visited along the tail of a run;
collecting them is the training side's job. Each file holds the model's ``state_dict`` (BatchNorm
buffers and their int64 ``num_batches_tracked`` included) and, as safetensors metadata strings,
``format: pt``, ``step``, ``epoch`` and any metrics (``val_loss``, ...). ``wa ema --decay-per-step``
orders and weighs files by ``step``; ``wa average --top-k K --metric val_loss`` picks by a metric.

Files are written atomically (temporary sibling, fsync, rename), so a run killed mid-save never
leaves a truncated checkpoint that a later ``wa average runs/a/*.safetensors`` would trip over.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.writer import write_state_dict

logger = logging.getLogger(__name__)

Unit = Literal["step", "epoch"]


def checkpoint_metadata(
    step: int, epoch: int | None = None, metrics: Mapping[str, float | int | str] | None = None
) -> dict[str, str]:
    """The metadata strings stored in a trajectory file.

    Floats are written with ``repr`` so they read back bit for bit with ``float()``.

    Example:
        >>> checkpoint_metadata(120, epoch=3, metrics={"val_loss": 0.25})
        {'format': 'pt', 'step': '120', 'epoch': '3', 'val_loss': '0.25'}
    """
    meta = {"format": "pt", "step": str(int(step))}
    if epoch is not None:
        meta["epoch"] = str(int(epoch))
    for name, value in (metrics or {}).items():
        if name in meta:
            raise WaError(f"metric name '{name}' is reserved (rename the metric)", ExitCode.USAGE)
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            logger.warning("metric %s is %s at step %d", name, value, step)
        meta[name] = repr(value) if isinstance(value, float) else str(value)
    return meta


def save_checkpoint(
    path: str | os.PathLike[str],
    state: torch.nn.Module | Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Write a model (or a state dict) to one safetensors file, atomically.

    Tensors are detached and streamed by ``wa``'s own writer (``io.writer``) one key at a time,
    so tensors that share storage (tied weights) need no clone: each key gets its own bytes.

    Example:
        >>> save_checkpoint("ckpt_0.safetensors", model, {"format": "pt"})  # doctest: +SKIP
    """
    sd = state.state_dict() if isinstance(state, torch.nn.Module) else state
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise WaError(
                f"state entry '{key}' is a {type(value).__name__}, not a tensor "
                "(save only tensors; put scalars in metrics)",
                ExitCode.USAGE,
            )
        tensors[key] = value.detach()  # the writer moves each to the CPU as it streams it
    path = Path(path)
    write_state_dict(tensors, path, dict(metadata or {}), force=force)
    return path


_NAME = re.compile(r"^(?P<prefix>.+)_(?P<step>\d+)\.safetensors$")


class TrajectoryWriter:
    """Save a model every ``every`` steps or epochs as ``{directory}/{prefix}_{step}.safetensors``.

    Args:
        directory: folder for the files; created if missing.
        every: save period, counted in ``unit``.
        unit: ``"epoch"`` (call :meth:`maybe_save` once per epoch) or ``"step"``.
        start: first step/epoch that is saved (SWA collects from ``swa_start`` on).
        keep_last: keep only this many files, deleting the oldest (by step). Files of the same
            name pattern already in the folder (an earlier part of a resumed run) count too.
        prefix: file name prefix.
        force: replace a file of the same step instead of refusing.

    Example:
        >>> writer = TrajectoryWriter("runs/a", every=1, unit="epoch", start=20)  # doctest: +SKIP
        >>> writer.maybe_save(model, step=step, epoch=epoch, metrics={"val_loss": 0.31})
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int = 1,
        unit: Unit = "epoch",
        start: int = 0,
        keep_last: int | None = None,
        prefix: str = "ckpt",
        force: bool = False,
    ) -> None:
        if every < 1:
            raise WaError(f"every must be >= 1, got {every}", ExitCode.USAGE)
        if unit not in ("step", "epoch"):
            raise WaError(f"unit must be 'step' or 'epoch', got {unit!r}", ExitCode.USAGE)
        if keep_last is not None and keep_last < 1:
            raise WaError(f"keep_last must be >= 1 or None, got {keep_last}", ExitCode.USAGE)
        self.directory = Path(directory)
        self.every, self.unit, self.start = every, unit, start
        self.keep_last, self.prefix, self.force = keep_last, prefix, force
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WaError(
                f"cannot create trajectory folder '{self.directory}': {e.strerror}", ExitCode.OUTPUT
            ) from e
        self.saved: list[tuple[int, Path]] = sorted(self._existing())

    def _existing(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and m["prefix"] == self.prefix:
                found.append((int(m["step"]), p))
        return found

    def path_for(self, step: int) -> Path:
        """The file a checkpoint of ``step`` goes to."""
        return self.directory / f"{self.prefix}_{int(step)}.safetensors"

    def due(self, step: int, epoch: int | None = None) -> bool:
        """Whether :meth:`maybe_save` would save at this step/epoch."""
        count = step if self.unit == "step" else epoch
        if count is None:
            raise WaError("unit='epoch' needs epoch=... in maybe_save", ExitCode.USAGE)
        return count >= self.start and (count - self.start) % self.every == 0

    def maybe_save(
        self,
        model: torch.nn.Module | Mapping[str, torch.Tensor],
        step: int,
        epoch: int | None = None,
        metrics: Mapping[str, float | int | str] | None = None,
    ) -> Path | None:
        """Save if this step/epoch is due; return the path written, else None."""
        return self.save(model, step, epoch, metrics) if self.due(step, epoch) else None

    def save(
        self,
        model: torch.nn.Module | Mapping[str, torch.Tensor],
        step: int,
        epoch: int | None = None,
        metrics: Mapping[str, float | int | str] | None = None,
    ) -> Path:
        """Save now, whatever the period, then prune to ``keep_last`` files."""
        path = save_checkpoint(
            self.path_for(step), model, checkpoint_metadata(step, epoch, metrics), self.force
        )
        self.saved = sorted([s for s in self.saved if s[1] != path] + [(int(step), path)])
        logger.info("saved %s", path)
        if self.keep_last is not None:
            while len(self.saved) > self.keep_last:
                _, old = self.saved.pop(0)
                old.unlink(missing_ok=True)
                logger.info("removed %s (keep_last=%d)", old, self.keep_last)
        return path
