"""The re-estimated checkpoint on disk: its tensors, its metadata, one atomic write.

Only the re-estimated buffers (``running_mean``, ``running_var``, ``num_batches_tracked``) are
new, cast to their own dtype in the input; every other tensor is copied from the input file's
bytes, so a bf16 checkpoint stays bit-identical outside BatchNorm even though the model ran in
float32. The output keeps the input's metadata, adds provenance (the input's own recipe becomes
``wa_parent``), and is written atomically, never over the input; under torchrun rank 0 writes.
Statistics that come out NaN or infinite are written as they are and counted in the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from wa_cli.engine import distributed
from wa_cli.engine.options import WriteOptions
from wa_cli.engine.provenance import provenance
from wa_cli.io.reader import Checkpoint
from wa_cli.io.writer import OutputTensor, write_safetensors
from wa_cli.methods.bn.layers import STATISTICS
from wa_cli.methods.bn.load import LoadedModel
from wa_cli.methods.bn.report import METHOD, BNCheckpointReport


def write_output(
    report: BNCheckpointReport, loaded: LoadedModel, output: Path, write: WriteOptions
) -> Path:
    """Put the new statistics in the report and write every key once; the file or shard folder."""
    ckpt, keys = loaded.ckpt, loaded.keys
    new = _new_statistics(loaded.net, loaded.layers, ckpt)
    report.replaced = list(new)
    report.non_finite = _non_finite(new)
    if report.non_finite:
        report.warnings.append(_non_finite_warning(report.non_finite))
    report.params.update(batches=report.bn.batches, samples=report.bn.samples)
    written = _write_once(
        lambda: write_safetensors(
            output,
            [OutputTensor(key, ckpt.info(key).dtype, ckpt.info(key).shape) for key in keys],
            _tensors(ckpt, keys, new),
            _metadata(ckpt, report.params, write.command),
            write.settings(),
        )
    )
    return written[0].parent if write.max_shard_size else written[0]


def _write_once(write: Callable[[], list[Path]]) -> list[Path]:
    """Write the output: in this process, or under torchrun on rank 0 only."""
    if distributed.active() is None:
        return write()
    from wa_cli.methods.bn.parallel import write_on_rank_0

    return write_on_rank_0(write)


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


def _new_statistics(
    net: nn.Module, layers: Mapping[_NormBase, str], ckpt: Checkpoint
) -> dict[str, torch.Tensor]:
    """The re-estimated buffers by state-dict key, on the CPU in the checkpoint's dtypes."""
    # Matched by identity, not by name: a layer registered twice, or a model with its own
    # state-dict naming, still maps each buffer to every key that holds it.
    buffers = {
        id(tensor)
        for module in layers
        for name in STATISTICS
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
