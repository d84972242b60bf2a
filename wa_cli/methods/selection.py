"""Which checkpoints a method runs on, in which order: the selection every command and verb shares.

``wa average --last 5`` and ``wa.average(..., last=5)`` must pick the same checkpoints, so the
selection lives here, in the library, and the CLI only fills a :class:`Selection` from its flags.
Inputs are opened (headers only), the same checkpoint given twice is used once
(:mod:`wa_cli.select.duplicates`), put in trajectory order when an order or a filter asks for it
(:func:`wa_cli.select.order_trajectory`), and filtered (:func:`wa_cli.select.select_trajectory`).
A dry run returns the result as a :class:`DryRun`, the value the CLI prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from wa_cli.engine.params import bad, choice, flag, integer

if TYPE_CHECKING:  # the reader imports torch; `wa --help` builds a Selection without it
    from wa_cli.engine.report import RunReport
    from wa_cli.io.reader import Checkpoint, ReadOptions
    from wa_cli.methods.inputs import Inputs
    from wa_cli.select import Entry, SelectionRow


@dataclass(frozen=True)
class Selection:
    """Which of the inputs a run uses (the CLI's ``--order``, ``--last``, ... flags).

    Attributes:
        order: ``"auto"``, ``"step"``, ``"name"`` or ``"given"``; ``None``: the given order, or
            ``"auto"`` when a filter is given (:func:`wa_cli.select.order_trajectory`).
        last: keep the last N.
        every: keep every K-th, counted from the first kept.
        from_step, to_step: keep the steps in ``[from_step, to_step]``.
        top_k: keep the k best by ``metric``.
        metric: the metric's name (metadata key, or a column of ``metrics``).
        mode: ``"min"`` or ``"max"`` (default: from the metric's name).
        metrics: a CSV or JSON file of metric values per checkpoint.
        drop_duplicates: use the same checkpoint given twice (a hard link, a copy, Lightning's
            ``last.ckpt``) once, with a warning (``wa average`` and ``wa ema`` do).
    """

    order: str | None = None
    last: int | None = None
    every: int | None = None
    from_step: int | None = None
    to_step: int | None = None
    top_k: int | None = None
    metric: str | None = None
    mode: str | None = None
    metrics: str | os.PathLike[str] | None = None
    drop_duplicates: bool = False

    def __post_init__(self) -> None:
        for name in ("last", "every", "from_step", "to_step", "top_k"):
            integer(name, getattr(self, name))
        for name in ("order", "metric", "mode"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise bad(name, "{param=}{value!r} must be a string", value=value)
        flag("drop_duplicates", self.drop_duplicates)

    @property
    def filters(self) -> bool:
        """Whether a filter that picks checkpoints by position, step or rank is given."""
        picks = (self.last, self.every, self.from_step, self.to_step, self.top_k)
        return any(v is not None for v in picks)

    def default_order(self, dry_run: bool) -> str | None:
        """The order used: the given one; else ``auto`` with a filter; else ``given`` in a dry run
        (it shows steps); else ``None`` (the given order, and no step is read)."""
        if self.order is not None:
            return self.order
        if self.filters:
            return "auto"
        return "given" if dry_run else None


@dataclass
class DryRun:
    """What a run would do, and nothing written: the selected checkpoints and their weights.

    ``order`` says where the steps came from, ``mode`` the direction ``top_k`` ranked by.
    """

    method: str
    selected: int
    of: int
    metric: str | None
    mode: str | None
    order: str
    checkpoints: list[SelectionRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what each input was read from, left out

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "method": self.method,
            "selected": self.selected,
            "of": self.of,
            "metric": self.metric,
            "mode": self.mode,
            "order": self.order,
            "checkpoints": list(self.checkpoints),
            "notes": list(self.notes),
        }


@dataclass
class Selected:
    """The selected checkpoints in trajectory order (``total``: how many inputs there were)."""

    entries: list[Entry[Checkpoint]]
    total: int
    selection: Selection

    @property
    def items(self) -> list[Checkpoint]:
        return [e.item for e in self.entries]

    def plan(self, weights: Sequence[float], method: str) -> DryRun:
        """The dry-run value (and the per-checkpoint table of a real run's report)."""
        from wa_cli.select import mode_from_name, selection_rows

        sel = self.selection
        mode = None
        if sel.top_k is not None:
            mode = sel.mode or (mode_from_name(sel.metric) if sel.metric else None)
        return DryRun(
            method=method,
            selected=len(self.entries),
            of=self.total,
            metric=sel.metric,
            mode=mode,
            order=self.entries[0].order if self.entries else "",
            checkpoints=selection_rows(self.entries, weights),
        )


def select_checkpoints(
    inputs: Inputs, read: ReadOptions, selection: Selection, *, dry_run: bool = False
) -> Selected:
    """Open the inputs and pick the ones ``selection`` keeps; the others are closed."""
    from wa_cli.methods.inputs import open_inputs
    from wa_cli.select import Entry, Mode, load_metrics_file, order_trajectory, select_trajectory
    from wa_cli.select.duplicates import drop_duplicates
    from wa_cli.select.order import Order

    ckpts = open_inputs(inputs, options=read)
    if selection.drop_duplicates:
        ckpts = drop_duplicates(_once(ckpts))
    sel = selection
    try:
        order = sel.default_order(dry_run)
        if order is None:
            entries = [Entry(c, None, "order") for c in ckpts]
        else:
            entries = order_trajectory(ckpts, cast("Order", order))  # checked there
        metrics = load_metrics_file(sel.metrics, sel.metric) if sel.metrics is not None else None
        if sel.mode is not None:
            choice("mode", sel.mode, Mode)
        picked = select_trajectory(entries, sel, metrics)
    except BaseException:
        close_opened(ckpts, inputs, keep=())
        raise
    close_opened(ckpts, inputs, keep=[e.item for e in picked])
    return Selected(picked, len(ckpts), selection)


def _once(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """An opened checkpoint given twice is used once (it must not be closed as a duplicate)."""
    import logging

    seen: set[int] = set()
    out = []
    for c in ckpts:
        if id(c) in seen:
            logging.getLogger(__name__).warning(
                "input '%s' is given more than once; used once", c.path
            )
            continue
        seen.add(id(c))
        out.append(c)
    return out


def close_opened(ckpts: Sequence[Checkpoint], inputs: object, keep: Sequence[Checkpoint]) -> None:
    """Close what was opened here and is not kept (a caller's opened checkpoint stays open)."""
    given = inputs if isinstance(inputs, Sequence) and not isinstance(inputs, str) else [inputs]
    kept = {id(c) for c in keep} | {id(getattr(g, "checkpoint", g)) for g in given}
    for c in ckpts:
        if id(c) not in kept:
            c.close()


def training_order_for_copies(
    selected: Selected, weights: list[float] | None, non_float: str
) -> tuple[list[Checkpoint], list[float] | None, str]:
    """An average's inputs in training order when it is known, weights following them.

    The mean does not depend on the order, but the non-float tensors (``num_batches_tracked``)
    come from the last (or first) input: the last in training order, not in shell order
    (``ckpt_990`` after ``ckpt_1350``). An order or a filter already ordered the entries.
    """
    from wa_cli.select.order import training_order

    items = selected.items
    if selected.selection.filters or selected.selection.order is not None:
        return items, weights, ""
    found = training_order(items)
    if found is None:
        return items, weights, ""
    perm, why = found
    ordered = [items[i] for i in perm]
    w = None if weights is None else [weights[i] for i in perm]
    source = ordered[0] if non_float == "first" else ordered[-1]
    note = (
        f"non-float tensors from the {non_float} input in training order, '{source.name}' ({why})"
    )
    return ordered, w, "" if non_float == "error" else note


def attach_selection(result: RunReport, plan: DryRun, note: str = "") -> RunReport:
    """Put the selection (kept checkpoints, steps, values, weights) into a run's report."""
    result.selection = [dict(row) for row in plan.checkpoints]
    if plan.order:
        result.notes.insert(0, f"order: {plan.order}")
    if plan.mode is not None:
        best = "lowest" if plan.mode == "min" else "highest"
        result.notes.insert(
            0,
            f"kept the {plan.selected} of {plan.of} checkpoint(s) with the {best} "
            f"{plan.metric or 'value'} (--mode {plan.mode})",
        )
    if note:
        result.notes.insert(0, note)
    return result
