"""Batches from a tensor file, for BatchNorm re-estimation without writing a data loader.

SWA's BN update (Izmailov et al. 2018, arXiv 1803.05407) needs only the inputs of some training
batches. When those sit in one tensor (``.safetensors``, ``.pt``/``.pth``, ``.npy``, ``.npz``),
``wa bn-recalibrate --data inputs.safetensors`` can read them directly. Reading is lazy: a
safetensors file is read one batch of rows at a time (one positional read through ``io.reader``),
pickles are loaded by ``io.pickles`` (memory-mapped) and arrays are memory-mapped, so a large file
never has to fit in memory at once.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
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

logger = logging.getLogger(__name__)

SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, ".npy", ".npz")
# Names that mark the model's input when a file holds several tensors (inputs and labels, say).
INPUT_NAMES = ("inputs", "x", "images")

_Slicer = Callable[[int, int], torch.Tensor]


class TensorFileBatches:
    """Consecutive row batches of one tensor in a file; iterable any number of times.

    Made by :func:`tensor_file_batches`. ``len()`` is the number of batches, ``samples`` the
    number of rows, ``key`` the tensor used and ``shape`` its full shape.
    """

    def __init__(
        self,
        path: Path,
        key: str,
        shape: tuple[int, ...],
        open_slicer: Callable[[], _Slicer],
        batch_size: int,
        dtype: torch.dtype | None,
        drop_last: bool | None,
    ) -> None:
        self.path, self.key, self.shape = path, key, shape
        self.batch_size, self.dtype, self.drop_last = batch_size, dtype, drop_last
        self._open_slicer = open_slicer

    @property
    def samples(self) -> int:
        """Rows in the tensor (all of them, including rows left out as ``dropped``)."""
        return self.shape[0]

    @property
    def dropped(self) -> int:
        """Rows left out of every pass: the incomplete last batch, when it is dropped."""
        full, rest = divmod(self.shape[0], self.batch_size)
        if self.drop_last or (self.drop_last is None and rest == 1 and full > 0):
            return rest
        return 0

    @property
    def note(self) -> str | None:
        """A sentence saying which rows every pass leaves out, or None when it reads them all."""
        if not self.dropped:
            return None
        rows, size = self.shape[0], self.batch_size
        if self.drop_last:
            return (
                f"left out the last {self.dropped} of {rows} rows of data file '{self.path}': "
                f"drop last, they do not fill a batch of {size}"
            )
        return (
            f"left out the last row of data file '{self.path}': {rows} rows in batches of {size} "
            "leave one over, and BatchNorm cannot take a batch of one sample in training mode"
        )

    def __len__(self) -> int:
        return math.ceil((self.shape[0] - self.dropped) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        slicer = self._open_slicer()
        for index in range(len(self)):
            start = index * self.batch_size
            batch = slicer(start, min(start + self.batch_size, self.shape[0]))
            if self.dtype is not None and batch.is_floating_point():
                batch = batch.to(self.dtype)
            yield batch

    def __repr__(self) -> str:
        return (
            f"TensorFileBatches('{self.path}', key='{self.key}', shape={self.shape}, "
            f"batch_size={self.batch_size})"
        )


def tensor_file_batches(
    path: str | os.PathLike[str],
    *,
    batch_size: int,
    input_key: str | None = None,
    dtype: torch.dtype | None = None,
    drop_last: bool | None = None,
) -> TensorFileBatches:
    """Batches of ``batch_size`` rows of one tensor stored in ``path``.

    The tensor is ``input_key``, or found automatically when the file holds exactly one tensor,
    or exactly one named ``inputs``, ``x`` or ``images``. ``.pt``/``.pth`` files are loaded with
    ``weights_only=True`` (a tensor, a dict of tensors, or a list/tuple of tensors with keys
    ``"0"``, ``"1"``, ...). The file is opened and checked here, so mistakes surface before the
    model runs.

    Args:
        path: a ``.safetensors``, ``.pt``, ``.pth``, ``.npy`` or ``.npz`` file.
        batch_size: rows per batch; the last batch may be smaller.
        input_key: the tensor to use when the file holds several.
        dtype: cast floating batches to this dtype (e.g. the model's, for float64 ``.npy`` data).
        drop_last: True leaves out a last batch smaller than ``batch_size``, False keeps it;
            None (the default) leaves it out only when it holds exactly one row, which
            BatchNorm rejects in training mode (``TensorFileBatches.note`` then says so).

    Returns:
        A re-iterable :class:`TensorFileBatches` yielding tensors.

    Raises:
        WaError: a bad batch size, a missing or unreadable file, an unknown suffix, a missing or
            ambiguous key, or a tensor without rows.

    Example:
        >>> batches = tensor_file_batches("calib.safetensors", batch_size=64)  # doctest: +SKIP
        >>> report = recalibrate_bn(model, batches)  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WaError(f"batch size must be a positive integer, got {batch_size!r}", ExitCode.USAGE)
    path = Path(path)
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
    if drop_last is True and shape[0] < batch_size:
        raise WaError(
            f"data file '{path}' holds {shape[0]} samples, fewer than one batch of {batch_size} "
            "(lower the batch size)",
            ExitCode.USAGE,
        )
    logger.debug("data file %s: tensor %r of shape %s", path, key, shape)
    batches = TensorFileBatches(path, key, shape, open_slicer, batch_size, dtype, drop_last)
    if batches.note:
        logger.info("%s", batches.note)
    return batches


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
    raise WaError(
        f"data file '{path}' holds {len(keys)} tensors ({listing(keys)}): name the model's input "
        "with --input-key",
        ExitCode.USAGE,
    )


def data_suffix(path: Path) -> str:
    """The lowercased suffix that says how to read a data file (``.pth.tar`` as one)."""
    return (checkpoint_suffix(path) or path.suffix).lower()


def _open_safetensors(
    path: Path, input_key: str | None
) -> tuple[str, tuple[int, ...], Callable[[], _Slicer]]:
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


def _open_pickle(
    path: Path, input_key: str | None
) -> tuple[str, tuple[int, ...], Callable[[], _Slicer]]:
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


def _open_npy(
    path: Path, input_key: str | None
) -> tuple[str, tuple[int, ...], Callable[[], _Slicer]]:
    import numpy as np

    if input_key is not None:
        raise WaError(
            f"data file '{path}' is a .npy file, which holds one array: leave out --input-key",
            ExitCode.USAGE,
        )
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return "(array)", tuple(array.shape), lambda: _numpy_slicer(array)


def _open_npz(
    path: Path, input_key: str | None
) -> tuple[str, tuple[int, ...], Callable[[], _Slicer]]:
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
    import math

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


def _numpy_slicer(array: Any) -> _Slicer:
    import numpy as np

    # A copy: torch cannot share a read-only memory map, and the rows are needed only once.
    return lambda start, stop: torch.from_numpy(np.array(array[start:stop]))


_OPENERS: dict[
    str, Callable[[Path, str | None], tuple[str, tuple[int, ...], Callable[[], _Slicer]]]
] = {
    ".safetensors": _open_safetensors,
    ".npy": _open_npy,
    ".npz": _open_npz,
}
