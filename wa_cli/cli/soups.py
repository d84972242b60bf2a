"""``wa average --greedy | --sweep | --model-stock``: the soup flags, one library call, a table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError

if TYPE_CHECKING:  # the option objects import torch; `wa --help` must not
    import wa_cli as wa


@dataclass(frozen=True)
class SoupFlags:
    """The soup flags of ``wa average`` as given."""

    greedy: bool
    sweep: str | None
    model_stock: str | None
    model: str | None
    evaluate: str | None
    bn_data: str | None
    metric: str | None
    mode: str | None

    @property
    def chosen(self) -> str | None:
        """Which soup was asked for (at most one), or None."""
        given = [
            name
            for name, on in (
                ("--greedy", self.greedy),
                ("--sweep", self.sweep is not None),
                ("--model-stock", self.model_stock is not None),
            )
            if on
        ]
        if len(given) > 1:
            raise WaError(f"give one of {' and '.join(given)}, not both", ExitCode.USAGE)
        if not given:
            for flag, value in (("--model", self.model), ("--eval", self.evaluate),
                                ("--bn-data", self.bn_data)):  # fmt: skip
                if value is not None:
                    raise WaError(f"{flag} scores a soup: add --greedy or --sweep", ExitCode.USAGE)
            return None
        return given[0]

    def refuse_with(self, **flags: Any) -> None:
        """Soups choose their own inputs: selection flags and --weights do not combine."""
        for name, value in flags.items():
            if value not in (None, False):
                flag = "--" + name.replace("_", "-")
                raise WaError(f"{flag} does not combine with {self.chosen}", ExitCode.USAGE)
        scored = self.chosen in ("--greedy", "--sweep")
        if scored and (self.model is None or self.evaluate is None):
            raise WaError(
                f"{self.chosen} scores candidates: give --model module.py:build and "
                "--eval module.py:score",
                ExitCode.USAGE,
            )
        if not scored and (self.evaluate is not None or self.model is not None):
            raise WaError("--model-stock needs no evaluation: drop --model/--eval", ExitCode.USAGE)


def run_soup(
    soup: SoupFlags,
    inputs: list[str],
    output: Path | None,
    read: wa.ReadOptions,
    reduce: wa.ReduceOptions,
    write: wa.WriteOptions,
    as_json: bool,
    quiet: bool,
) -> None:
    """Make the one library call for the soup asked for, then print its report and table."""
    import wa_cli as wa
    from wa_cli.cli.render import emit_run_report

    if output is None:
        raise WaError("a soup writes its result: give -o FILE", ExitCode.USAGE)
    mode = soup.mode  # checked by the library ("max" or "min", else from the name)
    scoring = dict(model=soup.model, evaluate=soup.evaluate, metric=soup.metric, mode=mode,
                   bn_data=soup.bn_data, read=read, reduce=reduce, write=write)  # fmt: skip
    table: dict[str, Any] | None = None
    if soup.chosen == "--greedy":
        chosen, report = wa.greedy_soup_to_file(inputs, output, **scoring)  # type: ignore[arg-type]
        table = chosen.to_json()
    elif soup.chosen == "--sweep":
        curve, report = wa.sweep_to_file(inputs, output, grid=soup.sweep, **scoring)  # type: ignore[arg-type]
        table = curve.to_json()
    else:
        base = str(soup.model_stock)
        report = wa.model_stock_to_file(base, inputs, output, read=read, reduce=reduce, write=write)
    emit_run_report(report, as_json, quiet)
    if as_json or table is None:
        return
    if "steps" in table:
        print(f"  {'input':<32} {'own score':>12} {'soup score':>12}  kept")
        for s in table["steps"]:
            kept = "yes" if s["kept"] else "no"
            print(f"  {s['input']:<32} {s['score']:>12.6g} {s['soup_score']:>12.6g}  {kept}")
        print(f"  {table['evaluations']} evaluations; ties are kept")
    else:
        print(f"  {'alpha':>8} {'score':>12}")
        for point in table["curve"]:
            mark = "  <- best" if point["alpha"] == table["best_alpha"] else ""
            print(f"  {point['alpha']:>8.4g} {point['score']:>12.6g}{mark}")
