"""Where a checkpoint's training step comes from: inside the file, its name, its folder.

Part of :mod:`wa_cli.select`. Training libraries record the step in different places (PEERS.md):
Lightning names files ``epoch=3-step=92-val_loss=0.5529.ckpt`` and stores ``global_step`` inside;
timm stores ``epoch``; the HF Trainer's ``checkpoint-500/`` folder and its ``trainer_state.json``
hold the step; accelerate numbers its ``checkpoint_3/`` folders. Taking "the last number in the
name" reads the loss digits (5529) as a step, so the rules here are:

* Inside the file (``Checkpoint.metadata``, filled by the readers): ``step``, else
  ``global_step``; ``epoch`` only as a last resort, and the report then says epochs were used.
* The name: a ``step=N`` / ``global_step=N`` field (Lightning) or ``step_N``/``stepN``; else the
  last integer that is not part of a ``key=value`` field or a decimal number; else an
  ``epoch=N`` field. Digits of a metric (``val_loss=0.5529``) never count.
* The parent folder: when the file name holds no number and its folder is named like a
  checkpoint (``checkpoint-6/model.safetensors``, accelerate's ``checkpoint_3/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from wa_cli.errors import ExitCode, WaError

STEP_KEYS = ("step", "global_step", "num_updates")
"""Metadata entries that hold a training step, in the order they are preferred (``num_updates``:
fairseq's, read by :mod:`wa_cli.io.library_layouts`)."""
EPOCH_KEY = "epoch"
MAX_STEP = 2**63 - 1
"""Steps are stored as 64-bit integers in every format wa writes; larger ones are refused."""

StepSource = Literal["metadata", "name", "folder", "epoch", "order"]
"""``metadata``: a step recorded inside the file; ``name``/``folder``: the file or folder name;
``epoch``: the ``epoch`` recorded inside the file (no step recorded); ``order``: no step."""

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)")
_STEP_WORD = re.compile(r"(?<![A-Za-z])(?:global_?)?step[-_]?([0-9]+)(?![0-9])", re.IGNORECASE)
_DECIMAL = re.compile(r"[0-9]*\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+")
_INTEGER = re.compile(r"[0-9]+")
_EPOCH_BEFORE = re.compile(r"epoch[-_]?$", re.IGNORECASE)
_CHECKPOINT_FOLDER = re.compile(
    r"^(?:(?:checkpoint|ckpt|step|global_step|iter|iteration|epoch)[-_=]?)?([0-9]+)$",
    re.IGNORECASE,
)


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Step:
    """A step and where it was found.

    Attributes:
        value: The step (or epoch, when ``source`` is ``epoch`` or ``kind`` is ``epoch``).
        source: See :data:`StepSource`.
        kind: What the number is: ``step`` (named so), ``epoch`` (named so) or ``number`` (a
            bare number in a name).
        where: For messages: ``'global_step' in the file``, ``step=92 in the name``, ...
    """

    value: int
    source: StepSource
    kind: Literal["step", "epoch", "number"]
    where: str


def _checked(value: int, what: str) -> int:
    if not -MAX_STEP - 1 <= value <= MAX_STEP:
        raise WaError(
            f"{what} is {value}, beyond the 64-bit range of a step (2^63 - 1)", ExitCode.BAD_INPUT
        )
    return value


def number_in_name(stem: str) -> tuple[int, Literal["step", "epoch", "number"]] | None:
    """The step a name holds, and what kind of number it is; ``None`` when it holds none.

    Example:
        >>> number_in_name("epoch=3-step=92-val_loss=0.5529")
        (92, 'step')
        >>> number_in_name("epoch=3-val_loss=0.5529")
        (3, 'epoch')
        >>> number_in_name("ckpt_1350")
        (1350, 'number')
    """
    fields: dict[str, str] = {}
    for m in _FIELD.finditer(stem):
        fields.setdefault(m.group(1).lower(), m.group(2))
    for key in STEP_KEYS:
        if key in fields and _INTEGER.fullmatch(fields[key]):
            return int(fields[key]), "step"
    rest = _FIELD.sub("-", stem)
    words = _STEP_WORD.findall(rest)
    if words:
        return int(words[-1]), "step"
    rest = _DECIMAL.sub("-", rest)
    integers = list(_INTEGER.finditer(rest))
    if integers:
        last = integers[-1]
        kind: Literal["epoch", "number"] = (
            "epoch" if _EPOCH_BEFORE.search(rest[: last.start()]) else "number"
        )
        return int(last.group()), kind
    if EPOCH_KEY in fields and _INTEGER.fullmatch(fields[EPOCH_KEY]):
        return int(fields[EPOCH_KEY]), "epoch"
    return None


def step_in_name(stem: str, path: Path, label: str) -> Step | None:
    """The step from a checkpoint's name (``stem``, suffix removed), else from its folder."""
    found = number_in_name(stem)
    if found is not None:
        value, kind = found
        return Step(_checked(value, f"the step in the name of '{label}'"), "name", kind, "name")
    folder = path.parent.name
    m = _CHECKPOINT_FOLDER.match(folder)
    if m and folder != stem:
        value = _checked(int(m.group(1)), f"the step in the folder name of '{label}'")
        return Step(value, "folder", "number", f"folder '{folder}/'")
    return None


def _integer(raw: str) -> int | None:
    text = str(raw).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def step_in_metadata(metadata: Mapping[str, str], label: str) -> Step | None:
    """The step recorded inside the file: ``step``, else ``global_step``.

    Raises:
        WaError: (BAD_INPUT) the entry is present but not an integer, or beyond 2^63 - 1.
    """
    for key in STEP_KEYS:
        raw = metadata.get(key)
        if raw is None:
            continue
        value = _integer(raw)
        if value is None:
            raise WaError.naming(
                "checkpoint '{label}': metadata '{key}' is {raw!r}, expected an integer "
                "(fix the metadata, or pass {order} name to sort by file name or {order} given "
                "to keep the input order)",
                ExitCode.BAD_INPUT,
                label=label,
                key=key,
                raw=raw,
            )
        return Step(_checked(value, f"metadata '{key}' of '{label}'"), "metadata", "step", key)
    return None


def epoch_in_metadata(metadata: Mapping[str, str], label: str) -> Step | None:
    """The whole-number ``epoch`` recorded inside the file (a fractional epoch is no order)."""
    raw = metadata.get(EPOCH_KEY)
    value = None if raw is None else _integer(raw)
    if value is None:
        return None
    return Step(_checked(value, f"metadata 'epoch' of '{label}'"), "epoch", "epoch", EPOCH_KEY)
