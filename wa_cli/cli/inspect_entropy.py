"""``wa inspect-entropy``: per-layer weight entropy, and with two checkpoints a graft preview."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from wa_cli.cli import options as opt

if TYPE_CHECKING:
    from wa_cli import EntropyReport

BAR_WIDTH = 8
_EIGHTHS = " ▏▎▍▌▋▊▉"


def inspect_entropy_command(
    inputs: opt.Inputs,
    by: Annotated[
        Literal["tensor", "module"],
        typer.Option(
            "--by", help="Rows per tensor (default) or module.", metavar="BY", show_default=False
        ),
    ] = "tensor",
    pattern: Annotated[
        str | None,
        typer.Option("--filter", help="Keep rows whose name matches REGEX.", metavar="REGEX"),
    ] = None,
    sort: Annotated[
        Literal["order", "name", "entropy"],
        typer.Option(
            "--sort", help="order (default)|name|entropy.", metavar="SORT", show_default=False
        ),
    ] = "order",
    bins: opt.Bins = 10,
    base: Annotated[
        Literal["e", "2"],
        typer.Option(
            "--base",
            help="Logarithm: e (nats, default) or 2 (bits).",
            metavar="BASE",
            show_default=False,
        ),
    ] = "e",
    l1_threshold: Annotated[
        float,
        typer.Option(
            "--l1-threshold",
            help="Filters with L1 norm below T are invalid.",
            metavar="T",
            show_default=False,
        ),
    ] = 0.1,
    a: Annotated[
        float,
        typer.Option(
            "--a", help="Graft amplitude of the α column (0.4).", metavar="A", show_default=False
        ),
    ] = 0.4,
    c: Annotated[
        float,
        typer.Option(
            "--c", help="Graft steepness of the α column (500).", metavar="C", show_default=False
        ),
    ] = 500.0,
    keys: opt.Keys = "strict",
    csv: Annotated[bool, typer.Option("--csv", help="Print the rows as CSV on stdout.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also write a plot: .png, .pdf, .svg, .eps or .ps (needs matplotlib).",
            metavar="FILE",
        ),
    ] = None,
    device: opt.Device = "auto",
    key: opt.PickleKey = None,
    strip_prefix: opt.StripPrefix = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    allow_global: opt.AllowGlobal = None,
    variant: opt.Variant = None,
    force: opt.Force = False,
    json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Weight entropy per tensor or module (Filter Grafting's layer information).

    With two or more checkpoints: side by side, with the α `wa graft` would use.

    \b
    Example:
      wa inspect-entropy run_a/last.safetensors run_b/last.safetensors --by module
    """
    import wa_cli as wa
    from wa_cli.cli.inputs import read_options
    from wa_cli.cli.render import print_json
    from wa_cli.errors import WaError

    if json and csv:
        raise WaError("--json and --csv both print on stdout; pick one")
    report = wa.entropy_report(
        inputs, by=by, bins=bins, base=None if base == "e" else 2.0, l1_threshold=l1_threshold,
        pattern=pattern, sort=sort, keys=keys, a=a, c=c, device=device,
        read=read_options(key, strip_prefix, include, exclude, allow_global, variant), plot=plot,
        force=force,
    )  # fmt: skip
    if json:
        print_json(report.to_json())
    elif csv:
        typer.echo(report.to_csv(), nl=False)
    else:
        _print_table(report)
    if plot is not None and not quiet:
        typer.echo(f"wrote {plot}", err=True)


def bar(value: float, top: float, width: int = BAR_WIDTH) -> str:
    """A bar of ``width`` cells filled to value/top, in eighths of a cell."""
    frac = 0.0 if top <= 0 else min(max(value / top, 0.0), 1.0)
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def _print_table(report: EntropyReport) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from wa_cli.errors import printable

    multi = len(report.checkpoints) > 1
    table = Table(
        title=f"weight entropy ({report.unit}, {report.bins} bins, max {report.max_entropy:.3f})",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column(report.by)
    table.add_column("shape")
    table.add_column("dtype")
    for name in report.checkpoints:
        title = Text(f"H {printable(name)}") if multi else "entropy"
        table.add_column(title, justify="left", no_wrap=True)
    invalid_title = f"invalid (<{report.l1_threshold:g})"
    table.add_column(invalid_title, justify="right")
    for pair in report.pairs:
        table.add_column(f"α {report.pair_label(pair)}", justify="right")
    for r in report.rows:
        cells: list[Any] = [Text(printable(r.name)), "×".join(map(str, r.shape)) or "()", r.dtype]
        for h in r.entropy:
            cells.append("-" if h is None else f"{h:.3f} {bar(h, report.max_entropy)}")
        if r.filters is None:
            cells.append("")
        else:
            counts = " / ".join("-" if n is None else str(n) for n in r.invalid_filters)
            cells.append(f"{counts} of {r.filters}")
        cells.extend("-" if x is None else f"{x:.3f}" for x in r.alpha)
        table.add_row(*cells)
    Console(highlight=False, soft_wrap=False, width=max(100, _table_width(report))).print(table)


def _table_width(report: EntropyReport) -> int:
    name = max((len(r.name) for r in report.rows), default=6)
    return name + 40 + len(report.checkpoints) * (BAR_WIDTH + 20) + len(report.pairs) * 30
