"""What an output records about how it was made (safetensors ``__metadata__`` strings).

Re-saved files that drop ``format: pt`` break loaders (safetensors #549), and users want the merge
recipe and the inputs' identities inside the file: keep the inputs' ``format`` and add wa's own
``wa_*`` entries.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from wa_cli import __version__
from wa_cli.io.reader import Checkpoint


def current_command() -> str:
    """The command line as typed (best effort), e.g. ``wa average a.safetensors -o b``."""
    return shlex.join(["wa", *sys.argv[1:]])


def provenance(
    checkpoints: Sequence[Checkpoint],
    method: str,
    params: dict[str, Any],
    command: str | None = None,
) -> dict[str, str]:
    """Metadata for an output made by ``method`` with ``params`` from ``checkpoints``.

    Example:
        >>> provenance([], "mean", {"weights": [1, 1]})["wa_method"]
        'mean'
    """
    formats = [c.metadata.get("format") for c in checkpoints if c.metadata.get("format")]
    return {
        "format": formats[0] if formats else "pt",
        "wa_version": __version__,
        "wa_command": command if command is not None else current_command(),
        "wa_method": method,
        "wa_params": json.dumps(params, sort_keys=True),
        "wa_inputs": json.dumps([str(c.path) for c in checkpoints]),
    }
