"""Hugging Face style sharded checkpoints: finding a folder's index and reading its weight map.

A sharded checkpoint is a folder of ``*.safetensors`` shards and one ``*.safetensors.index.json``
whose ``weight_map`` names the shard of every tensor. No torch here: input expansion uses this
before any checkpoint is opened.
"""

from __future__ import annotations

from pathlib import Path

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.formats import INDEX_SUFFIX
from wa_cli.io.hostile import json_reason, parse_json, read_bounded

__all__ = ["INDEX_SUFFIX", "find_index", "index_files", "read_weight_map"]


def index_files(folder: Path) -> list[Path]:
    """Every ``*.safetensors.index.json`` directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file())


def find_index(folder: Path) -> Path | None:
    """The index of a sharded checkpoint folder, ``None`` when it has none.

    Raises:
        WaError: (BAD_INPUT) the folder holds more than one index.

    Example:
        >>> find_index(Path("runs/a/step_1000"))  # doctest: +SKIP
        PosixPath('runs/a/step_1000/model.safetensors.index.json')
    """
    indexes = index_files(folder)
    if len(indexes) > 1:
        raise WaError(
            f"folder '{folder}' holds several sharded-checkpoint indexes "
            f"({listing([p.name for p in indexes])}); pass the index file of the checkpoint "
            "you mean instead of the folder",
            ExitCode.BAD_INPUT,
        )
    return indexes[0] if indexes else None


def read_weight_map(index: Path) -> dict[str, str]:
    """The index's ``weight_map``: tensor name → shard file name (relative to the index)."""
    raw = read_bounded(index, what="index")
    try:
        weight_map = parse_json(raw)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except ValueError as e:
        raise WaError(
            f"'{index}' is not a sharded-checkpoint index: {json_reason(e)}", ExitCode.BAD_INPUT
        ) from e
    except (KeyError, TypeError) as e:
        raise WaError(
            f"'{index}' is not a sharded-checkpoint index (expected JSON with a "
            "'weight_map' object)",
            ExitCode.BAD_INPUT,
        ) from e
    return {str(k): str(v) for k, v in weight_map.items()}
