"""What the ranks compare before any of them writes: a summary of the plan each built alone.

Every rank opens the headers and plans by itself, so a node that sees other files (a stale copy,
a missing shard, a glob that expands differently) would write a different part of a different
output. The summary holds what decides the output's bytes: the inputs (paths and file sizes),
the header of every output file (keys, dtypes, shapes, metadata with the provenance), the weights
per key and the output path. Hashes keep it a few hundred bytes whatever the model's size; the
input list is kept whole, so a mismatch can say which file differs. The hashes are of this
summary (built in memory from the plan), never of a file's bytes: those are read in ``io/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from wa_cli.errors import ExitCode, WaError, listing

Summary = dict[str, Any]

_FIELDS = {
    "inputs": "the input checkpoints",
    "sizes": "the input files' sizes",
    "tensors": "the number of output tensors",
    "headers": "the output headers (tensors, dtypes, shapes or metadata)",
    "weights": "the weights per tensor",
    "output": "the output",
}


def digest(parts: Iterable[Any]) -> str:
    """A short stable hash of JSON-able parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def bytes_digest(blobs: Iterable[bytes]) -> str:
    """A short hash of byte strings taken one after another (the output files' headers)."""
    h = hashlib.sha256()
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()[:16]


def input_summary(
    paths: Sequence[str], files: Sequence[Sequence[os.PathLike[str] | str]]
) -> Summary:
    """The inputs as named, and the size of every file each consists of."""
    sizes = []
    for group in files:
        for f in group:
            try:
                sizes.append([str(f), os.stat(f).st_size])
            except OSError as e:
                sizes.append([str(f), f"unreadable: {e.strerror or e}"])
    return {"inputs": list(paths), "sizes": sizes}


def compare(summaries: Sequence[Summary]) -> None:
    """Raise one error naming the first rank whose summary differs from rank 0's, and how.

    Every rank runs this over the same gathered list, so every rank raises the same error.
    """
    reference = summaries[0]
    for rank, summary in enumerate(summaries[1:], start=1):
        for field in _FIELDS:
            if summary.get(field) != reference.get(field):
                raise WaError(
                    f"rank {rank} planned a different run than rank 0: "
                    f"{_difference(field, rank, summary, reference)} (every rank must see the "
                    "same files: put the checkpoints and -o on a filesystem all nodes share)",
                    ExitCode.BAD_INPUT,
                )


def _difference(field: str, rank: int, mine: Summary, ref: Summary) -> str:
    a: Any = mine.get(field)
    b: Any = ref.get(field)
    if field == "inputs":
        missing = [x for x in b if x not in a]
        extra = [x for x in a if x not in b]
        parts = []
        if missing:
            parts.append(f"rank {rank} lacks {listing(missing, 3)}")
        if extra:
            parts.append(f"rank {rank} has {listing(extra, 3)} that rank 0 has not")
        if not parts:
            parts.append(f"the inputs come in another order on rank {rank}")
        return f"{'; '.join(parts)} ({len(a)} input(s) on rank {rank}, {len(b)} on rank 0)"
    if field == "sizes":
        theirs: dict[str, Any] = {str(p): size for p, size in b}
        for path, size in a:
            if theirs.get(path) != size:
                return (
                    f"'{path}' is {_size(size)} on rank {rank} but {_size(theirs.get(path))} on "
                    "rank 0"
                )
        return f"{_FIELDS[field]} differ"
    if field == "tensors":
        return f"{a} output tensor(s) on rank {rank}, {b} on rank 0"
    if field == "output":
        return f"-o is '{a}' on rank {rank} but '{b}' on rank 0"
    return f"{_FIELDS[field]} differ"


def _size(size: Any) -> str:
    if size is None:
        return "missing"
    return f"{size} bytes" if isinstance(size, int) else str(size)


def agree(what: str, summary: Callable[[], Summary]) -> None:
    """Under torchrun: gather every rank's ``summary()`` and stop every rank if one differs.

    The comparison error is raised on every rank alike; rank 0 prints it.
    """
    from wa_cli.engine import distributed

    summaries = distributed.step(what, summary)
    try:
        compare(summaries)
    except WaError as e:
        raise distributed.RankFailure(e.message, e.code, 0) from None
