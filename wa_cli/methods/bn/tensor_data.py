"""Batches from a tensor file, for BatchNorm re-estimation without writing a data loader.

SWA's BN update (Izmailov et al. 2018, arXiv 1803.05407) needs only the inputs of some training
batches. When those sit in one tensor (``.safetensors``, ``.pt``/``.pth``, ``.npy``, ``.npz``),
``wa bn-recalibrate --data inputs.safetensors`` can read them directly. The file is read lazily,
one batch of rows at a time, by :mod:`wa_cli.io.data_files`; this module cuts the rows into
batches (batch size, the incomplete last batch, the dtype cast).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.data_files import Slicer, open_data_tensor

logger = logging.getLogger(__name__)


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
        open_slicer: Callable[[], Slicer],
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
    key, shape, open_slicer = open_data_tensor(path, input_key)
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
