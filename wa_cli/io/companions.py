"""What an output folder needs beside the weights to load like its inputs: names and config.

``from_pretrained(DIR)`` finds weights by file name (transformers: ``model*.safetensors``;
diffusers: ``diffusion_pytorch_model*.safetensors``) and needs ``config.json`` (and, for a
language model, the tokenizer files) beside them. ``--shard-name`` picks the names (detected from
the first input when not given) and ``--copy-config`` copies the non-weight files of the newest
input's folder, leaving out what only training resumes from (optimizer, scheduler, rng, trainer
state, training arguments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from wa_cli.io.formats import INDEX_SUFFIX, checkpoint_suffix

KNOWN_WEIGHT_NAMES = ("model", "diffusion_pytorch_model", "adapter_model")
"""Base names libraries load by: ``<name>.safetensors`` or ``<name>-0000k-of-0000n``."""
_SHARD = re.compile(r"^(.+)-[0-9]{5}-of-[0-9]{5}\.safetensors$")
_TRAINING_ONLY = re.compile(
    r"^(trainer_state\.json|training_args\..*|optimizer.*|scheduler.*|sampler.*|scaler.*"
    r"|rng_state.*|random_states.*|.*\.pkl|latest|zero_to_fp32\.py)$"
)


def shard_name_of(files: Sequence[Path]) -> str | None:
    """The base name an input's own files use (``diffusion_pytorch_model``), or ``None``.

    Example:
        >>> shard_name_of([Path("unet/diffusion_pytorch_model.safetensors")])
        'diffusion_pytorch_model'
        >>> shard_name_of([Path("runs/ckpt_100.safetensors")]) is None
        True
    """
    for f in files:
        name = f.name
        if name.endswith(INDEX_SUFFIX):
            return name[: -len(INDEX_SUFFIX)]
        m = _SHARD.match(name)
        stem = m.group(1) if m else name.removesuffix(".safetensors").removesuffix(".bin")
        if stem in KNOWN_WEIGHT_NAMES or stem == "pytorch_model":
            return "model" if stem == "pytorch_model" else stem
    return None


def config_files(folder: Path) -> list[Path]:
    """The files ``from_pretrained`` reads beside the weights: every regular, non-hidden file
    of ``folder`` that is neither a checkpoint (weights, optimizer pickles, indexes) nor
    training state (``trainer_state.json``, ``training_args.bin``, rng, scheduler, ...)."""
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.startswith(".") or not p.is_file() or p.is_symlink():
            continue
        if checkpoint_suffix(name) is not None or name.endswith(".index.json"):
            continue
        if _TRAINING_ONLY.match(name):
            continue
        out.append(p)
    return out
