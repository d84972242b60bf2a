"""``python -m wa_cli`` is the same as the ``wa`` command (the console script's entry point).

The signal handlers go in before anything heavy is imported: an interrupt while typer and
torch load prints the same one line as an interrupt later.
"""

from __future__ import annotations

from collections.abc import Callable

from wa_cli.cli.signals import entry


def _load() -> Callable[[], None]:
    from wa_cli.cli.app import main as run

    return run


def main() -> None:
    """Run ``wa`` with ``sys.argv`` and end the process (the console script's entry point).

    It ends the process itself, with ``os._exit`` once the command is done (see
    ``wa_cli.cli.signals.skip_teardown``); to run a command inside a Python program, call
    ``wa_cli.cli.app.main(argv)`` (it raises ``SystemExit``) or the library functions.
    """
    entry(_load)


if __name__ == "__main__":
    main()
