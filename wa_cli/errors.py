"""The one exception users ever see, the exit codes of DESIGN.md, and messages that name parameters.

A message about an argument names the library's *parameter* (``decay must be in [0, 1]``); on the
command line the same message names the flag the user typed (``--decay must be in [0, 1]``). The
message is built once from a template whose parameter fields stay fields, so each front end
spells them its own way and no text is ever rewritten (see :meth:`WaError.naming`).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: the traceback is shown
    USAGE = 2
    BAD_INPUT = 3  # unreadable or corrupt input
    INCOMPATIBLE = 4  # checkpoints that cannot be combined
    OUTPUT = 5  # the output cannot be written


@dataclass(frozen=True)
class Param:
    """A library parameter that a message names: ``decay`` in the library, ``--decay`` in the CLI.

    ``assign``: the name is followed by its value (``non_float='lst'``, ``--non-float 'lst'``).
    Passed as a template value (``param=Param(name)``), it makes ``{param}`` a parameter field
    whose name the caller chose (see :func:`wa_cli.engine.params.bad`).
    """

    name: str
    assign: bool = False

    def library(self) -> str:
        """The library's spelling: ``decay``, or ``non_float=`` before a value."""
        return f"{self.name}=" if self.assign else self.name


Part = str | Param  # a piece of a message: finished text, or a parameter each front end spells
_FORMATTER = string.Formatter()


def _field(name: str, conversion: str | None, spec: str, values: dict[str, Any]) -> Part:
    """One replacement field of a template: a parameter, or a value formatted as str.format."""
    assign = name.endswith("=")
    key = name.removesuffix("=")
    if not key.isidentifier():
        raise ValueError(f"template field {{{name}}}: a name is needed (no positional fields)")
    if "{" in spec:
        raise ValueError(f"template field {{{name}}}: nested fields in a format spec")
    if key in values and not isinstance(values[key], Param):
        if assign:
            raise ValueError(f"template field {{{name}}}: '=' follows parameters, not values")
        return _FORMATTER.format_field(_FORMATTER.convert_field(values[key], conversion), spec)
    if conversion or spec:
        raise ValueError(f"template field {{{name}}}: a parameter takes no conversion or spec")
    return Param(values[key].name if key in values else key, assign)


def parse_template(template: str, values: dict[str, Any]) -> tuple[Part, ...]:
    """The parts of ``template``: its text and values as strings, its parameters as ``Param``.

    Raises ValueError on a malformed template, a positional field or a value it never uses (each
    a bug in the caller, never the user's doing).

    Example:
        >>> parse_template("{non_float=}{got!r} is bad", {"got": "lst"})
        (Param(name='non_float', assign=True), "'lst' is bad")
    """
    parts: list[Part] = []
    used: set[str] = set()
    for text, name, spec, conversion in _FORMATTER.parse(template):
        parts.append(text)
        if name is not None:
            used.add(name.removesuffix("="))
            parts.append(_field(name, conversion, spec or "", values))
    unused = set(values) - used
    if unused:
        raise ValueError(f"template {template!r} does not use {sorted(unused)}")
    return _joined(parts)


def _joined(parts: list[Part]) -> tuple[Part, ...]:
    out: list[Part] = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        elif part != "":
            out.append(part)
    return tuple(out)


def render(parts: tuple[Part, ...], spell: Callable[[Param], str] = Param.library) -> str:
    """The message of ``parts``, each parameter spelled by ``spell`` (the library's by default)."""
    return "".join(p if isinstance(p, str) else spell(p) for p in parts)


class WaError(Exception):
    """Anything a user can cause. The CLI prints ``wa: error: <message>`` and exits with ``code``.

    Messages are one line: name the object, say what was expected and what to do. A message
    about an argument is built with :meth:`naming`, so that it names the library's parameter in
    the library (``decay must be in [0, 1]``) and the flag on the command line (``--decay ...``).
    ``WaError(message, code)`` keeps ``message`` as it is (it is never parsed); ``message`` may
    also be the ``parts`` of a message built before (to pass it on unchanged).

    Attributes:
        parts: the message's pieces: text, and the :class:`Param` each front end spells.
        message: the message as the library shows it (also ``str(error)``).
        params: the parameters the message names, in order (each once).
    """

    def __init__(self, message: str | tuple[Part, ...], code: ExitCode = ExitCode.USAGE) -> None:
        self.parts: tuple[Part, ...] = (message,) if isinstance(message, str) else tuple(message)
        self.message = render(self.parts)
        super().__init__(self.message)
        self.code = ExitCode(code)

    @staticmethod
    def naming(template: str, code: ExitCode = ExitCode.USAGE, /, **values: Any) -> WaError:
        """A ``WaError`` from a ``str.format`` template whose other fields are parameters.

        A field named by one of ``values`` is that value, formatted as ``str.format`` does
        (``{got!r}``, ``{n:g}``). Any other field is a library parameter: ``{decay}`` reads
        ``decay`` in the library and ``--decay`` in the CLI; ``{non_float=}`` reads
        ``non_float=`` / ``--non-float `` before the value that follows it. A value that is a
        :class:`Param` names a parameter chosen at run time. User content (paths, tensor names,
        values) only ever enters as a value, so its braces and words are never read as fields.

        Example:
            >>> e = WaError.naming("{decay} must be in [0, 1], got {got!r}", got=1.5)
            >>> e.message, e.params
            ('decay must be in [0, 1], got 1.5', ('decay',))
            >>> e.render(lambda p: "--" + p.name + (" " if p.assign else ""))
            '--decay must be in [0, 1], got 1.5'
        """
        return WaError(parse_template(template, values), code)

    @property
    def params(self) -> tuple[str, ...]:
        """The library parameters the message names, in order of appearance (each once)."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, Param)))

    def render(self, spell: Callable[[Param], str]) -> str:
        """The message with each parameter spelled by ``spell`` (the CLI: its flags)."""
        return render(self.parts, spell)


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
