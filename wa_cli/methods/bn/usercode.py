"""User code and weights for the one command that runs the network (`wa bn-recalibrate`).

BatchNorm re-estimation (SWA, Izmailov et al. 2018, arXiv 1803.05407, section 3.2) needs the
model's forward pass, so the model factory, the data loader and an optional forward function come
from the user as ``package.module:attr`` or ``path/to/file.py:attr``. Everything that can go wrong
there (a typo in the spec, a missing file, an exception in the user's code, a checkpoint that does
not fit the model) becomes one ``WaError`` line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from wa_cli.errors import ExitCode, WaError, describe_exception, listing
from wa_cli.io.guard import note_read
from wa_cli.methods.bn.usercalls import user_code

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

_FORMS = "'package.module:name' or 'path/to/file.py:name'"


def resolve_callable(spec: str, *, what: str) -> Callable[..., Any]:
    """Import the callable named by ``spec``: ``package.module:attr`` or ``path/to/file.py:attr``.

    ``attr`` may be dotted (``mod:Builder.create``). A file is imported under a unique module name
    (so a user's ``model.py`` never shadows another module called ``model``), with its folder on
    ``sys.path`` while it runs, so that ``import helpers`` finds a sibling ``helpers.py``. The same
    file named twice (``--model net.py:build --data net.py:loader``) is imported once.

    Args:
        spec: where the callable lives.
        what: what it is for, used in error messages (``"model factory"``, ``"data loader"``).

    Returns:
        The callable.

    Raises:
        WaError: a malformed spec, a module that cannot be imported, a missing file or attribute,
            or an attribute that is not callable.

    Example:
        >>> resolve_callable("math:sqrt", what="function")(9.0)
        3.0
    """
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise WaError(f"{what} '{spec}' is not of the form {_FORMS}", ExitCode.USAGE)
    module = _import_file(source, what) if _is_path(source) else _import_module(source, what)
    file: str | None = getattr(module, "__file__", None)  # builtins have none
    if file:
        note_read(file)  # the output guard never writes over the user's code
    target: Any = module
    for depth, part in enumerate(attr.split(".")):
        if not hasattr(target, part):
            owner = source if depth == 0 else f"{source}:{'.'.join(attr.split('.')[:depth])}"
            raise WaError(_missing_attribute(what, spec, owner, part, target), ExitCode.USAGE)
        target = getattr(target, part)
    if not callable(target):
        raise WaError(
            f"{what} '{spec}' is a {type(target).__name__}, not a callable "
            "(name a function or a class)",
            ExitCode.USAGE,
        )
    return target


def call_factory(
    fn: Callable[..., Any], kwargs: Mapping[str, Any] | None = None, *, what: str
) -> Any:
    """Call user code ``fn(**kwargs)``; an exception it raises becomes a one-line ``WaError``.

    Args:
        fn: the user's callable (from :func:`resolve_callable`).
        kwargs: keyword arguments to pass.
        what: what it is for, used in the message.

    Returns:
        What ``fn`` returns.

    Raises:
        WaError: ``"model factory 'build' raised ValueError: ..."``; a ``WaError`` raised by the
            user's code passes through unchanged.

    Example:
        >>> call_factory(dict, {"a": 1}, what="factory")
        {'a': 1}
    """
    name = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        # An exit (sys.exit, os._exit) becomes a WaError naming it: wa must not end with 0.
        with user_code(f"{what} '{name}'"):
            return fn(**dict(kwargs or {}))
    except WaError:
        raise
    except Exception as e:
        raise WaError(f"{what} '{name}' raised {describe_exception(e)}", ExitCode.BAD_INPUT) from e


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model`` strictly, or explain in one line why it does not fit.

    Args:
        model: the model built by the user's factory.
        state_dict: the checkpoint's tensors.

    Raises:
        WaError: (code INCOMPATIBLE) naming missing keys, unexpected keys and shape mismatches, at
            most five of each, with a hint when a ``module.`` / ``_orig_mod.`` prefix explains them.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 1)
        >>> load_state_dict_strict(m, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
    """
    from torch.nn.parameter import is_lazy

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"'{k}' {tuple(state_dict[k].shape)} in checkpoint vs {tuple(expected[k].shape)} in model"
        for k in expected
        if k in state_dict
        and not is_lazy(expected[k])
        and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {listing(unexpected)}")
    if mismatched:
        shown = "; ".join(mismatched[:5])
        more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        problems.append(f"shape mismatch {shown}{more}")
    if problems:
        hint, prefix = _prefix_hint(unexpected, missing)
        raise WaError.naming(
            "checkpoint does not fit the model: {problems} (" + hint + ")",
            ExitCode.INCOMPATIBLE,
            problems="; ".join(problems),
            **({"prefix": prefix} if prefix is not None else {}),
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except Exception as e:  # e.g. a custom _load_from_state_dict in the user's model
        raise WaError(
            f"loading the checkpoint into the model failed: {describe_exception(e)}",
            ExitCode.INCOMPATIBLE,
        ) from e


def _prefix_hint(unexpected: list[str], missing: list[str]) -> tuple[str, str | None]:
    """A template (naming ``strip_prefixes``) for what to do, and the prefix it names."""
    from wa_cli.io.keys import wrapper_prefix

    prefix = wrapper_prefix(set(missing), set(unexpected)) if unexpected and missing else None
    if prefix is not None:
        return (
            "the checkpoint's keys start with '{prefix}': pass {strip_prefixes} {prefix} or "
            "{strip_prefixes} auto",
            prefix,
        )
    return "the model factory must build the architecture the checkpoint was saved from", None


def _is_path(source: str) -> bool:
    return source.endswith(".py") or "/" in source or os.sep in source


def _import_module(name: str, what: str) -> ModuleType:
    # The console script does not put the working directory on sys.path (python -m does):
    # add it for the import, so `--model mynet:build` works from the folder holding mynet.py.
    with _on_sys_path(Path.cwd()):
        try:
            with user_code(f"importing module '{name}' for the {what}"):
                return importlib.import_module(name)
        except WaError:
            raise
        except ModuleNotFoundError as e:
            raise WaError(
                f"cannot import module '{name}' for the {what}: {describe_exception(e)} "
                "(install it or add its folder to PYTHONPATH; a file needs its .py suffix)",
                ExitCode.USAGE,
            ) from e
        except Exception as e:
            raise WaError(
                f"importing module '{name}' for the {what} raised {describe_exception(e)}",
                ExitCode.BAD_INPUT,
            ) from e


def _import_file(source: str, what: str) -> ModuleType:
    path = Path(source).expanduser()
    if not path.is_file():
        raise WaError(
            f"{what} file '{source}' does not exist (give a path to a .py file, or a module name)",
            ExitCode.USAGE,
        )
    path = path.resolve()
    # The path's bytes as the file system has them: a non-UTF-8 name (``net\xff.py``) is a
    # surrogate-escaped str that .encode() refuses. The module name keeps only word characters.
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
    stem = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in path.stem)
    name = f"_wa_user_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise WaError(f"{what} file '{source}' cannot be imported as Python", ExitCode.USAGE)
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as import does: dataclasses and pickling look it up there.
    sys.modules[name] = module
    try:
        with _on_sys_path(path.parent), user_code(f"importing {what} file '{source}'"):
            spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if not isinstance(e, Exception) or isinstance(e, WaError):
            raise
        raise WaError(
            f"importing {what} file '{source}' raised {describe_exception(e)}", ExitCode.BAD_INPUT
        ) from e
    logger.debug("imported %s as module %s", path, name)
    return module


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    if entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _missing_attribute(what: str, spec: str, owner: str, name: str, target: Any) -> str:
    # Only callables can be named, so only they are worth listing (not the modules it imported).
    names = sorted(
        n
        for n in dir(target)
        if not n.startswith("_")
        and callable(getattr(target, n, None))
        and not isinstance(getattr(target, n, None), ModuleType)
    )
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    available = f"callables: {listing(names)}" if names else "it defines no public callables"
    return f"{what} '{spec}': '{owner}' has no attribute '{name}' ({hint}{available})"
