"""SIGINT, SIGTERM and SIGHUP end a run the same way: temporaries removed, one line, 128+signal.

The handlers raise ``Interrupted``, a ``BaseException`` that is not a ``KeyboardInterrupt``: the
CLI framework turns a KeyboardInterrupt into a silent exit 130 before wa could report it, while
every ``try/except BaseException`` cleanup (the atomic writer's) still runs. This module imports
nothing heavy, so the entry point installs the handlers before torch and typer load.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

# wa's own exits use the real os._exit: user code run by bn-recalibrate sees a patched one
# (wa_cli.methods.bn.usercalls), and this module is imported before anything else.
_real_exit = os._exit
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
# Seconds between redeliveries of an interrupt not yet reported (see _redeliver).
REDELIVER_SECONDS = 0.0002
_state: dict[str, Any] = {
    "process": False,  # the console script: this process is wa's own
    "signum": None,  # the signal that stopped the run
    "reported": False,  # its one line is printed (or the run's end is decided): stop delivering
    "redeliver": False,  # the next call of the handler is wa's own redelivery
    "deferred": None,  # a signal that arrived while wa was printing its last line
    "teardown": True,
    "unraisable": sys.unraisablehook,
}


def _raise(signum: int, frame: FrameType | None) -> None:
    if _state["redeliver"]:
        _state["redeliver"] = False
        if _state["reported"] or _handling_interrupt():
            return  # reported, or a cleanup is unwinding it: the watcher tries again
        raise Interrupted(signum)
    if _state["reported"] and _state["signum"] is None:
        _state["deferred"] = signum  # wa is printing its last line: finish it, then exit
        return
    if _state["process"]:
        if _state["signum"] is not None:  # a second signal: stop waiting for the cleanup
            hard_exit(signum)
        _state["signum"] = signum
        timer = threading.Timer(CLEANUP_SECONDS, hard_exit, [signum])
        timer.daemon = True
        timer.start()
        threading.Thread(target=_redeliver, args=(signum,), daemon=True).start()
    raise Interrupted(signum)


def _redeliver(signum: int) -> None:
    """Raise the interrupt again and again in the main thread until the CLI has reported it.

    C code may clear the exception a handler raised: torch's extension imports numpy while it
    loads and carries on without it when that import fails, so an interrupt there was lost and
    the run finished with exit 0 (or failed later with an ImportError traceback). The handler
    raises it again wherever the main thread is, except while a cleanup (``except``,
    ``finally``, ``__exit__``) is unwinding it. This runs in a thread because a handler that
    re-arms itself runs again inside its own call; the short switch interval lets the thread
    in within a fraction of a millisecond (only after a signal, so a run pays nothing).
    """
    sys.setswitchinterval(REDELIVER_SECONDS)
    while not _state["reported"]:
        if not _state["redeliver"]:
            _state["redeliver"] = True
            _thread.interrupt_main(signal.Signals(signum))
        time.sleep(REDELIVER_SECONDS)


def _handling_interrupt() -> bool:
    """Whether an ``except``, ``finally`` or ``__exit__`` of the main thread handles it now."""
    error = sys.exc_info()[1]
    seen = 0
    while error is not None and seen < 50:
        # GeneratorExit: a generator closed while the interrupt unwinds its caller.
        if isinstance(error, (Interrupted, KeyboardInterrupt, GeneratorExit)):
            return True
        error = error.__context__
        seen += 1
    return False


def hard_exit(signum: int) -> None:
    """Remove the temporaries in progress, say so once, and end the process at once.

    For a second signal, or a cleanup that hangs (an interrupt that landed inside a library's
    thread bookkeeping can leave a worker thread that interpreter exit waits for forever).
    """
    from wa_cli import session

    with contextlib.suppress(BaseException):
        session.remove_temporaries()
    if not _state["reported"]:
        with contextlib.suppress(BaseException):
            what = session.written_note()  # what is on disk: outputs already renamed into place
            line = f"wa: error: interrupted by {Interrupted(signum).name}; {what}\n"
            os.write(2, line.encode("utf-8", "backslashreplace"))
    _real_exit(128 + signum)


def reported() -> None:
    """wa has caught the interrupt and prints its one line: no more deliveries."""
    _state["reported"] = True


def last_line() -> None:
    """wa prints its last line now: a signal from here on is remembered, not raised.

    An interrupt that landed while the ``wa: error:`` line was printed raised inside the write
    and ended in a traceback; now the line is finished and the exit status is the error's.
    """
    _state["reported"] = True


def skip_teardown(only_wa_code: bool) -> None:
    """The one rule for how the ``wa`` process ends once its command is done.

    Without the interpreter's teardown (``os._exit`` after flushing stdout and stderr) when only
    wa's code ran in the process; with it when user code ran (``bn-recalibrate``'s model and data
    loader: their threads and worker processes are ended by the teardown) or a profiler or tracer
    watches (``python -m cProfile -m wa_cli``, coverage: they write their results there). The
    teardown is mostly torch's own: it cost 0.5-1.8 s, 19-35 % of ``wa average`` and
    ``inspect-entropy`` runs of 2-5 s (benchmarks/bench_teardown.py). Applies to the console
    script alone (``entry``), never to ``main()`` called in-process. ``docs/commands.md``
    (Errors and exit codes) tells users.

    Args:
        only_wa_code: no user code runs in this command.
    """
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    _state["teardown"] = not only_wa_code or watched


def install() -> dict[int, Any]:
    """Make the handled signals raise ``Interrupted``; returns the previous handlers.

    Does nothing outside the main thread (Python runs signal handlers only there). A signal the
    parent ignores (``nohup`` ignores SIGHUP) stays ignored.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    if _state["process"] and sys.unraisablehook is not _unraisable:
        _state["unraisable"] = sys.unraisablehook
        sys.unraisablehook = _unraisable
    for s in HANDLED:
        with contextlib.suppress(OSError, ValueError):
            old = signal.getsignal(s)
            if old is signal.SIG_IGN:
                continue
            previous[s] = old
            signal.signal(s, _raise)
    return previous


def _unraisable(info: Any) -> None:
    """An interrupt raised inside a ``__del__`` or a weakref callback is dropped, not printed.

    Python prints such an exception as "Exception ignored in" with a traceback and goes on; the
    interrupt is delivered again (``_redeliver``) and reported there.
    """
    if isinstance(info.exc_value, (Interrupted, KeyboardInterrupt)):
        return
    _state["unraisable"](info)


def restore(previous: dict[int, Any]) -> None:
    """Put back handlers returned by ``install``."""
    for s, handler in previous.items():
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(s, handler)


def begin() -> None:
    """A command starts (``wa_cli.cli.app.main``): no interrupt reported or deferred yet."""
    _state["reported"] = False
    _state["deferred"] = None


def entry(run: Callable[[], Callable[[], None]]) -> None:
    """Install the handlers, then import (``run()``) and call the real entry point.

    An interrupt while the CLI is still importing prints the same one line as one later, and an
    interrupt that escaped every handler (or was swallowed by a library) still ends the process
    with one line and 128+signal, never with a traceback or exit 0.
    """
    _state["process"] = True
    install()
    try:
        main = run()
        main()
    except Interrupted as e:
        _report_unhandled(e.signum)
    except SystemExit as e:
        if _state["signum"] is not None:
            if not _state["reported"]:  # swallowed somewhere and never reported
                _report_unhandled(_state["signum"])
            # Interrupted and reported: end now rather than wait for threads a signal may have
            # stranded (temporaries are already removed by the writer's cleanup).
            _end_now(e.code if isinstance(e.code, int) else 128 + _state["signum"])
        if _state["teardown"]:  # see skip_teardown
            _keep_status(e.code)
            raise
        if e.code is None or isinstance(e.code, int):
            _end_now(e.code or 0)
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"{e.code}\n")  # as the interpreter prints a non-integer exit code
        _end_now(1)


def _keep_status(code: object) -> None:
    """Keep a failed run's exit status through the interpreter's teardown.

    User code (bn-recalibrate's) may have registered an ``atexit`` function that calls
    ``os._exit(0)``: a failure must not end as a success.
    """
    if isinstance(code, int) and code != 0:

        def _exit(status: int) -> NoReturn:
            _real_exit(code)

        os._exit = _exit


def _report_unhandled(signum: int) -> None:
    """The one line for an interrupt no command reported, then exit 128+signal."""
    _state["reported"] = True
    what = "nothing was written"
    with contextlib.suppress(BaseException):
        from wa_cli import session

        session.remove_temporaries()
        what = session.written_note()
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"wa: error: interrupted by {Interrupted(signum).name}; {what}\n")
    _end_now(128 + signum)


def _end_now(code: int) -> None:
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    with contextlib.suppress(BaseException):
        sys.stderr.flush()
    _real_exit(code)
