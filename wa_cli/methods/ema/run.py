"""Running an EMA over checkpoints through the averaging engine (one pass, no running state).

Part of :mod:`wa_cli.methods.ema`: the coefficients of :mod:`wa_cli.methods.ema.coefficients` become
the per-key weights of :func:`wa_cli.methods.trajectory.reduce_to_file`, the engine run
``wa average`` uses, so precision, non-float policy, devices, progress, provenance and atomic
output are the same.
Lookahead (Zhang et al. 2019, arXiv 1907.08610) slow weights are the EMA with decay 1 − α.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from wa_cli.errors import ExitCode, WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.methods.ema.coefficients import ema_coefficients, lookahead_decay
from wa_cli.methods.request import ReadArgs, ReduceArgs, Request, SelectArgs, WriteArgs
from wa_cli.methods.selection import DryRun, Selected, close_opened, select_checkpoints
from wa_cli.methods.trajectory import Weigh, Weighing, check_run, reduce_to_file, run_trajectory

if TYPE_CHECKING:
    # The coefficients need no torch, and `wa ema --help` (which shows LOOKAHEAD_HELP) must not
    # pay for importing it: the engine is imported inside the functions that run it.
    import torch

    from wa_cli.engine.combine import WeightsFn
    from wa_cli.engine.options import WriteOptions
    from wa_cli.engine.plan import KeyPlan
    from wa_cli.engine.run import RunReport
    from wa_cli.io.reader import Checkpoint
    from wa_cli.methods.inputs import Inputs


def decay_options(
    decay: float | None, decay_per_step: float | None, half_life: float | None, alpha: float | None
) -> dict[str, float | None]:
    """Keywords for :func:`ema_coefficients`, Lookahead's ``alpha`` turned into a decay.

    Example:
        >>> decay_options(None, None, None, 0.5)
        {'decay': 0.5, 'decay_per_step': None, 'half_life': None}
    """
    if alpha is not None:
        if decay is not None:
            raise WaError.naming(
                "give {alpha} or {decay}, not both ({alpha=}A is {decay=}1-A)", ExitCode.USAGE
            )
        decay = lookahead_decay(alpha)
    return {"decay": decay, "decay_per_step": decay_per_step, "half_life": half_life}


def ema_weights(
    steps: Sequence[int | None] | None,
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
) -> WeightsFn:
    """The engine's per-key weights for an EMA over checkpoints in trajectory order.

    A key held by every input gets :func:`ema_coefficients` of the whole trajectory. A key held
    by only some inputs (``--keys union``) gets the EMA of the sub-trajectory that holds it:
    its first holder is its e_0, and step-aware decay uses the gaps between holders. (Merely
    renormalising the full coefficients would fail for decay 0 when the last input lacks the
    key, and would weigh a key that appears mid-run as if it had been there all along.)

    Args:
        steps: The inputs' training steps (needed by step-aware decay only).
        decay: Fixed decay D.
        decay_per_step: Decay per training step d.
        half_life: Half-life in steps.

    Returns:
        A function from a :class:`~wa_cli.engine.plan.KeyPlan` to one weight per ``entry.sources``.

    Example:
        >>> fn = ema_weights([0, 10, 20], decay=0.5)
        >>> fn(plan.keys[0])  # a key all three inputs hold  # doctest: +SKIP
        [0.25, 0.25, 0.5]
    """
    cache: dict[tuple[int, ...], list[float]] = {}

    def for_entry(entry: KeyPlan) -> list[float]:
        sources = entry.sources
        if sources not in cache:
            sub = None if steps is None else [steps[i] for i in sources]
            cache[sources] = ema_coefficients(
                len(sources),
                decay=decay,
                decay_per_step=decay_per_step,
                half_life=half_life,
                steps=sub,
            )
        return cache[sources]

    return for_entry


def _steps_of(ckpts: Sequence[Checkpoint], step_aware: bool) -> list[int | None] | None:
    from wa_cli.select import order_trajectory

    if not step_aware:
        return None
    # "given" keeps the caller's order and reads steps from metadata, else from the names.
    return [e.step for e in order_trajectory(ckpts, "given")]


def _given_steps(steps: object, selected: Selected) -> list[int | None] | None:
    """The caller's ``steps``, one per selected input (only without a selection or order)."""
    if steps is None:
        return None
    if isinstance(steps, str) or not isinstance(steps, Sequence):
        raise WaError.naming("{steps=}{got!r} must be a sequence of ints", got=steps)
    if selected.selection.filters or selected.selection.order is not None:
        raise WaError.naming(
            "give {steps=} or a selection (order, last, every, ...), not both: a selection "
            "reads the steps from the inputs",
            ExitCode.USAGE,
        )
    if len(steps) != len(selected.entries):
        raise WaError.naming(
            "got {count} {steps} for {n} checkpoints (give one step per checkpoint)",
            ExitCode.USAGE,
            count=len(steps),
            n=len(selected.entries),
        )
    return list(steps)


def _posthoc(options: Mapping[str, Any]) -> Any:
    """The post-hoc (power-profile) request, or None for an exponential EMA."""
    if not any(options.get(name) is not None for name in _POSTHOC):
        return None  # no torch import for the exponential EMA's coefficients
    from wa_cli.methods.ema.posthoc import PosthocRequest

    return PosthocRequest.of(options)


def _weigh(options: Mapping[str, Any], dry_run: bool) -> Weigh:
    """The EMA's coefficients for the selected inputs (in trajectory order when ordered)."""
    posthoc = _posthoc(options)
    if posthoc is not None:
        return posthoc.weighing
    decays = decay_options(
        options.get("decay"), options.get("decay_per_step"), options.get("half_life"),
        options.get("alpha"),
    )  # fmt: skip

    def weigh(selected: Selected) -> Weighing:
        steps = _given_steps(options.get("steps"), selected)
        if steps is None and selected.selection.default_order(dry_run) is not None:
            steps = [e.step for e in selected.entries]
        elif steps is None:
            steps = _steps_of(selected.items, decays["decay"] is None)
        # Computed before the plan so that a bad decay fails before any header is compared.
        coefficients = ema_coefficients(len(selected.entries), steps=steps, **decays)
        if options.get("quadrature") == "linear":  # the exponential kernel between saves
            linear = _linear_exponential(steps, decays)
            return Weighing(selected.items, linear, "ema", given_weights=linear, steps=steps)
        return Weighing(selected.items, coefficients, "ema", steps=steps)

    return weigh


def _linear_exponential(
    steps: Sequence[int | None] | None, decays: Mapping[str, Any]
) -> list[float]:
    """Weights of the exponential kernel ending at the last step, integrated against the
    piecewise-linear interpolation of the saved trajectory (docs/posthoc-ema.md: the measured
    error of both rules); ``step`` is today's EMA recursion over the saved checkpoints."""
    import math

    from wa_cli.methods.ema.power import Kernel, quadrature_weights

    if decays["decay"] is not None or steps is None or any(s is None for s in steps):
        raise WaError.naming(
            "{quadrature=}'linear' integrates over training steps: give {half_life} or "
            "{decay_per_step}, and inputs with steps",
            ExitCode.USAGE,
        )
    if decays["half_life"] is not None:
        rate = math.log(2.0) / decays["half_life"]
    else:
        rate = -math.log(decays["decay_per_step"]) if decays["decay_per_step"] > 0 else math.inf
    saved = [int(s) for s in steps if s is not None]
    if not math.isfinite(rate) or rate <= 0:
        raise WaError.naming("{quadrature=}'linear' needs a decay per step in (0, 1)",
                             ExitCode.USAGE)  # fmt: skip
    return quadrature_weights(saved, Kernel(float(saved[-1]), rate=rate), "linear")


def _plan(weighed: Weighing, request: Request, options: Mapping[str, Any]) -> Any:
    from wa_cli.engine.plan import build_plan

    r = request.reduce
    plan = build_plan(weighed.items, keys=r.keys, non_float=r.non_float, dtype=r.dtype)
    decays = decay_options(
        options.get("decay"), options.get("decay_per_step"), options.get("half_life"),
        options.get("alpha"),
    )  # fmt: skip
    if weighed.given_weights is not None:  # post-hoc or linear quadrature: computed weights
        from wa_cli.methods.average import source_weights

        return plan, decays, source_weights(weighed.given_weights)
    return plan, decays, ema_weights(weighed.steps, **decays)


_POSTHOC = ("sigma_rel", "gamma", "at_step", "quadrature", "snapshot_sigma_rels")


class EmaArgs(ReadArgs, SelectArgs, ReduceArgs, total=False):
    """The keyword arguments of :func:`ema`."""

    decay: float | None
    decay_per_step: float | None
    half_life: float | None
    alpha: float | None
    steps: Sequence[int | None] | None
    sigma_rel: float | Sequence[float] | None
    gamma: float | None
    at_step: int | None
    quadrature: str | None
    snapshot_sigma_rels: Sequence[float] | None
    dry_run: bool


class EmaToFileArgs(EmaArgs, WriteArgs, total=False):
    """The keyword arguments of :func:`ema_to_file`."""


_OWN = ("decay", "decay_per_step", "half_life", "alpha", "steps", *_POSTHOC)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def ema(inputs: Inputs, **options: Unpack[EmaArgs]) -> Iterator[tuple[str, torch.Tensor]] | DryRun:
    """EMA of checkpoints in the order given; yields ``(key, tensor)`` pairs one at a time.

    e_0 = the first input, e_i = β_i e_{i−1} + (1 − β_i) θ_i, computed in one pass as
    Σ c_i θ_i (:func:`ema_coefficients`). Give exactly one of ``decay``, ``decay_per_step``,
    ``half_life`` or ``alpha`` (Lookahead's slow step, = decay 1 − α). Step-aware decay reads
    ``steps`` from each input's ``step`` metadata (else the last number in its name) unless
    given. The inputs are not reordered unless ``order`` or a selection is given (``wa ema``
    passes ``order="auto"``): sort them with ``order="auto"``.

    Args:
        inputs: Checkpoint paths or opened checkpoints, oldest first.
        **options: ``decay`` (fixed decay D in [0, 1]), ``decay_per_step`` (decay per training
            step d in [0, 1]), ``half_life`` (steps after which a checkpoint's weight halves),
            ``alpha`` (Lookahead slow-weight step α in (0, 1]), ``steps`` (the inputs' training
            steps; default: read from the inputs). ``keys``, ``non_float``, ``dtype``,
            ``precision``, ``device``, reading, selection and ``dry_run`` as for
            :func:`wa_cli.methods.average.average`.

    Returns:
        An iterator of ``(key, tensor)``; ``dict(ema(...))`` is a state dict. With
        ``dry_run=True``, the :class:`~wa_cli.methods.selection.DryRun` plan.

    Example:
        >>> paths = ["ckpt_100.safetensors", "ckpt_200.safetensors"]
        >>> state = dict(ema(paths, decay=0.9))  # doctest: +SKIP
    """
    from wa_cli.engine.reducers import linear_combination
    from wa_cli.engine.run import assemble

    request = Request.of("ema", options, own=_OWN)
    weigh = _weigh(options, request.dry_run)
    selected = select_checkpoints(inputs, request.read, request.selection, dry_run=request.dry_run)
    notes: list[str] = []
    try:
        weighed = weigh(selected)
        if request.dry_run:
            notes = check_run(weighed.items, None, request)
    except BaseException:
        close_opened(selected.items, inputs, keep=())
        raise
    if request.dry_run:
        close_opened(selected.items, inputs, keep=())
        dry = selected.plan(weighed.weights, weighed.method)
        dry.notes = notes
        return dry
    plan, _, weights = _plan(weighed, request, options)
    r = request.reduce
    chunks = linear_combination(plan, weights, precision=r.precision, device=r.device)
    return assemble(plan, chunks)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def ema_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str] | None = None,
    **options: Unpack[EmaToFileArgs],
) -> RunReport | DryRun:
    """EMA of checkpoints (in the order given) into a safetensors file, streaming and atomically.

    Arguments as for :func:`ema`, plus the output options of
    :func:`wa_cli.methods.average.average_to_file`. The report's ``input_weights`` are each input's
    coefficient in the result (they sum to 1).

    ``sigma_rel`` may be a list of widths: ``output`` is then a folder that receives one
    ``ema_sigma_S.safetensors`` per width, all from one read of the inputs, and a list of
    reports (or of dry-run plans) is returned, one per width in the order given.

    Example:
        >>> report = ema_to_file(paths, "ema.safetensors", half_life=500)  # doctest: +SKIP
        >>> report.input_weights  # doctest: +SKIP
        [0.03, 0.06, 0.13, 0.26, 0.52]
    """

    from wa_cli.methods.ema.multi import check_device, is_several

    if is_several(options.get("sigma_rel")):  # several widths, one read of the inputs
        from wa_cli.methods.ema.multi import posthoc_many

        check_device(options)  # before the device is resolved (no CUDA here says less)
        request = Request.of("ema_to_file", options, own=_OWN)
        return posthoc_many(inputs, output, request, options)  # type: ignore[return-value]
    request = Request.of("ema_to_file", options, own=_OWN)
    posthoc = _posthoc(options)
    if posthoc is not None:
        from wa_cli.methods.ema.posthoc import posthoc_run

        return run_trajectory(inputs, output, request, *posthoc_run(posthoc, request))

    def write(weighed: Weighing, output: Path, out: WriteOptions) -> RunReport:
        from wa_cli.methods.ema.step_units import step_report
        from wa_cli.methods.graft.relatedness import unrelated_mean_warnings

        plan, decays, weights = _plan(weighed, request, options)
        coefficients = list(weighed.weights)
        units = step_report(plan.checkpoints, weighed.steps, decays, coefficients)  # epochs?
        params: dict[str, Any] = {
            **decays, "alpha": options.get("alpha"), "steps": weighed.steps,
            **request.reduce.params(),
        }  # fmt: skip
        params |= units.params
        unrelated = unrelated_mean_warnings(plan, coefficients, "EMA")
        report = reduce_to_file(
            plan, weights, output, method="ema", params=params,
            input_weights=coefficients, opts=request.reduce, out=out,
        )  # fmt: skip
        report.warnings.extend(unrelated)
        return units.attach(report)

    return run_trajectory(inputs, output, request, _weigh(options, request.dry_run), write)
