"""Reading files that may be hostile: regular files only, bounded reads, JSON with limits.

A FIFO as an input blocks the first read forever, a symlink to ``/dev/zero`` reads until memory
runs out, and JSON nested 100,000 levels deep, a 5000-digit integer or ``Infinity`` makes the
standard parser raise (or return values no checkpoint can hold). Everything wa reads from a
user's path goes through here first.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.descriptors import open_regular, special_kind

# JSON numbers: int64 needs at most 19 digits (20 with a sign).
MAX_INT_DIGITS = 20
# Sidecar JSON (indexes, metrics files): far above any real one, far below a memory problem.
MAX_JSON_FILE_BYTES = 256 << 20


def require_regular(path: str | os.PathLike[str], what: str = "input") -> os.stat_result:
    """The stat of ``path`` if it is a regular file (symlinks followed); else a one-line error.

    FIFOs, sockets and devices are refused before anything opens them (opening a FIFO for
    reading blocks until a writer comes).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WaError(f"{what} '{path}' does not exist", ExitCode.BAD_INPUT) from None
    except OSError as e:
        raise WaError(f"cannot read {what} '{path}': {e.strerror or e}", ExitCode.BAD_INPUT) from e
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
        raise WaError(
            f"{what} '{path}' is a {kind}, not a regular file (wa reads files and checkpoint "
            "folders only)",
            ExitCode.BAD_INPUT,
        )
    return st


def read_bounded(path: Path, limit: int = MAX_JSON_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading)."""
    fd, st = open_regular(path, what)  # opened once, never blocking on a FIFO swapped in
    try:
        if st.st_size > limit:
            raise WaError(
                f"{what} '{path}' is {st.st_size} bytes, more than the {limit} a {what} may have",
                ExitCode.BAD_INPUT,
            )
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise WaError(f"cannot read {what} '{path}': {e.strerror or e}", ExitCode.BAD_INPUT) from e
    finally:
        os.close(fd)
    if len(data) > limit:
        raise WaError(f"{what} '{path}' grew past {limit} bytes while read", ExitCode.BAD_INPUT)
    return data


class JsonLimitError(ValueError):
    """A JSON document past one of the limits (the message says which)."""


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise JsonLimitError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError(f"the number {text[:30]} overflows a float")
    return value


def _constant(text: str) -> Any:
    raise JsonLimitError(f"{text} (not JSON: only finite numbers)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonLimitError(f"the key {key!r} appears twice")
            seen.add(key)
    return out


def parse_json(data: bytes | str) -> Any:
    """Parse strict JSON: finite numbers, ints within 20 digits, no duplicate keys, bounded depth.

    Raises:
        ValueError: (``JsonLimitError`` or ``json.JSONDecodeError``) with a one-line reason.
    """
    try:
        return json.loads(
            data,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_no_duplicates,
        )
    except RecursionError:
        raise JsonLimitError("nested too deeply") from None
    except UnicodeDecodeError as e:
        raise JsonLimitError(f"not UTF-8 ({e.reason} at byte {e.start})") from None


def json_reason(error: ValueError) -> str:
    """A one-line reason for a ``parse_json`` error."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
