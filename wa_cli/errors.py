"""The one exception users ever see, and the exit codes of DESIGN.md."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: the traceback is shown
    USAGE = 2
    BAD_INPUT = 3  # unreadable or corrupt input
    INCOMPATIBLE = 4  # checkpoints that cannot be combined
    OUTPUT = 5  # the output cannot be written


class WaError(Exception):
    """Anything a user can cause. The CLI prints ``wa: error: <message>`` and exits with ``code``.

    Messages are one line: name the object, say what was expected and what to do. A message
    about an argument names the library's *parameter* (``decay must be in [0, 1]``) and lists it
    in ``params``; the CLI shows those names as its flags (``--decay``), see ``wa_cli.cli.flags``.
    """

    def __init__(
        self, message: str, code: ExitCode = ExitCode.USAGE, *, params: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = ExitCode(code)
        self.params = tuple(params)


def listing(items: list[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` for short lists, ``'a', ..., 'e' and 3 more`` past ``limit``."""
    shown = ", ".join(repr(i) for i in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
