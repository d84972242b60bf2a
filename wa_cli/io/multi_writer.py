"""K safetensors files of the same tensors written in lockstep, from one stream of chunk lists.

Several outputs combined in one pass over the inputs (:mod:`wa_cli.engine.multi`) share the key
order and the chunking: each step brings one chunk per output. The files are written as
:func:`~wa_cli.io.writer.write_safetensors` writes one (header first, then the bytes as they come,
each to a temporary sibling), and committed together by one ``transaction()``: on any error none of
them replaces its destination.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.atomic import atomic_destination, transaction
from wa_cli.io.guard import Reads
from wa_cli.io.output_check import check_output_name
from wa_cli.io.writer import OutputTensor, _as_bytes, _FileSink


def write_safetensors_many(
    destinations: Sequence[str | os.PathLike[str]],
    tensors: list[OutputTensor],
    chunks: Iterable[Sequence[torch.Tensor]],
    metadata: Sequence[dict[str, str]],
    *,
    force: bool = False,
    reads: Reads = (),
) -> list[Path]:
    """Stream ``chunks`` (one list of K chunks per step, in ``tensors`` order) into K files.

    Args:
        destinations: the K output files (single files: no shards).
        tensors: every output tensor, in the order their chunks arrive (the same for all K).
        chunks: per step, one flat chunk per destination, each no longer than its tensor's rest.
        metadata: the header metadata of each destination.
        force: replace existing destinations.
        reads: files the caller reads (the guard refuses to write over them).

    Returns:
        The files written.

    Example:
        >>> write_safetensors_many(["a.safetensors", "b.safetensors"], tensors,
        ...                        [[ta, tb]], [{}, {}])  # doctest: +SKIP
    """
    paths = [Path(d) for d in destinations]
    for p in paths:
        check_output_name(p)
    try:
        with transaction(), contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_destination(p, force, reads=reads)) for p in paths]
            sinks: list[_FileSink] = []
            try:
                for tmp, meta in zip(tmps, metadata):
                    sinks.append(_FileSink(tmp, tensors, meta))
                _write_all(sinks, chunks)
            except BaseException:
                for sink in sinks:
                    sink.file.close()
                raise
            for sink in sinks:
                sink.close()
    except OSError as e:
        raise WaError(
            f"cannot write '{paths[0].parent}': {e.strerror or e}", ExitCode.OUTPUT
        ) from e
    return paths


def _write_all(sinks: list[_FileSink], chunks: Iterable[Sequence[torch.Tensor]]) -> None:
    total = sum(sinks[0].sizes) if sinks else 0
    written = 0
    for outs in chunks:
        size = 0
        for sink, chunk in zip(sinks, outs, strict=True):
            data = _as_bytes(chunk)
            sink.file.write(data)
            size = len(data)
        written += size
        if written > total:
            raise RuntimeError("writer got more data than the tensors hold")
    if written != total:
        raise RuntimeError(f"writer got {written} bytes for {total}")
