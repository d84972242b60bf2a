"""Turning command-line arguments into opened checkpoints and parsed numbers."""

from __future__ import annotations

from wa_cli.errors import WaError
from wa_cli.io.reader import Checkpoint, open_checkpoints
from wa_cli.select import expand_inputs


def open_inputs(args: list[str], *, key: str | None, strip_prefix: bool) -> list[Checkpoint]:
    """Expand globs and folders (natural order) and open every checkpoint's header."""
    return open_checkpoints(expand_inputs(args), key=key, strip_prefixes=strip_prefix)


def parse_weight_list(text: str | None) -> list[float] | None:
    """``"1,2,1"`` → ``[1.0, 2.0, 1.0]``; counts and signs are checked by the library."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise WaError(f"cannot read --weights {text!r} (expected numbers like 1,2,1)") from None
