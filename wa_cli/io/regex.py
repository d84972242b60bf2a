"""Regular expressions from the command line (``--include``/``--exclude``), in linear time.

Python's ``re`` backtracks: ``--exclude '(a+)+$'`` on a 30-character key name took minutes (the
campaign of issue 22 stopped it as a hang). wa matches with RE2 (the ``google-re2`` package, a
dependency), whose time is linear in the key's length for every pattern. RE2 has no
backreferences or lookaround; a pattern that needs them is refused in one line.

Where ``google-re2`` is not installed (a platform without a wheel), wa falls back to ``re`` and
refuses the pattern shapes that can backtrack exponentially: a repeated group that itself holds
a repeat or an alternative (``(a+)+``, ``(a|ab)*``), and backreferences. docs/environment.md
states the rule.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from wa_cli.errors import ExitCode, Param, WaError

try:  # the linear-time engine; see the module docstring for the fallback
    import re2 as _re2  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - google-re2 is a dependency
    _re2 = None

ENGINE = "RE2" if _re2 is not None else "re (google-re2 not installed)"


class PatternError(ValueError):
    """A pattern the engine refuses; the message says why (one line)."""


@functools.lru_cache(maxsize=256)
def compile_search(pattern: str) -> Callable[[str], bool]:
    """A function telling whether ``pattern`` occurs in a string (``re.search`` semantics).

    Raises:
        PatternError: the pattern is not valid, needs a feature RE2 lacks, or (without RE2)
            could take exponential time.

    Example:
        >>> compile_search(r"\\.weight$")("fc.weight")
        True
    """
    if _re2 is not None:
        return _compile_re2(pattern)
    return _compile_bounded_re(pattern)


def checked_search(pattern: str, param: str) -> Callable[[str], bool]:
    """:func:`compile_search`, with a refusal as a one-line ``WaError`` naming ``param``."""
    try:
        return compile_search(pattern)
    except PatternError as e:
        raise WaError.naming(
            "{param} pattern {pattern!r} {e}",
            ExitCode.USAGE,
            param=Param(param),
            pattern=pattern,
            e=e,
        ) from e


def _compile_re2(pattern: str) -> Callable[[str], bool]:
    assert _re2 is not None
    options = _re2.Options()
    options.log_errors = False  # RE2 logs parse errors to stderr itself; wa says it in one line
    try:
        compiled = _re2.compile(pattern, options)
    except _re2.error as e:
        detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        try:
            re.compile(pattern)
        except re.error:
            raise PatternError(f"is not a regular expression: {detail}") from None
        raise PatternError(
            f"uses a feature wa's linear-time regex engine (RE2) does not have ({detail}): "
            "backreferences and lookarounds are not supported"
        ) from None
    return lambda text: compiled.search(text) is not None


def _compile_bounded_re(pattern: str) -> Callable[[str], bool]:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise PatternError(f"is not a regular expression: {e}") from None
    if _may_backtrack(_parse(pattern)):
        raise PatternError(
            "could take exponential time with Python's regex engine (a repeated group holding a "
            "repeat, an alternative or a backreference): install google-re2, or simplify it"
        )
    return lambda text: compiled.search(text) is not None


def _parse(pattern: str) -> Any:
    try:
        from re import _parser  # type: ignore[attr-defined]  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as _parser
    return _parser.parse(pattern)


def _may_backtrack(items: Any, repeated: bool = False) -> bool:
    """Whether a parsed pattern nests a repeat or an alternative under a repeat (or backrefs)."""
    for op, arg in items:
        name = str(op)
        if name == "GROUPREF" or name == "GROUPREF_EXISTS":
            return True
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = arg
            if repeated and high > 1:
                return True
            if _may_backtrack(body, repeated or high > 1):
                return True
        elif name == "BRANCH":
            if repeated:
                return True
            if any(_may_backtrack(b, repeated) for b in arg[1]):
                return True
        elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
            body = arg[-1]
            if _may_backtrack(body, repeated):
                return True
    return False
