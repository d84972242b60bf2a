"""The ``wa`` application: registers one small module per command and maps errors to exit codes.

Command modules import torch and the library lazily, inside the command function, so that
``wa --help`` and shell completion never pay for importing torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from wa_cli import __version__, session
from wa_cli.cli import signals
from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, WaError, printable
from wa_cli.gc_pause import paused_gc

app = typer.Typer(
    name="wa",
    help="Weight averaging toolkit: SWA, EMA, grafting, BatchNorm statistics, entropy.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
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
        typer.Option(
            "-V", "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Weight averaging toolkit: SWA, EMA, grafting, BatchNorm statistics, entropy."""


class _Command(typer.core.TyperCommand):
    """A command whose usage line reads ``INPUTS...``, not typer's ``{INPUTS}...``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]  # typer's Context is click's
        return [re.sub(r"^\{(.*?)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]


def _register() -> None:
    """Add the commands in one fixed order (the order ``wa --help`` lists them in).

    Command modules do not import this one: they define plain functions, registered here, so
    there is no import cycle and the order never depends on what was imported first.
    """
    from wa_cli.cli.average import average_command
    from wa_cli.cli.bn_recalibrate import bn_recalibrate_command
    from wa_cli.cli.ema import ema_command
    from wa_cli.cli.graft import graft_command
    from wa_cli.cli.inspect_entropy import inspect_entropy_command

    commands: list[tuple[str, Callable[..., Any], str]] = [
        ("average", average_command, "Average checkpoints (SWA)."),
        ("ema", ema_command, "EMA over a trajectory (and Lookahead slow weights)."),
        ("graft", graft_command, "Graft runs layer by layer by weight entropy."),
        ("bn-recalibrate", bn_recalibrate_command, "Re-estimate BatchNorm statistics."),
        ("inspect-entropy", inspect_entropy_command, "Weight entropy per tensor or module."),
    ]
    for name, function, short_help in commands:
        app.command(name, cls=_Command, short_help=short_help)(function)


_register()


# WA_DEBUG values, case-insensitive (docs/environment.md). Any other value leaves debug off
# with a warning: "no" turned tracebacks on when every non-empty value but "0" did.
DEBUG_ON = ("1", "true", "yes", "on")
DEBUG_OFF = ("", "0", "false", "no", "off")


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("WA_DEBUG", "").strip().lower() in DEBUG_ON


def _debug_env_warning() -> str | None:
    value = os.environ.get("WA_DEBUG", "")
    if value.strip().lower() in DEBUG_ON + DEBUG_OFF:
        return None
    return (
        f"WA_DEBUG={value!r} is not one of {', '.join(DEBUG_ON)} (on) or "
        f"{', '.join(v for v in DEBUG_OFF if v)} (off); debug output stays off"
    )


def _quiet_requested(argv: list[str]) -> bool:
    return "-q" in argv or "--quiet" in argv


class _StderrHandler(logging.Handler):
    """The library's log records as ``wa: warning: <message>`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                line = f"wa: warning: {record.getMessage()}"
            else:
                line = f"wa: {record.levelname.lower()}: {record.name}: {record.getMessage()}"
            # sys.stderr looked up per record: tests and callers may swap it.
            sys.stderr.write(printable(line) + "\n")
        except Exception:
            self.handleError(record)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    logging.getLogger("wa_cli").warning("%s", message)


def _tolerant_streams() -> None:
    """Text the streams' encoding cannot hold prints escaped (``\\xe9``), never a traceback:
    ``PYTHONIOENCODING=ascii`` with a non-ASCII name, or a file name that is not UTF-8 (its
    bytes arrive as lone surrogates)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") != "backslashreplace":
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``wa`` console script: one ``wa: error:`` line per user error.

    Library warnings (``logging``) print as ``wa: warning:`` lines, silenced by ``-q``; with
    ``--debug`` or ``WA_DEBUG=1`` every log record prints and Python warnings show as usual.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    _tolerant_streams()
    debug = _debug_requested(args)
    logger = logging.getLogger("wa_cli")
    handler = _StderrHandler(
        logging.DEBUG if debug else logging.ERROR if _quiet_requested(args) else logging.WARNING
    )
    previous_level = logger.level
    logger.addHandler(handler)
    if debug:
        logger.setLevel(logging.DEBUG)
    if (problem := _debug_env_warning()) is not None:
        logger.warning("%s", problem)
    signals.begin()
    previous_handlers = signals.install()
    try:
        # One command: recorded as provenance, inputs guarded, torchrun's ranks left at the end.
        with warnings.catch_warnings(), session.command(args):
            if not debug:
                # Warnings raised in torch, or in wa's calls into torch (wa itself warns through
                # logging), say nothing a wa user can act on; any other Python warning (a user's
                # model code, say) becomes one `wa: warning:` line.
                warnings.filterwarnings("ignore", module=r"(torch|wa_cli)(\.|$)")
                warnings.showwarning = _show_warning
            _run(args, debug)
    finally:
        signals.restore(previous_handlers)
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _runs_user_code(args: list[str]) -> bool:
    """``bn-recalibrate`` runs the user's model and data loader; every other command, wa alone.

    For the others no cyclic garbage is collected while the command builds its per-key records
    (:mod:`wa_cli.gc_pause`), and the process ends without the interpreter's teardown
    (:func:`signals.skip_teardown`). User code keeps both: its garbage needs the collector, and
    its data loader's worker processes are ended by the teardown.
    """
    command = next((a for a in args if not a.startswith("-")), None)
    return command == "bn-recalibrate"


def _run(args: list[str], debug: bool) -> None:
    command = typer.main.get_command(app)
    invoke = command.invoke

    def invoke_reporting_interrupts(ctx: Any) -> Any:
        # Typer turns a KeyboardInterrupt into a silent exit 130; make it an interrupt wa reports.
        try:
            return invoke(ctx)
        except KeyboardInterrupt:
            raise signals.Interrupted(signal.SIGINT) from None
        except BrokenPipeError:
            # stdout closed (`wa ... | head -1`): the output file is written by the time the
            # report prints; finish quietly with 0, as Typer's exit 1 would call it a failure.
            _stdout_to_devnull()
            return 0

    command.invoke = invoke_reporting_interrupts  # type: ignore[method-assign]
    written_before = session.outputs_written()
    try:
        session.join_ranks(args)  # under torchrun (see docs/distributed.md)
        user_code = _runs_user_code(args)
        signals.skip_teardown(not user_code)
        with contextlib.nullcontext() if user_code else paused_gc():
            code = command.main(args=args, prog_name="wa", standalone_mode=False)
        session.ranks_done()
    except WaError as e:
        if debug:
            raise
        e.message = e.render(spell)  # the parameters it names, as flags
        # Under torchrun a failure is shared with every rank and printed by rank 0 alone.
        message, exit_code = session.failure(e)
        _fail(message, exit_code)
    except (signals.Interrupted, KeyboardInterrupt) as e:
        stop = e if isinstance(e, signals.Interrupted) else signals.Interrupted(signal.SIGINT)
        session.interrupted()  # torchrun stops every rank with SIGTERM when one fails
        what = session.written_note(written_before)
        signals.reported()
        _fail(f"interrupted by {stop.name}; {what}", ExitCode.USAGE, status=stop.status)
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            # A bare `wa` (typer's click raises this usage error): the help is the answer, not
            # an error. Rich help is already printed and leaves the message empty.
            help_text = str(getattr(e, "format_message", str)()).strip()
            if help_text:
                sys.stdout.write(help_text + "\n")
            sys.exit(0)
        # Usage errors of the vendored click parser carry `exit_code` and `format_message`;
        # render them as one line like every other user error. Anything else is a bug.
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            ctx = getattr(e, "ctx", None)
            where = f"wa {ctx.info_name}" if ctx is not None and ctx.parent else "wa"
            _fail(f"{e.format_message()} (see '{where} --help')", ExitCode.USAGE)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _fail(message: str | None, code: ExitCode, status: int | None = None) -> None:
    # From here a signal is remembered, not raised: Ctrl-C while the line is printed must not
    # cut it short with a traceback (the run has already ended with this error).
    signals.last_line()
    if message is not None:  # None: another rank prints the error
        sys.stderr.write(f"wa: error: {printable(message)}\n")
        sys.stderr.flush()
    sys.exit(int(code) if status is None else status)
