"""The one exception users ever see, and the exit codes of DESIGN.md."""

from __future__ import annotations

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

    Messages are one line: name the object, say what was expected and what to do.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = ExitCode(code)


def listing(items: list[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` for short lists, ``'a', ..., 'e' and 3 more`` past ``limit``."""
    shown = ", ".join(repr(i) for i in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
