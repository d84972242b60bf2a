"""Many processes (torchrun): the process group, and the one collective every step goes through.

Under ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK`` set) every rank runs the same
command: it opens the headers and builds the plan itself, then the ranks meet at a few
*steps*. A step runs a function on every rank and all-gathers one small object per rank (gloo,
over the CPU, even when NCCL carries GPU work: the objects are a few kilobytes). A rank whose
function fails, or that fails anywhere between two steps, sends its error in the next step
instead, so every rank learns of it at the same step and stops: rank 0 prints ``wa: error: rank
R: ...`` once, the others print nothing and exit with the same code. A rank that dies breaks the
connection (gloo reports that at once) or stops answering (the collective times out after
``WA_DIST_TIMEOUT`` seconds); either way every rank still alive exits with a message saying so.

Without torchrun nothing here is called: :func:`active` is ``None`` and no process group exists.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from wa_cli.engine.launch_env import (
    TIMEOUT_ENV,
    WAIT_NOTICE_S,
    LaunchEnvironment,
    launch_environment,
    say_waiting,
    whole_number,
)
from wa_cli.errors import ExitCode, Part, WaError, render

T = TypeVar("T")


@dataclass
class Group:
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local_rank: int
    timeout_s: float
    control: Any = None  # the gloo process group the steps use
    broken: bool = False  # a collective failed: no further one can be trusted
    closed: bool = False  # the command's last step passed: errors from now on are local
    together: bool = False  # every rank ends here (success or a shared failure): meet to leave


@dataclass(frozen=True)
class _Failure:
    parts: tuple[Part, ...]  # the message, with the parameters it names (the CLI's flags)
    code: int

    @property
    def message(self) -> str:
        return render(self.parts)


class RankFailure(WaError):
    """A failure every rank knows of (learned at the same step): only rank 0 prints it."""

    def __init__(self, message: str | tuple[Part, ...], code: ExitCode, rank: int) -> None:
        super().__init__(message, code)
        self.rank = rank


_group: Group | None = None


def launched(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether this process is one of several ranks (torchrun, or srun with the same variables).

    Raises:
        WaError: ``WORLD_SIZE`` is set but is not a whole number of at least 1.
    """
    env = os.environ if environ is None else environ
    if not env.get("WORLD_SIZE", "").strip():
        return False
    return whole_number("WORLD_SIZE", env, least=1) > 1


def active() -> Group | None:
    """The group of this run, or ``None`` for a single process."""
    return _group


def start(args: Sequence[str]) -> Group:
    """Join the process group torchrun describes (``MASTER_ADDR``/``MASTER_PORT`` rendezvous).

    gloo carries the steps; with a GPU asked for (``--device cuda...``, or ``auto`` where CUDA
    is available) the group is ``cpu:gloo,cuda:nccl`` and each rank uses ``cuda:LOCAL_RANK``.
    Every variable is checked before torch is asked to join, so that a bad one is one line
    naming it (``RANK=2`` with ``WORLD_SIZE=2`` printed torch's C++ stack and blamed
    ``MASTER_ADDR``); a rank still waiting for the others after a few seconds says so.
    """
    global _group
    env = launch_environment()
    if "--debug" not in args:
        # torch's C++ logging prints a stack per connection retry; wa says what it waits for.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=env.timeout_s)
    backend = "gloo"
    if _wants_cuda(args) and torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    try:
        _join(lambda: _init(backend, timeout, env.local_rank), env)
    except Exception as e:
        raise WaError(
            f"rank {env.rank}: cannot join the other {env.world - 1} rank(s) at {env.address} "
            f"within {env.timeout_s:g} s ({first_line(e)}); start every rank with the same "
            "MASTER_ADDR/MASTER_PORT (or torchrun's --rdzv-endpoint)",
            ExitCode.USAGE,
        ) from e
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    _group = Group(env.rank, env.world, env.local_rank, env.timeout_s, control)
    if env.rank != 0:
        _silence_output()
    # torchrun stops the other ranks with SIGTERM when one fails: the CLI's handlers
    # (wa_cli.cli.signals) unwind them, so temporaries are removed; see interrupted().
    return _group


def _init(backend: str, timeout: datetime.timedelta, local_rank: int) -> None:
    import torch
    import torch.distributed as dist

    if "nccl" in backend:  # the current CUDA device is per thread: this one joins the group
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timeout)


def _join(init: Callable[[], None], env: LaunchEnvironment) -> None:
    """Run torch's rendezvous in a thread, so that the main thread can take a signal meanwhile.

    torch waits inside C++ with the GIL released, where Python runs no signal handler: Ctrl-C
    went unheard until the timeout (and a rank that connects retries past it). The main thread
    waits here instead, says after a few seconds whom it waits for, and gives up at the timeout.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            init()
            outcome.append(None)
        except BaseException as e:  # handed to the main thread
            outcome.append(e)

    worker = threading.Thread(target=run, name="wa-rendezvous", daemon=True)
    worker.start()
    start = time.monotonic()
    noticed = False
    while worker.is_alive():
        waited = time.monotonic() - start
        if waited > env.timeout_s + WAIT_NOTICE_S:
            raise TimeoutError(f"no answer in {env.timeout_s:g} s ({TIMEOUT_ENV})")
        if not noticed and waited > WAIT_NOTICE_S:
            say_waiting(env)
            noticed = True
        worker.join(0.05)
    if outcome and outcome[0] is not None:
        raise outcome[0]


def _wants_cuda(args: Sequence[str]) -> bool:
    device = "auto"
    for i, arg in enumerate(args):
        if arg == "--device" and i + 1 < len(args):
            device = args[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    return device == "auto" or device.startswith("cuda")


class _ErrorsOnly:
    """stderr of ranks other than 0: errors pass, warnings, hints and progress do not."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith(("wa: warning:", "hint:")):
            return len(text)
        return int(self.stream.write(text))

    def isatty(self) -> bool:  # no progress bar
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _silence_output() -> None:
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    sys.stderr = _ErrorsOnly(sys.stderr)


def interrupted() -> None:
    """A signal stopped this rank: the others are being stopped too, so no last meeting."""
    if _group is not None:
        _group.broken = True


def step(what: str, fn: Callable[[], T]) -> list[T]:
    """Run ``fn`` on every rank and gather the results (index = rank); a failure anywhere raises.

    ``what`` names the step in the message when a rank is lost ("writing the shards").
    """
    group = _require()
    try:
        mine: Any = fn()
    except WaError as e:
        if isinstance(e, RankFailure):
            raise
        mine = _Failure(_local_parts(e.parts, group), int(e.code))
    except OSError as e:
        mine = _Failure(_local_parts((f"{e.strerror or e}",), group), int(ExitCode.OUTPUT))
    gathered = _gather(mine, what)
    for rank, item in enumerate(gathered):
        if isinstance(item, _Failure):
            raise RankFailure(item.parts, ExitCode(item.code), rank)
    return gathered


def share_failure(error: WaError) -> tuple[str | None, ExitCode]:
    """What the CLI prints for ``error`` (``None``: another rank prints it) and the exit code.

    A failure this rank alone knows of (raised between steps) is sent to the others in place of
    their next step, so that they stop too; rank 0 then prints it for everyone.
    """
    group = _group
    if group is None:
        return error.message, error.code
    if isinstance(error, RankFailure):
        group.together = True
        return (error.message if group.rank == 0 else None), error.code
    message = _local_message(error.message, group)
    if group.broken or group.closed:
        return message, error.code
    try:
        gathered = _gather(_Failure((message,), int(error.code)), "reporting an error")
    except WaError as lost:
        return f"{message} (and {lost.message.split(': ', 1)[-1]})", error.code
    group.together = True
    first = next((rank, item) for rank, item in enumerate(gathered) if isinstance(item, _Failure))
    code = ExitCode(first[1].code)
    return (first[1].message if group.rank == 0 else None), code


def finish() -> None:
    """The command's last step: every rank has done its part (a failure elsewhere raises)."""
    group = _group
    if group is not None and not group.closed and not group.broken:
        step("finishing", lambda: None)
        group.closed = group.together = True


def stop() -> None:
    """Leave the group: wait until every rank is here (so rank 0 has printed), then tear down."""
    global _group
    group = _group
    if group is None:
        return
    import torch.distributed as dist

    if group.together and not group.broken:
        with contextlib.suppress(Exception):
            dist.barrier(group=group.control)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    _group = None


def _gather(item: Any, what: str) -> list[Any]:
    import torch.distributed as dist

    group = _require()
    out: list[Any] = [None] * group.world
    try:
        dist.all_gather_object(out, item, group=group.control)
    except Exception as e:
        group.broken = True
        raise WaError(
            f"rank {group.rank}: lost contact with the other ranks while {what} (a rank died, or "
            f"did not answer within {group.timeout_s:g} s, {TIMEOUT_ENV}): {first_line(e)}; "
            "nothing was written",
            ExitCode.OUTPUT,
        ) from e
    return out


def _require() -> Group:
    if _group is None:
        raise RuntimeError("no process group: not launched by torchrun")
    return _group


def _local_message(message: str, group: Group) -> str:
    prefix = f"rank {group.rank}: "
    return message if message.startswith(prefix) else prefix + message


def _local_parts(parts: tuple[Part, ...], group: Group) -> tuple[Part, ...]:
    """``parts`` after the rank prefix: the parameters stay fields, for the CLI to spell."""
    prefix = f"rank {group.rank}: "
    return parts if render(parts).startswith(prefix) else (prefix, *parts)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def assign_balanced(costs: Sequence[int], world: int) -> list[int]:
    """The rank of each item, largest first to the least loaded rank (ties: the lower rank).

    Deterministic from ``costs`` alone, so every rank computes the same assignment.

    Example:
        >>> assign_balanced([5, 1, 4, 2], 2)
        [0, 1, 1, 0]
    """
    load = [0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner
