"""The user's model with a checkpoint loaded into it strictly, for BatchNorm re-estimation.

The model is built by the user's factory (or given), the checkpoint's keys are fitted to it when
asked (``--strip-prefix auto`` decided against the model's own keys), and the tensors are loaded
with ``strict=True``: a checkpoint that does not fit the model is refused before any forward pass.
:class:`LoadedModel` keeps together what the output is written from: the checkpoint, the network,
the keys in the input's order and the layers that are re-estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from wa_cli.io.reader import Checkpoint
from wa_cli.methods.bn.layers import norm_layers
from wa_cli.methods.bn.specs import ModelSource, as_module
from wa_cli.methods.bn.usercode import call_factory, load_state_dict_strict


@dataclass
class LoadedModel:
    """A checkpoint loaded into its model: the output keeps ``keys`` in the input's order."""

    ckpt: Checkpoint
    net: nn.Module
    keys: list[str]
    layers: dict[_NormBase, str]


def load_model(
    ckpt: Checkpoint, model: ModelSource, fit_prefix: bool, include_instancenorm: bool
) -> LoadedModel:
    """The model with the checkpoint loaded strictly, and the layers to re-estimate."""
    net = as_module(
        call_factory(model, what="model factory") if not isinstance(model, nn.Module) else model
    )
    if fit_prefix:
        _fit_prefix(ckpt, net)
    keys = ckpt.keys()  # the output keeps the input's keys, in the input's order
    load_state_dict_strict(net, {key: ckpt.tensor(key) for key in keys})
    return LoadedModel(ckpt, net, keys, norm_layers(net, include_instancenorm))


def _fit_prefix(ckpt: Checkpoint, net: nn.Module) -> None:
    """``--strip-prefix auto`` for one model: drop the prefix that makes the keys fit it.

    Decided against the model's own keys rather than the checkpoint's alone, so a model whose
    every key starts with the same child (``net.``) keeps it, while Lightning's ``model.`` or
    DDP's ``module.`` in front of the model's keys is removed (and said so in the notes).
    """
    from wa_cli.io.keys import wrapper_prefix

    expected, present = set(net.state_dict()), set(ckpt.keys())
    if expected == present:
        return
    prefix = wrapper_prefix(present, expected)
    if prefix and all(k.startswith(prefix) for k in present):
        ckpt.strip_prefixes((prefix,))
        ckpt.notes[-1] = f"removed the prefix '{prefix}' from every key to fit the model"
