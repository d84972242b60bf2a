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
    entry(_load)


if __name__ == "__main__":
    main()
