"""The soup verbs end to end: resolve the user's model, evaluation and BN data, choose, write.

:func:`greedy_soup_to_file` and :func:`sweep_to_file` choose in memory
(:mod:`wa_cli.methods.soup.greedy`) and then write the chosen average with
:func:`wa_cli.methods.average.average_to_file`, so the output is the engine's exact, streamed,
atomic average with its provenance. :func:`wa_cli.methods.soup.stock.model_stock_to_file` needs no
evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn
from typing_extensions import Required, Unpack

from wa_cli.engine.run import RunReport
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.average import average_to_file
from wa_cli.methods.inputs import Inputs, open_inputs
from wa_cli.methods.request import Request
from wa_cli.methods.soup.evaluate import Evaluator, resolve_evaluator
from wa_cli.methods.soup.greedy import (
    GreedySoup,
    Sweep,
    greedy_soup,
    interpolated,
    parse_grid,
    wise_ft_sweep,
)
from wa_cli.methods.soup.request import SoupWriteArgs, soup_request
from wa_cli.select.direction import Mode

ModelSpec = str | nn.Module | Callable[[], nn.Module]
DataSpec = str | Iterable[Any] | None


def _model(spec: ModelSpec) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    from wa_cli.methods.bn.checkpoint import resolve_model

    build = resolve_model(spec) if isinstance(spec, str) else spec
    model = build()
    if not isinstance(model, nn.Module):
        raise WaError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def _bn_prepare(bn_data: DataSpec) -> Callable[[nn.Module], None] | None:
    """Re-estimate BatchNorm statistics before each score (update_bn over ``bn_data``)."""
    if bn_data is None:
        return None
    from wa_cli.methods.bn.checkpoint import resolve_data
    from wa_cli.methods.bn.recalibrate import update_bn

    source = resolve_data(bn_data) if isinstance(bn_data, str) else bn_data
    batches = source() if callable(source) else source
    if iter(batches) is batches:  # a generator would be empty for the second candidate
        raise WaError.naming(
            "{bn_data} must be re-iterable (a DataLoader, a list of batches or a tensor "
            "file), since every candidate is re-estimated",
            ExitCode.USAGE,
        )

    def prepare(model: nn.Module) -> None:
        update_bn(batches, model)

    return prepare


def _evaluator(options: Mapping[str, Any], metric: str | None) -> Evaluator:
    prepare = _bn_prepare(options.get("bn_data"))
    mode = options.get("mode")
    return resolve_evaluator(options["evaluate"], metric=metric, mode=mode, prepare=prepare)


def _stored_scores(ckpts: Sequence[Any], metric: str | None) -> list[float] | None:
    if metric is None or not all(metric in c.metadata for c in ckpts):
        return None
    try:
        return [float(c.metadata[metric]) for c in ckpts]
    except ValueError:
        return None


class SoupArgs(SoupWriteArgs, total=False):
    """The keyword arguments of :func:`greedy_soup_to_file`."""

    model: Required[ModelSpec]
    evaluate: Required[str | Callable[[nn.Module], Any]]
    metric: str | None
    mode: Mode | None
    bn_data: DataSpec


class SweepArgs(SoupArgs, total=False):
    """The keyword arguments of :func:`sweep_to_file`."""

    grid: Required[str | Sequence[float]]


_OWN = ("model", "evaluate", "metric", "mode", "bn_data")


def greedy_soup_to_file(
    inputs: Inputs, output: str | os.PathLike[str], **options: Unpack[SoupArgs]
) -> tuple[GreedySoup, RunReport]:
    """Greedy soup of ``inputs`` scored by ``evaluate(model)``; the kept inputs' mean to ``output``.

    Args:
        inputs: the fine-tuned checkpoints (paths, a glob, a folder, opened checkpoints).
        output: the soup's ``.safetensors`` file (or a folder with ``max_shard_size``).
        **options: ``model``: an ``nn.Module``, a factory, or ``"module.py:build"``.
            ``evaluate``: ``evaluate(model)`` returns the score (or ``"module.py:fn"``).
            ``metric``: the score's name (a number every input stores in its metadata is used
            as that input's own score: N − 1 evaluations instead of 2N − 1). ``mode``:
            ``"max"`` or ``"min"`` (default: from the name). ``bn_data``: batches to
            re-estimate BatchNorm statistics before each score. Reading (``key``,
            ``strip_prefixes``, ``include``, ...), combining (``dtype``,
            ``precision``, ``device``, ...) and writing (``force``, ``max_shard_size``, ...)
            as for ``wa.average_to_file``, or the option objects ``read=``, ``reduce=`` and
            ``write=`` (older names: ``opts=``, ``out=``).

    Example:
        >>> soup, report = greedy_soup_to_file("ft/*.safetensors", "soup.safetensors",
        ...     model="net.py:build", evaluate="net.py:val_acc")  # doctest: +SKIP
    """
    request = soup_request("greedy_soup_to_file", options, _OWN, ("model", "evaluate"))
    metric = options.get("metric")
    evaluator = _evaluator(options, metric)
    ckpts = open_inputs(inputs, options=request.read)
    model = _model(options["model"])
    soup = greedy_soup(ckpts, model, evaluator, stored_scores=_stored_scores(ckpts, metric))
    report = _write([ckpts[i] for i in soup.kept], output, None, request)
    report.method = "greedy_soup"
    report.params["greedy_soup"] = soup.to_json()
    return soup, report


def sweep_to_file(
    inputs: Inputs, output: str | os.PathLike[str], **options: Unpack[SweepArgs]
) -> tuple[Sweep, RunReport]:
    """WiSE-FT: score (1 − α)·θ_0 + α·θ_1 over ``grid`` (``"0:1:0.1"``); write the best α.

    Arguments as for :func:`greedy_soup_to_file`, plus ``grid``: the α values, ``"0:1:0.1"``
    or a sequence of numbers in [0, 1]; ``inputs`` are θ_0 and θ_1.

    Example:
        >>> sweep, report = sweep_to_file(["zeroshot.safetensors", "ft.safetensors"],
        ...     "wise.safetensors", grid="0:1:0.1", model="net.py:build",
        ...     evaluate="net.py:val_acc")  # doctest: +SKIP
    """
    request = soup_request("sweep_to_file", options, (*_OWN, "grid"), ("model", "evaluate", "grid"))
    grid = options["grid"]
    alphas = parse_grid(grid) if isinstance(grid, str) else [float(a) for a in grid]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise WaError.naming("{sweep} values must lie in [0, 1], got {alphas}", alphas=alphas)
    evaluator = _evaluator(options, options.get("metric"))
    ckpts = open_inputs(inputs, options=request.read)
    sweep = wise_ft_sweep(ckpts, _model(options["model"]), evaluator, alphas, interpolated)
    report = _write(ckpts, output, [1.0 - sweep.best, sweep.best], request)
    report.method = "wise_ft"
    report.params["sweep"] = sweep.to_json()
    return sweep, report


def _write(
    ckpts: Sequence[Any],
    output: str | os.PathLike[str],
    weights: list[float] | None,
    request: Request,
) -> RunReport:
    r, w = request.reduce, request.write
    report = average_to_file(list(ckpts), output, weights=weights, reduce=r, write=w)
    assert isinstance(report, RunReport)  # not a dry run
    return report
