"""EMA over a saved trajectory (and Lookahead slow weights): coefficients, and engine runs.

An exponential moving average over ordered checkpoints θ_0..θ_N (SPEC.md, "EMA over a
trajectory"; the in-training form is PyTorch's ``get_ema_multi_avg_fn`` and timm's ModelEma),

    e_0 = θ_0,    e_i = β_i e_{i−1} + (1 − β_i) θ_i,

is a linear combination Σ c_i θ_i with c_N = 1 − β_N, c_i = (1 − β_i) Π_{j>i} β_j and
c_0 = Π_{j≥1} β_j, which sum to 1. Computing the coefficients first lets the averaging engine
read each tensor once and combine all N+1 checkpoints in one pass, with no running state.

β_i = D for a fixed ``--decay``; step-aware decay (``--decay-per-step d`` or ``--half-life H``,
d = 0.5^(1/H)) uses β_i = d^(s_i − s_{i−1}), so uneven gaps between saves weigh correctly.
Lookahead's slow weights (Zhang et al. 2019, arXiv 1907.08610), φ_t = (1 − α) φ_{t−1} + α θ_{tk},
are this EMA over every k-th checkpoint with decay 1 − α (:func:`lookahead_decay`).

:func:`ema` (a notebook generator) and :func:`ema_to_file` (streamed, atomic) hand those
coefficients to the same engine as ``wa average`` (:func:`wa_cli.engine.run.combine_to_file`).
"""

from wa_cli.methods.ema.coefficients import (
    LOOKAHEAD_HELP,
    ema_coefficients,
    ema_decays,
    lookahead_decay,
)
from wa_cli.methods.ema.run import decay_options, ema, ema_to_file, ema_weights

__all__ = [
    "LOOKAHEAD_HELP",
    "decay_options",
    "ema",
    "ema_coefficients",
    "ema_decays",
    "ema_to_file",
    "ema_weights",
    "lookahead_decay",
]
