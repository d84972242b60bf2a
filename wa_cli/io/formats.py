"""Every checkpoint file suffix wa knows, written once.

Readers, input expansion, step-from-name parsing and the writer's "not a pickle name" check all
ask this module, so a suffix added here (timm's ``.pth.tar``) is accepted everywhere at once.
Suffixes compare case-insensitively, longest first, so ``ckpt.pth.tar`` is a pickle named
``ckpt`` and not a ``.tar`` file. No torch here: input expansion uses this before anything opens.
"""

from __future__ import annotations

from pathlib import PurePath

SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
PICKLE_SUFFIXES = (".pth.tar", ".pt.tar", ".pt", ".pth", ".bin", ".ckpt")
"""What ``torch.save`` files are called: timm writes ``.pth.tar``, Lightning ``.ckpt``."""
NEMO_SUFFIX = ".nemo"
"""NeMo's archive: a tar holding a ``torch.save`` file (:mod:`wa_cli.io.nemo`)."""
CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES, NEMO_SUFFIX)
"""File suffixes a folder is searched for."""

_LONGEST_FIRST = tuple(sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True))


def checkpoint_suffix(name: str | PurePath) -> str | None:
    """The checkpoint suffix ``name`` ends with, as spelled in the name; ``None`` if none.

    Example:
        >>> checkpoint_suffix("model_best.pth.tar")
        '.pth.tar'
        >>> checkpoint_suffix("notes.txt") is None
        True
    """
    text = name.name if isinstance(name, PurePath) else name
    lower = text.lower()
    for suffix in _LONGEST_FIRST:
        if lower.endswith(suffix):
            return text[len(text) - len(suffix) :]
    return None


def is_pickle_name(name: str | PurePath) -> bool:
    """Whether ``name`` ends with a suffix loaders read with ``torch.load``."""
    suffix = checkpoint_suffix(name)
    return suffix is not None and suffix.lower() in PICKLE_SUFFIXES


def is_safetensors_name(name: str | PurePath) -> bool:
    """Whether ``name`` is a single ``.safetensors`` file name."""
    suffix = checkpoint_suffix(name)
    return suffix is not None and suffix.lower() == SAFETENSORS_SUFFIX


def strip_checkpoint_suffix(name: str) -> str:
    """``name`` without its checkpoint suffix (unchanged when it has none).

    Example:
        >>> strip_checkpoint_suffix("checkpoint-12.pth.tar")
        'checkpoint-12'
    """
    suffix = checkpoint_suffix(name)
    return name[: -len(suffix)] if suffix else name


def suffix_list() -> str:
    """The suffixes for messages: ``.safetensors, .pth.tar, ...``."""
    return ", ".join(CHECKPOINT_SUFFIXES)
