"""A byte range of a file read as a file of its own (a member of an uncompressed tar, a DCP
chunk blob).

NeMo's ``.nemo`` is a tar holding ``model_weights.ckpt``; an uncompressed tar stores each member's
bytes in place, so torch can load the inner checkpoint from a view of that range, and the offsets
it reports are relative to the member's start (add :attr:`Member.offset` to ``pread`` them).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from wa_cli.io.descriptors import open_regular


@dataclass(frozen=True)
class Member:
    """``size`` bytes of ``path`` from ``offset`` on."""

    path: Path
    offset: int
    size: int

    def open(self) -> IO[bytes]:
        """A fresh read-only file object over the range."""
        return cast(IO[bytes], MemberFile(self))


class MemberFile(io.RawIOBase):
    """Seekable reads of a :class:`Member`, by positional reads of the underlying file."""

    def __init__(self, member: Member):
        super().__init__()
        self._member = member
        self._fd, _ = open_regular(member.path)  # never blocks on a FIFO swapped in
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._member.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._member.size - self._pos))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._member.offset + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
