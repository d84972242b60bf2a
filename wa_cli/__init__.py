"""wa: what happens to a network's weights after and around training.

Average a trajectory of checkpoints (SWA), take an EMA over it, graft runs layer by layer by
weight entropy (Filter Grafting), re-estimate BatchNorm statistics, and report per-layer entropy.

The public functions are imported lazily on first use, so that importing the package (and so
``wa --help``) does not pay for importing torch.

Example (not run as a doctest: it needs checkpoints on disk):
    >>> import wa_cli
    >>> report = wa_cli.average_to_file(["a.safetensors", "b.safetensors"], "swa.safetensors")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # `average` and `ema` are also submodule names, so those two functions are imported from
    # their modules: `from wa_cli.methods.average import average`.
    "average_to_file": "wa_cli.methods.average",
    "ema_to_file": "wa_cli.methods.ema",
    "graft_ring": "wa_cli.methods.graft.state",
    "graft_to_files": "wa_cli.methods.graft.files",
    "tensor_entropy": "wa_cli.methods.graft.entropy",
    "entropy_report": "wa_cli.methods.graft.report",
    "recalibrate_bn": "wa_cli.methods.bn.recalibrate",
    "recalibrate_checkpoint": "wa_cli.methods.bn.checkpoint",
    "open_checkpoint": "wa_cli.io.reader",
    "write_state_dict": "wa_cli.io.writer",
    "WaError": "wa_cli.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'wa_cli' has no attribute {name!r}")
