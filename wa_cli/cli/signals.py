"""SIGINT, SIGTERM and SIGHUP end a run the same way: temporaries removed, one line, 128+signal.

The handlers raise ``Interrupted``, a ``BaseException`` that is not a ``KeyboardInterrupt``: the
CLI framework turns a KeyboardInterrupt into a silent exit 130 before wa could report it, while
every ``try/except BaseException`` cleanup (the atomic writer's) still runs. This module imports
nothing heavy, so the entry point installs the handlers before torch and typer load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

HANDLED = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)


class Interrupted(BaseException):
    """A run stopped by a signal; ``signum`` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def status(self) -> int:
        return 128 + self.signum


# Seconds a run may take to clean up after a signal before it is ended without waiting.
CLEANUP_SECONDS = 10.0
_state: dict[str, Any] = {"process": False, "signum": None, "reported": False, "teardown": True}


def _raise(signum: int, frame: FrameType | None) -> None:
    if _state["process"]:
        if _state["signum"] is not None:  # a second signal: stop waiting for the cleanup
            hard_exit(signum)
        _state["signum"] = signum
        timer = threading.Timer(CLEANUP_SECONDS, hard_exit, [signum])
        timer.daemon = True
        timer.start()
    raise Interrupted(signum)


def hard_exit(signum: int) -> None:
    """Remove the temporaries in progress, say so once, and end the process at once.

    For a second signal, or a cleanup that hangs (an interrupt that landed inside a library's
    thread bookkeeping can leave a worker thread that interpreter exit waits for forever).
    """
    from wa_cli.io import atomic

    with contextlib.suppress(BaseException):
        atomic.remove_live()
    if not _state["reported"]:
        with contextlib.suppress(BaseException):
            os.write(
                2,
                f"wa: error: interrupted by {Interrupted(signum).name}; nothing was "
                "written\n".encode(),
            )
    os._exit(128 + signum)


def reported() -> None:
    """The interrupt's one line was printed."""
    _state["reported"] = True


def skip_teardown(skip: bool = True) -> None:
    """Let the ``wa`` process end without the interpreter's teardown once the command is done.

    Freeing torch and a 20,000-key run object by object took 0.7 s of a 3 s ``wa average``
    (benchmarks/bench_workloads.py many-small); the command has closed, fsynced and renamed
    everything by then, so the process ends with ``os._exit`` after flushing stdout and stderr.
    Only for the console script (``entry``), never for ``main()`` called in-process, and not
    while a profiler or tracer runs (``python -m cProfile -m wa_cli``, coverage): they write
    their results during the teardown.
    """
    _state["teardown"] = not skip


def install() -> dict[int, Any]:
    """Make the handled signals raise ``Interrupted``; returns the previous handlers.

    Does nothing outside the main thread (Python runs signal handlers only there). A signal the
    parent ignores (``nohup`` ignores SIGHUP) stays ignored.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for s in HANDLED:
        with contextlib.suppress(OSError, ValueError):
            old = signal.getsignal(s)
            if old is signal.SIG_IGN:
                continue
            previous[s] = old
            signal.signal(s, _raise)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back handlers returned by ``install``."""
    for s, handler in previous.items():
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(s, handler)


def entry(run: Callable[[], Callable[[], None]]) -> None:
    """Install the handlers, then import (``run()``) and call the real entry point.

    An interrupt while the CLI is still importing prints the same one line as one later.
    """
    _state["process"] = True
    install()
    try:
        main = run()
    except Interrupted as e:
        sys.stderr.write(f"wa: error: interrupted by {e.name}; nothing was written\n")
        sys.exit(e.status)
    try:
        main()
    except SystemExit as e:
        if _state["signum"] is not None:
            # Interrupted and reported: end now rather than wait for threads a signal may have
            # stranded (temporaries are already removed by the writer's cleanup).
            _end_now(e.code if isinstance(e.code, int) else 128 + _state["signum"])
        # A profiler or tracer (cProfile, coverage) writes its results in the teardown.
        if _state["teardown"] or sys.getprofile() is not None or sys.gettrace() is not None:
            raise
        if e.code is None or isinstance(e.code, int):
            _end_now(e.code or 0)
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"{e.code}\n")  # as the interpreter prints a non-integer exit code
        _end_now(1)


def _end_now(code: int) -> None:
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    with contextlib.suppress(BaseException):
        sys.stderr.flush()
    os._exit(code)
