"""Test helpers: tiny seeded models, trajectories in every input form, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.oracles import tiny_cnn

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "TOLERANCE", "tiny_cnn"]

# One tolerance table for every dtype comparison (STYLE.md).
TOLERANCE = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-2},
}


def cnn_state(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny_cnn(seed).state_dict().items()}


def save_sharded(state: dict[str, torch.Tensor], folder: Path, metadata: dict[str, str]) -> Path:
    """A Hugging Face style sharded folder: two shards and model.safetensors.index.json."""
    folder.mkdir(parents=True)
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, folder / name, metadata=metadata)
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


@dataclass
class Trajectory:
    states: list[dict[str, torch.Tensor]]
    paths: list[Path]


def drifted_state(seed: int) -> dict[str, torch.Tensor]:
    """``cnn_state(0)`` moved a little (seeded by ``seed``): checkpoints of one run."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return {
        k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in cnn_state(seed=0).items()
    }


def make_trajectory(
    folder: Path,
    n: int = 3,
    form: str = "file",
    dtype: torch.dtype | None = None,
    *,
    one_run: bool = False,
) -> Trajectory:
    """``n`` CNN checkpoints saved as ``file`` (.safetensors), ``sharded`` or ``pt`` (nested).

    By default each is an independent initialisation (seed i), which ``wa average`` warns about
    (they look like unrelated runs); ``one_run`` makes them one initialisation, drifted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    states, paths = [], []
    for i in range(n):
        state = drifted_state(i) if one_run else cnn_state(seed=i)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        meta = {"format": "pt", "step": str(100 * (i + 1))}
        if form == "file":
            path = folder / f"ckpt_{i}.safetensors"
            save_file(state, path, metadata=meta)
        elif form == "sharded":
            path = save_sharded(state, folder / f"ckpt_{i}", meta)
        elif form == "pt":
            path = folder / f"ckpt_{i}.pt"
            torch.save({"state_dict": state, "epoch": i, "optimizer": {"lr": 0.1}}, path)
        else:
            raise ValueError(form)
        states.append(state)
        paths.append(path)
    return Trajectory(states, paths)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_wa(args: list[str | os.PathLike[str]], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """Run ``wa`` in-process through the same entry point as the console script."""
    from wa_cli.cli.app import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def run_wa_process(args: list[str | os.PathLike[str]], **kwargs: object) -> CliResult:
    """Run ``python -m wa_cli`` in a fresh process (for what only a real process shows)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", *map(str, args)],
        capture_output=True, text=True, env=env, **kwargs,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """A user error: the exit code, exactly one ``wa: error:`` line on stderr, no traceback."""
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wa: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
