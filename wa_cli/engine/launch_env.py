"""The variables a torchrun (or srun, or hand-made) launch sets, checked before torch sees them.

torch reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` itself; a bad value
there surfaced as a C++ stack, a ``ValueError`` traceback, or an error blaming another variable
(``RANK=2`` of ``WORLD_SIZE=2`` was reported as a bad ``MASTER_ADDR``). Here every variable is
parsed first, and a bad one is one line naming it, its value and what it must be. The rules are
in docs/environment.md.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from wa_cli.errors import ExitCode, WaError

TIMEOUT_ENV = "WA_DIST_TIMEOUT"
# Collectives wait for the slowest rank; a rank that has more to read than the others (or a
# first read from a cold filesystem) must not be taken for a dead one. 30 minutes by default.
DEFAULT_TIMEOUT_S = 1800.0
# A year: past it a timeout is a typo (and torch's C++ clock overflows somewhere past 2**63 ns).
MAX_TIMEOUT_S = 365 * 24 * 3600.0
# Seconds a rank waits for the others in silence before it says whom it waits for.
WAIT_NOTICE_S = 3.0

_LAUNCH = (
    "launch with torchrun, or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT "
    "for every process"
)


@dataclass(frozen=True)
class LaunchEnvironment:
    """This process's place in a launch, as its environment describes it."""

    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    timeout_s: float

    @property
    def address(self) -> str:
        """``ADDR:PORT`` of the rendezvous (``[ADDR]:PORT`` for an IPv6 address)."""
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"{host}:{self.master_port}"

    def waiting_for(self) -> str:
        """Whom this rank waits for while it joins: rank 0 waits for the others, they for it."""
        if self.rank != 0:
            return "rank 0"
        return "rank 1" if self.world == 2 else f"ranks 1 to {self.world - 1}"


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment:
    """Parse and check the launch variables (``WORLD_SIZE`` > 1 is assumed set).

    Raises:
        WaError: (usage) naming the first variable that is missing or out of range.

    Example:
        >>> env = launch_environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
        ...     "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
        >>> (env.rank, env.world, env.address, env.waiting_for())
        (1, 2, '10.0.0.1:29500', 'rank 0')
    """
    env = os.environ if environ is None else environ
    world = whole_number("WORLD_SIZE", env, least=1)
    rank = whole_number("RANK", env, least=0, below=world, why="a rank of WORLD_SIZE ranks")
    local_world = whole_number("LOCAL_WORLD_SIZE", env, least=1, default=world)
    local_rank = whole_number(
        "LOCAL_RANK", env, least=0, below=local_world, default=0, why="this node's rank"
    )
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        raise WaError(f"MASTER_ADDR is not set ({_LAUNCH})", ExitCode.USAGE)
    port = whole_number("MASTER_PORT", env, least=1, below=65536, why="a TCP port")
    return LaunchEnvironment(rank, world, local_rank, addr, port, timeout_seconds(env))


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``WA_DIST_TIMEOUT`` in seconds: a finite number in (0, one year]; 1800 when unset.

    Example:
        >>> timeout_seconds({"WA_DIST_TIMEOUT": "90"})
        90.0
    """
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise WaError(
            f"{TIMEOUT_ENV} must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}], got "
            f"{text!r} (unset it for the default {DEFAULT_TIMEOUT_S:g} s)",
            ExitCode.USAGE,
        )
    return value


def whole_number(
    name: str,
    env: Mapping[str, str],
    *,
    least: int,
    below: int | None = None,
    default: int | None = None,
    why: str = "",
) -> int:
    text = env.get(name, "").strip()
    if not text:
        if default is not None:
            return default
        raise WaError(f"{name} is not set while WORLD_SIZE is ({_LAUNCH})", ExitCode.USAGE)
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or value < least or (below is not None and value >= below):
        bounds = f"at least {least}" if below is None else f"from {least} to {below - 1}"
        what = f", {why}" if why else ""
        raise WaError(
            f"{name}={text!r} must be a whole number {bounds}{what} ({_LAUNCH})",
            ExitCode.USAGE,
        )
    return value


def say_waiting(env: LaunchEnvironment) -> None:
    """One stderr line: this rank is still waiting at the rendezvous (and for how long it may)."""
    try:
        sys.stderr.write(
            f"wa: rank {env.rank}: waiting for {env.waiting_for()} at {env.address} (up to "
            f"{env.timeout_s:g} s, {TIMEOUT_ENV}; start the other ranks with the same "
            "MASTER_ADDR/MASTER_PORT)\n"
        )
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
