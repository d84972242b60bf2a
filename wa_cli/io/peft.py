"""PEFT adapters: ``adapter_model.safetensors`` + ``adapter_config.json``, and their configs.

``PeftModel.save_pretrained`` (and the HF Trainer's ``checkpoint-N/`` of a PEFT model) writes
the adapter's own parameters (LoRA's ``lora_A``/``lora_B`` factors, DoRA magnitudes, modules to
save) beside the configuration that says how they act on the base model. Adapters of one run
average factor by factor; that is the SWA of the adapter's parameters, and *not* the mean of the
weight deltas ``B·A`` (the product of means is not the mean of products). Averaging is only
meaningful when every input has the same configuration: the fields below must agree, else the
run is refused naming the first field that differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.hostile import json_reason, parse_json, read_bounded

ADAPTER_FILES = ("adapter_model.safetensors",)
"""The weights file of a PEFT adapter folder."""
ADAPTER_CONFIG = "adapter_config.json"
MUST_AGREE = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "use_rslora",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "bias",
    "lora_bias",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "target_parameters",
    "layer_replication",
    "use_qalora",
)
"""Fields that change what the adapter's tensors mean (rank, scaling, where they apply)."""
_MAX_CONFIG_BYTES = 16 << 20


def adapter_folder(files: Sequence[Path]) -> Path | None:
    """The folder of the adapter a checkpoint reads, when one of its files is an adapter's."""
    for f in files:
        if f.name in ADAPTER_FILES and (f.parent / ADAPTER_CONFIG).is_file():
            return f.parent
    return None


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json``, strictly parsed.

    Raises:
        WaError: (BAD_INPUT) unreadable, not JSON, or not an object.
    """
    path = folder / ADAPTER_CONFIG
    try:
        config = parse_json(read_bounded(path, _MAX_CONFIG_BYTES, "adapter config"))
    except ValueError as e:
        raise WaError(f"cannot read '{path}': {json_reason(e)}", ExitCode.BAD_INPUT) from e
    if not isinstance(config, dict):
        raise WaError(f"'{path}' is not a JSON object", ExitCode.BAD_INPUT)
    return config


def _canonical(value: object) -> object:
    # target_modules may be saved as a list in any order (PEFT stores a set) or as a regex string
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


def check_adapter_configs(files_per_input: Sequence[Sequence[Path]]) -> int:
    """Refuse adapters whose configurations disagree; returns how many inputs are adapters.

    Raises:
        WaError: (INCOMPATIBLE) a field of :data:`MUST_AGREE` differs, naming it and both files;
            (INCOMPATIBLE) some inputs are adapters and others are not.

    Example:
        >>> adapter = Path("run/checkpoint-5/adapter_model.safetensors")
        >>> check_adapter_configs([[adapter]])  # doctest: +SKIP
        1
    """
    folders = [adapter_folder(files) for files in files_per_input]
    adapters = [f for f in folders if f is not None]
    if not adapters:
        return 0
    if len(adapters) != len(folders):
        other = next(i for i, f in enumerate(folders) if f is None)
        raise WaError(
            f"input {other + 1} is not a PEFT adapter while '{adapters[0]}' is: adapters "
            "average only with adapters of the same configuration",
            ExitCode.INCOMPATIBLE,
        )
    first = read_adapter_config(adapters[0])
    for folder in adapters[1:]:
        config = read_adapter_config(folder)
        for name in MUST_AGREE:
            a, b = _canonical(first.get(name)), _canonical(config.get(name))
            if a != b:
                raise WaError(
                    f"adapter configs disagree on {name!r}: {b!r} in '{folder / ADAPTER_CONFIG}' "
                    f"vs {a!r} in '{adapters[0] / ADAPTER_CONFIG}' (adapters average factor by "
                    "factor only within one configuration)",
                    ExitCode.INCOMPATIBLE,
                )
    return len(adapters)
