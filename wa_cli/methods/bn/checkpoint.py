"""BatchNorm re-estimation of a checkpoint file: read it, run the network, write it back.

The last step of SWA (Izmailov et al. 2018, arXiv 1803.05407, section 3.2) and SWAP's phase 3
(Gupta et al. 2020, arXiv 2001.02312): an averaged set of weights needs running statistics of its
own, computed with one pass over training data (``methods.bn.recalibrate.recalibrate_bn``). This
module holds the request flow that puts that pass between two files: the options checked once
(:mod:`~wa_cli.methods.bn.options`), the specs resolved, the checkpoint loaded strictly into the
user's model (:mod:`~wa_cli.methods.bn.load`), the passes run on the chosen device (under torchrun,
data-parallel: :mod:`~wa_cli.methods.bn.parallel`), and the output written with only the
re-estimated buffers new (:mod:`~wa_cli.methods.bn.output`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from typing_extensions import Unpack

from wa_cli.engine import distributed
from wa_cli.engine.device import resolve_device
from wa_cli.engine.report import input_reads
from wa_cli.io.reader import Checkpoint, open_checkpoint
from wa_cli.methods.bn.load import LoadedModel, load_model
from wa_cli.methods.bn.options import BNCheckpointArgs, BNRequest
from wa_cli.methods.bn.output import write_output
from wa_cli.methods.bn.passes import Forward
from wa_cli.methods.bn.recalibrate import reestimate
from wa_cli.methods.bn.report import NO_BN_NOTE, BNReport
from wa_cli.methods.bn.report import BNCheckpointReport as BNCheckpointReport
from wa_cli.methods.bn.specs import DataSource, ModelSource, resolve_specs
from wa_cli.methods.bn.specs import resolve_data as resolve_data
from wa_cli.methods.bn.specs import resolve_model as resolve_model
from wa_cli.methods.bn.tensor_data import TensorFileBatches

logger = logging.getLogger(__name__)


def recalibrate_checkpoint(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    output: str | os.PathLike[str],
    model: ModelSource | str,
    data: DataSource | str,
    **options: Unpack[BNCheckpointArgs],
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
        **options: the keywords below (:class:`~wa_cli.methods.bn.options.BNCheckpointArgs`),
            turned into option objects once (:class:`~wa_cli.methods.bn.options.BNRequest`).
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
        write: ``force``, ``max_shard_size`` and ``command`` as one ``wa_cli.WriteOptions``
            (instead of those keywords).
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
    request = BNRequest.of(options)
    built, batches, forward, resolved = resolve_specs(model, data, request.forward, request.specs)
    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    else:
        ckpt = open_checkpoint(checkpoint, options=request.read)
    output = Path(output)
    try:
        # The output guard, before the model is built: a refused output costs no forward pass.
        request.write.check_output(output, input_reads([ckpt]))
        target = resolve_device(request.device)
        bn = request.bn
        loaded = load_model(
            ckpt, cast(ModelSource, built), request.fit_prefix, bn.include_instancenorm
        )
        recorded = {**bn.params(), **resolved, **request.params}
        note = None
        if loaded.layers:
            result, note = _estimate(loaded, cast(DataSource, batches), target, forward, request)
        else:
            result = reestimate(loaded.net, (), bn)
        report = BNCheckpointReport(str(ckpt.path), None, str(target), result, params=recorded)
        if not loaded.layers and not request.write.force:
            logger.info("%s; nothing written", NO_BN_NOTE)
            return report
        report.notes[:0] = [*ckpt.notes, *([note] if note else [])]  # the prefix removed, first
        report.output = str(write_output(report, loaded, output, request.write))
        return report
    finally:
        ckpt.close()


def _estimate(
    loaded: LoadedModel,
    data: DataSource,
    target: torch.device,
    forward: Forward | None,
    request: BNRequest,
) -> tuple[BNReport, str | None]:
    """The forward passes on ``target``: the statistics' report, and the data file's note."""
    net = loaded.net
    net.to(target)
    batches = data() if callable(data) and not hasattr(data, "__iter__") else data
    batches = _in_model_dtype(batches, net)
    total = _total(batches, request.bn.max_batches)
    progress = request.progress
    bn = _reestimate()(
        net,
        batches,
        request.bn,
        device=target,
        forward=forward,
        progress=None if progress is None else lambda done: progress(done, total),
    )
    note = batches.note if isinstance(batches, TensorFileBatches) else None
    # Only when the pass reached the end of the file, where the rows were left out.
    return bn, note if note and bn.batches == len(batches) else None


def _reestimate() -> Callable[..., BNReport]:
    """``reestimate``, or under torchrun its data-parallel form (``methods.bn.parallel``)."""
    if distributed.active() is None:
        return reestimate
    from wa_cli.methods.bn.parallel import recalibrate_bn_distributed

    return recalibrate_bn_distributed


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


def _total(batches: Any, max_batches: int | None) -> int | None:
    try:
        total: int | None = len(batches)
    except TypeError:  # generators and iterable datasets have no length
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total
