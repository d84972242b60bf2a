"""The ``wa`` application: registers one small module per command and maps errors to exit codes.

Command modules import torch and the library lazily, inside the command function, so that
``wa --help`` and shell completion never pay for importing torch.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from wa_cli import __version__
from wa_cli.errors import ExitCode, WaError

app = typer.Typer(
    name="wa",
    help="Weight averaging toolkit: SWA, EMA, entropy grafting, BatchNorm re-estimation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals hold tensors
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Weight averaging toolkit: SWA, EMA, entropy grafting, BatchNorm re-estimation."""


def _register() -> None:
    # Each module adds its command to `app`; imported here so the registry stays in one place.
    from wa_cli.cli import average, bn_recalibrate, ema, graft, inspect_entropy  # noqa: F401


_register()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("WA_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``wa`` console script: one ``wa: error:`` line per user error."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="wa", standalone_mode=False)
    except WaError as e:
        if _debug_requested(args):
            raise
        _fail(e.message, e.code)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", ExitCode.USAGE, status=130)
    except Exception as e:
        # Usage errors of the vendored click parser carry `exit_code` and `format_message`;
        # render them as one line like every other user error. Anything else is a bug.
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            ctx = getattr(e, "ctx", None)
            where = f"wa {ctx.info_name}" if ctx is not None and ctx.parent else "wa"
            _fail(f"{e.format_message()} (see '{where} --help')", ExitCode.USAGE)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: ExitCode, status: int | None = None) -> None:
    sys.stderr.write(f"wa: error: {message}\n")
    sys.stderr.flush()
    sys.exit(int(code) if status is None else status)
