"""``wa graft``: entropy-weighted layer-wise grafting of two or more runs (Filter Grafting)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from wa_cli.cli import options as opt

if TYPE_CHECKING:
    from wa_cli import GraftPlan


def graft_command(
    inputs: opt.Inputs,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            show_default=False,
            help="Output file (2 inputs) or folder (3+).",
            metavar="PATH",
        ),
    ] = None,
    rule: Annotated[
        Literal["module", "tensor", "paper"],
        typer.Option(
            "--rule",
            help="module (default)|tensor|paper (docs/commands.md).",
            metavar="RULE",
            show_default=False,
        ),
    ] = "module",
    a: Annotated[
        float,
        typer.Option(
            "--a", help="Amplitude A, 0 <= A < 1 (default: 0.4).", metavar="A", show_default=False
        ),
    ] = 0.4,
    c: Annotated[
        float,
        typer.Option(
            "--c", help="Steepness c > 0 (default: 500).", metavar="C", show_default=False
        ),
    ] = 500.0,
    bins: opt.Bins = 10,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the α table; write nothing.")
    ] = False,
    dtype: opt.DType = None,
    precision: opt.Precision = "auto",
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
    """Graft runs: u' = α u + (1 - α) v, α = (A/π) arctan(c (H(u) - H(v))) + 1/2.

    Two inputs write one model; three or more graft as a ring into the -o folder.

    \b
    Example:
      wa graft run_a/last.safetensors run_b/last.safetensors -o g.safetensors
    """
    import wa_cli as wa
    from wa_cli.cli.inputs import read_options
    from wa_cli.cli.render import emit_run_report, hint, print_json, progress_bar, warn
    from wa_cli.errors import WaError

    if output is None and not dry_run:
        raise WaError("wa graft needs -o OUT (a file, or a folder for 3+ inputs), or --dry-run")
    reduce = wa.ReduceOptions.checked(dtype=dtype, precision=precision, device=device)
    write = wa.WriteOptions.checked(force=force)
    with progress_bar("grafting", quiet) as progress:
        result = wa.graft_to_file(
            inputs, output, rule=rule, a=a, c=c, bins=bins,
            read=read_options(key, strip_prefix, include, exclude, allow_global, variant),
            reduce=reduce, write=write.with_progress(progress), dry_run=dry_run,
        )  # fmt: skip
    plan = result if isinstance(result, wa.GraftPlan) else result.plan
    for message in plan.warnings:  # after the output checks: an error stays one line
        warn(message)
    if isinstance(result, wa.GraftPlan):
        if json:
            print_json({**_plan_json(plan), "dry_run": True, "outputs": plan.outputs})
        else:
            _print_alpha_table(plan)
        return
    reports = result.parts
    if json:
        runs = [r.to_json() for r in reports]
        outputs = [p for r in reports for p in r.outputs]
        print_json({**_plan_json(plan), "dry_run": False, "outputs": outputs, "runs": runs})
        for message in reports[0].hints:
            hint(message, quiet)
        return
    for i, report in enumerate(reports):
        if i < len(reports) - 1:
            report.hints = []  # the BatchNorm hint once, after the last output
        emit_run_report(report, False, quiet)


def _plan_json(plan: GraftPlan) -> dict[str, object]:
    return {
        "method": "graft",
        **plan.params(),
        "inputs": [str(ck.path) for ck in plan.checkpoints],
        "names": plan.names,
        "pairs": [list(p) for p in plan.pairs],
        "alphas": [row.to_json() for row in plan.rows],
        "warnings": plan.warnings,
    }


def _print_alpha_table(plan: GraftPlan) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from wa_cli.errors import printable

    table = Table(
        title=f"graft α (rule {plan.rule}, A={plan.a:g}, c={plan.c:g}, {plan.bins} bins; "
        "H in nats)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column("module" if plan.rule != "tensor" else "tensor")
    table.add_column("tensors", justify="right")
    table.add_column("α from")
    for name in plan.names:
        table.add_column(Text(f"H {printable(name)}"), justify="right")
    for r, d in plan.pairs:
        table.add_column(Text(printable(f"α {plan.names[r]}<-{plan.names[d]}")), justify="right")
    for row in plan.rows:
        hs: list[float | None] = list(row.entropies) if row.entropies else [None] * len(plan.names)
        table.add_row(
            Text(printable(row.name)),  # Text: a name is never read as rich markup
            str(len(row.keys)),
            Text(printable(row.source or "(fixed)")),
            *("-" if h is None else f"{h:.4f}" for h in hs),
            *(f"{x:.4f}" for x in row.alphas),
        )
    width = 60 + max((len(r.name) + len(r.source or "") for r in plan.rows), default=0)
    Console(highlight=False, soft_wrap=False, width=width + 40 * len(plan.names)).print(table)
