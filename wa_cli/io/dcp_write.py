"""``--format dcp``: the result as a ``torch.distributed.checkpoint`` folder, written by DCP itself.

A torchtitan or FSDP user resumes or evaluates from the merged weights with the tools they have:
``dcp.load(model.state_dict(), checkpoint_id=DIR)``. The folder is written by DCP's own
``FileSystemWriter`` (never a hand-made ``.metadata``), atomically like every other output: into a
temporary sibling that is renamed into place when complete. Under torchrun every rank stages its
share of the keys and the ranks save them together, as one checkpoint, with DCP's collective
``dcp.save`` (:func:`save_staged` with the process group; see ``wa_cli.engine.parallel_write``).

DCP's writer takes a state dict of tensors, not a stream. So the stream is first written, as
every output is, to a safetensors staging file inside the temporary folder; its tensors are then
handed to DCP as views of a private memory map of that file (pages are read as DCP serialises
them and are clean page cache, not heap), and the staging file is removed before the commit.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.atomic import atomic_destination
from wa_cli.io.guard import Reads
from wa_cli.io.output_check import check_output_name
from wa_cli.io.safetensors_header import read_header
from wa_cli.io.writer import OutputTensor, write_files

_STAGE = ".wa-stage.safetensors"


def stage_path(folder: Path, rank: int | None = None) -> Path:
    """The safetensors staging file inside the temporary ``folder`` (one per rank: torchrun)."""
    return folder / (_STAGE if rank is None else f".wa-stage-rank{rank}.safetensors")


def write_dcp(
    destination: str | os.PathLike[str],
    tensors: list[OutputTensor],
    chunks: Iterable[tuple[str, torch.Tensor]],
    *,
    force: bool = False,
    reads: Reads = (),
) -> list[Path]:
    """Stream ``chunks`` into a DCP folder at ``destination``, atomically.

    Args:
        destination: the output folder.
        tensors: every output tensor, in the order their chunks arrive.
        chunks: ``(key, bytes)`` chunks as :func:`wa_cli.io.writer.write_safetensors` takes them.
        force: replace an existing destination.
        reads: files the caller reads (never written over).

    Returns:
        The files of the written folder (final paths).

    Example:
        >>> write_dcp("merged_dcp", plan.output_tensors(), chunks)  # doctest: +SKIP
    """
    destination = Path(destination)
    check_output_name(destination, "dcp")
    if not torch.distributed.is_available():
        raise WaError.naming(
            "{output_format} dcp needs a torch build with torch.distributed", ExitCode.USAGE
        )
    try:
        with atomic_destination(destination, force, folder=True, reads=reads) as tmp:
            tmp.mkdir(exist_ok=True)  # atomic_destination creates it (locked)
            stage = stage_path(tmp)
            write_files([stage], [tensors], chunks, {"format": "pt"})
            save_staged(tmp, stage)
            names = sorted(p.name for p in tmp.iterdir())
    except OSError as e:
        raise WaError(f"cannot write '{destination}': {e.strerror or e}", ExitCode.OUTPUT) from e
    return [destination / n for n in names]


def save_staged(
    folder: Path, stage: Path | None, *, collective: bool = False, process_group: Any = None
) -> None:
    """Save the staged tensors into ``folder`` with DCP's own writer, then remove the stage.

    Args:
        folder: the (temporary) DCP folder.
        stage: the safetensors staging file, or ``None`` for a rank with no tensors of its own.
        collective: under torchrun, every rank calls this at once: DCP's collective save, where
            each rank writes ``__RANK_0.distcp`` with its own keys (disjoint from the others')
            and rank 0, DCP's coordinator, writes ``.metadata`` for them all.
        process_group: the group of a collective save (``None``: the default group).
    """
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(str(folder), single_file_per_rank=True)
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(_mapped(stage)) if stage is not None else {}
        if not collective:
            dcp.save(state, storage_writer=writer, no_dist=True)
        else:
            dcp.save(state, storage_writer=writer, process_group=process_group)
    if stage is not None:
        stage.unlink()


@contextlib.contextmanager
def _mapped(path: Path):  # type: ignore[no-untyped-def]
    """The safetensors file's tensors as views of a private (copy-on-write) memory map."""
    header = read_header(path)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None
    try:
        state: dict[str, torch.Tensor] = {}
        for key, info in header.tensors.items():
            if info.nbytes == 0 or mm is None:
                state[key] = torch.empty(info.shape, dtype=info.dtype)
                continue
            flat = torch.frombuffer(mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
            state[key] = flat.view(info.dtype).reshape(info.shape)
        yield state
    finally:
        state = {}
        if mm is not None:
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                mm.close()
