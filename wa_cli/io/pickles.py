"""Every ``torch.save`` file wa reads is loaded here, always with ``weights_only=True``.

A pickle can run any code while it loads (a ``__reduce__`` returning ``os.system``), so wa never
calls ``torch.load(weights_only=False)``. torch's restricted unpickler admits tensors, dicts,
lists and numbers; real checkpoints also carry a few harmless objects, which are admitted through
torch's own allow-list (``torch.serialization.safe_globals``):

* ``argparse.Namespace``: the ``args`` entry of every checkpoint timm's ``train.py`` and
  fairseq (before its OmegaConf configs) write. Unpickling one only creates an empty namespace
  and fills its ``__dict__``; calling the class with positional arguments, the only other thing
  a pickle can do with it, raises ``TypeError``.

Not admitted by default: OmegaConf's ``DictConfig`` (old fairseq and Hydra-based Lightning
hyper-parameters; current fairseq stores ``cfg`` as a plain dict). Rebuilding one needs a dozen
omegaconf internals (nodes, metadata, ``typing`` objects, ``builtins`` types) whose
``__setstate__`` wa does not control, and its values can be interpolations that resolvers
evaluate. ``--allow-global MODULE.NAME`` adds a class on purpose (README: its risk).

Checks a state dict needs before any tensor is materialized (:func:`check_tensor`): sparse,
meta, and self-overlapping tensors (a 1.5 kB file can declare a stride-0 tensor of 2^30 elements,
whose ``contiguous()`` would allocate 4 GB) are refused per key, with the key named.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pickle
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError

SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
"""Classes admitted in every pickle: data-only, see the module docstring."""


def resolve_global(name: str) -> type:
    """The class ``MODULE.NAME`` names, for ``--allow-global``.

    Only classes are accepted: a function in the allow-list could be called by the pickle with
    any arguments (``os.system``), which is exactly what ``weights_only`` exists to prevent.

    Raises:
        WaError: (USAGE) not ``MODULE.NAME``, not importable, or not a class.

    Example:
        >>> resolve_global("collections.ChainMap").__name__
        'ChainMap'
    """
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise WaError(
            f"allow_global={name!r}: expected MODULE.NAME (e.g. omegaconf.dictconfig.DictConfig)",
            ExitCode.USAGE,
            params=("allow_global",),
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise WaError(f"--allow-global {name!r}: cannot import it ({e})", ExitCode.USAGE) from e
    if not isinstance(obj, type):
        raise WaError(
            f"allow_global={name!r} is a {type(obj).__name__}, not a class: wa admits only "
            "classes, since a pickle could call a function with any arguments",
            ExitCode.USAGE,
            params=("allow_global",),
        )
    return obj


def allowed_globals(names: Iterable[str | type] = ()) -> list[type]:
    """The default safe globals plus the user's (names or classes)."""
    extra = [n if isinstance(n, type) else resolve_global(n) for n in names]
    return [*SAFE_GLOBALS, *(c for c in extra if c not in SAFE_GLOBALS)]


def load_pickle(
    path: Path,
    *,
    allow_globals: Sequence[str | type] = (),
    map_location: str = "cpu",
    mmap: bool = False,
) -> object:
    """``torch.load(path, weights_only=True)`` with wa's allow-list and one-line errors.

    ``map_location="meta"`` reads only the pickle: tensors come back on the meta device, each
    storage with ``_checkpoint_offset`` (its byte offset in the file), so the reader can ``pread``
    tensor bytes later instead of mapping the whole file. ``mmap=True`` maps a zip-format file
    (data files sliced batch by batch); legacy files, which cannot be mapped, load in memory.

    Raises:
        WaError: (BAD_INPUT) a global outside the allow-list (named), or a file torch cannot load.
    """
    classes = allowed_globals(allow_globals)
    try:
        with torch.serialization.safe_globals(list(classes)):
            try:
                if mmap:
                    try:
                        return torch.load(
                            path, map_location=map_location, weights_only=True, mmap=True
                        )
                    except RuntimeError as e:
                        if "mmap" not in str(e):
                            raise
                return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                raise WaError(_refusal(path, e), ExitCode.BAD_INPUT) from e
    except WaError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WaError(
            f"cannot load '{path}' as a PyTorch checkpoint: {first}", ExitCode.BAD_INPUT
        ) from e


def _refusal(path: Path, error: Exception) -> str:
    """Name every global the file needs beyond the allow-list (called inside the context)."""
    names: list[str] = []
    with contextlib.suppress(Exception):  # legacy format: fall back to torch's message
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    if not names:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        names = [found.group(1)] if found else []
    if not names:
        return (
            f"'{path}' needs objects that are not tensors to load, and wa loads pickles only "
            "with weights_only=True (re-save its state_dict, or convert it to safetensors)"
        )
    what = ", ".join(f"'{n}'" for n in names)
    return (
        f"'{path}' needs the global(s) {what} to load, which weights_only=True refuses: wa never "
        "runs code from a pickle (re-save its state_dict; or, only for a data-only class you "
        f"trust, pass --allow-global {names[0]})"
    )


def check_key(key: object, path: Path) -> str:
    """A state-dict key as wa uses it: a string, never ``__metadata__``."""
    if not isinstance(key, str):
        raise WaError(
            f"'{path}' has a state-dict key {key!r} of type {type(key).__name__}; wa needs string "
            "keys (a safetensors output names tensors by string)",
            ExitCode.BAD_INPUT,
        )
    if key == "__metadata__":
        raise WaError(
            f"'{path}' has a tensor named '__metadata__', a name the safetensors format reserves "
            "(exclude it with --exclude '^__metadata__$' or rename it)",
            ExitCode.BAD_INPUT,
        )
    return key


def check_tensor(key: str, t: torch.Tensor, path: Path, *, on_meta: bool = False) -> None:
    """Refuse, naming the key, a tensor that cannot be read as plain dense bytes.

    ``on_meta``: the file was loaded with ``map_location="meta"``, so a tensor is truly meta only
    when its storage has no offset in the file.
    """
    if t.layout != torch.strided:
        raise WaError(
            f"tensor {key!r} of '{path}' is a {str(t.layout).removeprefix('torch.')} tensor; wa "
            "reads dense tensors only (save it with .to_dense(), or leave it out with --exclude)",
            ExitCode.BAD_INPUT,
        )
    is_meta = (
        getattr(t.untyped_storage(), "_checkpoint_offset", None) is None if on_meta else t.is_meta
    )
    if is_meta and t.numel() > 0:
        raise WaError(
            f"tensor {key!r} of '{path}' is a meta tensor, which holds no values "
            "(save the materialized model, or leave it out with --exclude)",
            ExitCode.BAD_INPUT,
        )
    if t.numel() > 1 and overlaps(t.shape, t.stride()):
        raise WaError(
            f"tensor {key!r} of '{path}' has strides {tuple(t.stride())} for shape "
            f"{tuple(t.shape)}, so its elements share memory (an expanded or as_strided view); "
            "wa refuses it rather than materialize it (save it with .contiguous())",
            ExitCode.BAD_INPUT,
        )


def overlaps(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether two indices of a strided view reach the same element (stride 0, for one).

    Sufficient test: with the dimensions sorted by stride, each stride must exceed the span of
    the smaller ones. Dense, transposed and sliced views pass; ``expand``-ed ones do not.

    Example:
        >>> overlaps((3, 4), (1, 3)), overlaps((2**30,), (0,))
        (False, True)
    """
    span = 0
    for size, step in sorted(
        ((s, abs(st)) for s, st in zip(shape, stride, strict=True) if s > 1), key=lambda p: p[1]
    ):
        if step <= span:
            return True
        span += step * (size - 1)
    return False
