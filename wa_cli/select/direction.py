"""Which way a metric is better, from its name: ``val_loss`` is minimised, ``val_acc`` maximised.

Part of :mod:`wa_cli.select`. A silent default direction made ``--top-k 3 --metric val_acc``
keep the three worst checkpoints (timm's averaging script assumes higher is better; wa used to
assume lower). The direction is now read from the metric's name where the name is unambiguous,
and otherwise ``--mode`` is required.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from wa_cli.errors import ExitCode, WaError

logger = logging.getLogger(__name__)

Mode = Literal["min", "max"]

LOWER_IS_BETTER = frozenset(
    {"loss", "err", "error", "errors", "ppl", "perplexity", "wer", "cer", "mse", "mae", "rmse",
     "nll", "fid"}
)  # fmt: skip
HIGHER_IS_BETTER = frozenset(
    {"acc", "accuracy", "top1", "top5", "f1", "bleu", "map", "auc", "auroc", "precision",
     "recall", "iou", "miou", "dice", "rouge"}
)  # fmt: skip
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_WORDS = re.compile(r"[a-z]+[0-9]*|[0-9]+")


def _tokens(name: str) -> set[str]:
    words = _WORDS.findall(_CAMEL.sub("_", name).lower())
    found = set(words)
    for a, b in zip(words, words[1:], strict=False):
        found.add(a + b)  # "top_1" and "top-1" are top1
    found |= {w.rstrip("0123456789") for w in words}  # "acc1" is acc, "loss2" is loss
    return found


def mode_from_name(metric: str) -> Mode | None:
    """``min`` or ``max`` when the metric's name says which is better, else ``None``.

    The name is split into words (``val_acc``, ``eval/top1``, ``valLoss``); a name with words of
    both kinds (``loss_acc``) or of neither (``metric``, ``score``) is ambiguous.

    Example:
        >>> mode_from_name("val_loss"), mode_from_name("eval/top1"), mode_from_name("metric")
        ('min', 'max', None)
    """
    words = _tokens(metric)
    low = bool(words & LOWER_IS_BETTER)
    high = bool(words & HIGHER_IS_BETTER)
    if low == high:
        return None
    return "min" if low else "max"


def resolve_mode(metric: str | None, mode: str | None) -> Mode:
    """The direction ``--top-k`` ranks by: ``mode`` when given, else the one the name says.

    Raises:
        WaError: (USAGE) ``mode`` is neither ``min`` nor ``max``, or it is not given and the
            metric's name does not say which direction is better.

    Example:
        >>> resolve_mode("val_acc", None)
        'max'
    """
    if mode is not None and mode not in ("min", "max"):
        raise WaError.naming("{mode} must be 'min' or 'max', got {got!r}", ExitCode.USAGE, got=mode)
    named = mode_from_name(metric) if metric else None
    if mode is None:
        if named is None:
            what = "the name '{name}' does not say" if metric else "no {metric} name says"
            raise WaError.naming(
                "{top_k} needs {mode} min or {mode} max: " + what + " whether lower or higher is "
                "better",
                ExitCode.USAGE,
                **({"name": metric} if metric else {}),
            )
        return named
    if named is not None and named != mode:
        better = "lower" if named == "min" else "higher"
        logger.warning(
            "--mode %s keeps the %s values of '%s', although its name says %s is better",
            mode,
            "lowest" if mode == "min" else "highest",
            metric,
            better,
        )
    return mode  # type: ignore[return-value]  # 'min' or 'max': checked at the top
