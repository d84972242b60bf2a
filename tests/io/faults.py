"""Shared checks of the fault-injection suite: inputs untouched, no temporary left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (or the files themselves) → sha256 of its bytes."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def temporaries(folder: Path) -> list[str]:
    """wa's temporary names anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if ".wa-tmp-" in p.name)
