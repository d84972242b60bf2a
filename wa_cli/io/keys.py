"""Which tensors of a checkpoint wa uses, and under what names: --key, --include/--exclude,
--strip-prefix.

Training libraries wrap a model's state dict: Lightning under ``state_dict`` with the module's
attribute (often ``model.``) in front of every key, DDP with ``module.``, ``torch.compile`` with
``_orig_mod.``, Lightning's SWA callback deep inside ``callbacks``. These rules undo the wrapping
the same way for every command, before any plan is made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.io.regex import checked_search, compile_search

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""What ``strip_prefixes=True`` (the Python API's old meaning) drops."""
AUTO = "auto"


@dataclass(frozen=True)
class KeyFilter:
    """``--include``/``--exclude`` regular expressions, searched in each stored key name.

    A key is kept when it matches some ``include`` pattern (or none is given) and no ``exclude``
    pattern. Names are the ones in the file, before any prefix is stripped.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Compiled (and cached) once: a bad pattern is refused before any file is read.
        for flag, patterns in (("include", self.include), ("exclude", self.exclude)):
            for p in patterns:
                checked_search(p, flag)

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def keep(self, key: str) -> bool:
        # Linear-time matching (RE2, wa_cli.io.regex): '(a+)+$' made Python's re hang.
        if self.include and not any(compile_search(p)(key) for p in self.include):
            return False
        return not any(compile_search(p)(key) for p in self.exclude)


NO_FILTER = KeyFilter()


def walk_key(obj: Mapping[Any, Any], path: str, where: str) -> object:
    """The entry ``path`` names in nested dicts: ``callbacks.StochasticWeightAveraging.x``.

    Rule: at each level the longest dot-separated prefix of the rest of ``path`` that is a key
    of that dict is taken, so keys that themselves contain dots or braces (Lightning's
    ``ModelCheckpoint{'monitor': 'val_loss', ...}``) need no escaping, and an exact key always
    wins over splitting it.

    Raises:
        WaError: (BAD_INPUT) no key at some level matches; the message lists that level's keys.

    Example:
        >>> walk_key({"callbacks": {"SWA": {"avg": 1}}}, "callbacks.SWA.avg", "ck.ckpt")
        1
    """
    current: object = obj
    rest = path
    walked: list[str] = []
    while rest:
        if not isinstance(current, Mapping):
            raise WaError.naming(
                "'{where}': entry {walked!r} is a {kind}, not a dict, so {key} {path!r} cannot "
                "go further",
                ExitCode.BAD_INPUT,
                where=str(where),
                walked=".".join(walked),
                kind=type(current).__name__,
                path=path,
            )
        parts = rest.split(".")
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            if head in current:
                current = current[head]
                walked.append(head)
                rest = ".".join(parts[n:])
                break
        else:
            at = f"entry {'.'.join(walked)!r}" if walked else "the top level"
            keys = sorted(map(str, current))
            raise WaError(
                f"'{where}' has no entry {rest!r} at {at} (its keys: {listing(keys)})",
                ExitCode.BAD_INPUT,
            )
    return current


def parse_strip(value: bool | str | Sequence[str] | None) -> tuple[str, ...] | str:
    """Normalize ``strip_prefixes``: ``AUTO``, or the prefixes to drop (maybe none)."""
    if value is None or value is False:
        return ()
    if value is True:
        return WRAPPER_PREFIXES
    if isinstance(value, str):
        value = [value]
    prefixes = tuple(value)
    if AUTO in prefixes:
        if len(prefixes) > 1:
            raise WaError.naming(
                "{strip_prefix=}auto cannot be combined with named prefixes", ExitCode.USAGE
            )
        return AUTO
    for p in prefixes:
        if not p:
            raise WaError.naming(
                "{strip_prefix} needs a non-empty prefix (or auto)", ExitCode.USAGE
            )
    return prefixes


def strip_names(keys: Iterable[str], prefixes: Sequence[str]) -> dict[str, str]:
    """Old name → new name: each listed prefix dropped from the front at most once, in any order.

    So ``module._orig_mod.fc.w`` loses both wrappers, and ``model.model.fc.w`` (a LightningModule
    whose network is called ``model``) loses only the first ``model.``.

    Example:
        >>> wrappers = ("_orig_mod.", "module.", "model.")
        >>> strip_names(["module._orig_mod.w", "model.model.b"], wrappers)
        {'module._orig_mod.w': 'w', 'model.model.b': 'model.b'}
    """
    renamed: dict[str, str] = {}
    for key in keys:
        new, left = key, list(prefixes)
        while True:
            p = next((p for p in left if new.startswith(p) and len(new) > len(p)), None)
            if p is None:
                break
            new = new[len(p) :]
            left.remove(p)
        renamed[key] = new
    return renamed


def shared_prefix(key_sets: Sequence[Iterable[str]]) -> str:
    """The longest run of whole dotted components every key of every set starts with.

    A key keeps at least its last component, so ``fc.weight``'s prefix is at most ``fc.``.

    Example:
        >>> shared_prefix([["model.a.w", "model.b.w"], ["model.a.w"]])
        'model.'
    """
    parts: list[str] | None = None
    for keys in key_sets:
        for key in keys:
            components = key.split(".")[:-1]
            if parts is None:
                parts = components
            else:
                n = 0
                while n < min(len(parts), len(components)) and parts[n] == components[n]:
                    n += 1
                parts = parts[:n]
            if not parts:
                return ""
    return "".join(p + "." for p in parts or [])


def wrapper_prefix(reference: set[str], other: set[str]) -> str | None:
    """The prefix ``P`` (for ``strip_prefixes``) when two key sets differ only by ``P`` on one
    side, else None."""
    for a, b in ((reference, other), (other, reference)):
        pa, pb = shared_prefix([a]), shared_prefix([b])
        for p in _prefix_tails(pa):
            if p and not pb.startswith(p) and {k[len(p) :] for k in a} == b:
                return p
    return None


def _prefix_tails(prefix: str) -> list[str]:
    """``a.b.`` → ``['a.b.', 'a.']``: every whole-component prefix, longest first."""
    parts = prefix.split(".")[:-1]
    return ["".join(c + "." for c in parts[:n]) for n in range(len(parts), 0, -1)]
