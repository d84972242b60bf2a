"""A ``torch.save`` file as a lazy checkpoint: the pickle at open, tensor bytes by ``pread``.

The pickle is loaded with ``map_location="meta"`` (:func:`wa_cli.io.pickles.load_pickle`):
torch then builds every tensor on the meta device without reading its bytes, and records each
storage's byte offset in the zip file. Reads are positional reads of those ranges into the
caller's buffers, so nothing stays mapped: resident memory holds the buffers wa fills, not every
page of every input that was touched (an mmapped 400 MB ``.pt`` counted 400 MB of RSS), and the
file is opened only while it is read. Legacy (pre-zip) and big-endian files have no usable
offsets and are loaded into memory instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.checkpoint import Checkpoint, PositionalFile
from wa_cli.io.deepspeed_pickle import model_states_note
from wa_cli.io.descriptors import check_unchanged, open_regular
from wa_cli.io.dtypes import SAFETENSORS_NAMES
from wa_cli.io.keys import NO_FILTER, KeyFilter, walk_key
from wa_cli.io.library_layouts import identify
from wa_cli.io.member import Member
from wa_cli.io.pickles import check_key, check_tensor, load_pickle
from wa_cli.io.safetensors_header import TensorInfo

NESTED_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "module")
_STEP_NAMES = ("step", "global_step", "epoch")


class PickleCheckpoint(Checkpoint):
    """A ``torch.save`` file, loaded with ``weights_only=True``; tensors read on demand."""

    key_order_known = True

    def __init__(
        self,
        path: Path,
        key: str | None = None,
        *,
        allow_globals: Sequence[str | type] = (),
        keys: KeyFilter = NO_FILTER,
        variant: str | None = None,
        member: Member | None = None,
    ):
        self._base = 0 if member is None else member.offset  # a tar member: its data's offset
        fd, _ = open_regular(path)  # the data is read through this descriptor (see reader)
        try:
            self._on_file = _offsets_usable(path, member)
            obj = load_pickle(
                path,
                allow_globals=allow_globals,
                map_location="meta" if self._on_file else "cpu",
                source=None if member is None else member.open,
            )
            check_unchanged(path, fd)
            deepspeed_note = model_states_note(obj, path)  # ZeRO-3 placeholders: refused
        except BaseException:
            os.close(fd)
            raise
        self._file = PositionalFile(path, fd)
        self._cached: tuple[str, torch.Tensor] | None = None
        self.path = path
        found = identify(obj, path, key, variant, _pick_state_dict)
        chosen, self.skipped = found.state, found.skipped
        state = _checked_tensors(chosen, path, keys, on_meta=self._on_file)
        self._values = state
        tensors = {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in state.items()}
        super().__init__(path, tensors, {**self._metadata(obj), **found.metadata})
        self.notes.extend(found.notes)
        self.chosen_file_note = deepspeed_note
        if deepspeed_note and "global_steps" in self.metadata:  # the engine's step counter
            self.metadata.setdefault("global_step", self.metadata["global_steps"])

    def _metadata(self, obj: object) -> dict[str, str]:
        """Step, epoch and top-level numeric scalars; Lightning's monitored scores by name."""
        if not isinstance(obj, Mapping):
            return {}
        metadata: dict[str, str] = {}
        for name, value in obj.items():
            number = self._number(value)
            if isinstance(name, str) and number is not None:
                metadata[name] = number
        callbacks = obj.get("callbacks")
        if isinstance(callbacks, Mapping):
            for state_key, state in callbacks.items():
                if not str(state_key).startswith("ModelCheckpoint"):
                    continue
                if not isinstance(state, Mapping):
                    continue
                monitor, score = state.get("monitor"), self._number(state.get("current_score"))
                if isinstance(monitor, str) and score is not None:
                    metadata.setdefault(monitor, score)
        return {k: v for k, v in metadata.items() if k not in _STEP_NAMES or "." not in v}

    def _number(self, value: object) -> str | None:
        """A number as metadata text: ints, floats, and one-element real tensors (read here)."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return str(value)
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            return None
        if value.numel() != 1:
            return None
        if value.is_complex() or value.dtype not in SAFETENSORS_NAMES:
            return None
        try:
            return str(self._materialize(value, "(scalar)").reshape(()).item())
        except WaError:
            return None

    def _rename(self, renamed: dict[str, str]) -> None:
        self._values = {renamed[k]: v for k, v in self._values.items()}
        self._cached = None
        super()._rename(renamed)

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        t = self._values[key]
        if not self._on_file:
            flat = t.reshape(-1).view(torch.uint8) if t.is_contiguous() else self._dense(key, t)
            out.copy_(flat[byte_offset : byte_offset + out.numel()])
            return
        if t.is_contiguous():
            start = self._base + _file_offset(t) + byte_offset
            self._file.read(out, start, key)
            return
        dense = self._dense(key, t)
        out.copy_(dense[byte_offset : byte_offset + out.numel()])

    def _dense(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """A strided (transposed, sliced) tensor's bytes in row-major order; one key cached."""
        if self._cached is None or self._cached[0] != key:
            dense = self._materialize(t, key).contiguous().reshape(-1).view(torch.uint8)
            self._cached = (key, dense)
        return self._cached[1]

    def _materialize(self, t: torch.Tensor, key: str) -> torch.Tensor:
        """``t`` with real bytes: its storage span read from the file, then the same view."""
        if not self._on_file:
            return t
        item = t.element_size()
        lo = t.storage_offset()
        hi = lo + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if s > 0) + 1
        buf = torch.empty((hi - lo) * item if t.numel() else 0, dtype=torch.uint8)
        self._file.read(buf, self._base + _file_offset(t), key)
        base = buf.view(t.dtype) if buf.numel() else torch.empty(0, dtype=t.dtype)
        return base.as_strided(tuple(t.shape), tuple(t.stride()), 0)

    def close(self) -> None:
        self._cached = None
        self._file.close()


def _file_offset(t: torch.Tensor) -> int:
    """Where ``t``'s first element lies in the file (meta load: the storage's record offset)."""
    offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
    if offset is None:  # checked at open: only meta tensors, which are refused
        raise AssertionError("tensor has no offset in the file")
    return int(offset) + int(t.storage_offset()) * t.element_size()


def _offsets_usable(path: Path, member: Member | None = None) -> bool:
    """A zip-format, little-endian (or native) file: its records can be read in place."""
    try:
        with (
            contextlib.nullcontext(path) if member is None else member.open() as f,
            zipfile.ZipFile(f) as z,
        ):
            order = [n for n in z.namelist() if n.endswith("/byteorder") or n == "byteorder"]
            if order and z.read(order[0]).decode(errors="replace") != sys.byteorder:
                return False
            return all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _pick_state_dict(
    obj: object, path: Path, key: str | None
) -> tuple[Mapping[object, object], list[str]]:
    """The chosen state dict and the names of its non-tensor entries (left out)."""
    if not isinstance(obj, Mapping):
        raise WaError(
            f"'{path}' holds a {type(obj).__name__}, not a dict of tensors", ExitCode.BAD_INPUT
        )
    if key is not None:
        chosen = walk_key(obj, key, str(path))
        if not _is_state_dict(chosen):
            raise WaError(f"entry {key!r} of '{path}' is not a dict of tensors", ExitCode.BAD_INPUT)
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        chosen = obj
    else:
        candidates = [k for k in NESTED_STATE_KEYS if _is_state_dict(obj.get(k))]
        if len(candidates) == 1:
            chosen = obj[candidates[0]]
        elif candidates:
            raise WaError.naming(
                "'{path}' holds several state dicts ({candidates}); pick one with {key}",
                ExitCode.USAGE,
                path=str(path),
                candidates=listing(candidates),
            )
        elif _is_state_dict(obj):
            chosen = obj
        else:
            raise WaError.naming(
                "'{path}' holds no dict of tensors (top-level keys: {keys}); name the nested "
                "state dict with {key} (a.b.c walks nested dicts)",
                ExitCode.BAD_INPUT,
                path=str(path),
                keys=listing(sorted(map(str, obj))),
            )
    assert isinstance(chosen, Mapping)
    skipped = [str(k) for k, v in chosen.items() if not isinstance(v, torch.Tensor)]
    return chosen, skipped


def _checked_tensors(
    chosen: Mapping[object, object], path: Path, keys: KeyFilter, *, on_meta: bool
) -> dict[str, torch.Tensor]:
    """The kept tensors, each checked before any byte of it is read (see :mod:`pickles`)."""
    state: dict[str, torch.Tensor] = {}
    for raw, value in chosen.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = check_key(raw, path) if not isinstance(raw, str) else raw
        if not keys.keep(name):
            continue
        check_key(name, path)
        check_tensor(name, value, path, on_meta=on_meta)
        if value.dtype not in SAFETENSORS_NAMES:
            raise WaError.naming(
                "tensor {name!r} of '{path}' has dtype {dtype}, which wa cannot average or write "
                "(safetensors holds real floats, integers and booleans); leave it out with "
                "{exclude} '^{pattern}$'",
                ExitCode.BAD_INPUT,
                name=name,
                path=str(path),
                dtype=str(value.dtype).removeprefix("torch."),
                pattern=_escape(name),
            )
        state[name] = value
    if not state:
        raise WaError.naming(
            "'{path}' keeps no tensor after {include}/{exclude}", ExitCode.BAD_INPUT, path=str(path)
        )
    return state


def _escape(name: str) -> str:
    return re.escape(name).replace("'", "'\\''")
