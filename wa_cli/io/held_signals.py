"""Signals held while outputs are renamed into place, then handed to the real handler.

Used by the commit of :mod:`wa_cli.io.atomic`: a SIGINT, SIGTERM or SIGHUP that arrives during
the renames is delivered when they are done, so whatever the handler reports (the CLI's
"interrupted ...; after writing X") is what is on disk by then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (they are delivered after it).

    Two layers: the kernel's mask holds signals that arrive inside the block, and the Python
    handlers are swapped for ones that only note the signal, because a signal that reached the
    process just before the mask was set still runs its Python handler at the next bytecode,
    inside the block (the interrupt then landed between a rename and its record, and the
    message said nothing was written while the new output was in place). The first noted
    signal is handed to the real handler when the block ends, so whatever the handler reports
    is what is on disk by then.
    """
    noted: list[int] = []
    swapped = _note_signals(noted)
    masked = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS) if masked else None
    try:
        yield
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # type: ignore[arg-type]
        # Signals held by the mask run the noting handlers now; then the real ones return.
        for signum, handler in swapped.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler)
        if noted:
            _deliver(noted[0], swapped.get(noted[0]))


def _note_signals(noted: list[int]) -> dict[int, Any]:
    """Replace the Python handlers of the held signals by ones appending to ``noted``."""
    swapped: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return swapped  # handlers run in the main thread only; the mask alone holds them

    def note(signum: int, frame: object) -> None:
        noted.append(signum)

    for s in _SIGNALS:
        with contextlib.suppress(OSError, ValueError, TypeError):
            previous = signal.getsignal(s)
            if previous is signal.SIG_IGN or previous is None:
                continue
            signal.signal(s, note)
            swapped[s] = previous
    return swapped


def _deliver(signum: int, handler: object) -> None:
    """Hand a signal noted during the block to the handler that was in place."""
    if callable(handler):
        handler(signum, None)
    else:  # the default action (end the process) or a handler unknown to Python
        os.kill(os.getpid(), signum)
