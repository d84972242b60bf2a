"""DeepSpeed's checkpoint folders, recognised by their file names (no torch here).

``engine.save_checkpoint(out)`` writes one *tag folder* per save (``out/global_stepN/``) and a
``latest`` file naming the newest tag, with ``zero_to_fp32.py`` beside:

* ZeRO-1/2: ``mp_rank_00_model_states.pt`` (the module in the training dtype, ``param_shapes``,
  ``global_steps``) and ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`` per data-parallel
  rank R (the rank's flat fp32 partition of every parameter group);
* ZeRO-3: ``zero_pp_rank_R_mp_rank_00_model_states.pt`` per rank (empty placeholders of the
  parameters) and the same optimizer files (``fp32_flat_groups``).

The HF Trainer under DeepSpeed saves ``checkpoint-N/`` holding one tag folder beside
``trainer_state.json``, ``scheduler.pt``, ``rng_state_R.pth``, ``training_args.bin`` (and
``model.safetensors`` when the 16-bit weights were gathered). A tag folder, or such a Trainer
folder, is one checkpoint (:mod:`wa_cli.io.deepspeed`); ``out/`` holding tag folders is a
trajectory of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from wa_cli.errors import ExitCode, WaError

OPTIM_FILE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
"""A rank's optimizer-state file: group 2 is the data-parallel rank, 3 the model-parallel one."""
MODEL_FILE = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
"""A model-states file: ``mp_rank_00_...`` (ZeRO-1/2) or ``zero_pp_rank_R_mp_rank_00_...``."""
TRAINER_STATE = "trainer_state.json"
LATEST = "latest"


@dataclass(frozen=True)
class TagFolder:
    """The files of one DeepSpeed save.

    Attributes:
        folder: the tag folder (``global_stepN/``).
        model_files: the model-states files, rank 0 first.
        optim_files: the optimizer-state files, by data-parallel rank.
    """

    folder: Path
    model_files: list[Path]
    optim_files: list[Path]


def tag_folder(folder: Path) -> TagFolder | None:
    """The tag folder ``folder`` is (model-states and optimizer files), else ``None``."""
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return None
    models = [m for m in map(MODEL_FILE.match, names) if m]
    optims = [m for m in map(OPTIM_FILE.match, names) if m]
    if not models or not optims:
        return None
    models.sort(key=lambda m: (int(m.group(2)), int(m.group(1) or 0)))
    optims.sort(key=lambda m: (int(m.group(3)), int(m.group(2))))
    return TagFolder(
        folder, [folder / m.group(0) for m in models], [folder / m.group(0) for m in optims]
    )


def trainer_tag(folder: Path, names: set[str]) -> Path | None:
    """The tag folder an HF Trainer ``checkpoint-N/`` holds (one, or the one ``latest`` names).

    Only a folder with ``trainer_state.json`` counts: DeepSpeed's own ``out/`` holds tag folders
    too, and is a trajectory of them.
    """
    if TRAINER_STATE not in names:
        return None
    tags = [folder / n for n in sorted(names) if tag_folder(folder / n) is not None]
    if len(tags) == 1:
        return tags[0]
    latest = folder / LATEST
    if tags and latest.is_file():
        try:
            named = latest.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        return next((t for t in tags if t.name == named), None)
    return None


def refuse_rank_file(path: Path) -> None:
    """A rank's optimizer-state file named on its own is no model: say where the model is.

    Raises:
        WaError: (BAD_INPUT) ``path`` is named like ``zero_pp_rank_R_mp_rank_00_optim_states.pt``.
    """
    if OPTIM_FILE.match(path.name):
        raise WaError(
            f"'{path}' is one rank's DeepSpeed optimizer state (its slice of the fp32 master "
            f"weights and of the Adam moments), not a model: name its folder '{path.parent}' "
            "(or the run's folder) to read the whole fp32 model",
            ExitCode.BAD_INPUT,
        )
