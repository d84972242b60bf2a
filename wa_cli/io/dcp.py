"""``torch.distributed.checkpoint`` (DCP) folders, read lazily: FSDP, torchtitan, OLMo-core,
Megatron-core ``torch_dist`` checkpoints.

Layout (``FileSystemWriter``, torch's ``filesystem.py``): a ``.metadata`` pickle (read and
checked by :mod:`wa_cli.io.dcp_meta`) and ``__<rank>_<n>.distcp`` files holding each chunk as a
``torch.save`` blob. Which entries are the model's weights is decided by
:mod:`wa_cli.io.app_state` (the ``model`` sub-tree of an app state, torchtitan's top-level keys).

A chunk's blob is opened with ``weights_only=True`` on the meta device to find where its bytes
lie; the bytes are then read with ``pread``, range by range. A tensor sharded along its first
dimension (FSDP, ``Shard(0)``) is read straight from its chunks; any other split is assembled in
memory from its chunks' offsets, one tensor at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, cast

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.app_state import Selection, select_model
from wa_cli.io.checkpoint import Checkpoint, PositionalFile
from wa_cli.io.dcp_meta import METADATA_FILE, Chunk, DcpLayout, Stored, read_layout
from wa_cli.io.dtypes import SAFETENSORS_NAMES
from wa_cli.io.keys import NO_FILTER, KeyFilter
from wa_cli.io.member import Member
from wa_cli.io.pickles import check_key, overlaps
from wa_cli.io.safetensors_header import TensorInfo

__all__ = ["METADATA_FILE", "DcpCheckpoint"]

# Where a step may be recorded: top-level entries, torchtitan's train_state (metadata name first).
_STEP_ENTRIES = (
    ("step", "step"),
    ("global_step", "global_step"),
    ("train_state.step", "step"),
    ("epoch", "epoch"),
)


class DcpCheckpoint(Checkpoint):
    """A DCP folder: per-key reads of the ``.distcp`` byte ranges its metadata names.

    Only the model's tensors are keys (:func:`wa_cli.io.app_state.select_model`), under the
    names the model's ``state_dict`` uses; ``selection`` says what was taken and left out.
    """

    key_order_known = False

    def __init__(self, folder: Path, keys: KeyFilter = NO_FILTER, key: str | None = None):
        layout = read_layout(folder)
        self._folder = folder
        self._files: dict[str, PositionalFile] = {}
        self._cached: tuple[str, torch.Tensor] | None = None
        for raw in [*layout.tensors, *layout.objects]:
            check_key(raw, folder)
        chosen = select_model(layout.tensors, layout.objects, key, str(folder))
        self._chunks: dict[str, list[Chunk]] = {}
        tensors: dict[str, TensorInfo] = {}
        for stored_key in chosen.keep:
            # --include/--exclude see the model's names, as inside a pickle's --key dict
            name = stored_key[len(chosen.prefix) :]
            if not keys.keep(name):
                continue
            entry = layout.tensors[stored_key]
            info = TensorInfo(entry.dtype, entry.shape)
            self._check(name, info)
            self._chunks[name] = entry.chunks
            tensors[name] = info
        if not tensors:
            raise WaError(f"DCP folder '{folder}' keeps no tensor", ExitCode.BAD_INPUT)
        super().__init__(folder, tensors, self._record(layout))
        self.selection: Selection = chosen
        if chosen.how == "every tensor":  # a model's own state dict: its other entries
            self.skipped = sorted(layout.objects)
            if len(chosen.left_out) > len({n.split(".")[0] for n in layout.objects}):
                self.notes.append(chosen.note(folder.name))
        else:
            self.skipped = []
            self.notes.append(chosen.note(folder.name))

    def _check(self, key: str, info: TensorInfo) -> None:
        if info.dtype not in SAFETENSORS_NAMES:
            raise WaError.naming(
                "tensor {key!r} of '{folder}' has dtype {dtype}, which wa cannot average or "
                "write; leave it out with {exclude}",
                ExitCode.BAD_INPUT,
                key=key,
                folder=str(self._folder),
                dtype=str(info.dtype).removeprefix("torch."),
            )

    def _record(self, layout: DcpLayout) -> dict[str, str]:
        """A step saved beside the weights: a top-level ``step``/``global_step``/``epoch``, or
        torchtitan's ``train_state.step`` (an int, or a 0-d integer tensor)."""
        record: dict[str, str] = {}
        for entry, name in _STEP_ENTRIES:
            if name in record:
                continue
            if entry in layout.objects:
                where = layout.objects[entry]
            elif entry in layout.tensors and len(layout.tensors[entry].chunks) == 1:
                where = layout.tensors[entry].chunks[0].stored
            else:
                continue
            value = self._small_value(where)
            if (
                isinstance(value, torch.Tensor)
                and value.numel() == 1
                and not value.is_floating_point()
            ):
                value = int(value.item())
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[name] = str(value)
        return record

    def _small_value(self, where: Stored | None) -> object:
        """A small pickled entry, loaded with ``weights_only``; None when it cannot be."""
        if where is None or where.length > 1 << 20:
            return None
        try:
            with Member(self._folder / where.file, where.offset, where.length).open() as f:
                return torch.load(cast(IO[bytes], f), weights_only=True)
        except Exception:  # an entry wa cannot read safely is no record
            return None

    def _rename(self, renamed: dict[str, str]) -> None:
        self._chunks = {renamed[k]: v for k, v in self._chunks.items()}
        self._cached = None
        super()._rename(renamed)

    def keep_keys(self, keep: set[str]) -> None:
        self._chunks = {k: v for k, v in self._chunks.items() if k in keep}
        super().keep_keys(keep)

    @property
    def files(self) -> list[Path]:
        names = sorted({c.stored.file for chunks in self._chunks.values() for c in chunks})
        return [self.path, self.path / METADATA_FILE, *(self.path / n for n in names)]

    def _file(self, name: str) -> PositionalFile:
        if name not in self._files:
            self._files[name] = PositionalFile(self._folder / name)
        return self._files[name]

    def _locate(self, key: str, chunk: Chunk) -> tuple[int, tuple[int, ...], bool]:
        """Where the chunk's data starts in its file, its strides, and whether it is dense."""
        if chunk.located is None:
            path = self._folder / chunk.stored.file
            try:
                with Member(path, chunk.stored.offset, chunk.stored.length).open() as f:
                    t = torch.load(cast(IO[bytes], f), map_location="meta", weights_only=True)
            except Exception as e:
                raise WaError(
                    f"cannot read chunk {chunk.offsets} of {key!r} from '{path}': "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                    ExitCode.BAD_INPUT,
                ) from e
            base = (
                getattr(t.untyped_storage(), "_checkpoint_offset", None)
                if isinstance(t, torch.Tensor)
                else None
            )
            dtype = self._tensors[key].dtype
            if base is None or tuple(t.shape) != chunk.sizes or t.dtype != dtype:
                raise WaError(
                    f"chunk {chunk.offsets} of {key!r} in '{path}' does not hold a tensor of "
                    f"shape {chunk.sizes} and dtype {dtype}",
                    ExitCode.BAD_INPUT,
                )
            if t.numel() > 1 and overlaps(t.shape, t.stride()):
                raise WaError(f"chunk of {key!r} in '{path}' overlaps itself", ExitCode.BAD_INPUT)
            rel = int(base) + int(t.storage_offset()) * t.element_size()
            span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if s)
            if rel < 0 or (chunk.numel and rel + span * t.element_size() > chunk.stored.length):
                raise WaError(
                    f"chunk {chunk.offsets} of {key!r} in '{path}' points outside its blob",
                    ExitCode.BAD_INPUT,
                )
            start = chunk.stored.offset + rel
            chunk.located = (start, tuple(t.stride()), t.is_contiguous())
        return chunk.located

    def _chunk_tensor(self, key: str, chunk: Chunk) -> torch.Tensor:
        """One chunk's values (a read of its storage span, then its view)."""
        start, strides, dense = self._locate(key, chunk)
        dtype = self._tensors[key].dtype
        item = torch.empty((), dtype=dtype).element_size()
        span = 1 + sum((s - 1) * st for s, st in zip(chunk.sizes, strides, strict=True) if s > 0)
        buf = torch.empty(span * item if chunk.numel else 0, dtype=torch.uint8)
        self._file(chunk.stored.file).read(buf, start, key)
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
        self, key: str, chunks: list[Chunk], out: torch.Tensor, byte_offset: int
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
                self._file(c.stored.file).read(
                    out[a - want_lo : b - want_lo], start + (a - lo), key
                )
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


def _row_range(chunk: Chunk, shape: tuple[int, ...]) -> bool:
    """Whether the chunk is whole rows (split along dim 0 only), one flat byte range."""
    return all(
        o == 0 and s == full
        for o, s, full in zip(chunk.offsets[1:], chunk.sizes[1:], shape[1:], strict=True)
    )
