"""DeepSpeed ZeRO checkpoints (stage 1, 2, 3) as lazy checkpoints of their fp32 master weights.

The weights are what DeepSpeed's ``zero_to_fp32.py`` rebuilds, read without loading it all:

* ZeRO-1/2: every rank's optimizer file holds its flat fp32 partition of each parameter group
  (``single_partition_of_fp32_groups``). The ranks' partitions of a group, in rank order, are
  the group's flat vector; cut in the order and shapes of ``param_shapes`` (rank 0's model
  states), stepping over ``param_alignment_paddings``, it gives the parameters.
* ZeRO-3: every parameter is split evenly across the ranks (the last slice padded): rank R's
  ``fp32_flat_groups``, concatenated, hold slice R of each parameter in ``param_shapes`` order.
* Buffers come from rank 0's module (floating ones as float32), frozen parameters from
  ``frozen_param_fragments``, tied ones from ``shared_params``, exactly as ``zero_to_fp32.py``.

The pickles are loaded with ``map_location="meta"`` (:mod:`wa_cli.io.deepspeed_pickle`): every
tensor is an offset in its file, and a parameter is a list of byte ranges read with ``pread`` when
the key is reduced, so memory holds one parameter, not the model and its Adam moments.
``weights="module"`` reads the module copy of ``mp_rank_00_model_states.pt`` instead (ZeRO-1/2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.checkpoint import Checkpoint
from wa_cli.io.deepspeed_layout import OPTIM_FILE, TagFolder, tag_folder
from wa_cli.io.deepspeed_pickle import load_deepspeed_pickle
from wa_cli.io.deepspeed_plan import Segment, Source, ZeroLayout, plan_tensors
from wa_cli.io.guard import ReadPath, describe
from wa_cli.io.keys import KeyFilter
from wa_cli.io.run_folders import RunFolder
from wa_cli.io.safetensors_header import TensorInfo

WEIGHTS = ("master", "module")
"""Which copy of the weights is read: the fp32 masters (optimizer files) or the module."""


class DeepSpeedCheckpoint(Checkpoint):
    """One DeepSpeed save (a tag folder), read parameter by parameter from byte ranges."""

    key_order_known = True

    def __init__(
        self,
        folder: Path,
        tensors: dict[str, TensorInfo],
        sources: dict[str, Source],
        metadata: dict[str, str],
        files: list[Path],
    ):
        super().__init__(folder, tensors, metadata)
        self._sources = sources
        self._files = files
        self._open = {s.file.path: s.file for src in sources.values() for s in src.segments}

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def read_paths(self) -> list[ReadPath]:
        return [*(describe(f) for f in self._files), describe(self.path, folder=True)]

    def _rename(self, renamed: dict[str, str]) -> None:
        self._sources = {renamed.get(k, k): v for k, v in self._sources.items()}
        super()._rename(renamed)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        src, info = self._sources[key], self.info(key)
        if src.dtype == info.dtype:
            _read_segments(src.segments, out, byte_offset, key)
            return
        # A 16-bit buffer given as float32, as zero_to_fp32.py does: small, read whole.
        raw = torch.empty(src.numel * src.dtype.itemsize, dtype=torch.uint8)
        _read_segments(src.segments, raw, 0, key)
        wide = raw.view(src.dtype).to(info.dtype).view(torch.uint8)
        out.copy_(wide[byte_offset : byte_offset + out.numel()])

    def close(self) -> None:
        for f in self._open.values():
            f.close()


def _read_segments(segments: tuple[Segment, ...], out: torch.Tensor, skip: int, key: str) -> None:
    """Fill ``out`` with the bytes ``skip .. skip + len(out)`` of the segments laid end to end."""
    start, end, at = skip, skip + out.numel(), 0
    for seg in segments:
        lo, hi = max(at, start), min(at + seg.nbytes, end)
        if lo < hi:
            seg.file.read(out[lo - start : hi - start], seg.position + lo - at, key)
        at += seg.nbytes
        if at >= end:
            return
    if at < end:
        raise WaError(f"read past the end of {key!r}", ExitCode.BAD_INPUT)


def open_deepspeed(
    run: RunFolder, weights: str = "master", keys: KeyFilter | None = None
) -> Checkpoint:
    """Open a DeepSpeed tag folder (or the Trainer ``checkpoint-N/`` holding one) lazily.

    Args:
        run: the recognised folder; ``run.model`` is the tag folder.
        weights: ``"master"``: the fp32 master weights of the optimizer files (what
            ``zero_to_fp32.py`` writes); ``"module"``: the module weights of
            ``mp_rank_00_model_states.pt`` in the training dtype (ZeRO-1/2 only).
        keys: --include/--exclude, for the module copy's pickle reader.

    Raises:
        WaError: USAGE for an unknown ``weights`` or the module copy of ZeRO-3; BAD_INPUT for
            files that do not fit together (missing ranks, sizes that do not add up).
    """
    if weights not in WEIGHTS:
        raise WaError.naming(
            "{deepspeed_weights=}{weights!r}: expected {expected}",
            ExitCode.USAGE,
            weights=weights,
            expected=" or ".join(WEIGHTS),
        )
    tag = tag_folder(run.model)
    if tag is None:  # recognised a moment ago: changed since
        raise WaError(f"'{run.model}' is no longer a DeepSpeed checkpoint", ExitCode.BAD_INPUT)
    where = (
        f"{tag.folder.name}/"
        if run.folder == tag.folder
        else f"{run.folder.name}/{tag.folder.name}/"
    )
    beside = f"; left out {', '.join(run.left_out)}" if run.left_out else ""
    if weights == "module":
        ckpt = _open_module(tag, keys)
        ckpt.chosen_file_note = (
            f"the module weights ({_dtypes(ckpt)}) of {tag.model_files[0].name} of {where} "
            f"(the module copy, as asked; the fp32 master weights and the optimizer state in "
            f"the optimizer files left out){beside}"
        )
        return ckpt
    layout = _zero_layout(tag)
    tensors, sources = plan_tensors(layout)
    metadata = {}
    steps = layout.model_states[0].get("global_steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        metadata["global_step"] = str(steps)
    ckpt = DeepSpeedCheckpoint(tag.folder, tensors, sources, metadata, _files_used(tag, layout))
    ckpt.chosen_file_note = _note(layout, tag, where) + beside
    return ckpt


def _open_module(tag: TagFolder, keys: KeyFilter | None) -> Checkpoint:
    from wa_cli.io.pickle_checkpoint import PickleCheckpoint

    model = tag.model_files[0]
    if len(tag.model_files) > 1 or model.name.startswith("zero_pp_rank_"):
        raise WaError.naming(
            "'{folder}' is a ZeRO-3 checkpoint, whose model-states files hold only empty "
            "placeholders of the parameters: the weights live in the optimizer files "
            "({deepspeed_weights=}'module' reads ZeRO-1/2 only; use 'master', the default)",
            ExitCode.USAGE,
            folder=tag.folder,
        )
    if keys is None:
        return PickleCheckpoint(model, "module")
    return PickleCheckpoint(model, "module", keys=keys)


def _dtypes(ckpt: Checkpoint) -> str:
    names = sorted({str(ckpt.info(k).dtype).removeprefix("torch.") for k in ckpt.keys()})
    return "/".join(names)


def _zero_layout(tag: TagFolder) -> ZeroLayout:
    """Load every pickle of the tag folder (meta tensors) and check that they fit together."""
    for f in tag.optim_files:
        m = OPTIM_FILE.match(f.name)
        if m is not None and int(m.group(3)) != 0:
            raise WaError(
                f"'{tag.folder}' holds model-parallel ranks ({f.name}); wa reads DeepSpeed "
                "checkpoints of data parallelism only (mp_rank_00)",
                ExitCode.BAD_INPUT,
            )
    optims = [_optimizer_state(f) for f in tag.optim_files]
    stage = optims[0].get("zero_stage")
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in (1, 2, 3):
        raise WaError(
            f"'{tag.optim_files[0]}' records no ZeRO stage 1, 2 or 3 ({stage!r})",
            ExitCode.BAD_INPUT,
        )
    count = optims[0].get("partition_count")
    world = max(count) if isinstance(count, list) and count else count
    if not isinstance(world, int) or world != len(tag.optim_files):
        raise WaError(
            f"'{tag.folder}' holds {len(tag.optim_files)} optimizer file(s) but the run had "
            f"{world!r} data-parallel ranks; copy every rank's *_optim_states.pt",
            ExitCode.BAD_INPUT,
        )
    ranks = sorted(int(m.group(2)) for f in tag.optim_files if (m := OPTIM_FILE.match(f.name)))
    if ranks != list(range(world)):
        raise WaError(
            f"'{tag.folder}' holds the optimizer files of ranks {ranks}, expected 0 to {world - 1}",
            ExitCode.BAD_INPUT,
        )
    models = tag.model_files if stage == 3 else tag.model_files[:1]
    if stage == 3 and len(models) != world:
        raise WaError(
            f"'{tag.folder}' holds {len(models)} model-states file(s) for {world} ranks",
            ExitCode.BAD_INPUT,
        )
    states = [_model_state(f) for f in models]
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    flats = [_groups(o, key, f) for o, f in zip(optims, tag.optim_files, strict=True)]
    return ZeroLayout(tag.folder, stage, world, states, optims, flats, list(models))


def _optimizer_state(path: Path) -> dict[str, object]:
    obj = load_deepspeed_pickle(path)
    inner = obj.get("optimizer_state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(inner, Mapping):
        raise WaError(
            f"'{path}' holds no 'optimizer_state_dict': not a DeepSpeed ZeRO optimizer file",
            ExitCode.BAD_INPUT,
        )
    return {str(k): v for k, v in inner.items()} | {"__path__": path}


def _model_state(path: Path) -> dict[str, object]:
    obj = load_deepspeed_pickle(path)
    if not isinstance(obj, Mapping) or not all(
        isinstance(obj.get(k), t)
        for k, t in (("module", Mapping), ("param_shapes", list), ("buffer_names", list))
    ):
        raise WaError(
            f"'{path}' is not a DeepSpeed model-states file (no module, param_shapes and "
            "buffer_names)",
            ExitCode.BAD_INPUT,
        )
    return {str(k): v for k, v in obj.items()} | {"__path__": path}


def _groups(optim: Mapping[str, object], key: str, path: Path) -> list[tuple[Path, torch.Tensor]]:
    groups = optim.get(key)
    if not isinstance(groups, list) or not all(isinstance(t, torch.Tensor) for t in groups):
        raise WaError(f"'{path}' holds no {key} (a list of tensors)", ExitCode.BAD_INPUT)
    return [(path, t) for t in groups]


def _files_used(tag: TagFolder, layout: ZeroLayout) -> list[Path]:
    return [*layout.model_paths, *tag.optim_files]


def _note(layout: ZeroLayout, tag: TagFolder, where: str) -> str:
    """What was read from which file, and what was left out, in one line."""
    ranks = tag.optim_files
    optim = ranks[0].name if len(ranks) == 1 else f"{ranks[0].name} .. {ranks[-1].name}"
    moments = sorted({k for o in layout.optims for k in _state_names(o)})
    state = layout.model_states[0]
    module, buffers = state.get("module"), state.get("buffer_names")
    dtypes = sorted(
        {
            str(v.dtype).removeprefix("torch.")
            for k, v in (module.items() if isinstance(module, Mapping) else ())
            if isinstance(v, torch.Tensor) and isinstance(buffers, list) and k not in buffers
        }
    )
    copy = "placeholders" if layout.stage == 3 else f"{'/'.join(dtypes)} copy"
    frozen = ", frozen parameters" if state.get("frozen_param_shapes") else ""
    return (
        f"the fp32 master weights of {where} (DeepSpeed ZeRO-{layout.stage}, {layout.world} "
        f"rank(s): {optim}; shapes, buffers{frozen} from {layout.model_paths[0].name}); left "
        f"out the optimizer state ({listing(moments, 4) if moments else 'none'}), the loss "
        f"scaler and the module's {copy}"
    )


def _state_names(optim: Mapping[str, object]) -> set[str]:
    """The per-parameter entries of the wrapped optimizer's state (exp_avg, exp_avg_sq, step)."""
    names: set[str] = set()
    for wrapped in ("base_optimizer_state", "optimizer_state_dict"):
        inner = optim.get(wrapped)
        state = inner.get("state") if isinstance(inner, Mapping) else None
        if isinstance(state, Mapping):
            for per_param in state.values():
                if isinstance(per_param, Mapping):
                    names |= {str(k) for k in per_param}
    return names
