"""What one call of a verb asks for, as four option objects that travel whole to the engine.

Every verb (``average``, ``ema``, their ``*_to_file`` twins, ``graft``, ``entropy_report``)
takes the same keyword arguments for reading (``key``, ``strip_prefixes``, ...), selecting
(``last``, ``every``, ``top_k``, ...), combining (``keys``, ``dtype``, ``device``, ...) and
writing (``force``, ``max_shard_size``, ...), or the option objects themselves (``read=``,
``selection=``, ``reduce=``, ``write=``), which is what the CLI passes. :meth:`Request.of` turns
them into one :class:`Request`, checked once; a bad value is a ``WaError`` naming its parameter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypedDict

from wa_cli.engine.params import flag
from wa_cli.errors import ExitCode, Param, WaError
from wa_cli.methods.selection import Selection

if TYPE_CHECKING:
    import torch

    from wa_cli.engine.options import ReduceOptions, WriteOptions
    from wa_cli.io.reader import ReadOptions


class ReadArgs(TypedDict, total=False):
    """How inputs are read (:class:`wa_cli.io.reader.ReadOptions`)."""

    read: ReadOptions
    key: str | None
    strip_prefixes: bool | str | Sequence[str]
    include: Sequence[str]
    exclude: Sequence[str]
    allow_globals: Sequence[str | type]


class SelectArgs(TypedDict, total=False):
    """Which inputs are used, in which order (:class:`Selection`)."""

    selection: Selection
    order: str | None
    last: int | None
    every: int | None
    from_step: int | None
    to_step: int | None
    top_k: int | None
    metric: str | None
    mode: str | None
    metrics: str | os.PathLike[str] | None
    drop_duplicates: bool


class ReduceArgs(TypedDict, total=False):
    """How inputs are combined (:class:`wa_cli.engine.options.ReduceOptions`)."""

    reduce: ReduceOptions
    keys: str
    non_float: str
    dtype: torch.dtype | str | None
    precision: str
    device: str | torch.device


class WriteArgs(TypedDict, total=False):
    """How the output is written (:class:`wa_cli.engine.options.WriteOptions`), and dry runs."""

    write: WriteOptions
    force: bool
    max_shard_size: int | str | None
    progress: Callable[[int, int], None] | None
    command: str | None
    shard_name: str | None
    copy_files: Sequence[str | os.PathLike[str]]
    copy_config: bool
    output_format: str
    dry_run: bool


_READ = ("key", "strip_prefixes", "include", "exclude", "allow_globals")
_REDUCE = ("keys", "non_float", "dtype", "precision", "device")
_WRITE = (
    "force",
    "max_shard_size",
    "progress",
    "command",
    "shard_name",
    "copy_files",
    "output_format",
)
_WRITE_ALL = (*_WRITE, "copy_config")
_SELECT = tuple(f.name for f in fields(Selection))
_GROUPS = {"read": _READ, "selection": _SELECT, "reduce": _REDUCE, "write": _WRITE_ALL}


@dataclass(frozen=True)
class Request:
    """One verb call's options: read, select, combine, write; and whether it is a dry run."""

    read: ReadOptions
    selection: Selection
    reduce: ReduceOptions
    write: WriteOptions
    dry_run: bool = False

    @classmethod
    def of(
        cls,
        function: str,
        args: Mapping[str, Any],
        own: Sequence[str] = (),
        takes: Sequence[str] = tuple(_GROUPS),
    ) -> Request:
        """Split a verb's keyword arguments into the option objects (``own``: the verb's own;
        ``takes``: the groups it takes, the others keep their defaults).

        Raises:
            TypeError: for a keyword the verb does not take (as Python does).
            WaError: for a bad value, or an option object given together with its fields.
        """
        # A group not taken keeps its defaults: a soup's metric= is its own, not top-k's.
        groups = {g: {k: args[k] for k in names if k in args and g in takes}
                  for g, names in _GROUPS.items()}  # fmt: skip
        known = {*own, "dry_run", *takes, *(k for g in takes for k in _GROUPS[g])}
        for name in args:
            if name not in known:
                raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
        for group, given in groups.items():
            if group in args and given:
                first = next(iter(given))
                raise WaError.naming(
                    "give {group=} or {first=}, not both",
                    ExitCode.USAGE,
                    group=Param(group),
                    first=Param(first),
                )
        return cls(
            read=args.get("read") or _read(groups["read"]),
            selection=args.get("selection") or Selection(**groups["selection"]),
            reduce=args.get("reduce") or _reduce(groups["reduce"]),
            write=args.get("write") or _write(groups["write"]),
            dry_run=flag("dry_run", args.get("dry_run", False)),
        )


def _read(given: dict[str, Any]) -> ReadOptions:
    from wa_cli.io.reader import ReadOptions

    return ReadOptions(**given)


def _reduce(given: dict[str, Any]) -> ReduceOptions:
    from wa_cli.engine.options import ReduceOptions

    return ReduceOptions.checked(**given)


def _write(given: dict[str, Any]) -> WriteOptions:
    from wa_cli.engine.options import WriteOptions

    return WriteOptions.checked(**given)
