"""Put checkpoints in training order and attach their step numbers.

Part of :mod:`wa_cli.select`. An EMA over a saved trajectory (SPEC.md; step-aware decay after
PyTorch's ``get_ema_multi_avg_fn`` and timm's ModelEma) needs the checkpoints in training order
and their steps: from the ``step`` metadata when every input has one, else the last integer in
the file name, else natural name order. A tie or a mix of sources is an error naming the flag
(``--order``) that resolves it, never a silent guess.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.formats import strip_checkpoint_suffix
from wa_cli.select.expand import DIGIT_RUNS, INDEX_SUFFIX, natural_key

logger = logging.getLogger(__name__)

STEP_KEY = "step"
"""The safetensors metadata entry that holds a checkpoint's training step."""

Order = Literal["auto", "step", "name", "given"]
StepSource = Literal["metadata", "name", "order"]
_ORDERS: tuple[str, ...] = ("auto", "step", "name", "given")
_ORDER_HINT = "pass --order name to sort by file name or --order given to keep the input order"


class CheckpointLike(Protocol):
    """What ordering and selection read from a checkpoint: its name, path and metadata."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...


C = TypeVar("C", bound=CheckpointLike)


@dataclass(frozen=True)
class Entry(Generic[C]):
    """One checkpoint of an ordered trajectory.

    Attributes:
        item: The checkpoint (anything with ``name``, ``path`` and ``metadata``).
        step: Its training step, or ``None`` when the trajectory has no step numbers.
        source: Where ``step`` came from: ``"metadata"`` (the ``step`` entry), ``"name"`` (the
            last integer in the file name) or ``"order"`` (no step; position only).
        value: The metric value, once :func:`select_trajectory` has read one.
    """

    item: C
    step: int | None
    source: StepSource
    value: float | None = None

    @property
    def name(self) -> str:
        return self.item.name


def checkpoint_stem(item: CheckpointLike) -> str:
    """The name without its checkpoint suffix; a sharded checkpoint's index names its folder."""
    name = item.name
    if name.endswith(INDEX_SUFFIX):
        return Path(item.path).parent.name
    return strip_checkpoint_suffix(name)


def step_from_name(item: CheckpointLike) -> int | None:
    """The last integer in the file name without its suffix: ``epoch=3-step=1500.ckpt`` → 1500.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_name(SimpleNamespace(name="ckpt_10.pt", path=Path("ckpt_10.pt")))
        10
    """
    numbers = DIGIT_RUNS.findall(checkpoint_stem(item))
    return int(numbers[-1]) if numbers else None


def step_from_metadata(item: CheckpointLike) -> int | None:
    """The integer ``step`` metadata entry, or ``None`` when there is none.

    Raises:
        WaError: (BAD_INPUT) the entry is present but not an integer.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_metadata(SimpleNamespace(name="a.safetensors", metadata={"step": "300"}))
        300
    """
    raw = item.metadata.get(STEP_KEY)
    if raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError as e:
        raise WaError(
            f"checkpoint '{item.name}': metadata '{STEP_KEY}' is {raw!r}, expected an integer "
            f"(fix the metadata, or {_ORDER_HINT})",
            ExitCode.BAD_INPUT,
        ) from e


def _check_unique(entries: list[Entry[C]], why: str) -> None:
    by_step: dict[int, list[str]] = {}
    for e in entries:
        if e.step is not None:
            by_step.setdefault(e.step, []).append(e.name)
    shared = [(s, names) for s, names in by_step.items() if len(names) > 1]
    if shared:
        parts = "; ".join(f"{listing(names)} share step {s}" for s, names in shared[:3])
        more = f" (and {len(shared) - 3} more steps)" if len(shared) > 3 else ""
        raise WaError(
            f"cannot order the checkpoints by step: {parts}{more} ({why}); {_ORDER_HINT}",
            ExitCode.USAGE,
        )


def _natural(entries: list[Entry[C]]) -> list[Entry[C]]:
    return sorted(entries, key=lambda e: (natural_key(e.name), natural_key(str(e.item.path))))


def order_trajectory(items: Sequence[C], order: Order = "auto") -> list[Entry[C]]:
    """Put checkpoints in training order and attach their step numbers.

    * ``auto``: by the ``step`` metadata when every input has one; else by the last integer in
      the file name when every input has one; else natural name order (no steps). Two inputs
      with the same step are an error, never a silent tie.
    * ``step``: by the ``step`` metadata, which every input must have.
    * ``name``: natural file-name order (``ckpt_2`` before ``ckpt_10``); steps are the last
      integer of each name when every name has one (they may then repeat), else ``None``.
    * ``given``: the input order; steps as in ``auto`` but never checked for duplicates.

    Args:
        items: Checkpoints with ``name``, ``path`` and ``metadata`` (the reader's objects).
        order: One of ``auto``, ``step``, ``name``, ``given``.

    Returns:
        One :class:`Entry` per input, in trajectory order.

    Raises:
        WaError: USAGE for an unknown order, missing steps under ``step``, or duplicate steps;
            BAD_INPUT for a ``step`` metadata entry that is not an integer.

    Example:
        >>> entries = order_trajectory(checkpoints)  # doctest: +SKIP
        >>> [(e.name, e.step, e.source) for e in entries]  # doctest: +SKIP
        [('ckpt_2.safetensors', 2, 'name'), ('ckpt_10.safetensors', 10, 'name')]
    """
    if order not in _ORDERS:
        raise WaError(f"--order must be one of {', '.join(_ORDERS)}, got {order!r}", ExitCode.USAGE)
    if not items:
        return []
    meta = [step_from_metadata(it) for it in items]
    names = [step_from_name(it) for it in items]
    n_meta = sum(s is not None for s in meta)

    if order == "step":
        missing = [it.name for it, s in zip(items, meta, strict=True) if s is None]
        if missing:
            raise WaError(
                f"--order step needs '{STEP_KEY}' metadata in every checkpoint; "
                f"{listing(missing)} have none (use --order auto or --order name)",
                ExitCode.USAGE,
            )
    if order == "name":
        source: StepSource = "name" if all(s is not None for s in names) else "order"
        steps = names if source == "name" else [None] * len(items)
        return _natural([Entry(it, s, source) for it, s in zip(items, steps, strict=True)])

    if n_meta == len(items):
        source, steps = "metadata", meta
        why = f"from '{STEP_KEY}' metadata"
    elif all(s is not None for s in names):
        source, steps = "name", names
        why = "from the last number in each file name"
        if n_meta:
            why += (
                f", because only {n_meta} of {len(items)} checkpoints carry '{STEP_KEY}' metadata"
            )
            logger.warning("steps come from the file names: %s", why)
    else:
        source, steps = "order", [None] * len(items)
        why = ""
        if n_meta:
            logger.warning(
                "only %d of %d checkpoints carry '%s' metadata and not every file name holds a"
                " number; using natural name order without steps",
                n_meta,
                len(items),
                STEP_KEY,
            )
    entries = [Entry(it, s, source) for it, s in zip(items, steps, strict=True)]
    if order == "given":
        return entries
    _check_unique(entries, why)
    if source == "order":
        return _natural(entries)
    return sorted(entries, key=lambda e: e.step)  # type: ignore[arg-type, return-value]
