"""Run folders: what training libraries save per checkpoint, read as one checkpoint each.

* HF Trainer ``checkpoint-N/``: ``model.safetensors`` (or shards and their index, or
  ``pytorch_model.bin``) beside ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``,
  ``training_args.bin`` and ``trainer_state.json``, whose ``global_step`` is the step.
* accelerate ``save_state`` folders (``checkpoint_N/``): ``model.safetensors`` or
  ``pytorch_model.bin`` beside ``optimizer.bin``, ``scheduler.bin``, ``sampler.bin``,
  ``random_states_0.pkl``, ``scaler.pt``; FSDP's sharded state in ``pytorch_model_fsdp_0/`` (DCP).
* ``save_pretrained`` folders of transformers (``model*.safetensors``) and diffusers
  (``diffusion_pytorch_model*.safetensors``), with ``config.json``.
* DCP folders (``.metadata`` + ``*.distcp``), see :mod:`wa_cli.io.dcp`.
* DeepSpeed tag folders (``global_stepN/``) and Trainer ``checkpoint-N/`` folders holding one,
  see :mod:`wa_cli.io.deepspeed_layout`.
* PEFT adapters (``adapter_model.safetensors`` + ``adapter_config.json``), alone or in a Trainer
  ``checkpoint-N/``, see :mod:`wa_cli.io.peft`.

A folder counts as one checkpoint only when its model file is found and every other checkpoint
file in it is training state (optimizer, scheduler, rng, args) or a shard of the model: a plain
folder of ``ckpt_*.safetensors`` files stays a trajectory. No torch here: input expansion
recognises folders before anything is opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.deepspeed_layout import tag_folder, trainer_tag
from wa_cli.io.formats import INDEX_SUFFIX, checkpoint_suffix
from wa_cli.io.index import read_weight_map
from wa_cli.io.peft import ADAPTER_FILES

MODEL_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
    *ADAPTER_FILES,
)
"""The model file of a run folder, in order of preference (safetensors first; a PEFT adapter's
``adapter_model.safetensors`` last, see :mod:`wa_cli.io.peft`)."""
DCP_SUBFOLDERS = ("pytorch_model_fsdp_0", "model_and_optim", "weights")
"""Where libraries put a DCP folder inside a checkpoint folder: accelerate and the HF Trainer
(FSDP), OLMo-core (``stepN/model_and_optim/``), NeMo 2 (``.../weights/``)."""
TRAINER_STATE = "trainer_state.json"
_TRAINING_STATE = re.compile(
    r"^(optimizer|scheduler|sampler|scaler|training_args|rng_state(_\d+)?|random_states_\d+"
    r"|custom_checkpoint_\d+|optimizer_\d+|scheduler_\d+|sampler_\d+)\.(pt|pth|bin|pkl|safetensors)$"
)
_OTHER_MODEL = re.compile(r"^(model|pytorch_model)_(\d+)\.(safetensors|bin)$")
_MAX_STATE_BYTES = 256 * 2**20

Kind = Literal["hf-trainer", "accelerate", "save_pretrained", "dcp", "deepspeed", "peft"]


@dataclass(frozen=True)
class RunFolder:
    """A recognised run folder.

    Attributes:
        folder: the folder.
        kind: which library's layout it is.
        model: what is opened: an index, a weights file, or a DCP folder.
        left_out: the names of other weight-like files not used (optimizer, a second model).
    """

    folder: Path
    kind: Kind
    model: Path
    left_out: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        """Which file was taken: ``model.safetensors of checkpoint-6/``."""
        taken = self.model.name if self.model != self.folder else "DCP checkpoint"
        text = f"{taken} of {self.folder.name}/"
        if self.left_out:
            text += f" (left out {', '.join(self.left_out)})"
        return text


def is_dcp_folder(folder: Path) -> bool:
    """``torch.distributed.checkpoint`` output: a ``.metadata`` file and ``*.distcp`` files."""
    try:
        return (folder / ".metadata").is_file() and any(
            p.suffix == ".distcp" for p in folder.iterdir()
        )
    except OSError:
        return False


def recognise(folder: Path) -> RunFolder | None:
    """The run folder ``folder`` is, or ``None`` for any other folder.

    Example:
        >>> recognise(Path("out/checkpoint-500")).model.name  # doctest: +SKIP
        'model.safetensors'
    """
    if is_dcp_folder(folder):
        return RunFolder(folder, "dcp", folder)
    if tag_folder(folder) is not None:
        return RunFolder(folder, "deepspeed", folder)
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return None
    tag = trainer_tag(folder, names)
    if tag is not None:  # its model.safetensors, if any, is the 16-bit copy: left out by name
        others = sorted(n for n in names if not n.startswith(".") and checkpoint_suffix(n))
        return RunFolder(folder, "deepspeed", tag, others)
    if sum(n.endswith(INDEX_SUFFIX) for n in names) > 1:
        return None  # ambiguous: find_index says so
    model: Path | None = next((folder / n for n in MODEL_FILES if n in names), None)
    if model is None:
        model = next(
            (folder / n for n in DCP_SUBFOLDERS if n in names and is_dcp_folder(folder / n)), None
        )
    if model is None:
        sharded_bin = sorted(n for n in names if n.endswith(".bin.index.json"))
        if sharded_bin:
            raise WaError(
                f"'{folder / sharded_bin[0]}' indexes sharded .bin pickles, which wa does not read "
                "(save with safe_serialization=True, the default, to get safetensors shards)",
                ExitCode.BAD_INPUT,
            )
        return None
    used = {model.name}
    if model.name.endswith(".index.json"):
        try:
            used |= set(read_weight_map(model).values())
        except WaError:
            return None
    left_out: list[str] = []
    for name in sorted(names - used):
        if name.startswith(".") or checkpoint_suffix(name) is None:
            continue
        if _TRAINING_STATE.match(name) or _OTHER_MODEL.match(name) or name in MODEL_FILES:
            left_out.append(name)
        else:
            return None  # another checkpoint beside the model: a folder of checkpoints
    return RunFolder(folder, _kind(folder, names), model, left_out)


def _kind(folder: Path, names: set[str]) -> Kind:
    if TRAINER_STATE in names:
        return "hf-trainer"
    if names & set(ADAPTER_FILES):
        return "peft"
    if any(n.startswith("random_states_") for n in names) or "optimizer.bin" in names:
        return "accelerate"
    return "save_pretrained"


def trainer_record(folder: Path) -> dict[str, str]:
    """What ``trainer_state.json`` says about this checkpoint: ``global_step``, ``epoch``, and
    the numbers logged at that step (``eval_loss``, ``eval_accuracy``, ...), as metadata text.

    Raises:
        WaError: (BAD_INPUT) the file is not readable JSON or has no integer ``global_step``.
    """
    path = folder / TRAINER_STATE
    if not path.is_file():
        return {}
    try:
        if path.stat().st_size > _MAX_STATE_BYTES:
            raise WaError(f"'{path}' is larger than 256 MB", ExitCode.BAD_INPUT)
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise WaError(f"cannot read '{path}': {e}", ExitCode.BAD_INPUT) from e
    step = state.get("global_step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise WaError(f"'{path}' has no integer global_step", ExitCode.BAD_INPUT)
    record = {"global_step": str(step)}
    epoch = state.get("epoch")
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        record["epoch"] = str(epoch)
    history = state.get("log_history")
    if history is not None and not isinstance(history, list):  # "log_history": 5 was a TypeError
        raise WaError(
            f"'{path}' has a log_history that is a {type(history).__name__}, not a list "
            "(the Trainer writes a list of logged entries; fix or remove the file)",
            ExitCode.BAD_INPUT,
        )
    for entry in history or []:
        if isinstance(entry, dict) and entry.get("step") == step:
            for name, value in entry.items():
                if name in ("step", "epoch") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and isinstance(name, str):
                    record[name] = str(value)
    return record
