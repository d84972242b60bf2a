"""Running the user's code (`wa bn-recalibrate`'s model, data loader and forward) under wa's rules.

User code can end or steer the whole process: ``os._exit(0)`` in a model factory ended wa with
exit 0 and no output; ``signal.signal(SIGINT, SIG_IGN)`` made Ctrl-C do nothing; ``os.chdir``
made wa's own relative paths point elsewhere. While :func:`user_code` is active:

* an exit (``sys.exit``, ``os._exit`` in this process) becomes a one-line ``WaError`` naming
  the user's function; a forked worker (a DataLoader's) still exits as it asks;
* a request to replace the handler of SIGINT, SIGTERM or SIGHUP is noted, not applied, and the
  handlers are put back (and unblocked) when the user's code returns, so Ctrl-C always reaches
  wa;
* the working directory is the user's: a ``chdir`` in the factory holds for the loader and the
  forward passes, while wa's own code runs in the directory it started in.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any, NoReturn

from wa_cli.errors import ExitCode, WaError

GUARDED = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)
_real_exit = os._exit
_real_signal = signal.signal
_state: dict[str, Any] = {"depth": 0, "pid": None, "cwd": None, "handlers": {}, "asked": {}}


class UserExit(BaseException):
    """``os._exit(code)`` called by user code in wa's own process."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def user_code(describe: str) -> Iterator[None]:
    """Run the block as user code; ``describe`` names it in messages (``"model factory 'build'"``).

    Raises:
        WaError: (bad input) the user's code tried to end the process.

    Example:
        >>> with user_code("function 'f'"):
        ...     value = 1 + 1
    """
    outermost = _state["depth"] == 0
    if outermost:
        _enter()
    _state["depth"] += 1
    try:
        yield
    except UserExit as e:
        raise WaError(
            f"{describe} called os._exit({e.code!r}), which would end wa without its output "
            "(return instead, or raise an exception)",
            ExitCode.BAD_INPUT,
        ) from None
    except SystemExit as e:
        raise WaError(
            f"{describe} called sys.exit({e.code!r}) instead of returning", ExitCode.BAD_INPUT
        ) from None
    finally:
        _state["depth"] -= 1
        if outermost:
            _leave()


def _enter() -> None:
    _state["pid"] = os.getpid()
    _state["wa_cwd"] = _cwd()
    if _state["cwd"] is not None:  # the directory the user's code last moved to
        with contextlib.suppress(OSError):
            os.chdir(_state["cwd"])
    _state["handlers"] = {s: signal.getsignal(s) for s in GUARDED}
    os._exit = _exit_in_user_code
    signal.signal = _signal_in_user_code


def _leave() -> None:
    os._exit = _real_exit
    signal.signal = _real_signal
    for s, handler in _state["handlers"].items():
        # Put back what the user's code changed past the patched function (C code, ctypes).
        if handler is not None and signal.getsignal(s) is not handler:
            with contextlib.suppress(OSError, ValueError, TypeError):
                _real_signal(s, handler)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, GUARDED)
    user_cwd, wa_cwd = _cwd(), _state.get("wa_cwd")
    if wa_cwd is not None and user_cwd != wa_cwd:
        _state["cwd"] = user_cwd
        with contextlib.suppress(OSError):
            os.chdir(wa_cwd)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the user's code removed it
        return None


def _exit_in_user_code(status: int) -> NoReturn:
    if os.getpid() == _state["pid"] and _state["depth"] > 0:
        raise UserExit(status)
    # A forked worker ends as it asks; so does a reference kept past the user's code (an atexit
    # function), through whatever os._exit is now (the CLI keeps a failure's status there).
    current = os._exit
    (_real_exit if current is _exit_in_user_code else current)(status)


def _signal_in_user_code(signalnum: int, handler: Any) -> Any:
    """``signal.signal`` for user code: wa keeps its SIGINT/SIGTERM/SIGHUP handlers."""
    if os.getpid() != _state["pid"] or signalnum not in GUARDED:
        return _real_signal(signalnum, handler)
    previous = _state["asked"].get(signalnum, signal.getsignal(signalnum))
    _state["asked"][signalnum] = handler
    return previous
