"""BatchNorm re-estimation of a checkpoint file: read it, run the network, write it back.

The last step of SWA (Izmailov et al. 2018, arXiv 1803.05407, section 3.2) and SWAP's phase 3
(Gupta et al. 2020, arXiv 2001.02312): an averaged set of weights needs running statistics of its
own, computed with one pass over training data (``methods.bn.recalibrate.recalibrate_bn``). This
module puts that pass between two files. The model comes from the user's factory and the checkpoint
is loaded into it strictly; afterwards only the re-estimated buffers (``running_mean``,
``running_var``, ``num_batches_tracked``) are new, cast to their own dtype in the input. Every
other tensor is copied from the input file's bytes, so a bf16 checkpoint stays bit-identical
outside BatchNorm even though the model ran in float32. The output keeps the input's metadata, adds
provenance, and is written atomically, never over the input.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from wa_cli.engine import distributed
from wa_cli.engine.device import resolve_device
from wa_cli.engine.provenance import provenance
from wa_cli.engine.report import input_reads
from wa_cli.io.atomic import check_destination
from wa_cli.io.output_check import Layout, check_output
from wa_cli.io.reader import Checkpoint, ReadOptions, open_checkpoint
from wa_cli.io.writer import OutputTensor, WriteSettings, write_safetensors
from wa_cli.methods.bn.recalibrate import (
    NO_BN_NOTE,
    BNReport,
    Weighting,
    _check_arguments,
    norm_layers,
    recalibrate_bn,
)
from wa_cli.methods.bn.specs import (
    DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE,  # re-exported: its home until the split
)
from wa_cli.methods.bn.specs import (
    BNSpecs,
    DataSource,
    ModelSource,
    as_module,
    resolve_specs,
)
from wa_cli.methods.bn.specs import resolve_data as resolve_data
from wa_cli.methods.bn.specs import resolve_model as resolve_model
from wa_cli.methods.bn.tensor_data import (
    TensorFileBatches,
)
from wa_cli.methods.bn.usercode import call_factory, load_state_dict_strict
from wa_cli.params import flag, size

logger = logging.getLogger(__name__)

METHOD = "bn_recalibrate"
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class BNCheckpointReport:
    """What :func:`recalibrate_checkpoint` did; ``output`` is None when nothing was written.

    ``non_finite`` counts NaN and infinite elements per written statistics key (in the output's
    dtype); ``warnings`` says so in a sentence, ``notes`` holds remarks such as left-out rows.
    """

    input: str
    output: str | None
    device: str
    bn: BNReport
    replaced: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: input, output, device, replaced keys, then the BN report's fields.

        Example:
            >>> BNCheckpointReport("a.safetensors", None, "cpu", BNReport()).to_json()["written"]
            False
        """
        return {
            "method": METHOD,
            "input": self.input,
            "output": self.output,
            "written": self.output is not None,
            "device": self.device,
            "params": self.params,
            "replaced_keys": self.replaced,
            "non_finite": self.non_finite,
            "notes": self.notes,
            "warnings": self.warnings,
            **self.bn.to_json(),
        }


def recalibrate_checkpoint(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    output: str | os.PathLike[str],
    model: ModelSource | str,
    data: DataSource | str,
    *,
    specs: BNSpecs | None = None,
    read: ReadOptions | None = None,
    device: str | torch.device = "auto",
    weighting: Weighting = "batch",
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | str | None = None,
    include_instancenorm: bool = False,
    force: bool = False,
    max_shard_size: int | str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    params: Mapping[str, Any] | None = None,
    command: str | None = None,
    fit_prefix: bool = False,
) -> BNCheckpointReport:
    """Re-estimate the BatchNorm statistics of ``checkpoint`` and write the result to ``output``.

    Semantics are ``torch.optim.swa_utils.update_bn``'s (see
    :func:`wa_cli.methods.bn.recalibrate.recalibrate_bn`).
    Everything that can fail before the forward passes is checked first: the output path, the
    model, the strict load. A model without BatchNorm writes nothing unless ``force`` (then an
    unchanged copy with provenance). Batches of a tensor file (:func:`resolve_data`) are cast to
    the dtype of the model's first floating parameter, so float64 ``.npy`` data fits a float32
    model. Statistics that come out NaN or infinite are written as they are, like ``wa average``
    writes its results, and counted in the report's ``non_finite`` and ``warnings``.

    Args:
        checkpoint: any checkpoint ``open_checkpoint`` reads, or an opened one.
        output: the output ``.safetensors`` file (a folder with ``max_shard_size``).
        model: the network, or a function of no arguments that builds it (on the CPU), or its
            spec (``pkg.mod:fn`` or ``file.py:fn``, :func:`resolve_model`).
        data: an iterable of batches, or a function of no arguments returning one (called only
            when there is something to re-estimate), or a spec or tensor file
            (:func:`resolve_data`).
        specs: how text specs are resolved (factory arguments, batch size, input key...).
        read: how a checkpoint path is read (``wa_cli.ReadOptions``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: where the forward passes run.
        weighting: ``"batch"`` (update_bn) or ``"sample"`` (batches weighted by their size).
        max_batches: stop after this many batches.
        forward: ``forward(model, batch)`` for dict batches and multi-input models (or its
            spec).
        include_instancenorm: also re-estimate InstanceNorm layers with running statistics.
        force: replace an existing output; write a copy even without BatchNorm layers.
        max_shard_size: write Hugging Face style shards of at most this many bytes.
        progress: called with ``(batches done, total or None)`` after each batch.
        params: extra parameters to record in the provenance (e.g. the specs used).
        command: the command line to record (default: this process's).
        fit_prefix: drop the key prefix (``model.``, ``module.``) that keeps the checkpoint from
            fitting the model (``--strip-prefix auto``); the report's notes name it.

    Returns:
        A :class:`BNCheckpointReport`.

    Raises:
        WaError: a checkpoint that does not fit the model, a bad model or data, an output that
            exists (without ``force``) or is the input. Nothing is written then.

    Example:
        >>> report = recalibrate_checkpoint(
        ...     "swa.safetensors", "swa_bn.safetensors", build, train_loader
        ... )  # doctest: +SKIP
        >>> report.bn.batches  # doctest: +SKIP
        23
    """
    built, batches, fn, resolved = resolve_specs(model, data, forward, specs or BNSpecs())
    model, data, forward = cast(ModelSource, built), cast(DataSource, batches), fn
    params = {**resolved, **(params or {})}
    _check_arguments(weighting, max_batches)
    shard_size = size("max_shard_size", max_shard_size)
    flag("force", force)
    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    else:
        ckpt = open_checkpoint(checkpoint, options=read)
    output = Path(output)
    try:
        layout: Layout = "file" if shard_size is None else "shards"
        check_output(output, reads=input_reads([ckpt]), force=force, layout=layout)
        target = resolve_device(device)
        net, keys = _load_model(ckpt, model, fit_prefix)
        layers = norm_layers(net, include_instancenorm)
        recorded = {
            "weighting": weighting,
            "max_batches": max_batches,
            "include_instancenorm": include_instancenorm,
            **(params or {}),
        }
        if not layers:
            bn = recalibrate_bn(net, (), weighting=weighting)
            report = BNCheckpointReport(str(ckpt.path), None, str(target), bn, params=recorded)
            if not force:
                logger.info("%s; nothing written", NO_BN_NOTE)
                return report
        else:
            # Before the forward passes: an output that cannot be written should not cost a run.
            check_destination(
                output, force, folder=max_shard_size is not None, reads=ckpt.read_paths()
            )
            report = _estimate(
                ckpt,
                net,
                data,
                target,
                recorded,
                dict(
                    weighting=weighting,
                    max_batches=max_batches,
                    forward=forward,
                    include_instancenorm=include_instancenorm,
                ),
                progress,
            )
        report.notes[:0] = ckpt.notes  # the prefix removed, first
        output_path = _write_output(
            report, net, layers, ckpt, keys, recorded, output, command, force, shard_size
        )
        report.output = str(output_path)
        return report
    finally:
        ckpt.close()


def _load_model(
    ckpt: Checkpoint, model: ModelSource, fit_prefix: bool
) -> tuple[nn.Module, list[str]]:
    """The model with the checkpoint loaded strictly, and the keys (in the input's order)."""
    net = as_module(
        call_factory(model, what="model factory") if not isinstance(model, nn.Module) else model
    )
    if fit_prefix:
        _fit_prefix(ckpt, net)
    keys = ckpt.keys()  # the output keeps the input's keys, in the input's order
    load_state_dict_strict(net, {key: ckpt.tensor(key) for key in keys})
    return net, keys


def _estimate(
    ckpt: Checkpoint,
    net: nn.Module,
    data: DataSource,
    target: torch.device,
    recorded: dict[str, Any],
    options: dict[str, Any],
    progress: Callable[[int, int | None], None] | None,
) -> BNCheckpointReport:
    """The forward passes on ``target``: a report of the statistics, with the data file's note."""
    net.to(target)
    batches = data() if callable(data) and not hasattr(data, "__iter__") else data
    batches = _in_model_dtype(batches, net)
    total = _total(batches, options["max_batches"])
    bn = _recalibrate()(
        net,
        batches,
        device=target,
        progress=None if progress is None else lambda done: progress(done, total),
        **options,
    )
    report = BNCheckpointReport(str(ckpt.path), None, str(target), bn, params=recorded)
    note = batches.note if isinstance(batches, TensorFileBatches) else None
    # Only when the pass reached the end of the file, where the rows were left out.
    if note and bn.batches == len(batches):
        report.notes.append(note)
    return report


def _write_output(
    report: BNCheckpointReport,
    net: nn.Module,
    layers: Mapping[_NormBase, str],
    ckpt: Checkpoint,
    keys: list[str],
    recorded: dict[str, Any],
    output: Path,
    command: str | None,
    force: bool,
    shard_size: int | None,
) -> Path:
    """Put the new statistics in the report and write every key once; the file or shard folder."""
    new = _new_statistics(net, layers, ckpt)
    report.replaced = list(new)
    report.non_finite = _non_finite(new)
    if report.non_finite:
        report.warnings.append(_non_finite_warning(report.non_finite))
    recorded.update(batches=report.bn.batches, samples=report.bn.samples)
    written = _write_once(
        lambda: write_safetensors(
            output,
            [OutputTensor(key, ckpt.info(key).dtype, ckpt.info(key).shape) for key in keys],
            _tensors(ckpt, keys, new),
            _metadata(ckpt, recorded, command),
            WriteSettings(force=force, max_shard_size=shard_size),
        )
    )
    return written[0].parent if shard_size else written[0]


def _fit_prefix(ckpt: Checkpoint, net: nn.Module) -> None:
    """``--strip-prefix auto`` for one model: drop the prefix that makes the keys fit it.

    Decided against the model's own keys rather than the checkpoint's alone, so a model whose
    every key starts with the same child (``net.``) keeps it, while Lightning's ``model.`` or
    DDP's ``module.`` in front of the model's keys is removed (and said so in the notes).
    """
    from wa_cli.io.keys import wrapper_hint

    expected, present = set(net.state_dict()), set(ckpt.keys())
    if expected == present:
        return
    hint = wrapper_hint(present, expected)
    prefix = hint.removeprefix("--strip-prefix ") if hint else None
    if prefix and all(k.startswith(prefix) for k in present):
        ckpt.strip_prefixes((prefix,))
        ckpt.notes[-1] = f"removed the prefix '{prefix}' from every key to fit the model"


def _recalibrate() -> Callable[..., BNReport]:
    """``recalibrate_bn``, or under torchrun its data-parallel form (``methods.bn.parallel``)."""
    if distributed.active() is None:
        return recalibrate_bn
    from wa_cli.methods.bn.parallel import recalibrate_bn_distributed

    return recalibrate_bn_distributed


def _write_once(write: Callable[[], list[Path]]) -> list[Path]:
    """Write the output: in this process, or under torchrun on rank 0 only."""
    if distributed.active() is None:
        return write()
    from wa_cli.methods.bn.parallel import write_on_rank_0

    return write_on_rank_0(write)


def _in_model_dtype(batches: Any, net: nn.Module) -> Any:
    """Tensor-file batches cast to the model's floating dtype (``np.save`` writes float64)."""
    if not isinstance(batches, TensorFileBatches) or batches.dtype is not None:
        return batches
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return batches
    batches = copy.copy(batches)  # the caller's object keeps its own settings
    batches.dtype = dtype
    return batches


def _non_finite(new: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """NaN and infinite elements per key, counted in the dtype that is written."""
    counts = {
        key: int((~torch.isfinite(value)).sum())
        for key, value in new.items()
        if value.is_floating_point()
    }
    return {key: count for key, count in counts.items() if count}


def _non_finite_warning(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    worst = sorted(counts, key=counts.__getitem__, reverse=True)[:3]
    return (
        f"the re-estimated BatchNorm statistics hold {total} non-finite value(s) in "
        f"{len(counts)} tensor(s) (most in {', '.join(repr(k) for k in worst)}): check the "
        "checkpoint's weights and the data for NaN or infinite values"
    )


def _total(batches: Any, max_batches: int | None) -> int | None:
    try:
        total: int | None = len(batches)
    except TypeError:  # generators and iterable datasets have no length
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total


def _new_statistics(
    net: nn.Module, layers: Mapping[_NormBase, str], ckpt: Checkpoint
) -> dict[str, torch.Tensor]:
    """The re-estimated buffers by state-dict key, on the CPU in the checkpoint's dtypes."""
    # Matched by identity, not by name: a layer registered twice, or a model with its own
    # state-dict naming, still maps each buffer to every key that holds it.
    buffers = {
        id(tensor)
        for module in layers
        for name in _STATISTICS
        if isinstance(tensor := getattr(module, name, None), torch.Tensor)
    }
    return {
        key: value.detach().cpu().to(ckpt.info(key).dtype)
        for key, value in net.state_dict(keep_vars=True).items()
        if id(value) in buffers
    }


def _tensors(
    ckpt: Checkpoint, keys: list[str], new: Mapping[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every key in order: the new statistics, else the input's own bytes, one at a time."""
    for key in keys:
        yield key, new[key] if key in new else ckpt.tensor(key)


def _metadata(ckpt: Checkpoint, params: dict[str, Any], command: str | None) -> dict[str, str]:
    """The input's metadata, this run's provenance, and the input's own recipe as ``wa_parent``."""
    parent = {k: v for k, v in ckpt.metadata.items() if k.startswith("wa_")}
    metadata = {k: v for k, v in ckpt.metadata.items() if not k.startswith("wa_")}
    metadata.update(provenance([ckpt], METHOD, params, command))
    if parent:
        # Keeps how the input was made (e.g. the average of which files) next to this step.
        metadata["wa_parent"] = json.dumps(parent, sort_keys=True)
    return metadata
