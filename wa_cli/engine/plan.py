"""Compatibility checks from headers, and the per-key plan every reducing command follows.

Everything is checked before a byte is written: key sets, shapes and dtypes of all inputs. A
mismatch is one error naming the key, the files and both values (at most five keys, then "and N
more"); ``keys="intersection"`` or ``"union"`` relaxes key sets on purpose.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from wa_cli.engine.precision import is_interpolable
from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.dtypes import dtype_name
from wa_cli.io.keys import wrapper_prefix
from wa_cli.io.reader import Checkpoint
from wa_cli.io.safetensors_header import TensorInfo
from wa_cli.io.writer import OutputTensor

KeysMode = Literal["strict", "intersection", "union"]
NonFloatPolicy = Literal["last", "first", "error"]
BN_STATISTICS = (".running_mean", ".running_var")
# Hints are templates (WaError.naming): {keys} reads keys in the library and --keys in the CLI.
KEYS_HINT = "use {keys} intersection or {keys} union to combine them anyway"
ARCHITECTURE_HINT = "all inputs must share one architecture"


@dataclass(frozen=True)
class KeyPlan:
    """What happens to one key: interpolated over ``sources``, or copied from ``copy_from``."""

    key: str
    dtype: torch.dtype  # the widest of the inputs' dtypes (it picks the accumulator)
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    sources: tuple[int, ...]  # indices of the inputs that hold the key, in input order
    interpolate: bool
    copy_from: int  # the input a non-interpolated key is copied from
    # Per source, only when they differ (an explicit --dtype); empty: every source has ``dtype``.
    source_dtypes: tuple[torch.dtype, ...] = ()

    def dtype_of(self, source: int) -> torch.dtype:
        """The dtype the key has in input ``source`` (its bytes are read as this)."""
        if not self.source_dtypes:
            return self.dtype
        return self._dtype_by_source[source]

    @functools.cached_property
    def _dtype_by_source(self) -> dict[int, torch.dtype]:
        # cached_property writes the instance dict directly, which a frozen dataclass allows.
        return dict(zip(self.sources, self.source_dtypes, strict=True))

    # Worked out once: the schedule asks for it several times per key, 20,000 keys a run.
    numel: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "numel", math.prod(self.shape))  # frozen: set it this once


@dataclass
class Plan:
    checkpoints: list[Checkpoint]
    keys: list[KeyPlan]
    notes: list[str] = field(default_factory=list)  # policy actions the report shows
    # Every input holds the same keys, dtypes, shapes and relative offsets (Checkpoint.layout).
    same_layout: bool = False

    def output_tensors(self) -> list[OutputTensor]:
        return [OutputTensor(k.key, k.out_dtype, k.shape) for k in self.keys]

    @property
    def holds_bn_statistics(self) -> bool:
        return any(k.interpolate and k.key.endswith(BN_STATISTICS) for k in self.keys)


def build_plan(
    checkpoints: Sequence[Checkpoint],
    *,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | None = None,
    key_mismatch_hint: str = KEYS_HINT,
) -> Plan:
    """Check that the checkpoints can be combined and decide, per key, what to do.

    Args:
        checkpoints: the inputs, in trajectory order.
        keys: ``strict`` (every input holds every key), ``intersection`` (keys all inputs hold) or
            ``union`` (each key over the inputs that hold it).
        non_float: which input a non-float tensor is copied from; ``error`` fails when they differ.
        dtype: output dtype of floating tensors (default: each tensor's own).
        key_mismatch_hint: what a strict key-set error tells the user to do (a template:
            ``{keys}`` names the parameter, see ``WaError.naming``).

    Example:
        >>> plan = build_plan([open_checkpoint(p) for p in paths])  # doctest: +SKIP
    """
    ckpts = list(checkpoints)
    if not ckpts:
        raise WaError("no input checkpoints given")
    for c in ckpts:
        if not c.keys():
            raise WaError(f"'{c.path}' holds no tensors", ExitCode.BAD_INPUT)
    names = _display_names(ckpts)
    plan = Plan(ckpts, [], same_layout=_same_layout(ckpts))
    if plan.same_layout:
        # Alike layouts hold alike keys, dtypes and shapes (every key set mode is the same): the
        # first input's records stand for all of them, in sorted order as for any safetensors.
        first, every = ckpts[0], tuple(range(len(ckpts)))
        plan.keys = [
            _key_plan(key, [first.info(key)], every, dtype, non_float)
            for key in sorted(first.keys())
        ]
    else:
        plan.keys = _checked_keys(ckpts, keys, names, dtype, non_float, key_mismatch_hint)
    plan.notes.extend(_policy_notes(plan, names, keys, non_float))
    return plan


def _checked_keys(
    ckpts: list[Checkpoint],
    keys: KeysMode,
    names: list[str],
    dtype: torch.dtype | None,
    non_float: NonFloatPolicy,
    key_mismatch_hint: str,
) -> list[KeyPlan]:
    """Each key's plan, after comparing its shape and dtype in every input that holds it."""
    order = _key_order(ckpts, keys, names, key_mismatch_hint)
    shape_problems: list[str] = []
    dtype_problems: list[str] = []
    every = tuple(range(len(ckpts)))
    planned = []
    for key in order:
        held = every if keys == "strict" else tuple(i for i, c in enumerate(ckpts) if key in c)
        infos = [ckpts[i].info(key) for i in held]
        shape_problem, dtype_problem = _mismatch(key, infos, held, names, dtype)
        shape_problems += [shape_problem] if shape_problem else []
        dtype_problems += [dtype_problem] if dtype_problem else []
        planned.append(_key_plan(key, infos, held, dtype, non_float))
    _raise_mismatches(shape_problems, dtype_problems)
    return planned


def _same_layout(ckpts: list[Checkpoint]) -> bool:
    first = ckpts[0].layout
    return first is not None and all(c.layout == first for c in ckpts[1:])


def _mismatch(
    key: str,
    infos: list[TensorInfo],
    sources: tuple[int, ...],
    names: list[str],
    dtype: torch.dtype | None,
) -> tuple[str | None, str | None]:
    """The first input whose shape, or dtype, differs from the first holder's, as
    (shape problem, dtype problem); floating dtypes may differ when an output dtype is given."""
    first = infos[0]
    for i, info in zip(sources[1:], infos[1:]):
        if info.shape != first.shape:
            return (
                f"{key!r}: {tuple(info.shape)} in {names[i]} vs {tuple(first.shape)} in "
                f"{names[sources[0]]}"
            ), None
        if info.dtype != first.dtype and not (
            dtype is not None and info.dtype.is_floating_point and first.dtype.is_floating_point
        ):
            return None, (
                f"{key!r}: {dtype_name(info.dtype)} in {names[i]} vs "
                f"{dtype_name(first.dtype)} in {names[sources[0]]}"
            )
    return None, None


def _key_plan(
    key: str,
    infos: list[TensorInfo],
    sources: tuple[int, ...],
    dtype: torch.dtype | None,
    non_float: NonFloatPolicy,
) -> KeyPlan:
    """Interpolate a floating key in the widest of its inputs' dtypes; copy any other."""
    first = infos[0]
    interpolate = is_interpolable(first.dtype)
    widest = first.dtype
    source_dtypes: tuple[torch.dtype, ...] = ()
    if any(info.dtype is not widest for info in infos):  # only with an explicit --dtype
        source_dtypes = tuple(info.dtype for info in infos)
        if interpolate:
            widest = max(source_dtypes, key=lambda d: (d.itemsize, torch.finfo(d).max))
    return KeyPlan(
        key=key,
        dtype=widest,
        source_dtypes=source_dtypes,
        shape=tuple(first.shape),
        out_dtype=(dtype or widest) if interpolate else first.dtype,
        sources=sources,
        interpolate=interpolate,
        copy_from=sources[0] if non_float == "first" else sources[-1],
    )


def _raise_mismatches(shape_problems: list[str], dtype_problems: list[str]) -> None:
    if shape_problems:
        raise WaError(
            _problem_message("shape mismatch", shape_problems) + f" ({ARCHITECTURE_HINT})",
            ExitCode.INCOMPATIBLE,
        )
    if dtype_problems:
        raise WaError.naming(
            "{problems} (pass {dtype} to combine floating tensors of different dtypes)",
            ExitCode.INCOMPATIBLE,
            problems=_problem_message("dtype mismatch", dtype_problems),
        )


def _policy_notes(
    plan: Plan, names: list[str], keys: KeysMode, non_float: NonFloatPolicy
) -> list[str]:
    """The report's lines for what the policies did (copies, entries left out, key sets)."""
    ckpts = plan.checkpoints
    notes: list[str] = []
    copied = [k.key for k in plan.keys if not k.interpolate]
    if copied:
        if non_float == "error":
            _require_equal_non_float(plan, names)
        else:
            notes.append(
                f"copied {len(copied)} non-float tensor(s) from the {non_float} input "
                f"({listing(copied, 3)})"
            )
    for c in ckpts:
        if c.skipped:
            notes.append(
                f"left out {len(c.skipped)} entr(ies) of {c.name} that are not tensors "
                f"({listing(c.skipped, 3)})"
            )
    notes.extend(_input_notes(ckpts))
    if keys == "intersection":
        dropped = dropped_keys(plan)
        if dropped:
            notes.append(
                f"left out {len(dropped)} key(s) not held by every input ({listing(dropped, 3)})"
            )
    if keys == "union":
        partial = [k.key for k in plan.keys if len(k.sources) < len(ckpts)]
        if partial:
            notes.append(
                f"{len(partial)} key(s) held by only some inputs were combined over the inputs "
                f"that hold them ({listing(partial, 3)})"
            )
    return notes


def _input_notes(ckpts: list[Checkpoint]) -> list[str]:
    """What the readers did: which file of a run folder was read, which prefix was stripped.

    One line per kind for many inputs: the first input's, and how many more were alike.
    """
    taken = [f"read {c.chosen_file_note}" for c in ckpts if c.chosen_file_note]
    reader = [n for c in ckpts for n in c.notes]
    lines: list[str] = []
    for group in (taken, reader):
        if len(group) <= 2:
            lines.extend(group)
        else:
            lines.append(f"{group[0]}; and likewise for {len(group) - 1} more input(s)")
    return lines


def _display_names(ckpts: list[Checkpoint]) -> list[str]:
    """File names, or full paths when two inputs share a file name."""
    short = [c.name for c in ckpts]
    if len(set(short)) == len(short):
        return short
    return [str(c.path) for c in ckpts]


def _problem_message(what: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{what} for {problems[0]}"
    rest = len(problems) - 1
    return f"{what} for {problems[0]}; {rest} more key(s) differ too"


def _key_order(ckpts: list[Checkpoint], mode: KeysMode, names: list[str], hint: str) -> list[str]:
    """The output keys: sorted (as safetensors stores them) unless every input knows its order."""
    key_sets = [set(c.keys()) for c in ckpts]
    if mode == "strict":
        for i, ks in enumerate(key_sets[1:], start=1):
            if ks != key_sets[0]:
                missing = sorted(key_sets[0] - ks)
                extra = sorted(ks - key_sets[0])
                parts = []
                if missing:
                    parts.append(f"{names[i]} lacks {listing(missing)} (present in {names[0]})")
                if extra:
                    parts.append(f"{names[i]} has {listing(extra)} (absent from {names[0]})")
                # Inputs that differ only by a wrapper (DDP's module., Lightning's model.) need
                # the prefix stripped, not keys dropped: --keys intersection would keep none.
                wrapper = wrapper_prefix(key_sets[0], ks)
                why = "the keys differ only by a prefix: pass {strip_prefixes} {wrapper}"
                raise WaError.naming(
                    "key sets differ: {parts} (" + (why if wrapper else hint) + ")",
                    ExitCode.INCOMPATIBLE,
                    parts="; ".join(parts),
                    **({"wrapper": wrapper} if wrapper else {}),
                )
        chosen = key_sets[0]
    elif mode == "intersection":
        chosen = set.intersection(*key_sets)
        if not chosen:
            raise WaError.naming(
                "the inputs share no key ({keys} intersection is empty)", ExitCode.INCOMPATIBLE
            )
    elif mode == "union":
        chosen = set.union(*key_sets)
    else:
        raise WaError.naming(
            "unknown {keys} mode {mode!r} (expected strict, intersection or union)", mode=mode
        )
    if all(c.key_order_known for c in ckpts):
        ordered = list(dict.fromkeys(k for c in ckpts for k in c.keys() if k in chosen))
        return ordered
    return sorted(chosen)


def _require_equal_non_float(plan: Plan, names: list[str]) -> None:
    for entry in plan.keys:
        if entry.interpolate:
            continue
        first = plan.checkpoints[entry.sources[0]].tensor(entry.key)
        for i in entry.sources[1:]:
            if not torch.equal(plan.checkpoints[i].tensor(entry.key), first):
                raise WaError.naming(
                    "non-float tensor {key!r} differs between {a} and {b} ({non_float} last or "
                    "first copies one of them)",
                    ExitCode.INCOMPATIBLE,
                    key=entry.key,
                    a=names[entry.sources[0]],
                    b=names[i],
                )


def dropped_keys(plan: Plan) -> list[str]:
    """Keys some input holds that the plan leaves out (``--keys intersection``)."""
    kept = {k.key for k in plan.keys}
    return sorted({k for c in plan.checkpoints for k in c.keys()} - kept)
