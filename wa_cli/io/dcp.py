"""``torch.distributed.checkpoint`` (DCP) folders, read lazily: FSDP and torchtitan checkpoints.

Layout (``FileSystemWriter``, torch's ``filesystem.py``): a ``.metadata`` pickle of a
``Metadata`` dataclass, and ``__<rank>_<n>.distcp`` files. ``Metadata.state_dict_metadata`` maps
each flattened key (nested dicts joined by dots) to a ``TensorStorageMetadata`` (dtype, global
size, and the chunks ranks saved: offsets and sizes per dimension) or a
``BytesStorageMetadata`` (any other object, pickled). ``Metadata.storage_data`` maps a
``MetadataIndex(key, chunk offsets)`` to a ``_StorageInfo``: the file, byte offset and length of
that chunk, which is itself a ``torch.save`` of the chunk's tensor.

The ``.metadata`` pickle is loaded by an unpickler that admits only DCP's metadata classes (and
``torch.Size``, dtypes, layouts, paths), so it cannot run code. A chunk's ``torch.save`` blob is
opened with ``weights_only=True`` on the meta device to find where its bytes lie; the bytes are
then read with ``pread``, range by range. A tensor sharded along its first dimension (FSDP,
``Shard(0)``) is read straight from its chunks; any other split is assembled in memory from its
chunks' offsets, one tensor at a time.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.checkpoint import Checkpoint, PositionalFile
from wa_cli.io.dtypes import SAFETENSORS_NAMES
from wa_cli.io.keys import NO_FILTER, KeyFilter
from wa_cli.io.pickles import check_key, overlaps
from wa_cli.io.safetensors_header import TensorInfo

METADATA_FILE = ".metadata"
_MAX_METADATA_BYTES = 1 << 30
_STEP_NAMES = ("step", "global_step", "epoch")


def _allowed_classes() -> dict[tuple[str, str], Any]:
    """Everything a DCP ``.metadata`` pickle may name: data classes, no functions but one."""
    import pathlib

    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], Any] = {}
    mod = "torch.distributed.checkpoint.metadata"
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "MetadataIndex",
        "_MEM_FORMAT_ENCODING",
    ):
        allowed[(mod, name)] = getattr(metadata, name)
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    # Returns a layout from its name; torch's own weights_only allow-list admits it too.
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for dtype in SAFETENSORS_NAMES:
        allowed[("torch", str(dtype).removeprefix("torch."))] = dtype
    for dtype in (torch.complex64, torch.complex128, torch.complex32, torch.quint8, torch.qint8):
        allowed[("torch", str(dtype).removeprefix("torch."))] = dtype
    for path_class in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"):
        allowed[("pathlib", path_class)] = getattr(pathlib, path_class)
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, where: Path):
        super().__init__(file)
        self._allowed = _allowed_classes()
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise WaError(
                f"'{self._where}' names '{module}.{name}', which is not one of DCP's metadata "
                "classes: wa does not load it",
                ExitCode.BAD_INPUT,
            )
        return found


def read_metadata(folder: Path) -> Any:
    """The folder's ``Metadata``, through the restricted unpickler."""
    path = folder / METADATA_FILE
    if not torch.distributed.is_available():
        raise WaError(
            f"'{folder}' is a DCP checkpoint, and this torch build has no torch.distributed",
            ExitCode.BAD_INPUT,
        )
    try:
        if path.stat().st_size > _MAX_METADATA_BYTES:
            raise WaError(f"'{path}' is larger than 1 GB", ExitCode.BAD_INPUT)
        with path.open("rb") as f:
            md = _MetadataUnpickler(f, path).load()
    except WaError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise WaError(f"cannot read DCP metadata '{path}': {e}", ExitCode.BAD_INPUT) from e
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(md, Metadata) or not isinstance(md.storage_data, dict):
        raise WaError(
            f"'{path}' is not DCP metadata written by FileSystemWriter", ExitCode.BAD_INPUT
        )
    return md


@dataclass
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int
    located: tuple[int, tuple[int, ...], bool] | None = None  # data start, strides, dense

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n


class _Slice(io.RawIOBase):
    """A byte range of a file as a seekable stream (for torch.load of one chunk blob)."""

    def __init__(self, path: Path, start: int, length: int):
        self._f = path.open("rb")
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got or 0
        return got or 0

    def close(self) -> None:
        self._f.close()
        super().close()


class DcpCheckpoint(Checkpoint):
    """A DCP folder: per-key reads of the ``.distcp`` byte ranges its metadata names."""

    key_order_known = False

    def __init__(self, folder: Path, keys: KeyFilter = NO_FILTER):
        md = read_metadata(folder)
        self._folder = folder
        self._chunks: dict[str, list[_Chunk]] = {}
        self._files: dict[str, PositionalFile] = {}
        self._cached: tuple[str, torch.Tensor] | None = None
        tensors: dict[str, TensorInfo] = {}
        skipped: list[str] = []
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

        for raw, item in md.state_dict_metadata.items():
            key = check_key(raw, folder)
            if not isinstance(item, TensorStorageMetadata):
                skipped.append(key)
                continue
            if not keys.keep(key):
                continue
            info = TensorInfo(item.properties.dtype, tuple(int(s) for s in item.size))
            self._check(key, info, item.properties.layout)
            chunks = []
            for c in item.chunks:
                where = md.storage_data.get(MetadataIndex(key, c.offsets))
                if where is None:
                    raise WaError(
                        f"'{folder}': chunk {tuple(c.offsets)} of {key!r} has no storage entry",
                        ExitCode.BAD_INPUT,
                    )
                if getattr(where, "transform_descriptors", None):
                    raise WaError(
                        f"'{folder}': {key!r} is stored with {list(where.transform_descriptors)} "
                        "(compressed or transformed), which wa does not read",
                        ExitCode.BAD_INPUT,
                    )
                chunks.append(
                    _Chunk(
                        tuple(int(o) for o in c.offsets),
                        tuple(int(s) for s in c.sizes),
                        str(where.relative_path),
                        int(where.offset),
                        int(where.length),
                    )
                )
            _check_cover(key, info.shape, chunks, folder)
            self._chunks[key] = chunks
            tensors[key] = info
        if not tensors:
            raise WaError(f"DCP folder '{folder}' keeps no tensor", ExitCode.BAD_INPUT)
        super().__init__(folder, tensors, self._record(md, skipped))
        self.skipped = skipped  # the plan's notes name them

    def _check(self, key: str, info: TensorInfo, layout: torch.layout) -> None:
        if layout != torch.strided:
            raise WaError(
                f"tensor {key!r} of '{self._folder}' has layout {layout}; wa reads dense tensors "
                "only (leave it out with --exclude)",
                ExitCode.BAD_INPUT,
            )
        if info.dtype not in SAFETENSORS_NAMES:
            raise WaError(
                f"tensor {key!r} of '{self._folder}' has dtype "
                f"{str(info.dtype).removeprefix('torch.')}, which wa cannot average or write; "
                "leave it out with --exclude",
                ExitCode.BAD_INPUT,
            )

    def _record(self, md: Any, skipped: list[str]) -> dict[str, str]:
        """``step``/``global_step``/``epoch`` saved as top-level non-tensor entries."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        record: dict[str, str] = {}
        for name in _STEP_NAMES:
            where = md.storage_data.get(MetadataIndex(name)) if name in skipped else None
            if where is None or where.length > 1 << 20:
                continue
            try:
                with _Slice(self._folder / where.relative_path, where.offset, where.length) as f:
                    value = torch.load(cast(IO[bytes], f), weights_only=True)
            except Exception:  # an entry wa cannot read safely is no record
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[name] = str(value)
        return record

    @property
    def files(self) -> list[Path]:
        names = sorted({c.file for chunks in self._chunks.values() for c in chunks})
        return [self.path, self.path / METADATA_FILE, *(self.path / n for n in names)]

    def _file(self, name: str) -> PositionalFile:
        if name not in self._files:
            self._files[name] = PositionalFile(self._folder / name)
        return self._files[name]

    def _locate(self, key: str, chunk: _Chunk) -> tuple[int, tuple[int, ...], bool]:
        """Where the chunk's data starts in its file, its strides, and whether it is dense."""
        if chunk.located is None:
            path = self._folder / chunk.file
            try:
                with _Slice(path, chunk.offset, chunk.length) as f:
                    t = torch.load(cast(IO[bytes], f), map_location="meta", weights_only=True)
            except Exception as e:
                raise WaError(
                    f"cannot read chunk {chunk.offsets} of {key!r} from '{path}': {e}",
                    ExitCode.BAD_INPUT,
                ) from e
            base = (
                getattr(t.untyped_storage(), "_checkpoint_offset", None)
                if isinstance(t, torch.Tensor)
                else None
            )
            if base is None or tuple(t.shape) != chunk.sizes:
                raise WaError(
                    f"chunk {chunk.offsets} of {key!r} in '{path}' does not hold a tensor of "
                    f"shape {chunk.sizes}",
                    ExitCode.BAD_INPUT,
                )
            if t.numel() > 1 and overlaps(t.shape, t.stride()):
                raise WaError(f"chunk of {key!r} in '{path}' overlaps itself", ExitCode.BAD_INPUT)
            start = chunk.offset + int(base) + int(t.storage_offset()) * t.element_size()
            chunk.located = (start, tuple(t.stride()), t.is_contiguous())
        return chunk.located

    def _chunk_tensor(self, key: str, chunk: _Chunk) -> torch.Tensor:
        """One chunk's values (a read of its storage span, then its view)."""
        start, strides, dense = self._locate(key, chunk)
        dtype = self._tensors[key].dtype
        item = torch.empty((), dtype=dtype).element_size()
        span = 1 + sum((s - 1) * st for s, st in zip(chunk.sizes, strides, strict=True) if s > 0)
        buf = torch.empty(span * item if chunk.numel else 0, dtype=torch.uint8)
        self._file(chunk.file).read(buf, start, key)
        values = buf.view(dtype) if buf.numel() else torch.empty(0, dtype=dtype)
        return values.as_strided(chunk.sizes, strides if not dense else _contiguous(chunk.sizes))

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        info = self._tensors[key]
        chunks = self._chunks[key]
        if all(_row_range(c, info.shape) for c in chunks):
            self._read_rows(key, chunks, out, byte_offset)
            return
        if self._cached is None or self._cached[0] != key:
            whole = torch.empty(info.shape, dtype=info.dtype)
            for c in chunks:
                box = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes, strict=True))
                whole[box] = self._chunk_tensor(key, c)
            self._cached = (key, whole.reshape(-1).view(torch.uint8))
        flat = self._cached[1]
        out.copy_(flat[byte_offset : byte_offset + out.numel()])

    def _read_rows(
        self, key: str, chunks: list[_Chunk], out: torch.Tensor, byte_offset: int
    ) -> None:
        """Chunks that are whole rows: each is one byte range of the flattened tensor."""
        info = self._tensors[key]
        row = info.nbytes // info.shape[0] if info.shape and info.shape[0] else info.nbytes
        want_lo, want_hi = byte_offset, byte_offset + out.numel()
        for c in chunks:
            lo = c.offsets[0] * row if info.shape else 0
            hi = lo + (c.sizes[0] * row if info.shape else info.nbytes)
            a, b = max(lo, want_lo), min(hi, want_hi)
            if a >= b:
                continue
            start, _, dense = self._locate(key, c)
            if dense:
                self._file(c.file).read(out[a - want_lo : b - want_lo], start + (a - lo), key)
            else:
                flat = self._chunk_tensor(key, c).contiguous().reshape(-1).view(torch.uint8)
                out[a - want_lo : b - want_lo].copy_(flat[a - lo : b - lo])

    def close(self) -> None:
        self._cached = None
        for f in self._files.values():
            f.close()


def _contiguous(sizes: tuple[int, ...]) -> tuple[int, ...]:
    strides, n = [], 1
    for s in reversed(sizes):
        strides.append(n)
        n *= max(s, 1)
    return tuple(reversed(strides))


def _row_range(chunk: _Chunk, shape: tuple[int, ...]) -> bool:
    """Whether the chunk is whole rows (split along dim 0 only), one flat byte range."""
    return all(
        o == 0 and s == full
        for o, s, full in zip(chunk.offsets[1:], chunk.sizes[1:], shape[1:], strict=True)
    )


def _check_cover(key: str, shape: tuple[int, ...], chunks: list[_Chunk], folder: Path) -> None:
    """The chunks lie inside the tensor, do not overlap, and cover it exactly."""
    total = 1
    for s in shape:
        total *= s
    for c in chunks:
        if (
            len(c.offsets) != len(shape)
            or len(c.sizes) != len(shape)
            or any(
                o < 0 or s < 0 or o + s > full
                for o, s, full in zip(c.offsets, c.sizes, shape, strict=True)
            )
        ):
            raise WaError(
                f"'{folder}': chunk {c.offsets}+{c.sizes} of {key!r} lies outside its shape "
                f"{shape}",
                ExitCode.BAD_INPUT,
            )
    if sum(c.numel for c in chunks) != total or (
        len(chunks) <= 4096
        and any(_intersect(a, b) for i, a in enumerate(chunks) for b in chunks[i + 1 :])
    ):
        raise WaError(
            f"'{folder}': the chunks of {key!r} do not cover its shape {shape} exactly once",
            ExitCode.BAD_INPUT,
        )


def _intersect(a: _Chunk, b: _Chunk) -> bool:
    if a.numel == 0 or b.numel == 0:
        return False
    return all(
        ao < bo + bs and bo < ao + as_
        for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )
