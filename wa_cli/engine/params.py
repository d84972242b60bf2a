"""Argument checks shared by the library and the CLI: one place, messages that name parameters.

A notebook user passes ``non_float="lst"`` or ``dtype="bfloat16"``; the CLI passes the same
values from its flags. Both go through these functions, so a bad value is one ``WaError`` whose
message names the *parameter* (``non_float='lst' is not one of 'last', 'first', 'error'``) in the
library and the flag (``--non-float 'lst' is not one of ...``) on the command line.

The rule for a parameter named at run time (``choice(param, ...)``): the caller passes the
parameter's name, which is code (an identifier the caller wrote), never user content, and the
message's template spells it as the field ``{param}`` (or ``{param=}`` before its value); see
:func:`bad` and :meth:`wa_cli.errors.WaError.naming`. Messages about a fixed parameter write it
in their own template (``WaError.naming("{decay} must be ...")``). No torch at import: ``wa
--help`` must stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from wa_cli.errors import ExitCode, Param, WaError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


def bad(param: str, template: str, code: ExitCode = ExitCode.USAGE, /, **values: Any) -> WaError:
    """A ``WaError`` about parameter ``param``, which ``template`` names as ``{param}``.

    ``param`` is the library's name for it (code, never user content); every other field of
    ``template`` is one of ``values`` or a fixed parameter, as in :meth:`WaError.naming`.

    Example:
        >>> e = bad("decay", "{param} must be in [0, 1], got {got}", got=1.5)
        >>> e.message, e.params
        ('decay must be in [0, 1], got 1.5', ('decay',))
    """
    return WaError.naming(template, code, param=Param(param), **values)


def quoted(values: Sequence[object]) -> str:
    """``'a', 'b', 'c'``: the allowed values of a choice, as a message lists them."""
    return ", ".join(repr(v) for v in values)


def choice(param: str, value: object, allowed: Any) -> Any:
    """``value`` if it is one of ``allowed`` (a sequence, or a ``Literal`` type), else WaError.

    Example:
        >>> choice("mode", "max", ("min", "max"))
        'max'
        >>> choice("non_float", "lst", ("last", "first", "error"))
        Traceback (most recent call last):
        ...
        wa_cli.errors.WaError: non_float='lst' is not one of 'last', 'first', 'error'
    """
    options: tuple[object, ...] = get_args(allowed) or tuple(allowed)  # a Literal or a sequence
    if isinstance(value, str) and value in options:
        return value
    raise bad(param, "{param=}{got!r} is not one of {allowed}", got=value, allowed=quoted(options))


def dtype(param: str, value: object) -> torch.dtype | None:
    """A floating output dtype from a ``torch.dtype`` or a name (``"bfloat16"``, ``"bf16"``).

    Example:
        >>> dtype("dtype", "bf16")
        torch.bfloat16
    """
    import torch

    from wa_cli.io.dtypes import dtype_name

    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value.is_floating_point and dtype_name(value) in DTYPE_NAMES:
            return value
    elif isinstance(value, str):
        name = _DTYPE_ALIASES.get(value.lower(), value.lower().removeprefix("torch."))
        if name in DTYPE_NAMES:
            return getattr(torch, name)  # type: ignore[no-any-return]  # torch.float32 etc.
    allowed = quoted(DTYPE_NAMES)
    raise bad(
        param,
        "{param=}{got!r} is not one of {allowed} (or a torch.dtype)",
        got=value,
        allowed=allowed,
    )


def size(param: str, value: object) -> int | None:
    """A size in bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``.

    Example:
        >>> size("max_shard_size", "2KiB")
        2048
    """
    from wa_cli.io.writer import parse_size

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad(
            param, "{param=}{got!r} is not a size (give bytes as an int, or e.g. '5GB')", got=value
        )
    if isinstance(value, int):
        if value < 1:
            raise bad(param, "{param=}{got!r} must be at least 1 byte", got=value)
        return value
    try:
        return parse_size(value)
    except WaError:
        raise bad(
            param,
            "{param=}{got!r} is not a size (expected a finite size of at least 1 byte, "
            "e.g. 5GB, 500MB, 2GiB)",
            got=value,
        ) from None


def integer(param: str, value: object, *, minimum: int | None = None) -> int | None:
    """An int (not a bool) of at least ``minimum``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, "{param=}{got!r} must be an integer", got=value)
    if minimum is not None and value < minimum:
        raise bad(param, "{param} must be >= {minimum}, got {got}", minimum=minimum, got=value)
    return value


def number(param: str, value: object, *, finite: bool = True) -> float:
    """A real number (not a bool), finite unless ``finite=False`` (the caller checks its range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(param, "{param=}{got!r} must be a number", got=value)
    x = float(value)
    if finite and not math.isfinite(x):
        raise bad(param, "{param} must be a finite number, got {got!r}", got=value)
    return x


def flag(param: str, value: Any) -> bool:
    """A real bool: ``force="false"`` would be truthy, so strings are refused."""
    if not isinstance(value, bool):
        raise bad(param, "{param=}{got!r} must be True or False", got=value)
    return value
