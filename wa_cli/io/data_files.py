"""One tensor of a data file, read lazily by rows (the inputs of BatchNorm re-estimation).

A data file is one ``.safetensors``, ``.pt``/``.pth``, ``.npy`` or ``.npz`` file holding the
model's inputs. :func:`open_data_tensor` checks the file, picks the tensor and returns a way to
read rows of it: a safetensors file is read one slice of rows at a time (one positional read
through :mod:`wa_cli.io.reader`), pickles are loaded by :mod:`wa_cli.io.pickles`
(memory-mapped) and arrays are memory-mapped, so a large file never has to fit in memory at
once. Cutting the rows into batches is :mod:`wa_cli.methods.bn.tensor_data`'s part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wa_cli.errors import ExitCode, WaError, describe_exception, listing
from wa_cli.io.bombs import check_zip_expansion
from wa_cli.io.formats import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, checkpoint_suffix
from wa_cli.io.guard import note_read
from wa_cli.io.hostile import require_regular
from wa_cli.io.pickles import check_tensor, load_pickle
from wa_cli.io.reader import SafetensorsFile

SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, ".npy", ".npz")
# Names that mark the model's input when a file holds several tensors (inputs and labels, say).
INPUT_NAMES = ("inputs", "x", "images")

Slicer = Callable[[int, int], torch.Tensor]
"""Rows ``start:stop`` of the tensor, as a tensor of their own."""

_Opened = tuple[str, tuple[int, ...], Callable[[], Slicer]]


def open_data_tensor(path: Path, input_key: str | None) -> _Opened:
    """The tensor of data file ``path`` to read: its key, its shape, and an opener of row slices.

    The tensor is ``input_key``, or found automatically when the file holds exactly one tensor,
    or exactly one named ``inputs``, ``x`` or ``images``. ``.pt``/``.pth`` files are loaded with
    ``weights_only=True`` (a tensor, a dict of tensors, or a list/tuple of tensors with keys
    ``"0"``, ``"1"``, ...). The file is opened and checked here; the returned opener gives a
    ``(start, stop) -> rows`` function each time it is called (once per pass over the data).

    Args:
        path: a ``.safetensors``, ``.pt``, ``.pth``, ``.npy`` or ``.npz`` file.
        input_key: the tensor to use when the file holds several.

    Returns:
        ``(key, shape, open_slicer)``; ``shape[0]`` is at least 1.

    Raises:
        WaError: a missing, irregular or unreadable file, an unknown suffix, a missing or
            ambiguous key, or a tensor without rows.
    """
    require_regular(path, "data file")  # FIFOs and devices: refused before any read
    note_read(path)
    suffix = data_suffix(path)
    if suffix not in SUFFIXES:
        raise WaError(
            f"data file '{path}' has suffix '{suffix}', expected one of {listing(list(SUFFIXES))} "
            "(or give a data loader as module:fn)",
            ExitCode.USAGE,
        )
    try:
        opener = _open_pickle if suffix in PICKLE_SUFFIXES else _OPENERS[suffix]
        key, shape, open_slicer = opener(path, input_key)
    except WaError:
        raise
    except Exception as e:  # safetensors, pickle, zip and numpy format errors alike
        raise WaError(
            f"cannot read data file '{path}': {describe_exception(e)}", ExitCode.BAD_INPUT
        ) from e
    if not shape or shape[0] == 0:
        raise WaError(
            f"tensor '{key}' in data file '{path}' has shape {shape}: expected at least one sample "
            "along dimension 0",
            ExitCode.BAD_INPUT,
        )
    return key, shape, open_slicer


def data_suffix(path: Path) -> str:
    """The lowercased suffix that says how to read a data file (``.pth.tar`` as one)."""
    return (checkpoint_suffix(path) or path.suffix).lower()


def _pick(path: Path, keys: list[str], input_key: str | None) -> str:
    if input_key is not None:
        if input_key not in keys:
            raise WaError(
                f"data file '{path}' has no tensor '{input_key}' (available: {listing(keys)})",
                ExitCode.USAGE,
            )
        return input_key
    if len(keys) == 1:
        return keys[0]
    named = [k for k in INPUT_NAMES if k in keys]
    if len(named) == 1:
        return named[0]
    if not keys:
        raise WaError(f"data file '{path}' holds no tensor", ExitCode.BAD_INPUT)
    raise WaError.naming(
        "data file '{path}' holds {n} tensors ({keys}): name the model's input with {input_key}",
        ExitCode.USAGE,
        path=str(path),
        n=len(keys),
        keys=listing(keys),
    )


def _open_safetensors(path: Path, input_key: str | None) -> _Opened:
    # wa's own reader: the header checked as strictly as for checkpoints, and each batch one
    # positional read of its rows (no memory map, so a pass does not grow resident memory).
    try:
        f = SafetensorsFile(path)
    except WaError as e:
        why = str(e).removeprefix(f"'{path}' is ").removeprefix(f"'{path}': ")
        raise WaError(f"cannot read data file '{path}': {why}", e.code) from e
    key = _pick(path, f.keys(), input_key)
    info = f.info(key)
    shape = tuple(info.shape)
    row_bytes = info.nbytes // shape[0] if shape and shape[0] else 0

    def read_rows(start: int, stop: int) -> torch.Tensor:
        buf = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)
        f.read_into(key, buf, start * row_bytes)
        return buf.view(info.dtype).reshape((stop - start, *shape[1:]))

    return key, shape, lambda: read_rows


def _open_pickle(path: Path, input_key: str | None) -> _Opened:
    payload = load_pickle(path, mmap=True)
    if isinstance(payload, torch.Tensor):
        tensors = {"(tensor)": payload}
    elif isinstance(payload, dict):
        tensors = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    elif isinstance(payload, (list, tuple)):
        tensors = {str(i): v for i, v in enumerate(payload) if isinstance(v, torch.Tensor)}
    else:
        raise WaError(
            f"data file '{path}' holds a {type(payload).__name__}: expected a tensor, a dict of "
            "tensors or a list of tensors",
            ExitCode.BAD_INPUT,
        )
    key = _pick(path, list(tensors), input_key)
    tensor = tensors[key]
    check_tensor(key, tensor, path)  # sparse, meta, stride-0: refused before a batch is sliced
    return key, tuple(tensor.shape), lambda: lambda start, stop: tensor[start:stop]


def _open_npy(path: Path, input_key: str | None) -> _Opened:
    import numpy as np

    if input_key is not None:
        raise WaError.naming(
            "data file '{path}' is a .npy file, which holds one array: leave out {input_key}",
            ExitCode.USAGE,
            path=str(path),
        )
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return "(array)", tuple(array.shape), lambda: _numpy_slicer(array)


def _open_npz(path: Path, input_key: str | None) -> _Opened:
    import numpy as np

    # numpy inflates a member whole: a 1.6 MB archive of zeros took 1.8 GB for two batches.
    check_zip_expansion(path, "data file", "write it with numpy.savez, or as .npy")
    with np.load(path, allow_pickle=False) as archive:
        key = _pick(path, list(archive.files), input_key)
        _check_npz_member(path, archive.zip, key)
        array = archive[key]
    return key, tuple(array.shape), lambda: _numpy_slicer(array)


def _check_npz_member(path: Path, archive: Any, key: str) -> None:
    """Refuse a member whose array header declares more bytes than the member holds.

    numpy allocates the declared shape before it reads, so a 1.6 MB archive whose header claims
    a 1.8 GB array takes 1.8 GB; the zip directory's uncompressed size bounds the real data.
    """
    import numpy as np

    name = key if key in archive.namelist() else f"{key}.npy"
    info = archive.getinfo(name)
    with archive.open(name) as member:
        try:
            version = np.lib.format.read_magic(member)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(member)
        except (ValueError, OSError) as e:
            raise WaError(
                f"data file '{path}': member {key!r} is not a .npy array ({e})", ExitCode.BAD_INPUT
            ) from e
        header = member.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size - header:
        raise WaError(
            f"data file '{path}': member {key!r} declares {declared} bytes of {dtype} "
            f"{list(shape)} but holds {info.file_size - header} (a corrupt or hostile archive)",
            ExitCode.BAD_INPUT,
        )


def _numpy_slicer(array: Any) -> Slicer:
    import numpy as np

    # A copy: torch cannot share a read-only memory map, and the rows are needed only once.
    return lambda start, stop: torch.from_numpy(np.array(array[start:stop]))


_OPENERS: dict[str, Callable[[Path, str | None], _Opened]] = {
    ".safetensors": _open_safetensors,
    ".npy": _open_npy,
    ".npz": _open_npz,
}
