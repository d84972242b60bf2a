"""The inputs of every method: paths, globs, folders or opened checkpoints, opened one way.

``wa average runs/a/*.safetensors`` and ``wa.average("runs/a/*.safetensors")`` must mean the same
thing, so both expand through :func:`wa_cli.select.expand_inputs` (globs in natural order,
folders to their checkpoints, a sharded folder as one) and open headers only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from wa_cli.engine.params import bad
from wa_cli.io.handle import CheckpointHandle
from wa_cli.io.reader import Checkpoint, ReadOptions, open_checkpoints
from wa_cli.select import expand_inputs

PathOrCheckpoint = str | os.PathLike[str] | Checkpoint | CheckpointHandle
"""One input: a path (file, sharded folder, index), a glob, a folder, or an opened checkpoint."""

Inputs = PathOrCheckpoint | Sequence[PathOrCheckpoint]
"""What every method takes: one input, or a sequence of them (kept in the given order)."""


def as_input_list(
    inputs: object, param: str = "inputs"
) -> list[str | os.PathLike[str] | Checkpoint]:
    """One input or a sequence of them as a list; a string is one input, never its characters.

    A handle from ``wa.open_checkpoint`` stands for its checkpoint.
    """
    if isinstance(inputs, str | os.PathLike | Checkpoint | CheckpointHandle):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and not isinstance(inputs, bytes):
        items: list[str | os.PathLike[str] | Checkpoint] = []
        for item in inputs:
            if isinstance(item, CheckpointHandle):
                item = item.checkpoint
            if not isinstance(item, str | os.PathLike | Checkpoint):
                raise bad(
                    param,
                    "{param} holds {kind} {item!r}; expected paths, globs, folders or opened "
                    "checkpoints",
                    kind=type(item).__name__,
                    item=item,
                )
            items.append(item)
        return items
    raise bad(
        param,
        "{param=}{inputs!r} is not a path, a glob, a folder, an opened checkpoint or a "
        "list of them",
        inputs=inputs,
    )


def open_inputs(
    inputs: Inputs,
    *,
    key: str | None = None,
    strip_prefix: bool | str | Sequence[str] = False,
    options: ReadOptions | None = None,
    param: str = "inputs",
) -> list[Checkpoint]:
    """Open every input (headers only) in order; paths expanded as the CLI expands them.

    Opened checkpoints are taken as they are; if one input fails, those opened here are closed.
    ``options`` (the CLI's reading flags) replaces ``key`` and ``strip_prefix`` when given.

    Example:
        >>> ckpts = open_inputs("runs/a/ckpt_*.safetensors")  # doctest: +SKIP
    """
    items = as_input_list(inputs, param)
    if options is None:
        options = ReadOptions(key=key, strip_prefixes=strip_prefix)
    if not items:
        raise bad(param, "{param} is empty (give checkpoint paths, a folder or a glob)")
    out: list[Checkpoint] = []
    run: list[
        str | os.PathLike[str]
    ] = []  # consecutive paths: expanded together (duplicates warned)
    try:
        for item in [*items, None]:
            if item is None or isinstance(item, Checkpoint):
                if run:
                    paths = expand_inputs(run)
                    out.extend(open_checkpoints(paths, options=options))
                    run = []
                if item is not None:
                    out.append(item)
            else:
                run.append(item)
    except BaseException:
        for ckpt in out:
            if not any(ckpt is item for item in items):
                ckpt.close()
        raise
    return out
