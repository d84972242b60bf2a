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


def describe_exception(error: BaseException) -> str:
    """``'ValueError: bad input'`` on one line (user messages may span several)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def listing(items: list[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` for short lists, ``'a', ..., 'e' and 3 more`` past ``limit``."""
    shown = ", ".join(repr(i) for i in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


# Control characters (C0, DEL, C1) and bidirectional overrides, written as escapes: a tensor name
# from an untrusted file must not clear, retitle or reorder the user's terminal.
_UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def printable(text: str) -> str:
    """``text`` with control characters escaped (``'\\x1b'``), for terminals; JSON stays exact.

    Example:
        >>> printable("layer\\x1b[2J.weight")
        'layer\\\\x1b[2J.weight'
    """
    return text.translate(_UNPRINTABLE)
