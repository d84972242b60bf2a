"""Every ``torch.save`` file wa reads is loaded here, always with ``weights_only=True``.

A pickle can run any code while it loads (a ``__reduce__`` returning ``os.system``), so wa never
calls ``torch.load(weights_only=False)``. torch's restricted unpickler admits tensors, dicts,
lists and numbers; real checkpoints also carry a few harmless objects (timm's
``argparse.Namespace``, numpy arrays and RNG states), which are admitted through torch's own
allow-list (``torch.serialization.safe_globals``). :mod:`pickle_globals` sorts every other global
into known data-only classes (admitted on request with ``--allow-global``; a refusal suggests
exactly those), globals wa never admits (functions; modules that can run code or touch the
system), and unknown classes.

Checks a state dict needs before any tensor is materialized (:func:`check_tensor`): sparse,
meta, and self-overlapping tensors (a 1.5 kB file can declare a stride-0 tensor of 2^30 elements,
whose ``contiguous()`` would allocate 4 GB) are refused per key, with the key named.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.bombs import check_zip_expansion
from wa_cli.io.pickle_globals import (
    KNOWN_DATA,
    admitted_by_default,
    import_global,
    never_admitted,
    qualified_name,
)


def resolve_global(name: str) -> type:
    """The class ``MODULE.NAME`` names, for ``--allow-global``.

    Only classes are accepted, and never one from a module that can run code or touch the
    system (:func:`~wa_cli.io.pickle_globals.never_admitted`): the unpickler calls an admitted
    class with the pickle's arguments, so ``subprocess.Popen`` would run a command.

    Raises:
        WaError: (USAGE) not ``MODULE.NAME``, refused by rule, not importable, or not a class.

    Example:
        >>> resolve_global("collections.ChainMap").__name__
        'ChainMap'
    """
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise WaError.naming(
            "{allow_global=}{name!r}: expected MODULE.NAME (e.g. omegaconf.dictconfig.DictConfig)",
            ExitCode.USAGE,
            name=name,
        )
    reason = never_admitted(name)  # before importing: importing a module can run its code
    if reason is None:
        try:
            obj: Any = import_global(name)
        except (ImportError, AttributeError) as e:
            raise WaError.naming(
                "{allow_global=}{name!r}: cannot import it ({e})", ExitCode.USAGE, name=name, e=e
            ) from e
        reason = never_admitted(name, obj)
    if reason is not None:
        raise WaError.naming(
            "{allow_global=}{name!r} is refused: {reason}; wa never admits it, since the "
            "pickle would call it with its own arguments (re-save the checkpoint's "
            "state_dict instead)",
            ExitCode.USAGE,
            name=name,
            reason=reason,
        )
    return obj  # type: ignore[no-any-return]


def allowed_globals(
    names: Iterable[str | type] = (),
) -> list[Callable[..., object] | tuple[Callable[..., object], str]]:
    """The globals admitted by default plus the user's (names or classes), each checked."""
    extra: list[type] = []
    for n in names:
        if isinstance(n, type):
            reason = never_admitted(qualified_name(n), n)
            if reason is not None:
                raise WaError.naming(
                    "{allow_globals}: {name} is refused: {reason}",
                    ExitCode.USAGE,
                    name=qualified_name(n),
                    reason=reason,
                )
            extra.append(n)
        else:
            extra.append(resolve_global(n))
    default = admitted_by_default()
    return [*default, *(c for c in extra if c not in default)]


def load_pickle(
    path: Path,
    *,
    allow_globals: Sequence[str | type] = (),
    map_location: str = "cpu",
    mmap: bool = False,
    source: Callable[[], IO[bytes]] | None = None,
) -> object:
    """``torch.load(path, weights_only=True)`` with wa's allow-list and one-line errors.

    ``map_location="meta"`` reads only the pickle: tensors come back on the meta device, each
    storage with ``_checkpoint_offset`` (its byte offset in the file), so the reader can ``pread``
    tensor bytes later instead of mapping the whole file. ``mmap=True`` maps a zip-format file
    (data files sliced batch by batch); legacy files, which cannot be mapped, load in memory.
    ``source`` opens the bytes to load when they are a part of ``path`` (a tar member); offsets
    are then relative to the part's start.

    Raises:
        WaError: (BAD_INPUT) globals outside the allow-list (all named), or a file torch cannot
            load.
    """
    classes = allowed_globals(allow_globals)
    check_zip_expansion(path)  # a deflated storage is inflated whole by torch.load
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
                if source is not None:
                    with source() as f:
                        return torch.load(f, map_location=map_location, weights_only=True)
                return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                admitted = {n if isinstance(n, str) else qualified_name(n) for n in allow_globals}
                raise _refusal(path, e, admitted, source) from e
    except WaError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WaError(
            f"cannot load '{path}' as a PyTorch checkpoint: {first}", ExitCode.BAD_INPUT
        ) from e


def _refusal(
    path: Path, error: Exception, admitted: set[str], source: Callable[[], IO[bytes]] | None = None
) -> WaError:
    """One line naming every global the file needs beyond the allow-list, sorted by what wa
    will do with it: the one ``--allow-global`` command for the known data-only classes, which
    globals wa never admits, and which classes it does not know (called inside the context)."""
    names: list[str] = []
    with contextlib.suppress(Exception):  # legacy format: fall back to torch's message
        if source is not None:
            with source() as f:
                names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
        else:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    names = [n for n in names if n not in admitted and n not in _default_names()]
    if not names:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        names = [found.group(1)] if found else []
    if not names:
        return WaError(
            f"'{path}' needs objects that are not tensors to load, and wa loads pickles only "
            "with weights_only=True (re-save its state_dict, or convert it to safetensors)",
            ExitCode.BAD_INPUT,
        )
    known = [n for n in names if n in KNOWN_DATA]
    never = [n for n in names if n not in KNOWN_DATA and never_admitted(n) is not None]
    unknown = [n for n in names if n not in known and n not in never]
    # The class names come from the file: they enter only as values, never as template text.
    values = {"path": str(path), "names": _quoted(names)}
    parts = [
        "'{path}' needs the global(s) {names} to load, which weights_only=True refuses "
        "(wa never runs code from a pickle)"
    ]
    if known:
        values |= {f"g{i}": n for i, n in enumerate(known)} | {"known": _quoted(known)}
        flags = " ".join(f"{{allow_globals}} {{g{i}}}" for i in range(len(known)))
        parts.append("{known} only hold data: admit them with " + flags)
    if never:
        values["never"] = _quoted(never)
        parts.append("wa never admits {never} (code or system access)")
    if unknown:
        values["unknown"] = _quoted(unknown)
        parts.append("{unknown} are not classes wa knows to hold only data")
    if never or unknown:
        parts.append("re-save the checkpoint's state_dict, or convert it to safetensors")
    return WaError.naming("; ".join(parts), ExitCode.BAD_INPUT, **values)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _default_names() -> set[str]:
    return {e[1] if isinstance(e, tuple) else qualified_name(e) for e in admitted_by_default()}


def check_key(key: object, path: Path) -> str:
    """A state-dict key as wa uses it: a string, never ``__metadata__``."""
    if not isinstance(key, str):
        raise WaError(
            f"'{path}' has a state-dict key {key!r} of type {type(key).__name__}; wa needs string "
            "keys (a safetensors output names tensors by string)",
            ExitCode.BAD_INPUT,
        )
    if key == "__metadata__":
        raise WaError.naming(
            "'{path}' has a tensor named '__metadata__', a name the safetensors format reserves "
            "(exclude it with {exclude} '^__metadata__$' or rename it)",
            ExitCode.BAD_INPUT,
            path=str(path),
        )
    return key


def check_tensor(key: str, t: torch.Tensor, path: Path, *, on_meta: bool = False) -> None:
    """Refuse, naming the key, a tensor that cannot be read as plain dense bytes.

    ``on_meta``: the file was loaded with ``map_location="meta"``, so a tensor is truly meta only
    when its storage has no offset in the file.
    """
    if t.layout != torch.strided:
        raise WaError.naming(
            "tensor {key!r} of '{path}' is a {layout} tensor; wa reads dense tensors only "
            "(save it with .to_dense(), or leave it out with {exclude})",
            ExitCode.BAD_INPUT,
            key=key,
            path=str(path),
            layout=str(t.layout).removeprefix("torch."),
        )
    is_meta = (
        getattr(t.untyped_storage(), "_checkpoint_offset", None) is None if on_meta else t.is_meta
    )
    if is_meta and t.numel() > 0:
        raise WaError.naming(
            "tensor {key!r} of '{path}' is a meta tensor, which holds no values "
            "(save the materialized model, or leave it out with {exclude})",
            ExitCode.BAD_INPUT,
            key=key,
            path=str(path),
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
