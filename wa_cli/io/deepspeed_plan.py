"""Where each parameter of a DeepSpeed ZeRO checkpoint lies: byte ranges of the flat partitions.

The arithmetic of DeepSpeed's ``zero_to_fp32.py`` (``_zero2_merge_trainable_params``,
``_zero3_merge_trainable_params``, the frozen-parameter and buffer merges), done on byte offsets
instead of loaded tensors, with its consistency checks made one-line errors: sizes that do not
add up mean files of different saves or a layout wa does not know, never a model cut wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.checkpoint import PositionalFile
from wa_cli.io.safetensors_header import TensorInfo


@dataclass(frozen=True)
class Segment:
    """``nbytes`` bytes at ``position`` of ``file``: one piece of a parameter."""

    file: PositionalFile
    position: int
    nbytes: int


@dataclass(frozen=True)
class Source:
    """Where a tensor's bytes lie, in order, and their dtype on disk."""

    segments: tuple[Segment, ...]
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class ZeroLayout:
    """The loaded pickles (meta tensors) of one DeepSpeed save.

    Attributes:
        folder: the tag folder.
        stage: the ZeRO stage (1, 2 or 3).
        world: the data-parallel ranks.
        model_states: rank 0's model states (ZeRO-3: every rank's, for frozen parameters).
        model_paths: their files.
        optims: every rank's ``optimizer_state_dict``.
        flats: per rank, its flat fp32 partition of each parameter group, with its file.
    """

    folder: Path
    stage: int
    world: int
    model_states: list[dict[str, object]]
    optims: list[dict[str, object]]
    flats: list[list[tuple[Path, torch.Tensor]]]
    model_paths: list[Path]


Planned = tuple[dict[str, TensorInfo], dict[str, Source]]


class _Plan:
    """Collects tensors in ``zero_to_fp32.py``'s order: buffers, frozen, trainable, shared."""

    def __init__(self, layout: ZeroLayout):
        self.layout = layout
        self.files: dict[Path, PositionalFile] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.sources: dict[str, Source] = {}

    def put(self, name: str, src: Source, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.tensors[name] = TensorInfo(dtype, shape)
        self.sources[name] = src

    def locate(self, path: Path, t: object, what: str) -> Segment:
        """The bytes of the whole (flat, contiguous) meta tensor ``t`` in ``path``."""
        offset = None
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.is_contiguous():
            offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if not isinstance(t, torch.Tensor) or offset is None:
            raise WaError(
                f"{what} of '{path}' is not a dense tensor stored in the file; wa cannot read it "
                "in place (convert the checkpoint with zero_to_fp32.py)",
                ExitCode.BAD_INPUT,
            )
        item = t.element_size()
        if (t.storage_offset() + t.numel()) * item > t.untyped_storage().nbytes():
            raise WaError(f"{what} of '{path}' reaches past its storage", ExitCode.BAD_INPUT)
        if path not in self.files:
            self.files[path] = PositionalFile(path)
        position = int(offset) + int(t.storage_offset()) * item
        return Segment(self.files[path], position, t.numel() * item)

    def fail(self, what: str) -> WaError:
        return WaError(
            f"DeepSpeed checkpoint '{self.layout.folder}': {what}; its files do not fit together "
            "(copied from different saves?), so wa reads nothing from it",
            ExitCode.BAD_INPUT,
        )


def _cut(pieces: list[Segment], start: int, nbytes: int) -> list[Segment]:
    """Bytes ``start .. start + nbytes`` of the pieces laid end to end."""
    out: list[Segment] = []
    at, end = 0, start + nbytes
    for p in pieces:
        lo, hi = max(at, start), min(at + p.nbytes, end)
        if lo < hi:
            out.append(Segment(p.file, p.position + lo - at, hi - lo))
        at += p.nbytes
    if sum(s.nbytes for s in out) != nbytes:
        raise ValueError("range past the end")
    return out


def _shape(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, torch.Size | tuple | list):
        return None
    dims = tuple(value)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        return None
    return dims


def _shapes(plan: _Plan, entry: object, what: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(entry, Mapping):
        raise plan.fail(f"{what} is not a dict of shapes")
    shapes = {}
    for name, value in entry.items():
        shape = _shape(value)
        if not isinstance(name, str) or shape is None:
            raise plan.fail(f"{what} holds {name!r}: {value!r}, not a name and a shape")
        shapes[name] = shape
    return shapes


def plan_tensors(layout: ZeroLayout) -> Planned:
    """Every tensor ``zero_to_fp32.py`` would write, and the byte ranges holding it.

    Raises:
        WaError: (BAD_INPUT) shapes, partitions and paddings that do not add up.
    """
    plan = _Plan(layout)
    _buffers(plan)
    _frozen(plan)
    groups = layout.model_states[0]["param_shapes"]
    assert isinstance(groups, list)  # checked at load
    shapes = [_shapes(plan, g, f"param_shapes[{i}]") for i, g in enumerate(groups)]
    if layout.stage == 3:
        _zero3(plan, shapes)
    else:
        _zero2(plan, shapes)
    shared = layout.model_states[0].get("shared_params") or {}
    if isinstance(shared, Mapping):
        for name, target in shared.items():
            if isinstance(name, str) and target in plan.sources:
                plan.put(name, plan.sources[target], *_info(plan.tensors[target]))
    return plan.tensors, plan.sources


def _info(info: TensorInfo) -> tuple[tuple[int, ...], torch.dtype]:
    return tuple(info.shape), info.dtype


def _buffers(plan: _Plan) -> None:
    """Rank 0's buffers, floating ones as float32 (``zero_to_fp32.py``: ``v.float()``)."""
    state = plan.layout.model_states[0]
    names, module = state["buffer_names"], state["module"]
    assert isinstance(names, list) and isinstance(module, Mapping)
    path = plan.layout.model_paths[0]
    for name, t in module.items():
        if name not in names:
            continue
        seg = plan.locate(path, t, f"buffer {name!r}")
        assert isinstance(t, torch.Tensor)
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        plan.put(str(name), Source((seg,), t.dtype, t.numel()), tuple(t.shape), dtype)


def _frozen(plan: _Plan) -> None:
    """Parameters not trained: whole in rank 0's model states, or (ZeRO-3) sliced per rank."""
    layout = plan.layout
    shapes = layout.model_states[0].get("frozen_param_shapes")
    if not shapes:
        return
    for name, shape in _shapes(plan, shapes, "frozen_param_shapes").items():
        numel = math.prod(shape)
        pieces: list[Segment] = []
        dtype: torch.dtype | None = None
        for state, path in zip(layout.model_states, layout.model_paths, strict=True):
            fragments = state.get("frozen_param_fragments")
            t = fragments.get(name) if isinstance(fragments, Mapping) else None
            pieces.append(plan.locate(path, t, f"frozen parameter {name!r}"))
            assert isinstance(t, torch.Tensor)
            if dtype not in (None, t.dtype):
                raise plan.fail(f"frozen parameter {name!r} has two dtypes")
            dtype = t.dtype
        assert dtype is not None
        try:
            segments = _cut(pieces, 0, numel * dtype.itemsize)
        except ValueError:
            raise plan.fail(
                f"frozen parameter {name!r} holds fewer than {numel} elements"
            ) from None
        if layout.stage != 3 and pieces[0].nbytes != numel * dtype.itemsize:
            raise plan.fail(f"frozen parameter {name!r} does not hold {numel} elements")
        plan.put(name, Source(tuple(segments), dtype, numel), shape, dtype)


def _flat_dtype(plan: _Plan, rank_groups: list[tuple[Path, torch.Tensor]]) -> torch.dtype:
    dtypes = {t.dtype for _, t in rank_groups}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise plan.fail(f"the flat partitions have dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _zero2(plan: _Plan, shapes: list[dict[str, tuple[int, ...]]]) -> None:
    """ZeRO-1/2: group g's flat vector is the ranks' partitions of g, end to end."""
    layout = plan.layout
    if any(len(f) != len(shapes) for f in layout.flats):
        raise plan.fail(f"param_shapes lists {len(shapes)} groups, the partitions another count")
    paddings = layout.optims[0].get("param_alignment_paddings")
    for g, group in enumerate(shapes):
        column = [layout.flats[r][g] for r in range(layout.world)]
        dtype = _flat_dtype(plan, column)
        item = dtype.itemsize
        pieces = [plan.locate(p, t, f"partition of group {g}") for p, t in column]
        avail = sum(p.nbytes for p in pieces) // item
        pads = paddings[g] if isinstance(paddings, list) and g < len(paddings) else None
        if pads is not None and (not isinstance(pads, list) or len(pads) != len(group)):
            raise plan.fail(f"group {g} has {len(group)} parameters but other paddings")
        offset = 0
        for i, (name, shape) in enumerate(group.items()):
            numel = math.prod(shape)
            try:
                segments = _cut(pieces, offset * item, numel * item)
            except ValueError:
                raise plan.fail(
                    f"parameter {name!r} ends past group {g}'s {avail} elements"
                ) from None
            plan.put(name, Source(tuple(segments), dtype, numel), shape, dtype)
            offset += numel + (int(pads[i]) if pads is not None else 0)
        align = 2 * layout.world  # zero_to_fp32.py's check: equal up to the 2*world alignment
        if align * math.ceil(offset / align) != align * math.ceil(avail / align):
            raise plan.fail(f"group {g}'s parameters take {offset} elements of {avail}")


def _zero3(plan: _Plan, shapes: list[dict[str, tuple[int, ...]]]) -> None:
    """ZeRO-3: each parameter's slice R lies in rank R's groups, end to end, in order."""
    layout = plan.layout
    merged = {name: shape for group in shapes for name, shape in group.items()}
    ranks: list[list[Segment]] = []
    dtype: torch.dtype | None = None
    for r, groups in enumerate(layout.flats):
        if not groups:
            raise plan.fail(f"rank {r} holds no fp32_flat_groups")
        dtype = _flat_dtype(plan, groups)
        ranks.append([plan.locate(p, t, f"fp32_flat_groups of rank {r}") for p, t in groups])
    assert dtype is not None
    totals = {sum(s.nbytes for s in pieces) for pieces in ranks}
    if len(totals) != 1 or {_flat_dtype(plan, g) for g in layout.flats} != {dtype}:
        raise plan.fail("the ranks' fp32_flat_groups differ in size or dtype")
    item, avail = dtype.itemsize, totals.pop() // dtype.itemsize
    offset = 0
    for name, shape in merged.items():
        numel = math.prod(shape)
        part = math.ceil(numel / layout.world)
        try:
            padded = [s for pieces in ranks for s in _cut(pieces, offset * item, part * item)]
        except ValueError:
            raise plan.fail(
                f"parameter {name!r} ends past the {avail} elements of a rank"
            ) from None
        segments = _cut(padded, 0, numel * item)  # the last slice's padding dropped
        plan.put(name, Source(tuple(segments), dtype, numel), shape, dtype)
        offset += part
    if offset != avail:
        raise plan.fail(f"the parameters take {offset} elements of each rank's {avail}")
