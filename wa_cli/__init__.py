"""wa: what happens to a network's weights after and around training.

Average a trajectory of checkpoints (SWA), take an EMA over it, graft runs layer by layer by
weight entropy (Filter Grafting), re-estimate BatchNorm statistics, and report per-layer entropy.

The notebook entry is ``import wa_cli as wa``: verbs at the top, each reducing one with a
``*_to_file`` twin that writes atomically and returns a :class:`~wa_cli.engine.run.RunReport`.
Inputs may be a path, a glob string, a folder, an opened checkpoint, or a sequence of them.
The functions are imported lazily on first use, so that importing the package (and so
``wa --help``) does not pay for importing torch.

Example (not run as a doctest: it needs checkpoints on disk):
    >>> import wa_cli as wa
    >>> swa = dict(wa.average("runs/a/ckpt_*.safetensors"))
    >>> report = wa.ema_to_file("runs/a/ckpt_*.safetensors", "ema.safetensors", half_life=500)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wa_cli._version import __version__

# name -> (module, attribute). No module of this package is named like an export, so a
# function is never shadowed by a submodule of the same name once that submodule is imported.
_PUBLIC: dict[str, tuple[str, str]] = {
    "average": ("wa_cli.methods.average", "average"),
    "average_to_file": ("wa_cli.methods.average", "average_to_file"),
    "ema": ("wa_cli.methods.ema", "ema"),
    "ema_to_file": ("wa_cli.methods.ema", "ema_to_file"),
    "graft": ("wa_cli.methods.graft.run", "graft"),
    "graft_to_file": ("wa_cli.methods.graft.run", "graft_to_file"),
    "graft_state_dicts": ("wa_cli.methods.graft.state", "graft_state_dicts"),
    "graft_ring": ("wa_cli.methods.graft.state", "graft_ring"),
    "tensor_entropy": ("wa_cli.methods.graft.entropy", "tensor_entropy"),
    "entropy_report": ("wa_cli.methods.graft.inspect", "entropy_report"),
    "recalibrate_bn": ("wa_cli.methods.bn.recalibrate", "recalibrate_bn"),
    "update_bn": ("wa_cli.methods.bn.recalibrate", "update_bn"),
    "recalibrate_checkpoint": ("wa_cli.methods.bn.checkpoint", "recalibrate_checkpoint"),
    "open_checkpoint": ("wa_cli.io.handle", "open_checkpoint_handle"),
    "write_state_dict": ("wa_cli.io.writer", "write_state_dict"),
    "RunReport": ("wa_cli.engine.report", "RunReport"),
    "DryRun": ("wa_cli.methods.selection", "DryRun"),
    "Selection": ("wa_cli.methods.selection", "Selection"),
    "GraftPlan": ("wa_cli.methods.graft.files", "GraftPlan"),
    "EntropyReport": ("wa_cli.methods.graft.report", "EntropyReport"),
    "BNSpecs": ("wa_cli.methods.bn.specs", "BNSpecs"),
    "BNCheckpointReport": ("wa_cli.methods.bn.checkpoint", "BNCheckpointReport"),
    "ReadOptions": ("wa_cli.io.reader", "ReadOptions"),
    "ReduceOptions": ("wa_cli.engine.options", "ReduceOptions"),
    "WriteOptions": ("wa_cli.engine.options", "WriteOptions"),
    "plot_posthoc": ("wa_cli.methods.ema.posthoc", "plot_posthoc"),
    "model_stock_to_file": ("wa_cli.methods.soup.stock", "model_stock_to_file"),
    "greedy_soup_to_file": ("wa_cli.methods.soup.run", "greedy_soup_to_file"),
    "sweep_to_file": ("wa_cli.methods.soup.run", "sweep_to_file"),
    "WaError": ("wa_cli.errors", "WaError"),
}
__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from wa_cli.engine.options import ReduceOptions as ReduceOptions
    from wa_cli.engine.options import WriteOptions as WriteOptions
    from wa_cli.engine.report import RunReport as RunReport
    from wa_cli.errors import WaError as WaError
    from wa_cli.io.handle import open_checkpoint_handle as open_checkpoint  # noqa: F401 (in _PUBLIC)
    from wa_cli.io.reader import ReadOptions as ReadOptions
    from wa_cli.io.writer import write_state_dict as write_state_dict
    from wa_cli.methods.average import average as average
    from wa_cli.methods.average import average_to_file as average_to_file
    from wa_cli.methods.bn.checkpoint import BNCheckpointReport as BNCheckpointReport
    from wa_cli.methods.bn.checkpoint import recalibrate_checkpoint as recalibrate_checkpoint
    from wa_cli.methods.bn.recalibrate import recalibrate_bn as recalibrate_bn
    from wa_cli.methods.bn.recalibrate import update_bn as update_bn
    from wa_cli.methods.bn.specs import BNSpecs as BNSpecs
    from wa_cli.methods.ema import ema as ema
    from wa_cli.methods.ema import ema_to_file as ema_to_file
    from wa_cli.methods.ema.posthoc import plot_posthoc as plot_posthoc
    from wa_cli.methods.graft.entropy import tensor_entropy as tensor_entropy
    from wa_cli.methods.graft.files import GraftPlan as GraftPlan
    from wa_cli.methods.graft.inspect import entropy_report as entropy_report
    from wa_cli.methods.graft.report import EntropyReport as EntropyReport
    from wa_cli.methods.graft.run import graft as graft
    from wa_cli.methods.graft.run import graft_to_file as graft_to_file
    from wa_cli.methods.graft.state import graft_ring as graft_ring
    from wa_cli.methods.graft.state import graft_state_dicts as graft_state_dicts
    from wa_cli.methods.selection import DryRun as DryRun
    from wa_cli.methods.selection import Selection as Selection
    from wa_cli.methods.soup.run import greedy_soup_to_file as greedy_soup_to_file
    from wa_cli.methods.soup.run import sweep_to_file as sweep_to_file
    from wa_cli.methods.soup.stock import model_stock_to_file as model_stock_to_file


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'wa_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
