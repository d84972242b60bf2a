"""Recognising wa's own outputs on disk: a safetensors file or a shard index whose metadata holds
``wa_version`` (every file wa writes records it, with ``wa_method``).

``wa average ckpts/ -o ckpts/swa.safetensors`` leaves its output among the checkpoints; a later
``wa average ckpts/ --last 5`` would average it in as one more trajectory checkpoint. Folder and
glob expansion (:mod:`wa_cli.select.expand`) asks :func:`wa_method` and leaves such files out.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wa_cli.errors import WaError
from wa_cli.io.formats import INDEX_SUFFIX, SAFETENSORS_SUFFIX
from wa_cli.io.hostile import parse_json, read_bounded
from wa_cli.io.safetensors_header import MAX_HEADER_BYTES, read_header

WA_MARK = "wa_version"
"""The metadata entry every output of wa carries (also in the index of a shard folder)."""
_MAX_INDEX_BYTES = 64 << 20
_MARK_BYTES = f'"{WA_MARK}"'.encode()


def _safetensors_method(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            raw = f.read(min(n, MAX_HEADER_BYTES))
    except OSError:
        return None
    if _MARK_BYTES not in raw:  # most checkpoints: no JSON parsed here
        return None
    try:
        metadata = read_header(path).metadata
    except WaError:  # corrupt: the reader says so when the file is opened
        return None
    return metadata.get("wa_method", "?") if WA_MARK in metadata else None


def _index_method(path: Path) -> str | None:
    try:
        meta = parse_json(read_bounded(path, _MAX_INDEX_BYTES, what="index")).get("metadata")
    except (WaError, ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(meta, dict) or WA_MARK not in meta:
        return None
    return str(meta.get("wa_method", "?"))


def wa_method(path: Path) -> str | None:
    """The method (``mean``, ``ema``, ...) that wa wrote ``path`` with, or None if wa did not.

    ``path`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` or a folder holding one
    index. Unreadable or corrupt files count as not written by wa: the reader reports them.

    Example:
        >>> wa_method(Path("ckpts/swa.safetensors"))  # doctest: +SKIP
        'mean'
    """
    name = path.name.lower()
    if path.is_dir():
        indexes = [p for p in path.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file()]
        return _index_method(indexes[0]) if len(indexes) == 1 else None
    if name.endswith(INDEX_SUFFIX):
        return _index_method(path)
    if name.endswith(SAFETENSORS_SUFFIX) and path.is_file():
        return _safetensors_method(path)
    return None
