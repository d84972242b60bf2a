"""What an output records about how it was made (safetensors ``__metadata__`` strings).

Re-saved files that drop ``format: pt`` break loaders (safetensors #549), and users want the merge
recipe and the inputs' identities inside the file: keep the inputs' ``format`` and add wa's own
``wa_*`` entries.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wa_cli._version import __version__

if TYPE_CHECKING:  # the CLI imports this module before torch, so `wa --help` stays fast
    from wa_cli.io.reader import Checkpoint

API_COMMAND = "(python API)"
"""What ``wa_command`` records for a library call made outside the ``wa`` command line."""

# Set by the CLI's main() for the duration of one command; None for library calls. sys.argv is
# no guide: in a notebook it is the kernel's own command line ("-f kernel.json").
_cli_command: str | None = None


def set_cli_command(args: Sequence[str] | None) -> None:
    """Record the arguments of the running ``wa`` command (``None`` clears it).

    Example:
        >>> set_cli_command(["average", "a.safetensors", "-o", "b.safetensors"])
        >>> current_command()
        'wa average a.safetensors -o b.safetensors'
        >>> set_cli_command(None)
    """
    global _cli_command
    _cli_command = None if args is None else shlex.join(["wa", *args])


def current_command() -> str:
    """The running ``wa`` command line, or :data:`API_COMMAND` for a library call.

    Example:
        >>> current_command()
        '(python API)'
    """
    return _cli_command if _cli_command is not None else API_COMMAND


def provenance(
    checkpoints: Sequence[Checkpoint],
    method: str,
    params: dict[str, Any],
    command: str | None = None,
) -> dict[str, str]:
    """Metadata for an output made by ``method`` with ``params`` from ``checkpoints``.

    ``wa_command`` is ``command`` when given, else the running ``wa`` command line, else
    :data:`API_COMMAND`.

    Example:
        >>> provenance([], "mean", {"weights": [1, 1]})["wa_method"]
        'mean'
    """
    formats = [c.metadata["format"] for c in checkpoints if c.metadata.get("format")]
    return {
        "format": formats[0] if formats else "pt",
        "wa_version": __version__,
        "wa_command": command if command is not None else current_command(),
        "wa_method": method,
        "wa_params": json.dumps(params, sort_keys=True),
        "wa_inputs": json.dumps([str(c.path) for c in checkpoints]),
    }
