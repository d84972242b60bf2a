"""The one check of a command's output, made before any tensor is read or anything written.

Every command checks each output it will write with :func:`check_output`, once its inputs are
open (so that it knows what they read): the name fits the layout (a file, not a folder or a
pickle name; a folder for DCP), the output is no input (:func:`wa_cli.io.guard.refuse_inputs`),
and what is already there may be replaced (:func:`wa_cli.io.guard.check_destination`). A
command that can check earlier, before it opens any input, calls it without ``reads`` too, so a
refused ``-o`` costs nothing. The writers check their destination again when they create it
(:mod:`wa_cli.io.atomic`): that covers a library caller that skipped this, and a change on disk
in between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.formats import checkpoint_suffix, is_pickle_name, strip_checkpoint_suffix
from wa_cli.io.guard import PLOT, SAFETENSORS, Reads, check_destination, refuse_inputs

# What is written at an output: one safetensors file, a folder of shards and an index, a DCP
# folder, or a plot.
Layout = Literal["file", "shards", "dcp", "plot"]


def check_output(
    destination: str | os.PathLike[str],
    *,
    reads: Reads = (),
    force: bool = False,
    layout: Layout = "file",
    existing: bool = True,
) -> None:
    """Refuse an output that must not be written; see the module docstring.

    Args:
        destination: the output file or folder.
        reads: what the command reads (with the files readers noted in the session).
        force: an existing output of wa's kind may be replaced.
        layout: what is written there.
        existing: also check what is already at ``destination`` (a dry run writes nothing, so
            an existing output does not fail it).

    Raises:
        WaError: the output is misnamed for its layout (USAGE) or may not be written (OUTPUT).
    """
    dest = Path(destination)
    refuse_inputs(dest, reads)
    check_output_name(dest, layout)
    if existing:
        kind = PLOT if layout == "plot" else SAFETENSORS
        check_destination(dest, force, folder=layout in ("shards", "dcp"), kind=kind)


def check_output_name(destination: Path, layout: Layout = "file") -> None:
    """A file output is a file name, not a folder, and not named like a pickle; a DCP output is
    a folder."""
    if layout == "dcp":
        _check_dcp_name(destination)
    if layout != "file":
        return
    if destination.is_dir() and not destination.is_symlink():
        raise WaError.naming(
            "output '{destination}' is a folder (give a file name, or {max_shard_size} to "
            "write shards into a folder)",
            ExitCode.OUTPUT,
            destination=str(destination),
        )
    # Loaders read these names with torch.load: safetensors bytes under one of them make a file
    # that torch.load, and wa itself, refuse.
    if is_pickle_name(destination):
        suffix = checkpoint_suffix(destination) or destination.suffix
        stem = strip_checkpoint_suffix(destination.name)
        raise WaError(
            f"output '{destination}' ends in {suffix}, a pickle suffix, but wa writes "
            f"safetensors (name it e.g. '{stem}.safetensors')",
            ExitCode.USAGE,
        )


def _check_dcp_name(destination: Path) -> None:
    if destination.name.endswith(".safetensors") or (
        destination.exists() and not destination.is_dir()
    ):
        raise WaError.naming(
            "{output_format} dcp writes a folder, and '{destination}' names a file (give a folder "
            "name, e.g. -o merged_dcp/)",
            ExitCode.USAGE,
            destination=str(destination),
        )
