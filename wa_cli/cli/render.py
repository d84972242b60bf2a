"""Terminal output: results on stdout, progress, warnings and hints on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from wa_cli.errors import printable

stderr = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def warn(message: str) -> None:
    sys.stderr.write(f"wa: warning: {printable(message)}\n")


def hint(message: str, quiet: bool) -> None:
    if not quiet:
        sys.stderr.write(f"hint: {printable(message)}\n")


@contextlib.contextmanager
def progress_bar(
    label: str, quiet: bool, *, unit: Literal["bytes", "batches"] = "bytes"
) -> Iterator[Callable[[int, int | None], None] | None]:
    """The one progress bar on stderr, only on a terminal and not with -q (else yields None).

    ``unit="bytes"`` shows bytes and throughput and the callback is ``progress(advance, total)``
    (bytes just read); ``unit="batches"`` shows done/total and it is ``progress(done, total)``.
    """
    if quiet or not sys.stderr.isatty():
        yield None
        return
    middle = (
        (DownloadColumn(), TransferSpeedColumn())
        if unit == "bytes"
        else (MofNCompleteColumn(), TimeElapsedColumn())
    )
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), *middle, TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(n: int, total: int | None) -> None:
            if unit == "bytes":
                bar.update(task, advance=n, total=total)
            else:
                bar.update(task, completed=n, total=total)

        yield update


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def emit_run_report(report: Any, as_json: bool, quiet: bool) -> None:
    """The report of a reducing command (average, ema, graft)."""
    for message in report.warnings:
        warn(message)
    if as_json:
        print_json(report.to_json())
    else:
        s = report.stats
        # A rate over a few milliseconds says nothing; show it for runs long enough to measure.
        rate = f" ({s.bytes_read / s.seconds / 1e9:.2f} GB/s)" if s.seconds >= 0.5 else ""
        out = report.outputs[0] if len(report.outputs) == 1 else f"{len(report.outputs)} files"
        out = printable(str(out))
        print(
            f"wrote {out}: {report.method} of {len(report.inputs)} input(s), {report.keys} tensors "
            f"({s.combined} combined, {s.copied} copied), read {human_bytes(s.bytes_read)} "
            f"in {s.seconds:.2f} s{rate}"
        )
        ranks = getattr(report, "ranks", None)
        if ranks:  # torchrun: what each rank read (the line above is the global total)
            shares = ", ".join(f"{human_bytes(r['bytes_read'])}" for r in ranks)
            print(f"  {len(ranks)} ranks read {shares}")
        for note in report.notes:
            print(f"  {printable(note)}")
    for message in report.hints:
        hint(message, quiet)
