"""The user's evaluation hook: ``fn(model) -> float`` (or a dict of named numbers).

Soups that choose their ingredients (Wortsman et al. 2022) score candidate models on held-out
data, the user's way. The hook runs with the protections of ``bn-recalibrate``'s user code: an
exception, a NaN, a string or a missing metric is one line naming the user's function, and
Ctrl-C ends the command (KeyboardInterrupt is never caught here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from wa_cli.errors import ExitCode, WaError, describe_exception
from wa_cli.methods.bn.usercalls import user_code
from wa_cli.methods.bn.usercode import resolve_callable
from wa_cli.select.direction import Mode, mode_from_name


@dataclass
class Evaluator:
    """Scores models with the user's function; counts the calls (the greedy soup makes 2N − 1).

    Args:
        fn: ``fn(model) -> float | dict[str, float]``.
        metric: the entry of a returned dict to use (required when it has several).
        mode: ``max`` or ``min``; default from the metric's (or function's) name.
        name: how messages name the function (default: its qualified name).
        prepare: called with each model before it is scored (BatchNorm re-estimation).
    """

    fn: Callable[[nn.Module], Any]
    metric: str | None = None
    mode: Mode | None = None
    name: str | None = None
    prepare: Callable[[nn.Module], None] | None = None
    calls: int = 0

    def __post_init__(self) -> None:
        # A callable object has no __qualname__: its class names it (its repr holds a memory
        # address, whose hex digits could read as a metric name such as "acc").
        self.name = (
            self.name or getattr(self.fn, "__qualname__", None) or type(self.fn).__qualname__
        )
        if self.mode is None:
            self.mode = mode_from_name(self.metric or self.name)
        if self.mode not in ("max", "min"):
            raise WaError.naming(
                "say whether a higher or lower score of '{name}' is better: {mode=}'max' or "
                "{mode=}'min' (the metric's name does not say)",
                ExitCode.USAGE,
                name=self.name,
            )

    def better_or_equal(self, a: float, b: float) -> bool:
        """``a`` at least as good as ``b`` in this direction (ties count as good)."""
        return a >= b if self.mode == "max" else a <= b

    def __call__(self, model: nn.Module) -> float:
        if self.prepare is not None:
            self.prepare(model)
        self.calls += 1
        try:
            # wa's rules for user code: its exits fail naming it, Ctrl-C always reaches wa.
            with user_code(f"evaluation function '{self.name}'"):
                value = self.fn(model)
        except WaError:
            raise
        except Exception as e:
            raise WaError(
                f"evaluation function '{self.name}' raised {describe_exception(e)}",
                ExitCode.BAD_INPUT,
            ) from e
        return self._number(value)

    def _number(self, value: Any) -> float:
        if isinstance(value, Mapping):
            value = self._pick(value)
        if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WaError(
                f"evaluation function '{self.name}' returned {type(value).__name__} "
                f"{_short(value)}; it must return a number (or a dict of numbers)",
                ExitCode.BAD_INPUT,
            )
        if not math.isfinite(value):
            raise WaError(
                f"evaluation function '{self.name}' returned {value}, not a finite score",
                ExitCode.BAD_INPUT,
            )
        return float(value)

    def _pick(self, scores: Mapping[Any, Any]) -> Any:
        if self.metric is None:
            if len(scores) == 1:
                return next(iter(scores.values()))
            raise WaError.naming(
                "evaluation function '{name}' returned {count} numbers ({scores}): pick one "
                "with {metric=}NAME",
                ExitCode.USAGE,
                name=self.name,
                count=len(scores),
                scores=", ".join(map(str, scores)),
            )
        if self.metric not in scores:
            raise WaError(
                f"evaluation function '{self.name}' returned no '{self.metric}' "
                f"(it returned {', '.join(map(str, scores))})",
                ExitCode.BAD_INPUT,
            )
        return scores[self.metric]


def resolve_evaluator(
    spec: str | Callable[[nn.Module], Any],
    *,
    metric: str | None = None,
    mode: Mode | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
) -> Evaluator:
    """An :class:`Evaluator` from ``module.py:fn`` / ``pkg.mod:fn`` or a callable."""
    fn = resolve_callable(spec, what="evaluation function") if isinstance(spec, str) else spec
    name = spec if isinstance(spec, str) else None
    return Evaluator(fn, metric=metric, mode=mode, name=name, prepare=prepare)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
