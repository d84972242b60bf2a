"""DeepSpeed's checkpoint pickles, loaded without running code and without DeepSpeed installed.

The optimizer-state files name four DeepSpeed classes: the loss scaler (an object whose state is
a dict of numbers), ``ZeroStageEnum`` (an int enum, rebuilt by calling it with its value) and
``fragment_address`` (a dataclass of two ints). wa registers data-only stand-ins under those
exact names in torch's ``weights_only`` allow-list (``safe_globals`` with ``(class, name)``
pairs), so torch's restricted unpickler builds the stand-ins instead of importing DeepSpeed:
nothing of DeepSpeed's runs, installed or not. A stand-in accepts only plain data (numbers,
strings, booleans, None); a file that needs any other global stays refused, naming it.
"""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError, listing

_PLAIN = (int, float, str, bool, type(None))


class _DataOnly:
    """A stand-in whose pickled state may only be a dict of plain values."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, _PLAIN) for k, v in state.items()
        ):
            raise pickle.UnpicklingError(
                f"{type(self).__name__} state holds more than numbers and strings"
            )
        self.__dict__.update(state)


class LossScaler(_DataOnly):
    """Stand-in for ``deepspeed.runtime.fp16.loss_scaler.LossScaler``."""


class DynamicLossScaler(_DataOnly):
    """Stand-in for ``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`` (fp16 runs)."""


class ZeroStageEnum(enum.IntEnum):
    """Stand-in for ``deepspeed.runtime.zero.config.ZeroStageEnum`` (the same values)."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


@dataclass
class FragmentAddress(_DataOnly):
    """Stand-in for ``deepspeed.utils.tensor_fragment.fragment_address``."""

    numel: int = 0
    start: int = 0


STAND_INS: tuple[tuple[type, str], ...] = (
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (ZeroStageEnum, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
)
"""The DeepSpeed classes a checkpoint may name, and what wa builds in their place."""


def load_deepspeed_pickle(path: Path) -> object:
    """``torch.load(path, map_location="meta", weights_only=True)`` with the stand-ins.

    Tensors come back on the meta device, each storage with ``_checkpoint_offset`` (its byte
    offset in the file): nothing but the pickle is read.

    Raises:
        WaError: (BAD_INPUT) the file needs another global (named), or cannot be loaded.
    """
    try:
        with torch.serialization.safe_globals(list(STAND_INS)):
            return torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WaError(_refusal(path, e), ExitCode.BAD_INPUT) from e
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WaError(
            f"cannot load '{path}' as a DeepSpeed checkpoint file: {first}", ExitCode.BAD_INPUT
        ) from e


def _refusal(path: Path, error: Exception) -> str:
    known = {name for _, name in STAND_INS}
    try:
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - known)
    except Exception:  # noqa: BLE001 - a legacy file: torch's message names the global
        names = []
    lines = str(error).strip().splitlines()
    detail = lines[0] if lines else type(error).__name__
    what = f"the global(s) {listing(names)}" if names else f"more than data ({detail})"
    return (
        f"'{path}' needs {what} to load; wa loads DeepSpeed's files without running code and "
        f"admits only DeepSpeed's data classes ({listing(sorted(known))}), so it refuses this "
        "file (convert it with DeepSpeed's zero_to_fp32.py instead)"
    )


def model_states_note(obj: object, path: Path) -> str | None:
    """For a DeepSpeed model-states file named on its own: what reading its module means.

    ZeRO-1/2 keep the whole module there (in the training dtype): the note says so, and where
    the fp32 master weights are. ZeRO-3 keeps empty placeholders of the parameters: refused,
    since averaging them would write a model of empty tensors. ``None`` for any other pickle.

    Raises:
        WaError: (BAD_INPUT) a ZeRO-3 model-states file.
    """
    if not isinstance(obj, dict) or not {"module", "param_shapes", "buffer_names"} <= obj.keys():
        return None
    module, groups = obj["module"], obj["param_shapes"]
    if not isinstance(module, dict) or not isinstance(groups, list):
        return None
    shapes = {k: v for g in groups if isinstance(g, dict) for k, v in g.items()}
    placeholders = [
        k
        for k, v in module.items()
        if isinstance(v, torch.Tensor) and v.numel() == 0 and k in shapes and _numel(shapes[k])
    ]
    folder = path.parent
    if placeholders:
        raise WaError(
            f"'{path}' is a DeepSpeed ZeRO-3 model-states file: it holds only empty placeholders "
            f"of the parameters ({listing(placeholders, 3)}); the weights live in the optimizer "
            f"files (*_optim_states.pt) beside it: name the folder '{folder}' (or its parent "
            "for the whole run) instead",
            ExitCode.BAD_INPUT,
        )
    return (
        f"the module weights of DeepSpeed's {path.name} (the training dtype), not the fp32 "
        f"master weights of the optimizer files beside it (name the folder '{folder}' to read "
        "those)"
    )


def _numel(shape: object) -> int:
    try:
        n = 1
        for d in shape:  # type: ignore[attr-defined]  # a torch.Size
            n *= int(d)
        return n
    except (TypeError, ValueError):
        return 1
