"""Short display names that tell input checkpoints apart (reports, graft output names)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def distinct_names(paths: Sequence[Path], sep: str = "/") -> list[str]:
    """Short names that tell checkpoints apart: the file stem, with parent folders if needed.

    Example:
        >>> distinct_names([Path("run_a/ckpt_9.safetensors"), Path("run_b/ckpt_9.safetensors")])
        ['run_a/ckpt_9', 'run_b/ckpt_9']
    """
    parts = [_stem_parts(p) for p in paths]
    longest = max((len(p) for p in parts), default=1)
    for depth in range(1, longest + 1):
        names = [sep.join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    # The same checkpoint given twice: number them.
    return [f"{i + 1}{sep}{sep.join(p[-1:])}" for i, p in enumerate(parts)]


def _stem_parts(path: Path) -> list[str]:
    p = path.resolve()
    if p.name.endswith(".index.json"):  # a sharded checkpoint named by its index: the folder
        p = p.parent
    stem = p.name.removesuffix(".safetensors") if p.is_dir() else p.stem
    return [*(x for x in p.parent.parts if x != p.anchor), stem]
