"""Training-side helpers from the papers ``wa`` implements.

Lookahead (Zhang et al. 2019), Gradient Centralization (Yong et al. 2020), warmup schedules
(Goyal et al. 2017; Ma & Yarats 2019) and SWA's schedule (Izmailov et al. 2018), a trajectory
writer that saves ``ckpt_{step}.safetensors`` files for ``wa average`` / ``wa ema``, and SWAP's
phase-3 average across ``torch.distributed`` processes (Gupta et al. 2020), and power-function
EMA snapshots for post-hoc EMA (Karras et al. 2024).
"""

from wa_cli.train.centralization import (
    applies_to,
    centralize_gradients,
    enable_gradient_centralization,
)
from wa_cli.train.lookahead import Lookahead
from wa_cli.train.power_ema import PowerEMA
from wa_cli.train.swap import all_reduce_mean, average_across_processes
from wa_cli.train.trajectory import TrajectoryWriter, checkpoint_metadata, save_checkpoint
from wa_cli.train.warmup import (
    goyal_warmup,
    linear_warmup,
    swa_schedule,
    untuned_warmup,
    warmup_factor,
)

__all__ = [
    "Lookahead",
    "PowerEMA",
    "TrajectoryWriter",
    "all_reduce_mean",
    "applies_to",
    "average_across_processes",
    "centralize_gradients",
    "checkpoint_metadata",
    "enable_gradient_centralization",
    "goyal_warmup",
    "linear_warmup",
    "save_checkpoint",
    "swa_schedule",
    "untuned_warmup",
    "warmup_factor",
]
