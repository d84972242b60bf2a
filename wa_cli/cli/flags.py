"""Library parameter names → the ``wa`` command's flags: the one place the CLI translates them.

The library speaks in parameters (``decay must be in [0, 1]``, ``non_float='lst' is not one of
...``); on the command line the same message must name the flag the user typed (``--decay``,
``--non-float 'lst'``). A ``WaError`` built with ``WaError.naming`` keeps the parameters it names
as fields (``WaError.parts``), and the CLI renders them with :func:`spell`: no text is rewritten.
When a library parameter gains a CLI flag, add it here.
"""

from __future__ import annotations

from wa_cli.errors import Param

FLAGS: dict[str, str] = {
    # inputs and output
    "output": "-o/--output",
    "key": "--key",
    "strip_prefix": "--strip-prefix",
    "strip_prefixes": "--strip-prefix",
    "include": "--include",
    "exclude": "--exclude",
    "allow_global": "--allow-global",
    "allow_globals": "--allow-global",
    "variant": "--variant",
    "deepspeed_weights": "--deepspeed-weights",
    "force": "--force",
    "max_shard_size": "--max-shard-size",
    "shard_name": "--shard-name",
    "output_format": "--format",
    "copy_files": "--copy-config",
    "copy_config": "--copy-config",
    "dry_run": "--dry-run",
    # shared reducer options
    "keys": "--keys",
    "non_float": "--non-float",
    "dtype": "--dtype",
    "precision": "--precision",
    "device": "--device",
    # average / ema
    "weights": "--weights",
    "decay": "--decay",
    "decay_per_step": "--decay-per-step",
    "half_life": "--half-life",
    "alpha": "--alpha",
    # post-hoc EMA
    "sigma_rel": "--sigma-rel",
    "gamma": "--gamma",
    "at_step": "--at-step",
    "quadrature": "--quadrature",
    "snapshot_sigma_rels": "--snapshot-sigma-rels",
    # soups
    "sweep": "--sweep",
    "bn_data": "--bn-data",
    "evaluate": "--eval",
    # selection
    "order": "--order",
    "last": "--last",
    "every": "--every",
    "from_step": "--from-step",
    "to_step": "--to-step",
    "top_k": "--top-k",
    "metric": "--metric",
    "mode": "--mode",
    "metrics": "--metrics",
    # graft / inspect-entropy
    "rule": "--rule",
    "a": "--a",
    "c": "--c",
    "bins": "--bins",
    "by": "--by",
    "sort": "--sort",
    "base": "--base",
    "l1_threshold": "--l1-threshold",
    "pattern": "--filter",
    "plot": "--plot",
    # bn-recalibrate
    "model": "--model",
    "data": "--data",
    "weighting": "--weighting",
    "max_batches": "--batches",
    "forward": "--forward",
    "include_instancenorm": "--include-instancenorm",
    "batch_size": "--batch-size",
    "input_key": "--input-key",
    "drop_last": "--drop-last",
    "model_kwargs": "--model-kwargs",
    "data_kwargs": "--data-kwargs",
}


def spell(param: Param) -> str:
    """How the CLI writes a parameter a message names: its flag, or the library's name if none.

    Example:
        >>> spell(Param("non_float", assign=True)) + "'lst'"
        "--non-float 'lst'"
        >>> spell(Param("n", assign=True)) + "3"
        'n=3'
    """
    flag = FLAGS.get(param.name)
    if flag is None:  # a parameter the command has no flag for: named as the library names it
        return param.library()
    return f"{flag} " if param.assign else flag
