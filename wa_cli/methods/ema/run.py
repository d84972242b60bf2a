"""Running an EMA over checkpoints through the averaging engine (one pass, no running state).

Part of :mod:`wa_cli.methods.ema`: the coefficients of :mod:`wa_cli.methods.ema.coefficients` become
the per-key weights of :func:`wa_cli.engine.run.reduce_to_file`, the engine ``wa average`` uses, so
precision, non-float policy, devices, progress, provenance and atomic output are the same.
Lookahead (Zhang et al. 2019, arXiv 1907.08610) slow weights are the EMA with decay 1 − α.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.methods.ema.coefficients import ema_coefficients, lookahead_decay

if TYPE_CHECKING:
    # The coefficients need no torch, and `wa ema --help` (which shows LOOKAHEAD_HELP) must not
    # pay for importing it: the engine is imported inside the functions that run it.
    import torch

    from wa_cli.engine.combine import WeightsFn
    from wa_cli.engine.options import ReduceOptions
    from wa_cli.engine.plan import KeyPlan, KeysMode, NonFloatPolicy, Plan
    from wa_cli.engine.precision import Precision
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
            raise WaError(
                "give alpha or decay, not both (alpha=A is decay=1-A)",
                ExitCode.USAGE,
                params=("alpha", "decay"),
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


def _prepare(
    inputs: Inputs,
    steps: Sequence[int | None] | None,
    decays: dict[str, float | None],
    opts: ReduceOptions,
) -> tuple[Plan, list[int | None] | None, list[float], WeightsFn]:
    from wa_cli.engine.plan import build_plan
    from wa_cli.methods.inputs import open_inputs

    if steps is not None and (isinstance(steps, str) or not isinstance(steps, Sequence)):
        raise WaError(f"steps={steps!r} must be a sequence of ints", params=("steps",))
    ckpts = open_inputs(inputs)
    step_aware = decays["decay"] is None
    if steps is None:
        steps = _steps_of(ckpts, step_aware)
    elif len(steps) != len(ckpts):
        raise WaError(
            f"got {len(steps)} steps for {len(ckpts)} checkpoints (give one step per checkpoint)",
            ExitCode.USAGE,
            params=("steps",),
        )
    steps = None if steps is None else list(steps)
    d, dps, hl = decays["decay"], decays["decay_per_step"], decays["half_life"]
    # Computed before the plan so that a bad decay fails before any header is compared.
    coefficients = ema_coefficients(
        len(ckpts), decay=d, decay_per_step=dps, half_life=hl, steps=steps
    )
    plan = build_plan(ckpts, keys=opts.keys, non_float=opts.non_float, dtype=opts.dtype)
    return plan, steps, coefficients, ema_weights(steps, decay=d, decay_per_step=dps, half_life=hl)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def ema(
    inputs: Inputs,
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    alpha: float | None = None,
    steps: Sequence[int | None] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
) -> Iterator[tuple[str, torch.Tensor]]:
    """EMA of checkpoints in the order given; yields ``(key, tensor)`` pairs one at a time.

    e_0 = the first input, e_i = β_i e_{i−1} + (1 − β_i) θ_i, computed in one pass as
    Σ c_i θ_i (:func:`ema_coefficients`). Give exactly one of ``decay``, ``decay_per_step``,
    ``half_life`` or ``alpha`` (Lookahead's slow step, = decay 1 − α). Step-aware decay reads
    ``steps`` from each input's ``step`` metadata (else the last number in its name) unless
    given. The inputs are not reordered: sort them with :func:`wa_cli.select.order_trajectory`.

    Args:
        inputs: Checkpoint paths or opened checkpoints, oldest first.
        decay: Fixed decay D in [0, 1].
        decay_per_step: Decay per training step d in [0, 1].
        half_life: Steps after which a checkpoint's weight halves (> 0).
        alpha: Lookahead slow-weight step α in (0, 1].
        steps: The inputs' training steps (step-aware decay; default: read from the inputs).
        keys: ``strict``, ``intersection`` or ``union`` (see :func:`ema_weights`).
        non_float: Copy non-float tensors from the ``last`` or ``first`` input, or ``error``.
        dtype: Output dtype of floating tensors (default: each tensor's own).
        precision: Accumulator dtype (``auto``: wider than the input).
        device: Where to reduce.

    Returns:
        An iterator of ``(key, tensor)``; ``dict(ema(...))`` is a state dict.

    Example:
        >>> paths = ["ckpt_100.safetensors", "ckpt_200.safetensors"]
        >>> state = dict(ema(paths, decay=0.9))  # doctest: +SKIP
    """
    from wa_cli.engine.options import ReduceOptions
    from wa_cli.engine.reducers import linear_combination
    from wa_cli.engine.run import assemble

    opts = ReduceOptions.checked(
        keys=keys, non_float=non_float, dtype=dtype, precision=precision, device=device
    )
    decays = decay_options(decay, decay_per_step, half_life, alpha)
    plan, _, _, weights = _prepare(inputs, steps, decays, opts)
    chunks = linear_combination(plan, weights, precision=opts.precision, device=opts.device)
    return assemble(plan, chunks)


@paused_gc()  # per-key records in bulk: see wa_cli.gc_pause
def ema_to_file(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    decay: float | None = None,
    decay_per_step: float | None = None,
    half_life: float | None = None,
    alpha: float | None = None,
    steps: Sequence[int | None] | None = None,
    keys: KeysMode = "strict",
    non_float: NonFloatPolicy = "last",
    dtype: torch.dtype | str | None = None,
    precision: Precision = "auto",
    device: str | torch.device = "auto",
    force: bool = False,
    max_shard_size: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
    shard_name: str | None = None,
    copy_files: Sequence[str | os.PathLike[str]] = (),
    output_format: str = "safetensors",
) -> RunReport:
    """EMA of checkpoints (in the order given) into a safetensors file, streaming and atomically.

    Arguments as for :func:`ema`, plus the output options of
    :func:`wa_cli.methods.average.average_to_file`. The report's ``input_weights`` are each input's
    coefficient in the result (they sum to 1).

    Example:
        >>> report = ema_to_file(paths, "ema.safetensors", half_life=500)  # doctest: +SKIP
        >>> report.input_weights  # doctest: +SKIP
        [0.03, 0.06, 0.13, 0.26, 0.52]
    """
    from wa_cli.engine.options import ReduceOptions, WriteOptions
    from wa_cli.engine.run import reduce_to_file
    from wa_cli.methods.ema.step_units import step_report
    from wa_cli.methods.graft.relatedness import unrelated_mean_warnings

    opts = ReduceOptions.checked(
        keys=keys, non_float=non_float, dtype=dtype, precision=precision, device=device
    )
    out = WriteOptions.checked(
        force=force, max_shard_size=max_shard_size, progress=progress, command=command,
        shard_name=shard_name, copy_files=copy_files, output_format=output_format,
    )  # fmt: skip
    decays = decay_options(decay, decay_per_step, half_life, alpha)
    plan, steps_used, coefficients, weights = _prepare(inputs, steps, decays, opts)
    units = step_report(plan.checkpoints, steps_used, decays, coefficients)  # epochs or steps
    params: dict[str, Any] = {**decays, "alpha": alpha, "steps": steps_used, **opts.params()}
    params |= units.params
    unrelated = unrelated_mean_warnings(plan, coefficients, "EMA")
    report = reduce_to_file(
        plan, weights, output,
        method="ema", params=params, input_weights=coefficients, opts=opts, out=out,
    )  # fmt: skip
    report.warnings.extend(unrelated)
    return units.attach(report)
