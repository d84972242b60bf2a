"""Expand command-line inputs into checkpoint paths: files, quoted globs, folders, shards.

Part of :mod:`wa_cli.select` (SWA, Izmailov et al. 2018, arXiv 1803.05407, averages a chosen
subset of a saved trajectory; choosing it starts with finding the files). "Every file in the
folder" is a common complaint against other tools, so a folder or glob keeps checkpoints only,
lists a sharded checkpoint once, and sorts in natural order (``ckpt_2`` before ``ckpt_10``).
Files wa wrote itself (``wa average ckpts/ -o ckpts/swa.safetensors``) are no trajectory
checkpoints: a folder or glob leaves them out with a one-line note; named explicitly they count.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.formats import CHECKPOINT_SUFFIXES, suffix_list
from wa_cli.io.hostile import require_regular
from wa_cli.io.index import INDEX_SUFFIX, find_index, index_files, read_weight_map
from wa_cli.io.run_folders import recognise
from wa_cli.io.wa_outputs import wa_method

logger = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
DIGIT_RUNS = re.compile(r"([0-9]+)")
"""Runs of digits in a name (natural sort here, steps from file names in ``order``)."""


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers by value: ``ckpt_2`` before ``ckpt_10``.

    Text runs compare case-insensitively; names that tie (``ckpt_01`` and ``ckpt_1``) are
    ordered by their exact spelling, so the order is total and reproducible.

    Args:
        name: A file name or path string.

    Returns:
        A tuple usable as a ``sorted`` key.

    Example:
        >>> sorted(["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt"], key=natural_key)
        ['ckpt_1.pt', 'ckpt_2.pt', 'ckpt_10.pt']
    """
    # re.split with a capture group alternates text, digits, text, ...: every position holds
    # the same type in every key, so tuples never compare an int with a str.
    parts = DIGIT_RUNS.split(name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (key, name)


def is_checkpoint_file(path: Path) -> bool:
    """Whether ``path``'s name looks like a checkpoint a folder expands to (not hidden)."""
    name = path.name
    return not name.startswith(".") and name.lower().endswith(CHECKPOINT_SUFFIXES)


def _without_wa_outputs(found: list[Path], where: str) -> tuple[list[Path], list[Path]]:
    """(the paths wa did not write, those it wrote); one note names the latter."""
    own = [p for p in found if wa_method(p) is not None]
    if not own:
        return found, []
    names = listing([p.name for p in sorted(own, key=lambda p: natural_key(p.name))])
    logger.warning(
        "left out %s of %s: written by wa (its metadata says so), not a checkpoint of the "
        "trajectory; name the file to use it",
        names,
        where,
    )
    return [p for p in found if p not in own], own


def _expand_folder(folder: Path) -> list[Path]:
    """A sharded or run folder is one checkpoint; any other folder expands to those in it.

    A folder holding run folders (an HF Trainer ``out/`` with ``checkpoint-*/``) is a
    trajectory of them, even when it also holds a model of its own (``trainer.save_model``):
    that model is left out, with a warning, rather than mixed into the trajectory unordered.
    """
    subfolders: list[Path] = []
    files: list[Path] = []
    for child in folder.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            # A folder of sharded checkpoints or run folders (out/checkpoint-500/, ...).
            if index_files(child) or recognise(child) is not None:
                subfolders.append(child)
        elif child.is_file() and is_checkpoint_file(child):
            files.append(child)
    own = recognise(folder)
    if own is not None:  # its model may be a subfolder (FSDP's pytorch_model_fsdp_0/)
        subfolders = [c for c in subfolders if c != own.model]
    if own is not None and not subfolders:
        return [folder]
    if find_index(folder) is not None and not subfolders:
        return [folder]
    if own is not None or find_index(folder) is not None:
        logger.warning(
            "folder '%s' holds run folders and a model of its own; using the %d run folders "
            "(name the folder's own model file to use it)",
            folder,
            len(subfolders),
        )
        files = []
    found, written = _without_wa_outputs(subfolders + files, f"folder '{folder}'")
    if not found and written:
        raise WaError(
            f"folder '{folder}' holds only files wa wrote ({listing([p.name for p in written])}); "
            "name them to use them as inputs",
            ExitCode.BAD_INPUT,
        )
    if not found:
        raise WaError(
            f"folder '{folder}' holds no checkpoint (expected files ending in "
            f"{suffix_list()}, a *{INDEX_SUFFIX} sharded checkpoint, or run folders such as "
            "checkpoint-N/ or DCP folders)",
            ExitCode.BAD_INPUT,
        )
    return sorted(found, key=lambda p: natural_key(p.name))


def _shards_of(index: Path) -> set[Path]:
    """The shard files an index names (so a glob matching both lists the checkpoint once)."""
    return {index.parent / name for name in read_weight_map(index).values()}


def _expand_glob(pattern: str) -> list[Path]:
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
    if not matches:
        raise WaError(
            f"pattern '{pattern}' matches no file (check the path; quote it so that wa, "
            "not the shell, expands it)",
            ExitCode.BAD_INPUT,
        )
    # A glob over a folder catches bystanders (logs, configs): keep checkpoints only, and list
    # a sharded checkpoint once, by its index, not once per shard.
    indexes = [m for m in matches if m.is_file() and m.name.endswith(INDEX_SUFFIX)]
    for m in matches:
        if not m.is_dir() and (m in indexes or is_checkpoint_file(m)):
            require_regular(m, "input")
    shards: set[Path] = set()
    for index in indexes:
        shards |= _shards_of(index)
    # Checkpoints the pattern names directly (files, indexes, wa's own shard folders) are
    # screened for wa's outputs; other folders screen their own content.
    named = [
        m
        for m in matches
        if (m.is_dir() and find_index(m) is not None and wa_method(m) is not None)
        or (not m.is_dir() and (m in indexes or (is_checkpoint_file(m) and m not in shards)))
    ]
    named, own = _without_wa_outputs(named, f"pattern '{pattern}'")
    kept: list[Path] = []
    for m in matches:
        if m.is_dir() and m not in own:
            kept.extend(_expand_folder(m))
        elif m in named:
            kept.append(m)
    if not kept and own:
        raise WaError(
            f"pattern '{pattern}' matches only files wa wrote ({listing([str(p) for p in own])}); "
            "name them to use them as inputs",
            ExitCode.BAD_INPUT,
        )
    if not kept:
        raise WaError(
            f"pattern '{pattern}' matches {len(matches)} path(s) but no checkpoint "
            f"({listing([str(m) for m in sorted(matches, key=lambda p: natural_key(str(p)))])}); "
            f"checkpoints end in {suffix_list()}",
            ExitCode.BAD_INPUT,
        )
    return sorted(kept, key=lambda p: natural_key(str(p)))


def expand_inputs(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Turn command-line inputs into checkpoint paths.

    * A path that exists is taken as given, in the given order (the shell already expanded
      and sorted it), even if its name holds glob characters.
    * An argument with glob characters (``*``, ``?``, ``[``) that is not an existing path is a
      quoted glob: wa expands it (``**`` recurses) in natural order, ``ckpt_2`` before
      ``ckpt_10``, keeping only checkpoint files and folders.
    * A folder holding a ``*.safetensors.index.json`` is one (sharded) checkpoint; any other
      folder expands to its checkpoint files (``.safetensors`` and the pickle suffixes of
      :mod:`wa_cli.io.formats`, ``.pth.tar`` included)
      and its sharded sub-folders, in natural order, hidden names skipped.

    Args:
        args: Paths, globs or folders, as typed on the command line.

    Returns:
        The checkpoint paths, in expansion order (ordering by step is
        :func:`order_trajectory`'s job).

    Raises:
        WaError: USAGE for no inputs; BAD_INPUT for a missing path, a glob matching nothing, a
            folder holding no checkpoint.

    Example:
        >>> expand_inputs(["runs/a/ckpt_*.safetensors"])  # doctest: +SKIP
        [PosixPath('runs/a/ckpt_2.safetensors'), PosixPath('runs/a/ckpt_10.safetensors')]
    """
    if not args:
        raise WaError(
            "no input checkpoints given (pass files, a folder, or a quoted glob such as "
            "'runs/a/ckpt_*.safetensors')",
            ExitCode.USAGE,
        )
    paths: list[Path] = []
    for arg in args:
        text = os.fspath(arg)
        path = Path(text).expanduser()
        if path.is_dir():
            paths.extend(_expand_folder(path))
        elif path.exists():
            paths.append(path)
        elif _GLOB_CHARS.search(text):
            paths.extend(_expand_glob(os.path.expanduser(text)))
        else:
            raise WaError(f"input '{text}' does not exist (check the path)", ExitCode.BAD_INPUT)
    for p in paths:  # a FIFO or a device would block or never end: refused before any read
        if not p.is_dir():
            require_regular(p, "input")
    return paths


def require_one_per_folder(args: Sequence[object], command: str = "wa graft") -> None:
    """Refuse a folder argument that holds several checkpoints where each argument is one model.

    ``wa graft run1/ run2/`` on two folders of checkpoints grafted a ring of every checkpoint of
    both runs. Which checkpoint of a run the user means (the last saved? the best? ``last.ckpt``?)
    is not wa's to guess, so the folder is refused in one line that names the choice. A folder
    that is one checkpoint (sharded, a run folder) is one model, as always.

    Raises:
        WaError: (USAGE) a folder argument expands to more than one checkpoint.

    Example:
        >>> require_one_per_folder(["runs/a/last.safetensors", "runs/b/"])  # doctest: +SKIP
    """
    for arg in args:
        if not isinstance(arg, str | os.PathLike):
            continue  # an opened checkpoint is one model
        path = Path(os.fspath(arg)).expanduser()
        if not path.is_dir():
            continue
        found = _expand_folder(path)
        if len(found) > 1:
            raise WaError(
                f"folder '{path}' holds {len(found)} checkpoints ({found[0].name} ... "
                f"{found[-1].name}); {command} takes one checkpoint per run: name the file of "
                f"each run you mean (e.g. '{found[-1]}')",
                ExitCode.USAGE,
            )
