"""A preallocated safetensors file that several processes fill by offset (torchrun's single file).

One process writes the header and sets the file's full length (:func:`preallocate`); every
tensor's offset follows from the header alone (:func:`tensor_offsets`), so each process then
writes its own tensors' bytes in place with ``pwrite`` and fsyncs (:func:`write_at`). The file
ends byte for byte what :mod:`wa_cli.io.writer` writes in one process; which process writes
which tensor, and the atomic commit, are the caller's (``wa_cli.engine.parallel_write``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wa_cli.io.writer import chunk_bytes

if TYPE_CHECKING:
    import torch


def preallocate(path: Path, header: bytes, body_bytes: int) -> None:
    """Create ``path`` holding ``header`` and sized for ``body_bytes`` of tensor data after it.

    The body stays sparse until the writers fill it; every byte is written before the commit.
    """
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + body_bytes)


def tensor_offsets(header: bytes, keys: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    """The byte offset in the file of each tensor, laid out back to back after ``header``."""
    offsets, at = {}, len(header)
    for key, size in zip(keys, sizes, strict=True):
        offsets[key] = at
        at += size
    return offsets


def write_at(
    path: Path, offsets: Mapping[str, int], chunks: Iterable[tuple[str, torch.Tensor]]
) -> None:
    """``pwrite`` each tensor's chunks, in order, from its offset in the preallocated ``path``.

    The chunks of one tensor come consecutively and in order (as the engine yields them). The
    file is fsynced before returning: this node's writes reach a shared file before another
    process renames it into place.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        current, pos = None, 0
        for key, chunk in chunks:
            if key != current:
                current, pos = key, offsets[key]
            data = chunk_bytes(chunk)
            while data:  # pwrite may write fewer bytes than given (signals, some filesystems)
                n = os.pwrite(fd, data, pos)
                pos += n
                data = data[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
