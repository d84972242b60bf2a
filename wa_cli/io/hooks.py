"""Test hooks: fault injection the test suite needs, never active in a user's run.

Every hook is honoured only when ``WA_TEST_HOOKS=1`` is set as well, so a stray variable (a
``WA_TEST_WRITE_DELAY=1e9`` left in a shell) changes nothing. The hooks (docs/safety.md):

* ``WA_TEST_WRITE_DELAY=S``: sleep S seconds (at most ``MAX_WRITE_DELAY``) after each chunk the
  writer writes, so a test can signal or race a run mid-write;
* ``WA_TEST_WRITE_MARKER=1``: print ``wa-test: writing PATH`` on stderr when the first chunk is
  written (a test waits for that line instead of sleeping);
* ``WA_TEST_KILL_RANK=R``: under torchrun, rank R ends by SIGKILL mid-write.
"""

from __future__ import annotations

import math
import os
import sys

SWITCH = "WA_TEST_HOOKS"
MAX_WRITE_DELAY = 5.0


def enabled() -> bool:
    """Whether the test switch is on (``WA_TEST_HOOKS=1``)."""
    return os.environ.get(SWITCH) == "1"


def value(name: str) -> str | None:
    """A hook's variable, or None when the test switch is off."""
    return os.environ.get(name) if enabled() else None


def write_delay() -> float:
    """Seconds to sleep per written chunk: 0 unless the switch is on; bounded; junk is 0."""
    try:
        delay = float(value("WA_TEST_WRITE_DELAY") or 0)
    except ValueError:
        return 0.0
    return min(delay, MAX_WRITE_DELAY) if math.isfinite(delay) and delay > 0 else 0.0


def write_marker(path: object) -> None:
    """Say on stderr that the write of ``path`` has begun (``WA_TEST_WRITE_MARKER=1``)."""
    if value("WA_TEST_WRITE_MARKER") == "1":
        sys.stderr.write(f"wa-test: writing {path}\n")
        sys.stderr.flush()
