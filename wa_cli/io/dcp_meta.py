"""A DCP folder's ``.metadata``, loaded without running code and checked before it is trusted.

``torch.distributed.checkpoint``'s ``FileSystemWriter`` pickles a ``Metadata`` dataclass:
``state_dict_metadata`` maps each flattened key to a ``TensorStorageMetadata`` (dtype, global
size, and the chunks ranks saved) or a ``BytesStorageMetadata`` (any other object, pickled);
``storage_data`` maps ``MetadataIndex(key, chunk offsets)`` to a ``_StorageInfo`` (file, byte
offset, length). torch's own reader uses plain ``pickle.load``; here an unpickler admits only
DCP's metadata classes, so the file cannot run code.

A pickle sets any attribute to anything, so nothing in it is taken on trust: every field is
type-checked, every storage file must be a regular file inside the folder (a FIFO would block the
first read for ever, so files are opened with ``O_NONBLOCK`` and checked with ``fstat`` on the
descriptor), every byte range must lie inside its file, and every chunk must fit in its range.
Sizes are thus bounded by the files' real sizes, and a hand-made ``.metadata`` gives one line,
never a ``KeyError``, ``AttributeError`` or ``MemoryError``.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io import descriptors
from wa_cli.io.dtypes import SAFETENSORS_NAMES

METADATA_FILE = ".metadata"
_MAX_METADATA_BYTES = 1 << 30
_MAX_DIMS = 64


@dataclass
class Stored:
    """Where one item lies: a byte range of a file of the folder (a ``torch.save`` blob)."""

    file: str
    offset: int
    length: int


@dataclass
class Chunk:
    """One saved piece of a tensor: its box in the tensor, and where its blob lies."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    stored: Stored
    located: tuple[int, tuple[int, ...], bool] | None = None  # data start, strides, dense

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n


@dataclass
class DcpTensor:
    """A tensor entry: dtype, global shape, and the chunks that cover it exactly once."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: list[Chunk]


@dataclass
class DcpLayout:
    """The checked contents of ``.metadata``: tensors, and the other (pickled) entries."""

    tensors: dict[str, DcpTensor]
    objects: dict[str, Stored | None]  # None: an entry with no (single) storage item


def _allowed_classes() -> dict[tuple[str, str], Any]:
    """Everything a DCP ``.metadata`` pickle may name: data classes, no functions but one."""
    import collections
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
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, where: Path):
        super().__init__(file)
        self._allowed = _allowed_classes()
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            shown = f"{module}.{name}"[:200].encode("unicode_escape").decode("ascii")
            raise WaError(
                f"'{self._where}' names '{shown}', which is not one of DCP's metadata "
                "classes: wa does not load it",
                ExitCode.BAD_INPUT,
            )
        return found


def open_regular(path: Path) -> int:
    """A read descriptor of ``path``, refused unless it is a regular file (never blocking on a
    FIFO): :func:`wa_cli.io.descriptors.open_regular`."""
    fd, _ = descriptors.open_regular(path, "DCP file")
    return fd


def _load(folder: Path) -> Any:
    path = folder / METADATA_FILE
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > _MAX_METADATA_BYTES:
            raise WaError(f"'{path}' is larger than 1 GB", ExitCode.BAD_INPUT)
        data = f.read(_MAX_METADATA_BYTES + 1)
    # From bytes, not the file: a pickle that fails mid-read left the C unpickler's buffer
    # exported, and CPython then printed a SystemError at a later, unrelated read.
    return _MetadataUnpickler(io.BytesIO(data), path).load()


def read_layout(folder: Path) -> DcpLayout:
    """The folder's checked metadata.

    Raises:
        WaError: (BAD_INPUT) the file is not DCP metadata, names a class outside DCP's, or
            describes storage that is not there: one line, whatever the file holds.
    """
    path = folder / METADATA_FILE
    if not torch.distributed.is_available():
        raise WaError(
            f"'{folder}' is a DCP checkpoint, and this torch build has no torch.distributed",
            ExitCode.BAD_INPUT,
        )
    try:
        md = _load(folder)
        return _Checker(folder).layout(md)
    except WaError:
        raise
    except RecursionError:
        raise WaError(
            f"'{path}' is not DCP metadata (nested too deeply)", ExitCode.BAD_INPUT
        ) from None
    except MemoryError:
        raise WaError(
            f"'{path}' is not DCP metadata (it expands past memory)", ExitCode.BAD_INPUT
        ) from None
    except Exception as e:  # a hand-made pickle can raise anything from inside a class
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise WaError(f"cannot read DCP metadata '{path}': {reason}", ExitCode.BAD_INPUT) from e


def _bad(path: Path, what: str) -> WaError:
    return WaError(
        f"'{path}' is not DCP metadata written by FileSystemWriter: {what}", ExitCode.BAD_INPUT
    )


class _Checker:
    """Turns a loaded ``Metadata`` into a :class:`DcpLayout`, checking every field's type."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / METADATA_FILE
        self.sizes: dict[str, int] = {}

    def layout(self, md: Any) -> DcpLayout:
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            Metadata,
            TensorStorageMetadata,
        )

        if not isinstance(md, Metadata):
            raise _bad(self.path, f"it holds a {type(md).__name__}")
        entries = vars(md).get("state_dict_metadata")
        storage = vars(md).get("storage_data")
        if not isinstance(entries, dict) or not isinstance(storage, dict):
            raise _bad(self.path, "state_dict_metadata or storage_data is missing")
        by_index: dict[tuple[str, tuple[int, ...] | None], Any] = {}
        for index, info in storage.items():
            by_index[self._index(index)] = info
        tensors: dict[str, DcpTensor] = {}
        objects: dict[str, Stored | None] = {}
        for key, item in entries.items():
            if not isinstance(key, str):
                raise _bad(self.path, f"a key is a {type(key).__name__}")
            if isinstance(item, TensorStorageMetadata):
                tensors[key] = self._tensor(key, item, by_index)
            elif isinstance(item, BytesStorageMetadata):
                info = by_index.get((key, None))
                objects[key] = None if info is None else self._stored(key, info)
            else:
                raise _bad(self.path, f"entry {key!r} is a {type(item).__name__}")
        return DcpLayout(tensors, objects)

    def _index(self, index: Any) -> tuple[str, tuple[int, ...] | None]:
        fqn = vars(index).get("fqn") if hasattr(index, "__dict__") else None
        if type(index).__name__ != "MetadataIndex" or not isinstance(fqn, str):
            raise _bad(self.path, "a storage_data key is not a MetadataIndex")
        offset = vars(index).get("offset")
        return fqn, None if offset is None else self._ints(offset, f"offsets of {fqn!r}")

    def _ints(self, value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, tuple | list) or len(value) > _MAX_DIMS:
            raise _bad(self.path, f"{what} are not a short list of integers")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise _bad(self.path, f"{what} are not non-negative integers")
        return tuple(int(v) for v in value)

    def _tensor(self, key: str, item: Any, by_index: dict[Any, Any]) -> DcpTensor:
        fields = vars(item)
        props = fields.get("properties")
        dtype = vars(props).get("dtype") if hasattr(props, "__dict__") else None
        if not isinstance(dtype, torch.dtype):
            raise _bad(self.path, f"tensor {key!r} has no dtype")
        layout = vars(props).get("layout", torch.strided)
        if layout != torch.strided:
            raise WaError.naming(
                "tensor {key!r} of '{folder}' has layout {layout}; wa reads dense tensors "
                "only (leave it out with {exclude})",
                ExitCode.BAD_INPUT,
                key=key,
                folder=str(self.folder),
                layout=layout,
            )
        shape = self._ints(fields.get("size"), f"the size of {key!r}")
        raw_chunks = fields.get("chunks")
        if not isinstance(raw_chunks, list):
            raise _bad(self.path, f"tensor {key!r} has no list of chunks")
        item_size = torch.empty((), dtype=dtype).element_size()
        chunks = []
        for c in raw_chunks:
            cf = vars(c) if hasattr(c, "__dict__") else {}
            offsets = self._ints(cf.get("offsets"), f"chunk offsets of {key!r}")
            sizes = self._ints(cf.get("sizes"), f"chunk sizes of {key!r}")
            info = by_index.get((key, offsets))
            if info is None:
                raise WaError(
                    f"'{self.folder}': chunk {offsets} of {key!r} has no storage entry",
                    ExitCode.BAD_INPUT,
                )
            chunk = Chunk(offsets, sizes, self._stored(key, info))
            if chunk.numel * item_size > chunk.stored.length:
                raise WaError(
                    f"'{self.folder}': chunk {offsets} of {key!r} ({chunk.numel} values) does "
                    f"not fit in its {chunk.stored.length} stored bytes",
                    ExitCode.BAD_INPUT,
                )
            chunks.append(chunk)
        check_cover(key, shape, chunks, self.folder)
        return DcpTensor(dtype, shape, chunks)

    def _stored(self, key: str, info: Any) -> Stored:
        fields = vars(info) if hasattr(info, "__dict__") else {}
        name, offset, length = (fields.get(f) for f in ("relative_path", "offset", "length"))
        if isinstance(name, os.PathLike):
            name = os.fspath(name)
        if not isinstance(name, str) or not _count(offset) or not _count(length):
            raise _bad(self.path, f"the storage entry of {key!r} has no file, offset and length")
        offset, length = int(cast(int, offset)), int(cast(int, length))
        if fields.get("transform_descriptors"):
            raise WaError(
                f"'{self.folder}': {key!r} is stored with "
                f"{list(fields['transform_descriptors'])[:3]} (compressed or transformed), which "
                "wa does not read",
                ExitCode.BAD_INPUT,
            )
        if not name or name != Path(name).name or name in (".", ".."):
            raise WaError(
                f"'{self.path}' stores {key!r} in {name!r}, which is not a file of its folder",
                ExitCode.BAD_INPUT,
            )
        size = self._file_size(name)
        if offset + length > size:
            raise WaError(
                f"'{self.folder}': {key!r} lies at bytes {offset}..{offset + length} of "
                f"'{name}', which has {size} (truncated?)",
                ExitCode.BAD_INPUT,
            )
        return Stored(name, offset, length)

    def _file_size(self, name: str) -> int:
        if name not in self.sizes:
            fd = open_regular(self.folder / name)
            try:
                self.sizes[name] = os.fstat(fd).st_size
            finally:
                os.close(fd)
        return self.sizes[name]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_cover(key: str, shape: tuple[int, ...], chunks: list[Chunk], folder: Path) -> None:
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


def _intersect(a: Chunk, b: Chunk) -> bool:
    if a.numel == 0 or b.numel == 0:
        return False
    return all(
        ao < bo + bs and bo < ao + as_
        for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )
