"""Put checkpoints in training order and attach their step numbers.

Part of :mod:`wa_cli.select`. An EMA over a saved trajectory (SPEC.md; step-aware decay after
PyTorch's ``get_ema_multi_avg_fn`` and timm's ModelEma) needs the checkpoints in training order
and their steps: from the ``step`` metadata when every input has one, else the last integer in
the file name, else natural name order. A tie or a mix of sources is an error naming the flag
(``--order``) that resolves it, never a silent guess.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.formats import strip_checkpoint_suffix
from wa_cli.select.expand import INDEX_SUFFIX, natural_key
from wa_cli.select.steps import (
    Step,
    StepSource,
    epoch_in_metadata,
    step_in_metadata,
    step_in_name,
)

logger = logging.getLogger(__name__)

STEP_KEY = "step"
"""The safetensors metadata entry that holds a checkpoint's training step."""

Order = Literal["auto", "step", "name", "given"]
_ORDERS: tuple[str, ...] = ("auto", "step", "name", "given")
# A template part (WaError.naming): {order} reads order in the library and --order in the CLI.
_ORDER_HINT = "pass {order} name to sort by file name or {order} given to keep the input order"


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
        source: Where ``step`` came from (:data:`~wa_cli.select.steps.StepSource`):
            ``"metadata"`` (``step``/``global_step`` inside the file), ``"name"``, ``"folder"``
            (the parent folder's number), ``"epoch"`` (``epoch`` inside the file) or ``"order"``
            (no step; position only).
        value: The metric value, once :func:`select_trajectory` has read one.
        order: How the whole trajectory was ordered, for reports (the same on every entry).
    """

    item: C
    step: int | None
    source: StepSource
    value: float | None = None
    order: str = ""

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
    """The step in the file name (rules of :mod:`wa_cli.select.steps`), else its folder's number.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_name(SimpleNamespace(name="ckpt_10.pt", path=Path("ckpt_10.pt")))
        10
        >>> p = Path("epoch=3-step=92-val_loss=0.5529.ckpt")
        >>> step_from_name(SimpleNamespace(name=p.name, path=p))
        92
    """
    found = step_in_name(checkpoint_stem(item), Path(item.path), item.name)
    return None if found is None else found.value


def step_from_metadata(item: CheckpointLike) -> int | None:
    """The integer ``step`` (else ``global_step``) metadata entry, or ``None`` when there is none.

    Raises:
        WaError: (BAD_INPUT) the entry is present but not an integer.

    Example:
        >>> from types import SimpleNamespace
        >>> step_from_metadata(SimpleNamespace(name="a.safetensors", metadata={"step": "300"}))
        300
    """
    found = step_in_metadata(item.metadata, item.name)
    return None if found is None else found.value


def _check_unique(entries: list[Entry[C]], why: str) -> None:
    by_step: dict[int, list[str]] = {}
    for e in entries:
        if e.step is not None:
            by_step.setdefault(e.step, []).append(e.name)
    shared = [(s, names) for s, names in by_step.items() if len(names) > 1]
    if shared:
        parts = "; ".join(f"{listing(names)} share step {s}" for s, names in shared[:3])
        more = f" (and {len(shared) - 3} more steps)" if len(shared) > 3 else ""
        raise WaError.naming(
            "cannot order the checkpoints by step: {parts}{more} ({why}); " + _ORDER_HINT,
            ExitCode.USAGE,
            parts=parts,
            more=more,
            why=why,
        )


def _natural(entries: list[Entry[C]]) -> list[Entry[C]]:
    return sorted(entries, key=lambda e: (natural_key(e.name), natural_key(str(e.item.path))))


def _describe(steps: list[Step], source: StepSource) -> str:
    """Where the steps came from, in words (the report and the dry run say it)."""
    if source == "metadata":
        keys = listing(sorted({s.where for s in steps}))
        return f"steps from {keys} recorded inside the files"
    if source == "epoch":
        return "epochs used as steps ('epoch' recorded inside the files; no step recorded)"
    folders = sum(s.source == "folder" for s in steps)
    kinds = {s.kind for s in steps if s.source == "name"}
    if kinds == {"epoch"} and not folders:
        return "epochs in the file names used as steps (no step recorded)"
    what = (
        "steps named in the file names"
        if kinds == {"step"}
        else ("steps from the numbers in the file names")
    )
    if folders == len(steps):
        return "steps from the numbers of the parent folders"
    if folders:
        what += f" ({folders} from the parent folder's number)"
    if "epoch" in kinds:
        n = sum(s.kind == "epoch" for s in steps)
        what += f" ({n} of them epoch numbers)"
    return what


def _pick_source(
    items: Sequence[C], warn: bool = True
) -> tuple[list[Step | None], StepSource, str]:
    """The first source every input has: inside the file, name (or folder), recorded epoch."""
    labels = [it.name for it in items]
    meta = [step_in_metadata(it.metadata, n) for it, n in zip(items, labels, strict=True)]
    names = [
        step_in_name(checkpoint_stem(it), Path(it.path), n)
        for it, n in zip(items, labels, strict=True)
    ]
    n_meta = sum(s is not None for s in meta)
    partial = ""
    if 0 < n_meta < len(items):
        partial = f", because only {n_meta} of {len(items)} checkpoints record a step inside"
    if n_meta == len(items):
        return meta, "metadata", _describe(meta, "metadata")  # type: ignore[arg-type]  # no None
    if all(s is not None for s in names):
        why = _describe(names, "name") + partial  # type: ignore[arg-type]  # no None (all())
        if partial and warn:
            logger.warning("%s", why)
        return names, "name", why
    epochs = [epoch_in_metadata(it.metadata, n) for it, n in zip(items, labels, strict=True)]
    if all(s is not None for s in epochs):
        why = _describe(epochs, "epoch") + partial  # type: ignore[arg-type]  # no None (all())
        if partial and warn:
            logger.warning("%s", why)
        return epochs, "epoch", why
    if n_meta and warn:
        logger.warning(
            "only %d of %d checkpoints record a step inside and not every file name holds a"
            " number; using natural name order without steps",
            n_meta,
            len(items),
        )
    return [None] * len(items), "order", "no steps: natural name order"


def order_trajectory(
    items: Sequence[C], order: Order = "auto", *, warn: bool = True
) -> list[Entry[C]]:
    """Put checkpoints in training order and attach their step numbers.

    * ``auto``: the first source every input has (:mod:`wa_cli.select.steps`): a step recorded
      inside the file (``step``, ``global_step``); else the step in the name (``step=N``, else
      the last integer that is not a ``key=value`` metric, else ``epoch=N``) or the parent
      folder's number (``checkpoint-6/model.safetensors``); else the recorded ``epoch``; else
      natural name order (no steps). Two inputs with the same step are an error, never a silent
      tie. ``Entry.order`` says which source was used.
    * ``step``: by the step recorded inside the files, which every input must have.
    * ``name``: natural file-name order (``ckpt_2`` before ``ckpt_10``); steps from the names
      when every name has one (they may then repeat), else ``None``.
    * ``given``: the input order; steps as in ``auto`` but never checked for duplicates.

    Args:
        items: Checkpoints with ``name``, ``path`` and ``metadata`` (the reader's objects).
        order: One of ``auto``, ``step``, ``name``, ``given``.
        warn: Log a warning when only some inputs record a step.

    Returns:
        One :class:`Entry` per input, in trajectory order.

    Raises:
        WaError: USAGE for an unknown order, missing steps under ``step``, or duplicate steps;
            BAD_INPUT for a recorded step that is not an integer or is beyond 2^63 - 1.

    Example:
        >>> entries = order_trajectory(checkpoints)  # doctest: +SKIP
        >>> [(e.name, e.step, e.source) for e in entries]  # doctest: +SKIP
        [('ckpt_2.safetensors', 2, 'name'), ('ckpt_10.safetensors', 10, 'name')]
    """
    if order not in _ORDERS:
        raise WaError.naming(
            "{order} must be one of {orders}, got {got!r}",
            ExitCode.USAGE,
            orders=", ".join(_ORDERS),
            got=order,
        )
    if not items:
        return []
    if order == "step":
        meta = [step_in_metadata(it.metadata, it.name) for it in items]
        missing = [it.name for it, s in zip(items, meta, strict=True) if s is None]
        if missing:
            raise WaError.naming(
                "{order} step needs a step ('step' or 'global_step') recorded in every "
                "checkpoint; {missing} have none (use {order} auto or {order} name)",
                ExitCode.USAGE,
                missing=listing(missing),
            )
    if order == "name":
        names = [step_in_name(checkpoint_stem(it), Path(it.path), it.name) for it in items]
        if all(s is not None for s in names):
            why = _describe(names, "name")  # type: ignore[arg-type]  # no None (all())
            return _natural(
                [
                    Entry(it, s.value, s.source, order=f"natural name order, {why}")
                    for it, s in zip(items, names, strict=True)
                    if s is not None
                ]
            )
        return _natural([Entry(it, None, "order", order="natural name order") for it in items])

    steps, source, why = _pick_source(items, warn)
    if order == "given":
        why = f"the given order ({why})" if source != "order" else "the given order"
    entries = [
        Entry(it, None if s is None else s.value, source, order=why)
        if s is None
        else Entry(it, s.value, s.source, order=why)
        for it, s in zip(items, steps, strict=True)
    ]
    if order == "given":
        return entries
    _check_unique(entries, why)
    if source == "order":
        return _natural(entries)
    # Every entry has a step here (source is not "order").
    return sorted(entries, key=lambda e: e.step)  # type: ignore[arg-type, return-value]  # see above


def training_order(items: Sequence[C]) -> tuple[list[int], str] | None:
    """The permutation that puts ``items`` in training order, and where the steps came from.

    ``None`` when the training order is not known: no steps anywhere (natural name order is a
    guess, not a training order), or steps that do not order the inputs (two share one).
    Used where only "which input is last" matters (``wa average`` copies non-float tensors
    from the last input in training order, not in shell order: ``epoch_9`` after ``epoch_10``).

    Example:
        >>> from types import SimpleNamespace as N
        >>> paths = [Path(f"epoch_{e}.pt") for e in (9, 10, 8)]
        >>> training_order([N(name=p.name, path=p, metadata={}) for p in paths])[0]
        [2, 0, 1]
    """
    try:
        ordered = order_trajectory(items, "auto", warn=False)
    except WaError:
        return None
    if not ordered or ordered[0].source == "order":
        return None
    position = {id(e.item): i for i, e in enumerate(ordered)}
    return sorted(range(len(items)), key=lambda i: position[id(items[i])]), ordered[0].order


def step_metadata(items: Sequence[C]) -> dict[str, str]:
    """What an output records about its inputs' steps (safetensors metadata strings).

    ``wa_steps``: the inputs' steps in input order (JSON); ``wa_first_step`` /
    ``wa_last_step``: the smallest and largest (for an EMA over a trajectory, ``wa_last_step``
    is the step the average stands for); ``wa_step_source``: where the steps came from;
    ``wa_epochs``: the recorded epochs, when every input records one. Empty when the inputs
    have no steps (or steps that cannot be read).

    Example:
        >>> from types import SimpleNamespace as N
        >>> items = [N(name=f"ckpt_{s}.pt", path=Path(f"ckpt_{s}.pt"), metadata={}) for s in (5, 9)]
        >>> step_metadata(items)["wa_last_step"]
        '9'
    """
    out: dict[str, str] = {}
    try:
        entries = order_trajectory(items, "given", warn=False)
    except WaError:
        return out
    steps = [e.step for e in entries]
    if steps and all(s is not None for s in steps):
        known = [s for s in steps if s is not None]
        out["wa_steps"] = json.dumps(known)
        out["wa_first_step"] = str(min(known))
        out["wa_last_step"] = str(max(known))
        out["wa_step_source"] = entries[0].order.removeprefix("the given order (").rstrip(")")
    epochs = [epoch_in_metadata(it.metadata, it.name) for it in items]
    if epochs and all(e is not None for e in epochs):
        out["wa_epochs"] = json.dumps([e.value for e in epochs if e is not None])
    return out
