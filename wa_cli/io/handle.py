"""``wa.open_checkpoint``: any checkpoint wa reads, behind safetensors' ``safe_open`` interface.

A notebook user who knows ``with safe_open(p, "pt") as f: f.get_tensor(k)`` can write the same
with ``wa.open_checkpoint(p)`` for a sharded folder, an index file or a ``.pt`` pickle too. The
handle reads lazily (headers at open, one tensor per ``get_tensor``) and can be passed to
``wa.average`` and the other methods wherever a path is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import Checkpoint, open_checkpoint


class CheckpointHandle:
    """An opened checkpoint: ``keys()``, ``get_tensor(name)``, ``metadata()``, ``len``, ``iter``.

    Attributes:
        checkpoint: the underlying lazy :class:`~wa_cli.io.reader.Checkpoint`.
        path: what was opened.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.path = checkpoint.path

    def keys(self) -> list[str]:
        """The tensor names, as ``safe_open(...).keys()`` lists them."""
        return self.checkpoint.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        """One whole tensor, read now into fresh CPU memory."""
        if name not in self.checkpoint:
            raise WaError(f"'{self.path}' holds no tensor {name!r}", ExitCode.BAD_INPUT)
        return self.checkpoint.tensor(name)

    def metadata(self) -> dict[str, str]:
        """The string metadata (safetensors ``__metadata__``; for pickles, step/epoch)."""
        return dict(self.checkpoint.metadata)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.checkpoint

    def __enter__(self) -> CheckpointHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release open files (reading again reopens them)."""
        self.checkpoint.close()

    def __repr__(self) -> str:
        return f"CheckpointHandle({str(self.path)!r}, {len(self)} tensors)"


def open_checkpoint_handle(
    path: str | os.PathLike[str], *, key: str | None = None, strip_prefix: bool = False
) -> CheckpointHandle:
    """Open a checkpoint lazily, like safetensors' ``safe_open`` (and as a context manager).

    Args:
        path: a ``.safetensors`` file, a sharded folder or its ``*.safetensors.index.json``, or
            a PyTorch pickle (``.pt``, ``.pth``, ``.bin``, ``.ckpt``).
        key: for pickles, the nested dict holding the state dict (auto-detected if unambiguous).
        strip_prefix: drop ``module.`` and ``_orig_mod.`` key prefixes.

    Example:
        >>> with open_checkpoint_handle("swa.safetensors") as f:  # doctest: +SKIP
        ...     w = f.get_tensor("fc.weight")
    """
    if not isinstance(path, str | os.PathLike):
        raise WaError.naming("{path=}{got!r} is not a path", got=path)
    return CheckpointHandle(open_checkpoint(path, key=key, strip_prefixes=strip_prefix))
