"""Turning command-line arguments into opened checkpoints, a selection, and parsed numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from wa_cli.errors import ExitCode, WaError, printable
from wa_cli.params import choice
from wa_cli.select import expand_inputs

if TYPE_CHECKING:  # the reader imports torch; `wa --help` must not
    from wa_cli.engine.report import RunReport
    from wa_cli.io.reader import Checkpoint, ReadOptions
    from wa_cli.select import Entry
    from wa_cli.select.order import Order


def read_options(
    *,
    key: str | None,
    strip_prefix: list[str] | None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_global: list[str] | None = None,
    variant: str | None = None,
    deepspeed_weights: str = "master",
) -> ReadOptions:
    """The reading flags every command shares, as the reader's options."""
    from wa_cli.io.reader import ReadOptions

    return ReadOptions(
        key=key,
        strip_prefixes=tuple(strip_prefix or ()),
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        allow_globals=tuple(allow_global or ()),
        variant=variant,
        deepspeed_weights=deepspeed_weights,
    )


def open_inputs(
    args: list[str],
    *,
    key: str | None,
    strip_prefix: list[str] | None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_global: list[str] | None = None,
    variant: str | None = None,
    deepspeed_weights: str = "master",
    dedupe: bool = False,
) -> list[Checkpoint]:
    """Expand globs and folders (natural order) and open every checkpoint's header.

    The library's own input handling (:func:`wa_cli.methods.inputs.open_inputs`), so
    ``wa average 'runs/*.safetensors'`` and ``wa.average("runs/*.safetensors")`` agree.
    ``dedupe`` (trajectory commands): the same checkpoint twice (a hard link, a copy, Lightning's
    ``last.ckpt``) is used once, and a warning names it (:mod:`wa_cli.select.duplicates`).
    """
    from wa_cli.methods.inputs import open_inputs as open_library_inputs
    from wa_cli.select.duplicates import drop_duplicates

    options = read_options(
        key=key,
        strip_prefix=strip_prefix,
        include=include,
        exclude=exclude,
        allow_global=allow_global,
        variant=variant,
        deepspeed_weights=deepspeed_weights,
    )
    if not args:
        expand_inputs(args)  # the usage error for no inputs
    ckpts = open_library_inputs(args, options=options)
    return drop_duplicates(ckpts) if dedupe else ckpts


def parse_weight_list(text: str | None) -> list[float] | None:
    """``"1,2,1"`` → ``[1.0, 2.0, 1.0]``; counts and signs are checked by the library."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise WaError(
            f"cannot read --weights {text!r} (expected numbers like 1,2,1)", ExitCode.USAGE
        ) from None


def require_output(output: Path | None, command: str) -> Path:
    """``-o`` may be left out only with ``--dry-run``."""
    if output is None:
        raise WaError(
            f"wa {command} needs -o/--output FILE (only --dry-run runs without one)",
            ExitCode.USAGE,
        )
    return output


@dataclass(frozen=True)
class Selection:
    """The selection flags shared by ``wa average`` and ``wa ema``."""

    order: str | None = None
    last: int | None = None
    every: int | None = None
    from_step: int | None = None
    to_step: int | None = None
    top_k: int | None = None
    metric: str | None = None
    mode: str | None = None
    metrics: Path | None = None

    @property
    def filters(self) -> bool:
        """Whether a flag that picks checkpoints by position, step or rank is given."""
        picks = (self.last, self.every, self.from_step, self.to_step, self.top_k)
        return any(v is not None for v in picks)


def select_inputs(
    ckpts: list[Checkpoint], sel: Selection, *, default_order: str | None
) -> list[Entry[Checkpoint]]:
    """Order and filter opened checkpoints; the ones not selected are closed.

    ``default_order`` applies when ``--order`` is not given; ``None`` keeps the given order and
    reads no steps (so a plain ``wa average`` never depends on step metadata).
    """
    from wa_cli.select import Entry, Mode, load_metrics_file, order_trajectory, select_trajectory

    order = sel.order or default_order
    if order is None:
        entries = [Entry(c, None, "order") for c in ckpts]
    else:
        entries = order_trajectory(ckpts, cast("Order", order))  # checked there
    metrics = load_metrics_file(sel.metrics, sel.metric) if sel.metrics is not None else None
    picked = select_trajectory(
        entries,
        last=sel.last,
        every=sel.every,
        from_step=sel.from_step,
        to_step=sel.to_step,
        top_k=sel.top_k,
        metric=sel.metric,
        mode=None if sel.mode is None else choice("mode", sel.mode, Mode),
        metrics=metrics,
    )
    kept = {id(e.item) for e in picked}
    for c in ckpts:
        if id(c) not in kept:
            c.close()
    return picked


def training_order_for_copies(
    entries: Sequence[Entry[Checkpoint]],
    weights: list[float] | None,
    sel: Selection,
    non_float: str = "last",
) -> tuple[list[Checkpoint], list[float] | None, str]:
    """``wa average``'s inputs in training order when it is known, weights following them.

    The mean does not depend on the order, but the non-float tensors (``num_batches_tracked``)
    come from the last (or first) input: the last in training order, not in shell order
    (``ckpt_990`` after ``ckpt_1350``). A selection already ordered the entries.
    """
    from wa_cli.select.order import training_order

    items = [e.item for e in entries]
    if sel.filters or sel.order is not None:
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


def output_layout(
    items: Sequence[Checkpoint],
    *,
    shard_name: str | None,
    copy_config: bool,
    max_shard_size: str | None,
) -> tuple[str | None, list[Path]]:
    """The shard base name and the config files to copy for ``-o DIR --max-shard-size``.

    ``items`` are in training order when it is known: the newest input is the last one.
    """
    import logging

    from wa_cli.io.companions import config_files, shard_name_of

    if max_shard_size is None:
        if copy_config:
            raise WaError(
                "--copy-config writes a folder that from_pretrained(DIR) reads: add "
                "--max-shard-size (e.g. 5GB)",
                ExitCode.USAGE,
            )
        return shard_name, []
    name = shard_name or (shard_name_of(items[0].files) if items else None)
    if not copy_config or not items:
        return name, []
    newest = items[-1]
    folder = Path(newest.path) if Path(newest.path).is_dir() else Path(newest.path).parent
    files = config_files(folder)
    if not any(f.name in ("config.json", "adapter_config.json") for f in files):
        logging.getLogger("wa_cli").warning(
            "--copy-config: '%s' holds no config.json (from_pretrained needs one)", folder
        )
    return name, files


def note_copies(result: RunReport, copies: Sequence[Path]) -> RunReport:
    """The report, with one line naming the config files copied beside the shards (if any)."""
    if copies:
        folder = copies[0].parent
        result.notes.append(f"copied {', '.join(f.name for f in copies)} from '{folder}'")
    return result


def dry_run_checks(
    items: Sequence[Checkpoint],
    output: Path | None,
    *,
    keys: str,
    non_float: str,
    dtype: Any,
    max_shard_size: str | None,
) -> list[str]:
    """Every check a real run makes before writing: keys, shapes, dtypes, the non-float policy,
    the output's name and that it is no input. ``--dry-run`` fails exactly where the run would.
    Returns the plan's notes (which file of each input is read, what is left out).
    """
    from wa_cli.engine.plan import KeysMode, NonFloatPolicy, build_plan
    from wa_cli.engine.run import check_output_is_not_input
    from wa_cli.io.writer import check_output_name, parse_size

    sharded = max_shard_size is not None
    if max_shard_size is not None:
        parse_size(max_shard_size)
    plan = build_plan(
        items,
        keys=choice("keys", keys, KeysMode),
        non_float=choice("non_float", non_float, NonFloatPolicy),
        dtype=dtype,
    )
    if output is not None:
        check_output_name(output, sharded=sharded)
        check_output_is_not_input(output, items)
    return list(plan.notes)


def selection_report(
    entries: Sequence[Entry[Checkpoint]],
    weights: Sequence[float],
    *,
    method: str,
    total: int,
    metric: str | None,
    sel: Selection | None = None,
) -> dict[str, Any]:
    """The ``--dry-run`` report (and the per-checkpoint table of a real run's report).

    ``order`` says where the steps came from (recorded inside the files, the names, the
    folders, epochs used as steps...), and ``mode`` the direction ``--top-k`` ranked by.
    """
    from wa_cli.select import mode_from_name, selection_rows

    mode = None
    if sel is not None and sel.top_k is not None:
        mode = sel.mode or (mode_from_name(metric) if metric else None)
    return {
        "dry_run": True,
        "method": method,
        "selected": len(entries),
        "of": total,
        "metric": metric,
        "mode": mode,
        "order": entries[0].order if entries else "",
        "checkpoints": selection_rows(entries, weights),
    }


def attach_selection(result: Any, report: dict[str, Any]) -> None:
    """Put the selection (kept checkpoints, steps, values, weights) into a run's report."""
    result.selection = report["checkpoints"]
    if report["order"]:
        result.notes.insert(0, f"order: {report['order']}")
    if report["mode"] is not None:
        best = "lowest" if report["mode"] == "min" else "highest"
        result.notes.insert(
            0,
            f"kept the {report['selected']} of {report['of']} checkpoint(s) with the {best} "
            f"{report['metric'] or 'value'} (--mode {report['mode']})",
        )


def format_rows(rows: Sequence[dict[str, Any]], metric: str | None) -> list[str]:
    """A plain-text table: checkpoint, step, metric value (when read), weight."""
    show_value = any(r["value"] is not None for r in rows)
    header = ["#", "checkpoint", "step"] + ([metric or "value"] if show_value else []) + ["weight"]
    table = [header]
    for i, r in enumerate(rows, start=1):
        cells = [str(i), r["path"], "-" if r["step"] is None else str(r["step"])]
        if show_value:
            cells.append("-" if r["value"] is None else f"{r['value']:.6g}")
        cells.append(f"{r['weight']:.6f}")
        table.append(cells)
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = []
    for row in table:
        # Left-align names, right-align numbers.
        cells = [
            cell.ljust(w) if c == 1 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def emit_selection(report: dict[str, Any], as_json: bool) -> None:
    """Print a ``--dry-run`` report on stdout: JSON, or a summary line and a table."""
    from wa_cli.cli.render import print_json

    if as_json:
        print_json(report)
        return
    rows = report["checkpoints"]
    order = f" ({report['order']})" if report["order"] else ""
    kept = ""
    if report["mode"] is not None:
        best = "lowest" if report["mode"] == "min" else "highest"
        kept = f"; kept the {best} {report['metric'] or 'value'} (--mode {report['mode']})"
    print(
        f"dry run: {report['method']} of {report['selected']} of {report['of']} checkpoint(s)"
        f"{order}{kept}; nothing written"
    )
    for line in format_rows(rows, report["metric"]):
        print(printable(line))
    for note in report.get("notes") or ():
        print(printable(f"  {note}"))
