"""A checkpoint's online (raw) and EMA weights: which layouts record both, and ``--variant``.

Training libraries keep an exponential moving average of the weights beside the weights being
trained, and save both in one checkpoint under names of their own:

* timm ``CheckpointSaver`` with model EMA: ``state_dict`` and ``state_dict_ema``;
* Lightning's ``WeightAveraging``/``EMAWeightAveraging`` callback swaps the average into
  ``state_dict`` at save time and keeps the trained weights as ``current_model_state``;
* fairseq ``--store-ema``: ``model`` and ``extra_state.ema``;
* Composer's ``EMA`` algorithm swaps the EMA into ``state.model`` at checkpoint events
  (``ema_weights_active``) and keeps the other copy's trainable parameters and buffers in its
  ``algorithms`` entry (``named_parameters_dict``, ``named_buffers_dict``);
* ema-pytorch's ``EMA`` module: ``ema_model.*`` and ``online_model.*`` keys in one state dict;
* torch-ema's ``ExponentialMovingAverage`` and diffusers' ``EMAModel``: ``shadow_params``, a list
  aligned with ``model.parameters()`` (parameters only, no buffers, no names), matched here to the
  model's state dict saved beside it.

A checkpoint holding both copies is read only when the user chose one (``--variant raw|ema``):
without a choice it is refused in one line naming both, and the report says which copy was read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError, listing

VARIANTS = ("raw", "ema")
"""``raw``: the weights being trained (online); ``ema``: their exponential moving average."""

EMA_PYTORCH_PREFIXES = ("ema_model.", "online_model.")
_EMA_PYTORCH_OWN = ("initted", "step")
_BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Copy:
    """One copy of the model's weights: where it is in the checkpoint, and its state dict."""

    where: str
    state: Mapping[Any, Any]
    error: WaError | None = None  # raised only when this copy is chosen


@dataclass(frozen=True)
class Copies:
    """The raw and EMA copies a layout records (either may be absent) and what else it holds."""

    layout: str
    raw: Copy | None
    ema: Copy | None
    left_out: tuple[str, ...] = ()


def check_variant(variant: str | None) -> None:
    """Refuse a ``--variant`` other than ``raw`` or ``ema``."""
    if variant is not None and variant not in VARIANTS:
        raise WaError.naming(
            "{variant} must be raw or ema, got {got!r}", ExitCode.USAGE, got=variant
        )


def choose(copies: Copies, path: Path, variant: str | None) -> tuple[Copy, str]:
    """The copy ``variant`` names, and the report's note saying which was read.

    Raises:
        WaError: (USAGE) both copies and no choice, naming both; the chosen one is absent.
    """
    both = copies.raw is not None and copies.ema is not None
    if variant is None and both:
        assert copies.raw is not None and copies.ema is not None
        raise WaError.naming(
            "'{path}' holds both the raw weights ({raw}) and their EMA ({ema}), saved by "
            "{layout}; choose one with {variant} raw or {variant} ema",
            ExitCode.USAGE,
            path=str(path),
            raw=copies.raw.where,
            ema=copies.ema.where,
            layout=copies.layout,
        )
    chosen = copies.ema if variant == "ema" else copies.raw
    if variant is None:
        chosen = copies.raw or copies.ema
    if chosen is None:
        have = "raw weights" if copies.raw is not None else "EMA copy"
        raise WaError.naming(
            "'{path}' holds no {asked} (only the {have}, saved by {layout}); drop {variant} {got}",
            ExitCode.USAGE,
            path=str(path),
            asked="EMA copy" if variant == "ema" else "raw weights",
            have=have,
            layout=copies.layout,
            got=variant,
        )
    if chosen.error is not None:
        raise chosen.error
    what = "EMA" if chosen is copies.ema else "raw"
    note = f"read the {what} weights ({chosen.where}, {copies.layout})"
    return chosen, note


def find_copies(obj: Mapping[Any, Any]) -> Copies | None:
    """The two copies of a layout that records both at the top level of a checkpoint."""
    for detect in (_timm, _lightning, _fairseq, _composer, _shadow_params):
        found = detect(obj)
        if found is not None:
            return found
    return None


def split_prefixed(state: Mapping[Any, Any]) -> Copies | None:
    """ema-pytorch's one state dict: ``ema_model.*`` and ``online_model.*`` (prefix removed)."""
    names = [k for k in state if isinstance(k, str)]
    ema = {k[len("ema_model.") :]: state[k] for k in names if k.startswith("ema_model.")}
    if not ema:
        return None
    online = {k[len("online_model.") :]: state[k] for k in names if k.startswith("online_model.")}
    rest = [k for k in names if not k.startswith(EMA_PYTORCH_PREFIXES)]
    if any(k not in _EMA_PYTORCH_OWN for k in rest):
        return None  # other keys beside them: not ema-pytorch's layout, read as saved
    return Copies(
        "ema-pytorch",
        Copy("'online_model.*'", online) if online else None,
        Copy("'ema_model.*'", ema),
        tuple(rest),
    )


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _timm(obj: Mapping[Any, Any]) -> Copies | None:
    if not _is_state_dict(obj.get("state_dict_ema")):
        return None
    ema = Copy("'state_dict_ema'", obj["state_dict_ema"])
    if not _is_state_dict(obj.get("state_dict")):
        others = [k for k in ("model", "module") if _is_state_dict(obj.get(k))]
        # Only the EMA was saved: read it, and say so (--variant raw is then refused).
        return None if others else Copies("timm's CheckpointSaver with model EMA", None, ema)
    raw = Copy("'state_dict'", obj["state_dict"])
    return Copies("timm's CheckpointSaver with model EMA", raw, ema)


def _lightning(obj: Mapping[Any, Any]) -> Copies | None:
    state, current = obj.get("state_dict"), obj.get("current_model_state")
    if not (isinstance(state, Mapping) and isinstance(current, Mapping)):
        return None
    if not (_is_state_dict(state) and _is_state_dict(current)):
        return None
    raw = Copy("'current_model_state'", current)
    ema = Copy("'state_dict', the callback's average", state)
    return Copies("Lightning's WeightAveraging callback", raw, ema, ("averaging_state",))


def _fairseq(obj: Mapping[Any, Any]) -> Copies | None:
    extra = obj.get("extra_state")
    if not (_is_state_dict(obj.get("model")) and isinstance(extra, Mapping)):
        return None
    if not _is_state_dict(extra.get("ema")):
        return None
    raw, ema = Copy("'model'", obj["model"]), Copy("'extra_state.ema'", extra["ema"])
    fp32 = ("extra_state.ema_fp32_params",) if "ema_fp32_params" in extra else ()
    return Copies("fairseq --store-ema", raw, ema, fp32)


def composer_ema(state: Mapping[Any, Any]) -> Mapping[Any, Any] | None:
    """The state of Composer's ``EMA`` algorithm in ``state['algorithms']``, if it ran."""
    algorithms = state.get("algorithms")
    entries = algorithms.items() if isinstance(algorithms, Mapping) else algorithms
    if not isinstance(entries, list | tuple) and not isinstance(algorithms, Mapping):
        return None
    for entry in entries or ():
        if isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] == "EMA":
            value = entry[1]
            if isinstance(value, Mapping) and isinstance(value.get("ema_model"), Mapping):
                return value
    return None


def _composer(obj: Mapping[Any, Any]) -> Copies | None:
    state = obj.get("state")
    if not isinstance(state, Mapping) or not _is_state_dict(state.get("model")):
        return None
    ema_state = composer_ema(state)
    if ema_state is None:
        return None
    model: Mapping[Any, Any] = state["model"]
    stored = ema_state["ema_model"]
    other: dict[Any, Any] = {}
    for part in ("named_parameters_dict", "named_buffers_dict"):
        entries = stored.get(part)
        if isinstance(entries, Mapping):
            other.update(entries)
    unknown = [str(k) for k in other if k not in model]
    if unknown or not other:
        raise WaError.naming(
            "Composer's EMA state names {unknown} that 'state.model' "
            "does not hold; read 'state.model' as saved with {key} state.model",
            ExitCode.BAD_INPUT,
            unknown=listing(unknown) or "no tensor",
        )
    # The stored dicts hold only trainable parameters and buffers: the rest is the same in both.
    overlaid = Copy("'state.model' with the EMA algorithm's stored tensors", {**model, **other})
    as_saved = Copy("'state.model'", model)
    active = ema_state.get("ema_weights_active") is True
    raw, ema = (overlaid, as_saved) if active else (as_saved, overlaid)
    return Copies("Composer's EMA algorithm", raw, ema)


def _shadow_params(obj: Mapping[Any, Any]) -> Copies | None:
    """torch-ema / diffusers ``EMAModel`` state beside the model's state dict."""
    holders = [
        k
        for k, v in obj.items()
        if isinstance(v, Mapping) and isinstance(v.get("shadow_params"), list | tuple)
    ]
    if not holders:
        return None
    if len(holders) > 1:
        raise WaError.naming(
            "several EMA states with 'shadow_params' ({holders}); "
            "pick the model's state dict with {key}",
            ExitCode.USAGE,
            holders=listing(list(map(str, holders))),
        )
    models = [k for k, v in obj.items() if k not in holders and _is_state_dict(v)]
    label = str(holders[0])
    if len(models) != 1:
        what = "no" if not models else f"several ({listing(list(map(str, models)))})"
        raise WaError.naming(
            "'{label}' holds torch-ema/diffusers 'shadow_params', a list without names, and the "
            "checkpoint holds {what} model state dict to take the names from; save "
            "ema.copy_to(model) then model.state_dict() (or pick the raw weights with {key})",
            ExitCode.BAD_INPUT,
            label=label,
            what=what,
        )
    model = obj[models[0]]
    shadow = list(obj[holders[0]]["shadow_params"])
    where = f"'{label}.shadow_params' on the names of '{models[0]}'"
    try:
        ema = Copy(
            where, match_shadow_params(model, shadow, f"'{label}.shadow_params'", f"'{models[0]}'")
        )
    except WaError as e:  # the raw weights stay readable
        ema = Copy(where, {}, e)
    return Copies("torch-ema/diffusers EMAModel", Copy(f"'{models[0]}'", model), ema, (label,))


def match_shadow_params(
    model: Mapping[Any, Any], shadow: Sequence[object], what: str, where: str
) -> dict[Any, Any]:
    """The model's state dict with its parameters replaced by ``shadow``, in order.

    ``shadow_params`` follows ``model.parameters()``: the state dict's order without buffers. A
    state dict does not say which entries are buffers, so integer tensors and BatchNorm's
    running statistics are taken as buffers, and the rest must then match the list one to one in
    count, shape and dtype; anything else is refused (never a guessed alignment).
    """
    params = [
        k
        for k, v in model.items()
        if isinstance(v, torch.Tensor)
        and (v.is_floating_point() or v.is_complex())
        and not str(k).rsplit(".", 1)[-1].startswith(_BUFFER_NAMES)
    ]
    bad = len(params) != len(shadow) or any(
        not isinstance(s, torch.Tensor) or s.shape != model[k].shape or s.dtype != model[k].dtype
        for k, s in zip(params, shadow, strict=False)
    )
    if bad:
        first = next(
            (
                f"{k!r} is {tuple(model[k].shape)}"
                for k, s in zip(params, shadow, strict=False)
                if not isinstance(s, torch.Tensor) or s.shape != model[k].shape
            ),
            "",
        )
        raise WaError.naming(
            "{what} holds {n} tensors, which do not match the {m} parameters of {where} in "
            "order{first}: it was not made from model.parameters() of this model; save "
            "ema.copy_to(model) then model.state_dict(), or read the raw weights with "
            "{variant} raw",
            ExitCode.BAD_INPUT,
            what=what,
            n=len(shadow),
            m=len(params),
            where=where,
            first=f" ({first} there)" if first else "",
        )
    out = dict(model)
    out.update(zip(params, shadow, strict=True))
    return out
