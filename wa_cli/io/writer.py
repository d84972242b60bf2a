"""Streaming, atomic safetensors writer.

Every tensor's dtype and shape are known from the plan before any tensor is computed, so the header
is written first and each tensor's bytes are appended as soon as they are ready (in chunks, if the
producer likes): the output is never held in memory. Output goes to a temporary sibling that is
fsynced and renamed into place only when complete (``wa_cli.io.atomic``). With a maximum shard size
the output is a folder of Hugging Face style shards plus ``model.safetensors.index.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io import hooks
from wa_cli.io.atomic import atomic_destination
from wa_cli.io.guard import COMPANIONS_KEY, WA_MARK, Reads
from wa_cli.io.output_check import check_output_name
from wa_cli.io.safetensors_header import build_header

INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_NAME = "model"
"""Shards are ``<name>-00001-of-00002.safetensors`` with ``<name>.safetensors.index.json``:
``model`` for transformers, ``diffusion_pytorch_model`` for diffusers (``--shard-name``)."""
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_shard_name(name: str) -> str:
    """A shard base name: letters, digits, ``_``, ``-``, ``.``, not a path, not hidden."""
    if not isinstance(name, str) or not _SHARD_NAME.match(name) or name.endswith(".safetensors"):
        raise WaError.naming(
            "{shard_name} must be a plain file name stem such as 'model' or "
            "'diffusion_pytorch_model', got {name!r}",
            ExitCode.USAGE,
            name=name,
        )
    return name


def index_name(shard_name: str = DEFAULT_SHARD_NAME) -> str:
    """``model.safetensors.index.json`` for the shard base name ``model``."""
    return f"{shard_name}.safetensors.index.json"


@dataclass(frozen=True)
class OutputTensor:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class WriteSettings:
    """How :func:`write_safetensors` writes; io's own, made from the engine's ``WriteOptions``."""

    force: bool = False  # replace an existing destination
    max_shard_size: int | None = None  # bytes per shard; None writes one file
    reads: Reads = ()  # files the caller reads (the guard refuses to write over them)
    # The shards' base name: model-00001-of-00002.safetensors and model.safetensors.index.json
    # (diffusion_pytorch_model for diffusers).
    shard_name: str = DEFAULT_SHARD_NAME
    # Copied into the output folder beside the shards, in the same atomic replacement
    # (--copy-config: config.json, tokenizer files).
    copy_files: Sequence[Path] = ()


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1000000`` → bytes (decimal units as Hugging Face uses).

    The value must be finite and come to at least one byte (``inf``, ``nan`` and ``0.5`` do not).

    Example:
        >>> parse_size("2KiB")
        2048
    """
    units = {
        "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
        "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
    }  # fmt: skip
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number) :]
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        size = math.nan
    if not (math.isfinite(size) and size >= 1):
        raise WaError(
            f"cannot read size {text!r} (expected a finite size of at least 1 byte, "
            "e.g. 5GB, 500MB, 2GiB)"
        )
    return int(size)


class _FileSink:
    """Writes one safetensors file: header first, then exactly the announced bytes per tensor."""

    def __init__(self, path: Path, tensors: list[OutputTensor], metadata: dict[str, str]):
        header, self.sizes = build_header([(t.key, t.dtype, t.shape) for t in tensors], metadata)
        self.keys = [t.key for t in tensors]
        # A 256 KB buffer gathers small tensors into few write calls (20,000 keys of 8 KB made
        # 20,000 syscalls); the engine's full chunks (512 KB and up) still go straight through.
        self.file = open(path, "wb", buffering=1 << 18)  # noqa: SIM115 - closed in close()
        self.file.write(header)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def write_safetensors(
    destination: str | os.PathLike[str],
    tensors: list[OutputTensor],
    chunks: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str],
    settings: WriteSettings = WriteSettings(),
) -> list[Path]:
    """Stream ``chunks`` into a safetensors file (or a folder of shards) atomically.

    Args:
        destination: the output file, or the output folder when ``settings.max_shard_size`` is
            set. A file named with a pickle suffix (``.pt``, ``.pth.tar``, ``.ckpt``, ...) is
            refused, and so, even with ``force``, is a folder holding anything but shards and
            indexes.
        tensors: every output tensor, in the order their chunks will arrive.
        chunks: ``(key, tensor)`` pairs; a key's chunks arrive consecutively and, flattened and
            concatenated, make its tensor (a whole tensor is one chunk). A chunk may also run on
            into the tensors after ``key`` (a span of small tensors in one buffer).
        metadata: string metadata for the header (and the index, when sharded).
        settings: replacing, sharding, the files read and the files copied
            (:class:`WriteSettings`).

    Returns:
        The files written (final paths).

    Example:
        >>> t = torch.ones(2, 3)
        >>> write_safetensors("x.safetensors", [OutputTensor("t", t.dtype, (2, 3))],
        ...                   [("t", t)], {"format": "pt"})  # doctest: +SKIP
    """
    destination = Path(destination)
    force, max_shard_size, reads = settings.force, settings.max_shard_size, settings.reads
    shard_name, copy_files = settings.shard_name, settings.copy_files
    check_output_name(destination, "file" if max_shard_size is None else "shards")
    check_shard_name(shard_name)
    if copy_files and max_shard_size is None:
        raise WaError.naming(
            "copying config files needs a folder output: add {max_shard_size} (e.g. 5GB)",
            ExitCode.USAGE,
        )
    groups = _shard_groups(tensors, max_shard_size) if max_shard_size else [tensors]
    try:
        sharded = max_shard_size is not None
        with atomic_destination(destination, force, folder=sharded, reads=reads) as tmp:
            if max_shard_size is None:
                names = [tmp]
            else:  # the folder exists already (created locked by atomic_destination)
                total = len(groups)
                names = [tmp / shard_file_name(i, total, shard_name) for i in range(total)]
            _write_groups(names, groups, chunks, metadata)
            if max_shard_size is not None:
                index = tmp / index_name(shard_name)
                # The index names the files copied beside the shards, so that a later --force
                # can tell this folder (shards + config) from someone else's.
                companions = {COMPANIONS_KEY: json.dumps([f.name for f in copy_files])}
                _write_index(
                    index, names, groups, {**metadata, **companions} if copy_files else metadata
                )
                names.append(index)
                for f in copy_files:
                    shutil.copy2(f, tmp / f.name)
                    names.append(tmp / f.name)
    except OSError as e:
        raise WaError(f"cannot write '{destination}': {e.strerror or e}", ExitCode.OUTPUT) from e
    if max_shard_size is None:
        return [destination]
    return [destination / n.name for n in names]


def _write_groups(
    paths: list[Path],
    groups: list[list[OutputTensor]],
    chunks: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str],
) -> None:
    # Zero-byte chunks carry nothing (zero-sized tensors may send one or none).
    stream = ((key, chunk) for key, chunk in chunks if chunk.numel())
    # A test hook (only with WA_TEST_HOOKS=1): seconds to sleep per chunk, so a test can signal
    # a run mid-write.
    delay = hooks.write_delay()
    spill = memoryview(b"")  # bytes of the last chunk past the end of the file it began in
    for path, group in zip(paths, groups):
        sink = _FileSink(path, group, metadata)
        try:
            spill = _write_group(sink, group, stream, spill, delay)
        except BaseException:
            sink.file.close()
            raise
        sink.close()
    extra = next(stream, None)
    if spill or extra is not None:
        key = extra[0] if extra is not None else groups[-1][-1].key
        raise RuntimeError(f"writer got data for {key!r} after the last tensor")


def _write_group(
    sink: _FileSink,
    group: list[OutputTensor],
    stream: Iterator[tuple[str, torch.Tensor]],
    spill: memoryview,
    delay: float,
) -> memoryview:
    """Write one file's tensor bytes from ``stream``; returns the bytes left over for the next.

    A chunk names the tensor its first byte belongs to and may run on past that tensor's end into
    the tensors after it: the engine sends a span of small keys, stored back to back in the
    output as in the inputs, as one chunk (one write instead of one per key).
    """
    ends = list(itertools.accumulate(sink.sizes))
    total = ends[-1] if ends else 0
    written, current = 0, 0  # bytes written; index of the tensor holding the next byte
    while written < total:
        while ends[current] <= written:  # skip finished (and zero-sized) tensors
            current += 1
        if spill:
            data, spill = spill, memoryview(b"")
        else:
            key, chunk = next(stream, ("", None))
            if chunk is None or key != group[current].key:
                raise RuntimeError(f"writer expected data for {group[current].key!r}, got {key!r}")
            data = _as_bytes(chunk)
        n = min(len(data), total - written)
        sink.file.write(data if n == len(data) else data[:n])
        spill = data[n:]
        written += n
        if delay:
            sink.file.flush()
            hooks.write_marker(sink.file.name)
            time.sleep(delay)
    return spill


def _nbytes(t: OutputTensor) -> int:
    return t.dtype.itemsize * math.prod(t.shape)


def _as_bytes(chunk: torch.Tensor) -> memoryview:
    if chunk.device.type != "cpu":
        chunk = chunk.cpu()
    flat = chunk.contiguous().reshape(-1)
    # numpy arrays support the buffer protocol; numpy's stubs do not declare it (no __buffer__).
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]  # see above


def _shard_groups(tensors: list[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Greedy shards in order; a tensor larger than the limit gets a shard of its own."""
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        n = _nbytes(t)
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return groups


def _write_index(
    path: Path, shards: list[Path], groups: list[list[OutputTensor]], metadata: dict[str, str]
) -> None:
    weight_map = {t.key: shard.name for shard, group in zip(shards, groups) for t in group}
    total = sum(_nbytes(t) for group in groups for t in group)
    # The mark lets a later --force tell wa's own shard folder from someone else's.
    meta = {"total_size": total, **metadata}
    meta.setdefault(WA_MARK, _version())
    index = {"metadata": meta, "weight_map": weight_map}
    path.write_text(json.dumps(index, indent=2) + "\n")


def _version() -> str:
    from wa_cli._version import __version__

    return __version__


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    *,
    force: bool = False,
    max_shard_size: int | None = None,
) -> list[Path]:
    """Write an in-memory state dict atomically, in ``safetensors.torch.save_file``'s order.

    Tied tensors (two keys sharing storage) need no clone: each key's bytes are streamed.

    Example:
        >>> write_state_dict({"w": torch.ones(2)}, "w.safetensors")  # doctest: +SKIP
        [PosixPath('w.safetensors')]
    """
    if not isinstance(state_dict, Mapping):
        raise WaError.naming(
            "{state_dict} must be a mapping of names to tensors, got {kind} (the order is "
            "write_state_dict(state_dict, filename), as in save_file)",
            kind=type(state_dict).__name__,
        )
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WaError.naming(
            "{state_dict} entry {bad!r} is not a string name with a tensor", bad=bad[0]
        )
    if not isinstance(filename, str | os.PathLike):
        raise WaError.naming("{filename=}{got!r} is not a path", got=filename)
    specs = [OutputTensor(k, v.dtype, tuple(v.shape)) for k, v in state_dict.items()]
    pairs = ((k, v) for k, v in state_dict.items() if v.numel())
    settings = WriteSettings(force=force, max_shard_size=max_shard_size)
    return write_safetensors(filename, specs, pairs, metadata or {}, settings)


# The pieces of a write, for writers that split one output between processes
# (wa_cli.engine.parallel_write, wa_cli.io.positional_write): the same layout, names, header and
# index as write_safetensors.


def shard_layout(
    tensors: list[OutputTensor], max_shard_size: int | None
) -> list[list[OutputTensor]]:
    """The tensors of each output file: one file, or the shards ``write_safetensors`` makes."""
    return _shard_groups(tensors, max_shard_size) if max_shard_size else [tensors]


def shard_file_name(index: int, total: int, shard_name: str = DEFAULT_SHARD_NAME) -> str:
    """The name of shard ``index`` (from 0) of ``total``, as ``write_safetensors`` names it.

    A PEFT adapter is one file, ``adapter_model.safetensors``: ``PeftModel.from_pretrained``
    reads that name only (the index beside it is ignored there).
    """
    if shard_name == "adapter_model" and total == 1:
        return f"{shard_name}.safetensors"
    return f"{shard_name}-{index + 1:05d}-of-{total:05d}.safetensors"


def write_files(
    paths: list[Path],
    groups: list[list[OutputTensor]],
    chunks: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str],
) -> None:
    """Write each group to its path (header, then its tensors' bytes from ``chunks``), fsynced."""
    _write_groups(paths, groups, chunks, metadata)


def write_index(
    path: Path, shards: list[Path], groups: list[list[OutputTensor]], metadata: dict[str, str]
) -> None:
    """``model.safetensors.index.json`` for ``shards`` holding ``groups``."""
    _write_index(path, shards, groups, metadata)


def chunk_bytes(chunk: torch.Tensor) -> memoryview:
    """The bytes of a chunk as a writer stores them."""
    return _as_bytes(chunk)
