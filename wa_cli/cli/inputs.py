"""Turning command-line flags into the library's option objects, and printing what comes back.

A command parses its flags with these helpers, makes one call to the public API (``import
wa_cli as wa``), and renders the report or the dry-run plan it gets back. No checkpoint is
opened here: selection, dry-run checks and the output layout are the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError, printable

if TYPE_CHECKING:  # the option objects import torch; `wa --help` must not
    import wa_cli as wa


def read_options(
    key: str | None,
    strip_prefix: list[str] | None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_global: list[str] | None = None,
    variant: str | None = None,
    deepspeed_weights: str = "master",
) -> wa.ReadOptions:
    """The reading flags every command shares, as the reader's options."""
    import wa_cli as wa

    return wa.ReadOptions(
        key=key,
        strip_prefixes=tuple(strip_prefix or ()),
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        allow_globals=tuple(allow_global or ()),
        variant=variant,
        deepspeed_weights=deepspeed_weights,
    )


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
    """Print a ``--dry-run`` plan on stdout: JSON, or a summary line and a table."""
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


def emit_reduction(
    result: wa.RunReport | wa.DryRun, selection: wa.Selection, as_json: bool, quiet: bool
) -> None:
    """Print what ``wa average`` / ``wa ema`` got back: the dry-run plan, or the report followed
    by the per-checkpoint table (the kept ones with ``--top-k``; an EMA's weights always)."""
    import wa_cli as wa
    from wa_cli.cli.render import emit_run_report

    if isinstance(result, wa.DryRun):
        emit_selection(result.to_json(), as_json)
        return
    emit_run_report(result, as_json, quiet)
    if as_json:
        return
    if result.method in ("ema", "posthoc_ema"):
        title = "weights in the result:"
    elif selection.top_k is not None:
        title = "kept:"
    else:
        return
    print(f"  {title}")
    for line in format_rows(result.selection, selection.metric):
        print(line)


def posthoc_options(
    sigma_rel: str | None,
    gamma: float | None,
    at_step: int | None,
    quadrature: str | None,
    snapshot_sigma_rels: str | None,
) -> dict[str, Any]:
    """``wa ema``'s post-hoc flags as the library's keywords (empty: an exponential EMA).
    ``sigma_rel`` stays a list here: several widths are several outputs."""
    given = {
        "sigma_rel": None if sigma_rel is None else _numbers("--sigma-rel", sigma_rel),
        "gamma": gamma,
        "at_step": at_step,
        "quadrature": quadrature,
        "snapshot_sigma_rels": None
        if snapshot_sigma_rels is None
        else _numbers("--snapshot-sigma-rels", snapshot_sigma_rels),
    }
    return {k: v for k, v in given.items() if v is not None}


def posthoc_output(output: Path | None, several: bool, dry_run: bool) -> Path | None:
    """``-o`` as given; several ``--sigma-rel`` values need a folder (one file per width)."""
    if several and output is None and not dry_run:
        raise WaError("several --sigma-rel values need -o DIR (one file per width)", ExitCode.USAGE)
    return output


def plot_path(plot: Path, extra: dict[str, Any], several: bool) -> Path:
    """``--plot`` as given, or ``NAME_sigma_S.SUFFIX`` beside it when several widths are drawn."""
    if not several:
        return plot
    return plot.with_name(f"{plot.stem}_sigma_{extra['sigma_rel']:g}{plot.suffix}")


def _numbers(flag: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WaError(
            f"{flag} '{text}': expected numbers separated by commas", ExitCode.USAGE
        ) from None
    if not values:
        raise WaError(f"{flag} is empty", ExitCode.USAGE)
    return values
