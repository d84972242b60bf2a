"""The process around wa's verbs: what a program that runs them as commands sets up and ends.

The ``wa`` command is one such program (``wa_cli.cli.app``); a user's own script that wraps the
verbs, or runs them under torchrun, is another. One command is one :func:`command` block: the
arguments are recorded as provenance, every input read is remembered so that no output
replaces it, and under torchrun the process joins the other ranks and leaves them at the end.
What an interrupt leaves on disk (:func:`written_note`) and the temporaries a hard exit removes
(:func:`remove_temporaries`) are the atomic writer's. Nothing here imports torch until torchrun
needs it: ``wa --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

from wa_cli.errors import ExitCode, WaError


@contextlib.contextmanager
def command(args: Sequence[str]) -> Iterator[None]:
    """One command: ``args`` recorded in the outputs' metadata, the input guard on; at the end,
    torchrun's ranks are left (after rank 0 has printed) and the record cleared."""
    from wa_cli.engine import distributed
    from wa_cli.engine.provenance import set_cli_command
    from wa_cli.io import guard

    set_cli_command(args)
    try:
        with guard.session():
            yield
    finally:
        distributed.stop()
        set_cli_command(None)


def join_ranks(args: Sequence[str]) -> None:
    """Under torchrun, join the other ranks (see docs/distributed.md); alone, nothing."""
    from wa_cli.engine import distributed

    if distributed.launched():
        distributed.start(args)


def ranks_done() -> None:
    """The command's last step: every rank has done its part (a failure elsewhere raises)."""
    from wa_cli.engine import distributed

    distributed.finish()


def failure(error: WaError) -> tuple[str | None, ExitCode]:
    """What to print for ``error`` and the exit code: alone, its message; under torchrun the
    failure is shared with every rank, and only rank 0 prints (``None`` on the others)."""
    from wa_cli.engine import distributed

    return distributed.share_failure(error)


def interrupted() -> None:
    """A signal stopped this process: under torchrun the other ranks are stopped too."""
    from wa_cli.engine import distributed

    distributed.interrupted()


# The atomic writer is looked up, not imported: a signal can arrive while wa is still importing,
# and then nothing was written and nothing is in progress.


def outputs_written() -> int:
    """How many outputs this process has committed so far (for :func:`written_note`)."""
    atomic = sys.modules.get("wa_cli.io.atomic")  # not imported yet: nothing was written
    return 0 if atomic is None else len(atomic.committed)


def written_note(since: int = 0) -> str:
    """What an interrupt leaves on disk: the outputs committed after the first ``since``."""
    atomic = sys.modules.get("wa_cli.io.atomic")
    return "nothing was written" if atomic is None else atomic.written_note(since)


def remove_temporaries() -> None:
    """Remove the temporaries of outputs in progress (a process ending on a signal)."""
    atomic = sys.modules.get("wa_cli.io.atomic")
    if atomic is not None:
        atomic.remove_live()
