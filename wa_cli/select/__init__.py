"""Which checkpoints a run uses, and in what order: expand, order, select.

SWA (Izmailov et al. 2018, arXiv 1803.05407) averages the checkpoints collected every ``c``
epochs from ``swa_start`` on; an EMA over a saved trajectory (SPEC.md) needs the checkpoints in
training order and, for step-aware decay, their step numbers. This package turns command-line
arguments into that ordered, filtered list, before any tensor is read:

1. :func:`expand_inputs`: paths, quoted globs and folders → checkpoint paths.
2. :func:`order_trajectory`: checkpoints → :class:`Entry` items in training order, with steps.
3. :func:`select_trajectory`: ``--from-step/--to-step`` → ``--every`` → ``--last`` → ``--top-k``.

The wrong checkpoints selected is a common complaint against other tools (top-k that assumes
higher is better, file-name conventions, "every file in the folder"), so every rule here is
explicit, and every ambiguity is an error that says which flag resolves it.
"""

from wa_cli.select.direction import Mode, mode_from_name, resolve_mode
from wa_cli.select.expand import (
    CHECKPOINT_SUFFIXES,
    INDEX_SUFFIX,
    expand_inputs,
    is_checkpoint_file,
    natural_key,
)
from wa_cli.select.metrics import load_metrics_file
from wa_cli.select.order import (
    STEP_KEY,
    CheckpointLike,
    Entry,
    Order,
    order_trajectory,
    step_from_metadata,
    step_from_name,
)
from wa_cli.select.pick import SelectionRow, select_trajectory, selection_rows
from wa_cli.select.steps import MAX_STEP, STEP_KEYS, StepSource

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MAX_STEP",
    "STEP_KEYS",
    "INDEX_SUFFIX",
    "STEP_KEY",
    "CheckpointLike",
    "Entry",
    "Mode",
    "Order",
    "SelectionRow",
    "StepSource",
    "expand_inputs",
    "is_checkpoint_file",
    "load_metrics_file",
    "mode_from_name",
    "natural_key",
    "order_trajectory",
    "resolve_mode",
    "select_trajectory",
    "selection_rows",
    "step_from_metadata",
    "step_from_name",
]
