"""Argument checks shared by the library and the CLI: one place, messages that name parameters.

A notebook user passes ``non_float="lst"`` or ``dtype="bfloat16"``; the CLI passes the same
values from its flags. Both go through these functions, so a bad value is one ``WaError`` whose
message names the *parameter* (``non_float='lst' is not one of 'last', 'first', 'error'``) and
lists the parameter in ``WaError.params``; the CLI turns those names into its flags
(``wa_cli.cli.flags``). No torch at import: ``wa --help`` must stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from wa_cli.errors import ExitCode, WaError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


def bad(param: str, message: str, code: ExitCode = ExitCode.USAGE) -> WaError:
    """A ``WaError`` about parameter ``param`` (named in ``message``), for the CLI to translate.

    Example:
        >>> bad("decay", "decay must be in [0, 1], got 1.5").params
        ('decay',)
    """
    return WaError(message, code, params=(param,))


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
    raise bad(param, f"{param}={value!r} is not one of {quoted(options)}")


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
    raise bad(param, f"{param}={value!r} is not one of {quoted(DTYPE_NAMES)} (or a torch.dtype)")


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
        raise bad(param, f"{param}={value!r} is not a size (give bytes as an int, or e.g. '5GB')")
    if isinstance(value, int):
        if value < 1:
            raise bad(param, f"{param}={value!r} must be at least 1 byte")
        return value
    try:
        return parse_size(value)
    except WaError:
        raise bad(
            param,
            f"{param}={value!r} is not a size (expected a finite size of at least 1 byte, "
            "e.g. 5GB, 500MB, 2GiB)",
        ) from None


def integer(param: str, value: object, *, minimum: int | None = None) -> int | None:
    """An int (not a bool) of at least ``minimum``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, f"{param}={value!r} must be an integer")
    if minimum is not None and value < minimum:
        raise bad(param, f"{param} must be >= {minimum}, got {value}")
    return value


def number(param: str, value: object, *, finite: bool = True) -> float:
    """A real number (not a bool), finite unless ``finite=False`` (the caller checks its range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(param, f"{param}={value!r} must be a number")
    x = float(value)
    if finite and not math.isfinite(x):
        raise bad(param, f"{param} must be a finite number, got {value!r}")
    return x


def flag(param: str, value: Any) -> bool:
    """A real bool: ``force="false"`` would be truthy, so strings are refused."""
    if not isinstance(value, bool):
        raise bad(param, f"{param}={value!r} must be True or False")
    return value
