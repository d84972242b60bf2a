"""What tells two inputs apart: file identity, sampled bytes, and full comparisons.

Used by :mod:`wa_cli.select.duplicates` (the same checkpoint given twice is used once): a sample
(of a file's bytes, or of every tensor's first and last bytes) only nominates a pair, and a full
comparison decides. The bytes are read and hashed here, in ``io/``, so that selection reads no
file itself.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # the reader imports torch; selection, which imports this module, must not
    from wa_cli.io.reader import Checkpoint

_BLOCK = 64 * 1024
_SAMPLES = 8
COMPARE_BLOCK = 4 << 20  # bytes compared at a time: memory stays bounded for any file size
_TENSOR_SAMPLE = 256  # bytes hashed at each end of every tensor


def _open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading without blocking, if it is still a regular file (an input
    swapped for a FIFO after its header was read would block a plain ``open`` for ever)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"'{path}' is no longer a regular file")
    return os.fdopen(fd, "rb")


def file_identity(files: Sequence[str | os.PathLike[str]]) -> frozenset[tuple[int, int]] | None:
    """The (device, inode) pairs of a checkpoint's files: equal for hard links and repeats."""
    try:
        return frozenset((s.st_dev, s.st_ino) for s in (os.stat(f) for f in files))
    except OSError:
        return None


def file_size(path: str | os.PathLike[str]) -> int | None:
    """The size of a file in bytes, or ``None`` when it cannot be read."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def file_sample(path: Path, size: int) -> str | None:
    """A hash of the first and last 64 KiB and 8 evenly spaced 64 KiB blocks of a file."""
    digest = hashlib.sha256(str(size).encode())
    offsets = {0, max(0, size - _BLOCK)}
    offsets |= {size * i // (_SAMPLES + 1) for i in range(1, _SAMPLES + 1)}
    try:
        with _open_input(path) as f:
            for offset in sorted(offsets):
                f.seek(offset)
                digest.update(f.read(_BLOCK))
    except OSError:
        return None
    return digest.hexdigest()


def file_digest(path: Path) -> str | None:
    """A hash of every byte of a file (None when unreadable)."""
    digest = hashlib.blake2b()
    try:
        with _open_input(path) as f:
            while block := f.read(COMPARE_BLOCK):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def files_equal(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes, compared in full, block by block."""
    try:
        with _open_input(a) as fa, _open_input(b) as fb:
            while True:
                block = fa.read(COMPARE_BLOCK)
                if block != fb.read(COMPARE_BLOCK):
                    return False
                if not block:
                    return True
    except OSError:
        return False  # unreadable: never dropped on a guess (the reader reports it later)


def tensor_sample(ckpt: Checkpoint) -> str:
    """A hash of every key, shape, dtype and the first and last bytes of every tensor."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(ckpt.keys()):
        info = ckpt.info(key)
        digest.update(f"{key}|{tuple(info.shape)}|{info.dtype}|{info.nbytes};".encode())
        n = min(info.nbytes, _TENSOR_SAMPLE)
        if n == 0:
            continue
        buf = torch.empty(n, dtype=torch.uint8)
        for offset in dict.fromkeys((0, info.nbytes - n)):
            ckpt.read_into(key, buf, offset)
            digest.update(buf.numpy().tobytes())
    return digest.hexdigest()


def tensors_equal(a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two checkpoints hold the same keys, shapes, dtypes and tensor bytes, in full."""
    import torch

    keys = sorted(a.keys())
    if keys != sorted(b.keys()):
        return False
    infos = [(a.info(k), b.info(k)) for k in keys]
    if any((tuple(x.shape), x.dtype, x.nbytes) != (tuple(y.shape), y.dtype, y.nbytes)
           for x, y in infos):  # fmt: skip
        return False
    size = min(COMPARE_BLOCK, max((x.nbytes for x, _ in infos), default=0))
    bufs = torch.empty(size, dtype=torch.uint8), torch.empty(size, dtype=torch.uint8)
    for key, (info, _) in zip(keys, infos, strict=True):
        for offset in range(0, info.nbytes, COMPARE_BLOCK):
            n = min(COMPARE_BLOCK, info.nbytes - offset)
            x, y = bufs[0][:n], bufs[1][:n]
            a.read_into(key, x, offset)
            b.read_into(key, y, offset)
            if not torch.equal(x, y):
                return False
    return True
