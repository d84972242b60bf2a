"""Lazy checkpoint readers: headers at open, tensor bytes only when a key (or chunk) is read.

Accepted inputs (DESIGN.md): a ``.safetensors`` file; a Hugging Face style sharded folder or its
``*.safetensors.index.json``; a PyTorch pickle (:data:`wa_cli.io.formats.PICKLE_SUFFIXES`),
loaded through :mod:`wa_cli.io.pickles`. Safetensors data is read with ``pread`` into buffers the
caller owns rather than memory-mapped: every mapped page a process touches counts in its resident
memory, which is how a streaming loop over mmapped files still reaches 9 GB (PEERS.md).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.dtypes import SAFETENSORS_NAMES
from wa_cli.io.formats import PICKLE_SUFFIXES, is_pickle_name, is_safetensors_name
from wa_cli.io.index import INDEX_SUFFIX, find_index, read_weight_map
from wa_cli.io.safetensors_header import TensorInfo, read_header

MAX_OPEN_SHARDS = 4
NESTED_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_INT_METADATA = ("step", "global_step", "epoch")


class Checkpoint:
    """One checkpoint on disk, opened lazily.

    Attributes:
        path: what the user named (a file, a sharded folder, or an index file).
        name: a short display name (the file or folder name).
        metadata: string metadata (safetensors ``__metadata__``; for pickles, top-level step/epoch).
        key_order_known: whether ``keys()`` is the state-dict order (pickles) rather than sorted.
    """

    path: Path
    name: str
    metadata: dict[str, str]
    key_order_known: bool = False
    skipped: list[str] = []  # entries of a pickle's state dict that are not tensors (left out)

    def __init__(self, path: Path, tensors: dict[str, TensorInfo], metadata: dict[str, str]):
        self.path = path
        self.name = path.name
        self._tensors = tensors
        self.metadata = metadata

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        return self._tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    @property
    def files(self) -> list[Path]:
        """Every file this checkpoint reads (an output must never be one of them)."""
        return [self.path]

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        """Fill the uint8 CPU tensor ``out`` with the key's bytes from ``byte_offset`` on."""
        raise NotImplementedError

    def tensor(self, key: str) -> torch.Tensor:
        """The whole tensor, in fresh memory."""
        info = self.info(key)
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        self.read_into(key, buf)
        return buf.view(info.dtype).reshape(info.shape)

    def strip_prefixes(self, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> None:
        """Drop DataParallel / torch.compile wrapper prefixes (``module.``, ``_orig_mod.``)."""
        renamed: dict[str, str] = {}
        for key in self._tensors:
            new = key
            changed = True
            while changed:
                changed = False
                for p in prefixes:
                    if new.startswith(p):
                        new, changed = new[len(p) :], True
            if new in renamed.values():
                raise WaError(
                    f"stripping prefixes from '{self.path}' maps two keys to {new!r}",
                    ExitCode.BAD_INPUT,
                )
            renamed[key] = new
        self._rename(renamed)

    def _rename(self, renamed: dict[str, str]) -> None:
        self._tensors = {renamed[k]: v for k, v in self._tensors.items()}

    def close(self) -> None:
        """Release open files; reading again reopens them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self._tensors)} tensors)"


class SafetensorsFile(Checkpoint):
    """A single ``.safetensors`` file, read with positional reads."""

    def __init__(self, path: Path):
        header = read_header(path)
        super().__init__(path, header.tensors, header.metadata)
        self._fd: int | None = None

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        info = self._tensors[key]
        n = out.numel()
        if byte_offset + n > info.nbytes:
            raise ValueError(f"read past the end of {key!r}")
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise WaError(
                    f"cannot read '{self.path}': {e.strerror or e}", ExitCode.BAD_INPUT
                ) from e
        view = memoryview(out.numpy()).cast("B")
        position = info.offset + byte_offset
        done = 0
        while done < n:
            try:
                got = os.preadv(self._fd, [view[done:]], position + done)
            except OSError as e:
                raise WaError(
                    f"cannot read {key!r} from '{self.path}': {e.strerror or e}",
                    ExitCode.BAD_INPUT,
                ) from e
            if got == 0:
                raise WaError(
                    f"'{self.path}' ended while reading {key!r} (was it truncated while wa ran?)",
                    ExitCode.BAD_INPUT,
                )
            done += got

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ShardedCheckpoint(Checkpoint):
    """A Hugging Face style sharded checkpoint: an index JSON naming the shard of every tensor."""

    def __init__(self, index_path: Path, display_path: Path):
        weight_map = read_weight_map(index_path)
        self._shards: dict[str, SafetensorsFile] = {}
        for shard_name in dict.fromkeys(weight_map.values()):
            shard_path = index_path.parent / shard_name
            if not shard_path.is_file():
                raise WaError(
                    f"shard '{shard_path}' named by '{index_path}' does not exist",
                    ExitCode.BAD_INPUT,
                )
            self._shards[shard_name] = SafetensorsFile(shard_path)
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
        return [self.path, self.index_path, *(s.path for s in self._shards.values())]

    def _rename(self, renamed: dict[str, str]) -> None:
        for shard in self._shards.values():
            shard._rename({k: renamed.get(k, k) for k in shard.keys()})
        self._shard_of = {renamed[k]: v for k, v in self._shard_of.items()}
        super()._rename(renamed)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        shard = self._shard_of[key]
        # Keep few shard files open: 40 checkpoints of 30 shards would pass the usual limit of
        # 1024 open files, and reads go key by key, so a shard is rarely needed again soon.
        self._open.pop(shard.path, None)
        self._open[shard.path] = shard
        while len(self._open) > MAX_OPEN_SHARDS:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        shard.read_into(key, out, byte_offset)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._open.clear()


class PickleCheckpoint(Checkpoint):
    """A ``torch.save`` file, loaded with ``weights_only=True`` (``mmap=True`` where possible)."""

    key_order_known = True

    def __init__(self, path: Path, key: str | None = None):
        obj = _load_pickle(path)
        state, metadata, self.skipped = _pick_state_dict(obj, path, key)
        self._values = state
        tensors = {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in state.items()}
        super().__init__(path, tensors, metadata)

    def _rename(self, renamed: dict[str, str]) -> None:
        self._values = {renamed[k]: v for k, v in self._values.items()}
        super()._rename(renamed)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        flat = self._values[key].reshape(-1).view(torch.uint8)
        out.copy_(flat[byte_offset : byte_offset + out.numel()])


def _load_pickle(path: Path) -> object:
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files from the legacy (non-zip) format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the unsafe global '{found.group(1)}'" if found else "objects that are not tensors"
        raise WaError(
            f"'{path}' needs {what} to load, and wa loads pickles only with weights_only=True "
            "(re-save its state_dict, or convert it to safetensors with code you trust)",
            ExitCode.BAD_INPUT,
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WaError(
            f"cannot load '{path}' as a PyTorch checkpoint: {first}", ExitCode.BAD_INPUT
        ) from e


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _pick_state_dict(
    obj: object, path: Path, key: str | None
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """The chosen state dict, metadata from top-level step/epoch, and entries skipped."""
    if not isinstance(obj, dict):
        raise WaError(
            f"'{path}' holds a {type(obj).__name__}, not a dict of tensors", ExitCode.BAD_INPUT
        )
    metadata = {k: str(obj[k]) for k in _INT_METADATA if isinstance(obj.get(k), int | float)}
    if key is not None:
        if key not in obj:
            raise WaError(
                f"'{path}' has no entry {key!r} "
                f"(its top-level keys: {listing(sorted(map(str, obj)))})",
                ExitCode.BAD_INPUT,
            )
        chosen = obj[key]
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        chosen = obj
    else:
        candidates = [k for k in NESTED_STATE_KEYS if _is_state_dict(obj.get(k))]
        if len(candidates) == 1:
            chosen = obj[candidates[0]]
        elif candidates:
            raise WaError(
                f"'{path}' holds several state dicts ({listing(candidates)}); pick one with --key",
                ExitCode.USAGE,
            )
        elif _is_state_dict(obj):
            chosen = obj
        else:
            raise WaError(
                f"'{path}' holds no dict of tensors (top-level keys: "
                f"{listing(sorted(map(str, obj)))}); name the nested state dict with --key",
                ExitCode.BAD_INPUT,
            )
    if not _is_state_dict(chosen):
        raise WaError(f"entry {key!r} of '{path}' is not a dict of tensors", ExitCode.BAD_INPUT)
    tensors = {str(k): v for k, v in chosen.items() if isinstance(v, torch.Tensor)}
    for k, v in tensors.items():
        if v.dtype not in SAFETENSORS_NAMES:
            raise WaError(
                f"tensor {k!r} of '{path}' has dtype {v.dtype}, which wa cannot average or "
                "write (safetensors holds real floats, integers and booleans)",
                ExitCode.BAD_INPUT,
            )
    skipped = [str(k) for k, v in chosen.items() if not isinstance(v, torch.Tensor)]
    state = {k: v.contiguous() if not v.is_contiguous() else v for k, v in tensors.items()}
    return state, metadata, skipped


def open_checkpoint(
    path: str | os.PathLike[str], *, key: str | None = None, strip_prefixes: bool = False
) -> Checkpoint:
    """Open any supported checkpoint lazily.

    Args:
        path: a ``.safetensors`` file, a sharded folder, an ``*.safetensors.index.json``, or a
            PyTorch pickle (``.pt``, ``.pth``, ``.pth.tar``, ``.bin``, ``.ckpt``).
        key: for pickles, the nested dict holding the state dict (auto-detected if unambiguous).
        strip_prefixes: drop ``module.`` and ``_orig_mod.`` key prefixes.

    Example:
        >>> ckpt = open_checkpoint("run_a/ckpt_1000.safetensors")  # doctest: +SKIP
        >>> ckpt.tensor("fc.weight").shape  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise WaError(f"input '{p}' does not exist", ExitCode.BAD_INPUT)
    if p.is_dir():
        index = find_index(p)
        if index is None:
            raise WaError(
                f"folder '{p}' is not a sharded checkpoint (no *{INDEX_SUFFIX})", ExitCode.BAD_INPUT
            )
        ckpt: Checkpoint = ShardedCheckpoint(index, p)
    elif p.name.endswith(".index.json"):
        ckpt = ShardedCheckpoint(p, p)
    elif is_pickle_name(p):
        ckpt = PickleCheckpoint(p, key)
    elif is_safetensors_name(p):
        ckpt = SafetensorsFile(p)
    else:
        raise WaError(
            f"'{p}' is not a checkpoint wa can read (expected .safetensors, a sharded folder or "
            f"its .index.json, or {', '.join(PICKLE_SUFFIXES)})",
            ExitCode.BAD_INPUT,
        )
    if strip_prefixes:
        ckpt.strip_prefixes()
    return ckpt


def open_checkpoints(
    paths: list[Path], *, key: str | None = None, strip_prefixes: bool = False
) -> list[Checkpoint]:
    """Open every input (headers only), closing those already open if one fails."""
    opened: list[Checkpoint] = []
    try:
        for p in paths:
            opened.append(open_checkpoint(p, key=key, strip_prefixes=strip_prefixes))
    except BaseException:
        for c in opened:
            c.close()
        raise
    return opened
