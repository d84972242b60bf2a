"""Which entries of a DCP folder are the model's weights: app states, identified by name.

DCP flattens the state dict it is given, nested dicts joined by dots. Training libraries save
more than the model (PEERS.md):

* accelerate / the HF Trainer with FSDP, OLMo-core, most hand-written loops:
  ``{"model": ..., "optimizer": ...}`` (OLMo-core: ``optim``), so ``model.fc.weight`` beside
  ``optimizer.state.fc.weight.exp_avg``;
* torchtitan: the model's keys at the top level, beside ``optimizer``, ``lr_scheduler``,
  ``dataloader`` and ``train_state`` sub-trees;
* Megatron-core / NeMo 2 ``torch_dist``: model keys at the top level, ``optimizer.*`` when the
  optimizer was saved, ``rng_state`` objects, and ``*._extra_state`` objects (Transformer
  Engine's fp8 metadata: bytes, not weights).

Rule (positive identification): a folder with none of the training-state sub-trees below is a
model's state dict, every tensor taken. With them, the weights are the ``model`` sub-tree (its
``model.`` removed, so the result loads with the model's own ``load_state_dict``), else the
top-level keys outside them (torchtitan). A ``model`` sub-tree beside other unknown sub-trees is
refused in one line naming them and ``--key``, which picks any sub-tree by name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from wa_cli.errors import ExitCode, WaError, listing

TRAINING_STATE = frozenset(
    {
        "optimizer",
        "optimizers",
        "optim",
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "dataloader",
        "data_loader",
        "train_state",
        "trainer",
        "rng",
        "rng_state",
        "rng_states",
        "sampler",
        "scaler",
        "grad_scaler",
    }
)
"""Sub-tree names that are training state, never weights (torchtitan, accelerate, OLMo-core,
Megatron-core)."""
MODEL_TREE = "model"
EXTRA_STATE = "_extra_state"


@dataclass
class Selection:
    """What was taken from a DCP folder and what was left out.

    Attributes:
        keep: the stored names of the tensors taken.
        prefix: removed from each taken name (``model.``), or empty.
        how: for the report: ``the 'model' sub-tree``.
        left_out: sub-tree (or entry) name → number of entries left out.
    """

    keep: list[str]
    prefix: str
    how: str
    left_out: Counter[str] = field(default_factory=Counter)

    def note(self, name: str) -> str:
        """One report line: ``took the 'model' sub-tree of step-3 ...; left out optimizer (8)``."""
        text = f"took {self.how} of {name} ({len(self.keep)} tensors"
        text += f", '{self.prefix}' removed)" if self.prefix else ")"
        if self.left_out:
            parts = [f"{n} ({c})" for n, c in sorted(self.left_out.items())]
            more = f" and {len(parts) - 6} more" if len(parts) > 6 else ""
            text += f"; left out {', '.join(parts[:6])}{more}"
        return text


def top_name(key: str) -> str:
    """The first component of a flattened key: ``optimizer`` of ``optimizer.state.0.exp_avg``;
    Megatron's sharded objects are named ``rng_state/shard_0.0_1.1``."""
    return re.split(r"[./]", key, maxsplit=1)[0]


def _is_extra_state(key: str) -> bool:
    return key.split("/", 1)[0].rsplit(".", 1)[-1] == EXTRA_STATE


def select_model(
    tensors: Iterable[str], objects: Iterable[str], key: str | None, where: str
) -> Selection:
    """The model's tensors among a DCP folder's entries (see the module docstring).

    Args:
        tensors: the stored names of the tensor entries.
        objects: the stored names of the other (pickled) entries.
        key: ``--key``: the sub-tree to take (dots walk nested sub-trees), or ``None``.
        where: the folder, for messages.

    Raises:
        WaError: (BAD_INPUT) ``key`` names no sub-tree, or the folder holds sub-trees wa cannot
            classify.

    Example:
        >>> s = select_model(["model.w", "optimizer.state.w.exp_avg"], ["optimizer.lr"], None, "d")
        >>> s.keep, s.prefix
        (['model.w'], 'model.')
    """
    tensors = list(tensors)
    objects = list(objects)
    weights = [k for k in tensors if not _is_extra_state(k)]
    if key is not None:
        return _by_key(key, weights, tensors, objects, where)
    wrapper = _wrapper([*tensors, *objects])
    inner = [k[len(wrapper) :] for k in weights]
    names = {top_name(k[len(wrapper) :]) for k in [*tensors, *objects]}
    tree = wrapper + MODEL_TREE + "."
    if names == {MODEL_TREE} or (names & TRAINING_STATE and MODEL_TREE in names):
        unknown = sorted({top_name(k) for k in inner} - TRAINING_STATE - {MODEL_TREE})
        if unknown:
            # The sub-tree names come from the folder: values, never template text.
            trees = [wrapper + n for n in [MODEL_TREE, *unknown][:4]]
            choices = ", ".join(f"{{key}} {{t{i}}}" for i in range(len(trees)))
            raise WaError.naming(
                "DCP folder '{where}' holds tensor sub-trees wa cannot classify beside "
                "'{model}' and the training state: {unknown}; name the one that holds the "
                "weights (" + choices + ")",
                ExitCode.BAD_INPUT,
                where=str(where),
                model=MODEL_TREE,
                unknown=listing(unknown, 4),
                **{f"t{i}": t for i, t in enumerate(trees)},
            )
        keep = [k for k in weights if k.startswith(tree)]
        how = f"the '{tree[:-1]}' sub-tree"
        return _selection(keep, tree, how, tensors, objects, wrapper)
    if not names & TRAINING_STATE:
        return _selection(weights, "", "every tensor", tensors, objects)
    keep = [k for k in weights if top_name(k[len(wrapper) :]) not in TRAINING_STATE]
    if not keep:
        raise WaError(
            f"DCP folder '{where}' holds training state "
            f"({listing(sorted(names & TRAINING_STATE), 4)}) but no model weights beside it",
            ExitCode.BAD_INPUT,
        )
    how = "the model keys beside the training state"
    return _selection(keep, "", how, tensors, objects, wrapper)


def _by_key(
    key: str, weights: list[str], tensors: list[str], objects: list[str], where: str
) -> Selection:
    """``--key NAME``: the tensors under ``NAME.``, that prefix removed."""
    prefix = key.removesuffix(".") + "."
    keep = [k for k in weights if k.startswith(prefix)]
    if not keep:
        trees = sorted({top_name(k) for k in weights})
        raise WaError.naming(
            "DCP folder '{where}' has no tensors under {key} {name!r} (its sub-trees and "
            "top-level keys: {trees})",
            ExitCode.BAD_INPUT,
            where=str(where),
            name=key,
            trees=listing(trees, 8),
        )
    return _selection(keep, prefix, f"the {key!r} sub-tree", tensors, objects)


def _wrapper(keys: list[str]) -> str:
    """``app.`` when every entry lies under one sub-tree that is neither the model nor training
    state (torch's DCP tutorial saves ``{"app": AppState(model, optimizer)}``); else empty."""
    wrapper = ""
    for _ in range(2):
        names = {top_name(k[len(wrapper) :]) for k in keys}
        if len(names) != 1:
            break
        (name,) = names
        if name in TRAINING_STATE or name == MODEL_TREE:
            break
        if not all(k.startswith(wrapper + name + ".") for k in keys):
            break
        wrapper += name + "."
    return wrapper


def _selection(
    keep: list[str],
    prefix: str,
    how: str,
    tensors: list[str],
    objects: list[str],
    wrapper: str = "",
) -> Selection:
    """What ``keep`` leaves out, counted by sub-tree (under ``wrapper``) and ``_extra_state``."""
    taken = set(keep)
    left: Counter[str] = Counter()
    for k in [*(k for k in tensors if k not in taken), *objects]:
        tree = wrapper + top_name(k[len(wrapper) :]) if k.startswith(wrapper) else top_name(k)
        left[EXTRA_STATE if _is_extra_state(k) else tree] += 1
    return Selection(keep, prefix, how, left)
