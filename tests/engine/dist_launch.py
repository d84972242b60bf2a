"""Launching ``python -m wa_cli`` as several ranks on this machine (gloo over localhost).

``launch`` sets the variables torchrun (or srun) gives each rank and starts the ranks directly,
so a test sees every rank's exit code and output; ``torchrun`` goes through the real launcher.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import REPO, CliResult

# Long enough for a loaded two-core machine to start the ranks, short enough that a hang fails.
TIMEOUT_S = "40"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int, extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WA_DIST_TIMEOUT": TIMEOUT_S,
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def launch(
    world: int,
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | Sequence[Path] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> list[CliResult]:
    """Run ``wa ARGS`` as ``world`` ranks; ``cwd`` may differ per rank (what each node sees)."""
    port = free_port()
    cwds = list(cwd) if isinstance(cwd, (list, tuple)) else [cwd] * world
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wa_cli", *map(str, args)],
            cwd=cwds[rank],
            env=rank_env(rank, world, port, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(CliResult(p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def torchrun(
    world: int, args: Sequence[str | os.PathLike[str]], *, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node W -m wa_cli ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WA_DIST_TIMEOUT": TIMEOUT_S}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={world}", "-m", "wa_cli", *map(str, args),
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def wa_errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("wa: error:")]
