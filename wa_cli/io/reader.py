"""Lazy checkpoint readers: headers at open, tensor bytes only when a key (or chunk) is read.

Accepted inputs (DESIGN.md): a ``.safetensors`` file; a Hugging Face style sharded folder or its
``*.safetensors.index.json``; a PyTorch pickle (:data:`wa_cli.io.formats.PICKLE_SUFFIXES`),
loaded through :mod:`wa_cli.io.pickles`. Safetensors data is read with ``pread`` into buffers the
caller owns rather than memory-mapped: every mapped page a process touches counts in its resident
memory, which is how a streaming loop over mmapped files still reaches 9 GB (PEERS.md).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.checkpoint import Checkpoint, PositionalFile
from wa_cli.io.deepspeed_layout import refuse_rank_file
from wa_cli.io.descriptors import open_regular
from wa_cli.io.ema_copies import check_variant
from wa_cli.io.formats import PICKLE_SUFFIXES, is_pickle_name, is_safetensors_name
from wa_cli.io.guard import ReadPath, describe, note_reads
from wa_cli.io.hostile import require_regular
from wa_cli.io.index import INDEX_SUFFIX, find_index, read_weight_map
from wa_cli.io.keys import AUTO, NO_FILTER, WRAPPER_PREFIXES, KeyFilter, parse_strip, shared_prefix
from wa_cli.io.nemo import is_nemo_name, open_nemo
from wa_cli.io.peft import check_adapter_configs
from wa_cli.io.run_folders import RunFolder, recognise, trainer_record
from wa_cli.io.safetensors_header import LayoutMemo, TensorInfo, read_header

__all__ = [
    "Checkpoint",
    "ReadOptions",
    "SafetensorsFile",
    "ShardedCheckpoint",
    "WRAPPER_PREFIXES",
    "open_checkpoint",
    "open_checkpoints",
]

MAX_OPEN_SHARDS = 4


class SafetensorsFile(Checkpoint):
    """A single ``.safetensors`` file, read with positional reads."""

    def __init__(self, path: Path, memo: LayoutMemo | None = None):
        # Opened once: the header and the data are read through one descriptor (a file swapped
        # for another, or for a FIFO, after the header read is an error, never a hang).
        fd, _ = open_regular(path)
        try:
            header = read_header(path, memo, fd=fd)
        except BaseException:
            os.close(fd)
            raise
        super().__init__(path, header.tensors, header.metadata)
        self.layout = header.layout
        self._file = PositionalFile(path, fd)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        info = self._tensors[key]
        if byte_offset + out.numel() > info.nbytes:
            raise ValueError(f"read past the end of {key!r}")
        self._file.read(out, info.offset + byte_offset, key)

    def location(self, key: str) -> tuple[Path, int] | None:
        return self.path, self._tensors[key].offset

    def read_span(self, key: str, out: torch.Tensor) -> None:
        self._file.read(out, self._tensors[key].offset, key)

    def close(self) -> None:
        self._file.close()


class ShardedCheckpoint(Checkpoint):
    """A Hugging Face style sharded checkpoint: an index JSON naming the shard of every tensor."""

    def __init__(self, index_path: Path, display_path: Path, memo: LayoutMemo | None = None):
        weight_map = read_weight_map(index_path)
        self._shards: dict[str, SafetensorsFile] = {}
        for shard_name in dict.fromkeys(weight_map.values()):
            shard_path = index_path.parent / shard_name
            if not shard_path.is_file():
                raise WaError(
                    f"shard '{shard_path}' named by '{index_path}' does not exist",
                    ExitCode.BAD_INPUT,
                )
            self._shards[shard_name] = SafetensorsFile(shard_path, memo)
        self._shard_of: dict[str, SafetensorsFile] = {}
        self._open: OrderedDict[Path, SafetensorsFile] = OrderedDict()
        tensors: dict[str, TensorInfo] = {}
        for key, shard_name in weight_map.items():
            shard = self._shards[shard_name]
            if key not in shard:
                raise WaError(
                    f"'{index_path}' puts {key!r} in '{shard_name}', which does not hold it",
                    ExitCode.BAD_INPUT,
                )
            tensors[key] = shard.info(key)
            self._shard_of[key] = shard
        metadata: dict[str, str] = {}
        for shard in self._shards.values():
            metadata = {**shard.metadata, **metadata}
        super().__init__(display_path, tensors, metadata)
        self.index_path = index_path
        if display_path == index_path:  # named by its index: the folder names the checkpoint
            self.name = index_path.parent.name

    @property
    def files(self) -> list[Path]:
        shards = [s.path for s in self._shards.values()]
        return [self.path, self.index_path, *shards, *self.extra_files]

    def read_paths(self) -> list[ReadPath]:
        return [*super().read_paths(), describe(self.index_path.parent, folder=True)]

    def _rename(self, renamed: dict[str, str]) -> None:
        for shard in self._shards.values():
            shard._rename({k: renamed.get(k, k) for k in shard.keys()})
        self._shard_of = {renamed[k]: v for k, v in self._shard_of.items()}
        super()._rename(renamed)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        self._shard(key).read_into(key, out, byte_offset)

    def location(self, key: str) -> tuple[Path, int] | None:
        return self._shard_of[key].location(key)

    def read_span(self, key: str, out: torch.Tensor) -> None:
        self._shard(key).read_span(key, out)

    def _shard(self, key: str) -> SafetensorsFile:
        shard = self._shard_of[key]
        # Keep few shard files open: 40 checkpoints of 30 shards would pass the usual limit of
        # 1024 open files, and reads go key by key, so a shard is rarely needed again soon.
        self._open.pop(shard.path, None)
        self._open[shard.path] = shard
        while len(self._open) > MAX_OPEN_SHARDS:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return shard

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._open.clear()


@dataclass(frozen=True)
class ReadOptions:
    """How every input of a command is read (the CLI's --key, --strip-prefix, ... flags).

    Attributes:
        key: for pickles, the nested dict holding the state dict, ``a.b.c`` walking nested
            dicts (:func:`wa_cli.io.keys.walk_key`); auto-detected if unambiguous.
        strip_prefixes: ``True`` (``module.``/``_orig_mod.``), prefixes to drop, or ``"auto"``:
            the dotted prefix shared by every key of every input.
        include, exclude: regular expressions choosing keys by their stored names.
        allow_globals: extra classes (``MODULE.NAME``) a pickle may hold (:mod:`pickles`).
        variant: ``raw`` or ``ema``: which copy of a checkpoint holding both (:mod:`ema_copies`).
        deepspeed_weights: for DeepSpeed checkpoints, ``"master"`` (the fp32 master weights of
            the optimizer files) or ``"module"`` (the module copy, ZeRO-1/2): :mod:`deepspeed`.
    """

    key: str | None = None
    strip_prefixes: bool | str | Sequence[str] = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    allow_globals: Sequence[str | type] = field(default_factory=tuple)
    variant: str | None = None
    deepspeed_weights: str = "master"

    def __post_init__(self) -> None:
        check_variant(self.variant)

    @property
    def key_filter(self) -> KeyFilter:
        return KeyFilter(tuple(self.include), tuple(self.exclude))


def _open_one(
    p: Path, options: ReadOptions, keys: KeyFilter, memo: LayoutMemo | None = None
) -> Checkpoint:
    if not p.exists():
        raise WaError(f"input '{p}' does not exist", ExitCode.BAD_INPUT)
    if p.is_dir():
        run = recognise(p)
        if run is not None:
            return _open_run_folder(run, options, keys, memo)
        index = find_index(p)
        if index is None:
            raise WaError(
                f"folder '{p}' is not a sharded checkpoint (no *{INDEX_SUFFIX})", ExitCode.BAD_INPUT
            )
        return ShardedCheckpoint(index, p, memo)
    require_regular(p, "input")  # FIFOs and devices: refused before any read
    if p.name.endswith(".index.json"):
        return ShardedCheckpoint(p, p, memo)
    if is_pickle_name(p):
        from wa_cli.io.pickle_checkpoint import PickleCheckpoint

        refuse_rank_file(p)  # DeepSpeed's optimizer partitions: their folder is the model
        return PickleCheckpoint(
            p, options.key, allow_globals=options.allow_globals, keys=keys, variant=options.variant
        )
    if is_nemo_name(p):
        return open_nemo(
            p, options.key, allow_globals=options.allow_globals, keys=keys, variant=options.variant
        )
    if is_safetensors_name(p):
        return SafetensorsFile(p, memo)
    raise WaError(
        f"'{p}' is not a checkpoint wa can read (expected .safetensors, a sharded folder or "
        f"its .index.json, {', '.join(PICKLE_SUFFIXES)}, or a NeMo .nemo archive)",
        ExitCode.BAD_INPUT,
    )


def _open_run_folder(
    run: RunFolder, options: ReadOptions, keys: KeyFilter, memo: LayoutMemo | None
) -> Checkpoint:
    """The run folder's model file, named after the folder, with the library's record."""
    if run.kind == "deepspeed":
        from wa_cli.io.deepspeed import open_deepspeed

        ckpt: Checkpoint = open_deepspeed(run, options.deepspeed_weights, keys)
    elif run.kind == "dcp" or run.model.is_dir():
        from wa_cli.io.dcp import DcpCheckpoint

        ckpt = DcpCheckpoint(run.model, keys, options.key)
    else:
        ckpt = _open_one(run.model, options, keys, memo)
    inner = ckpt.files
    ckpt.path, ckpt.name = run.folder, run.folder.name
    ckpt.extra_files = [f for f in inner if f != run.folder]
    if run.model != run.folder and run.kind != "deepspeed":  # DeepSpeed's note says more
        ckpt.chosen_file_note = run.note
    record = trainer_record(run.folder)
    if record:
        ckpt.metadata = {**ckpt.metadata, **record}
    return ckpt


def _filter_keys(ckpt: Checkpoint, keys: KeyFilter) -> None:
    if not keys.active:
        return
    kept = {k for k in ckpt.keys() if keys.keep(k)}
    if not kept:
        raise WaError.naming(
            "'{path}' keeps no tensor after {include}/{exclude}",
            ExitCode.BAD_INPUT,
            path=str(ckpt.path),
        )
    ckpt.keep_keys(kept)


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    strip_prefixes: bool | str | Sequence[str] = False,
    options: ReadOptions | None = None,
) -> Checkpoint:
    """Open any supported checkpoint lazily.

    Args:
        path: a ``.safetensors`` file, a sharded folder, an ``*.safetensors.index.json``, or a
            PyTorch pickle (``.pt``, ``.pth``, ``.pth.tar``, ``.bin``, ``.ckpt``).
        key: for pickles, the nested dict holding the state dict (auto-detected if unambiguous).
        strip_prefixes: ``True`` drops ``module.`` and ``_orig_mod.``; a prefix or list of
            prefixes drops those; ``"auto"`` the prefix every key shares.
        options: all reading options at once (``key``/``strip_prefixes`` then must be unset).

    Example:
        >>> ckpt = open_checkpoint("run_a/ckpt_1000.safetensors")  # doctest: +SKIP
        >>> ckpt.tensor("fc.weight").shape  # doctest: +SKIP
    """
    if options is None:
        options = ReadOptions(key=key, strip_prefixes=strip_prefixes)
    return open_checkpoints([Path(path)], options=options)[0]


def open_checkpoints(
    paths: Sequence[str | os.PathLike[str]],
    *,
    key: str | None = None,
    strip_prefixes: bool | str | Sequence[str] = False,
    options: ReadOptions | None = None,
) -> list[Checkpoint]:
    """Open every input (headers only), closing those already open if one fails.

    ``--strip-prefix auto`` is decided over all inputs together: the prefix must be shared by
    every key of every input.
    """
    if options is None:
        options = ReadOptions(key=key, strip_prefixes=strip_prefixes)
    strip = parse_strip(options.strip_prefixes)
    keys = options.key_filter if (options.include or options.exclude) else NO_FILTER
    opened: list[Checkpoint] = []
    memo = LayoutMemo()  # a run's headers list their tensors alike: each layout checked once
    try:
        for p in paths:
            ckpt = _open_one(Path(p), options, keys, memo)
            opened.append(ckpt)
            note_reads(ckpt.read_paths())  # the output guard never writes over them
            _filter_keys(ckpt, keys)
        check_adapter_configs([c.files for c in opened])  # PEFT: one configuration
        if strip == AUTO:
            prefix = shared_prefix([c.keys() for c in opened])
            strip = (prefix,) if prefix else ()
        if strip:
            for c in opened:
                c.strip_prefixes(tuple(strip))
    except BaseException:
        for c in opened:
            c.close()
        raise
    return opened
