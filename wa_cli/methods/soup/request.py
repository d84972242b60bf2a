"""The soups' keyword arguments as option objects, shared by the three soup verbs.

A soup takes what ``wa.average_to_file`` takes for reading, combining and writing (the keywords
or the option objects ``read=``, ``reduce=``, ``write=``; ``opts=`` and ``out=`` are the older
names of the last two), but no selection, weights or dry run: it chooses its own inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.methods.request import ReadArgs, ReduceArgs, Request, WriteArgs

_OLDER = {"opts": "reduce", "out": "write"}


class SoupWriteArgs(ReadArgs, ReduceArgs, WriteArgs, total=False):
    """Reading, combining and writing, as for ``wa.average_to_file``."""

    opts: ReduceOptions | None  # the older name of reduce=
    out: WriteOptions | None  # the older name of write=


def soup_request(
    function: str, options: Mapping[str, Any], own: Sequence[str], required: Sequence[str] = ()
) -> Request:
    """The soup's read, reduce and write options (its own ``metric`` is the score's, not
    top-k's); ``required``: the verb's own keywords it cannot run without."""
    if "dry_run" in options:  # a soup is chosen by scoring: there is no plan to show first
        raise TypeError(f"{function}() got an unexpected keyword argument 'dry_run'")
    for name in required:
        if name not in options:
            raise TypeError(f"{function}() missing required keyword argument {name!r}")
    args = dict(options)
    for older, name in _OLDER.items():
        if older in args:
            if name in args:
                raise TypeError(f"{function}() got both {name}= and its older name {older}=")
            args[name] = args.pop(older)
    return Request.of(function, args, own=own, takes=("read", "reduce", "write"))
