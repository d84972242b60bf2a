"""Training libraries' own ``torch.save`` layouts: the model's weights and the step, by their
own record (DESIGN.md, positive identification).

* fairseq ``checkpointE.pt`` / ``checkpoint_E_U.pt``: ``model``; the step is ``num_updates``
  (``optimizer_history[-1]``, else ``extra_state``), never the epoch digits of the name, so a
  folder mixing both names orders by updates.
* OpenNMT-py ``model_step_N.pt``: ``model`` and ``generator`` (the output projection, saved apart
  from the model's keys); both kept, the generator's keys as ``generator.*``, as the model's own
  ``state_dict()`` names them. ``--key model`` or ``--key generator`` picks one.
* Composer ``ep{E}-ba{B}-rank{R}.pt``: ``state.model``; the step is the recorded timestamp's
  ``batch``, else ``ba{B}`` of the name (``rank0`` is no step).
* Every layout recording both raw and EMA weights: :mod:`ema_copies` (``--variant``).

What else the checkpoint holds (optimizer, vocabulary, RNG, options) is named as left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.ema_copies import check_variant, choose, find_copies, split_prefixed

Picker = Callable[[object, Path, "str | None"], tuple[Mapping[object, object], list[str]]]

_COMPOSER_NAME = re.compile(r"(?:^|[-_])ba(\d+)(?:[-_.]|$)")


@dataclass
class Identified:
    """The chosen state dict, its non-tensor entries, the library's step, and report notes."""

    state: Mapping[object, object]
    skipped: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def identify(
    obj: object, path: Path, key: str | None, variant: str | None, pick: Picker
) -> Identified:
    """The model's weights of a loaded checkpoint, by its library's layout (else ``pick``).

    ``key`` (``--key``) names the dict and wins over every layout; ``variant`` then still chooses
    inside a dict holding ema-pytorch's two copies. ``pick`` is the generic rule
    (:func:`wa_cli.io.pickle_checkpoint._pick_state_dict`).

    Raises:
        WaError: USAGE for a layout holding raw and EMA weights and no ``variant``, or a
            variant the checkpoint does not hold; BAD_INPUT for a layout that cannot be matched.
    """
    check_variant(variant)
    metadata = library_step(obj, path)
    if not isinstance(obj, Mapping) or key is not None:
        state, skipped = pick(obj, path, key)
        found = _prefixed(Identified(state, skipped, metadata), path, variant)
        if variant is not None and not found.notes:  # never a choice silently ignored
            raise WaError.naming(
                "'{path}': {key} {name!r} names one dict, which holds no raw and EMA pair for "
                "{variant} to choose from; pass {key} or {variant}, not both",
                ExitCode.USAGE,
                path=str(path),
                name=key,
            )
        return found
    copies = find_copies(obj)
    if copies is not None:
        chosen, note = choose(copies, path, variant)
        if copies.left_out:  # one note per input: the report groups alike notes of many inputs
            note += f"; left out {listing(list(copies.left_out), 3)}"
        return Identified(chosen.state, _non_tensors(chosen.state), metadata, [note])
    layout = _opennmt(obj, path) or _composer(obj)
    if layout is None:
        state, skipped = pick(obj, path, None)
        layout = Identified(state, skipped)
    found = layout
    found.metadata = {**metadata, **found.metadata}
    found = _prefixed(found, path, variant)
    if variant == "ema" and not any(n.startswith("read the EMA") for n in found.notes):
        raise WaError.naming(
            "'{path}' holds no EMA copy of the weights that wa knows (timm, Lightning, fairseq, "
            "Composer, ema-pytorch, torch-ema/diffusers layouts); drop {variant} ema, or name "
            "the dict with {key}",
            ExitCode.USAGE,
            path=str(path),
        )
    return found


def _prefixed(found: Identified, path: Path, variant: str | None) -> Identified:
    """ema-pytorch's ``ema_model.*``/``online_model.*`` inside the chosen dict, if present."""
    copies = split_prefixed(found.state)
    if copies is None:
        return found
    chosen, note = choose(copies, path, variant)
    if copies.left_out:
        note += f"; left out ema-pytorch's {listing(list(copies.left_out))}"
    return Identified(chosen.state, found.skipped, found.metadata, [*found.notes, note])


def _non_tensors(state: Mapping[object, object]) -> list[str]:
    return [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def library_step(obj: object, path: Path) -> dict[str, str]:
    """``{"step": ...}`` from fairseq's ``num_updates`` or Composer's timestamp; else ``{}``."""
    if not isinstance(obj, Mapping):
        return {}
    updates = _fairseq_updates(obj)
    if updates is not None:
        return {"num_updates": str(updates)}
    state = obj.get("state")
    if isinstance(state, Mapping) and _is_state_dict(state.get("model")):
        batch = _composer_batch(state, path)
        return {} if batch is None else {"step": str(batch)}
    return {}


def _fairseq_updates(obj: Mapping[Any, Any]) -> int | None:
    if not _is_state_dict(obj.get("model")):
        return None
    history = obj.get("optimizer_history")
    if isinstance(history, list) and history and isinstance(history[-1], Mapping):
        value = history[-1].get("num_updates")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    extra = obj.get("extra_state")
    if isinstance(extra, Mapping):
        value = extra.get("num_updates")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _composer_batch(state: Mapping[Any, Any], path: Path) -> int | None:
    """Composer's recorded ``timestamp`` batch count, else ``ba{B}`` in the file name."""
    stamp = state.get("timestamp")
    if isinstance(stamp, Mapping) and isinstance(stamp.get("Timestamp"), Mapping):
        stamp = stamp["Timestamp"]  # State.state_dict() keys it by class name
    if isinstance(stamp, Mapping):
        batch = stamp.get("batch")
        if isinstance(batch, int) and not isinstance(batch, bool):
            return batch
    found = _COMPOSER_NAME.search(path.name)
    return int(found.group(1)) if found else None


def _opennmt(obj: Mapping[Any, Any], path: Path) -> Identified | None:
    """OpenNMT-py: ``model`` and ``generator`` kept together, the generator as ``generator.*``."""
    model, generator = obj.get("model"), obj.get("generator")
    if not (_is_state_dict(model) and _is_state_dict(generator)):
        return None
    assert isinstance(model, Mapping) and isinstance(generator, Mapping)
    state: dict[object, object] = dict(model)
    clash = [f"generator.{k}" for k in generator if f"generator.{k}" in state]
    if clash:
        raise WaError.naming(
            "'{path}': 'model' already holds {clash}, so 'generator' cannot be kept "
            "beside it; pick one with {key} model or {key} generator",
            ExitCode.BAD_INPUT,
            path=str(path),
            clash=listing(clash),
        )
    state.update({f"generator.{k}": v for k, v in generator.items()})
    rest = [str(k) for k in obj if k not in ("model", "generator")]
    note = "kept OpenNMT's 'generator' beside 'model' (as generator.*)"
    if rest:
        note += f"; left out {listing(rest, 4)}"
    return Identified(state, _non_tensors(state), {}, [note])


def _composer(obj: Mapping[Any, Any]) -> Identified | None:
    """Composer: ``state.model``; the rest (optimizers, RNG, timestamp) is named as left out."""
    state = obj.get("state")
    if not isinstance(state, Mapping) or not _is_state_dict(state.get("model")):
        return None
    model = state["model"]
    rest = [f"state.{k}" for k in state if k != "model"] + [str(k) for k in obj if k != "state"]
    notes = [f"read Composer's 'state.model'; left out {listing(rest, 4)}"]
    return Identified(model, _non_tensors(model), {}, notes)
