"""Write the DeepSpeed runs the tests read, with DeepSpeed's own saving code, and their oracles.

Run from the repository root (DeepSpeed installed, CPU only; about a minute per run):

    python tests/io/deepspeed_runs/make_runs.py tests/io/deepspeed_runs

For each layout (ZeRO-1 fp32, ZeRO-2 fp32, ZeRO-2 bf16, ZeRO-3 fp32) two ranks train a small
model (two Linear layers, a BatchNorm with its buffers, a frozen parameter, two parameter groups)
for two steps with ``deepspeed.initialize`` on gloo, one process per rank (env RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), and ``engine.save_checkpoint(out)`` after each step. Then every step is
converted with DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (what
``zero_to_fp32.py`` writes) into ``<layout>.expected/global_stepN.safetensors``: the tests'
oracle. ``zero_to_fp32.py`` and ``zero_to_torch.py`` are not kept (38 kB each); the tests copy
them in from the installed DeepSpeed when it is there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

LAYOUTS = {
    "zero1": (1, "fp32"),
    "zero2": (2, "fp32"),
    "zero2_bf16": (2, "bf16"),
    "zero3": (3, "fp32"),
}
WORLD = 2
STEPS = 2


def train(stage: int, dtype: str, out: str) -> None:
    """One rank's training (run in a subprocess per rank)."""
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 3)
    )
    model[3].bias.requires_grad_(False)  # a frozen parameter: frozen_param_shapes/fragments
    decay = [model[0].weight, model[3].weight]
    no_decay = [model[0].bias, model[1].weight, model[1].bias]
    cfg: dict[str, object] = {
        "train_micro_batch_size_per_gpu": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**6,
    }
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
        model.to(torch.bfloat16)  # buffers too: DeepSpeed converts the parameters only
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=cfg)
    torch.manual_seed(1 + int(os.environ["RANK"]))
    for _ in range(STEPS):
        x = torch.randn(4, 5, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
        engine.backward(engine(x).float().pow(2).mean())
        engine.step()
        engine.save_checkpoint(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make(root: Path, name: str) -> None:
    """Train one layout on WORLD ranks into root/name, then write its oracle."""
    stage, dtype = LAYOUTS[name]
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, DS_ACCELERATOR="cpu")
        args = [sys.executable, __file__, "--train", str(stage), dtype, str(out)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"training {name} failed")
    write_oracle(out, root / f"{name}.expected")
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):
        (out / script).unlink(missing_ok=True)


def write_oracle(out: Path, expected: Path) -> None:
    """DeepSpeed's own fp32 reconstruction of every step, as safetensors files."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    expected.mkdir(exist_ok=True)
    for tag in sorted(p.name for p in out.glob("global_step*")):
        state = get_fp32_state_dict_from_zero_checkpoint(str(out), tag=tag)
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, str(expected / f"{tag}.safetensors"))


if __name__ == "__main__":
    if sys.argv[1] == "--train":
        train(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        target = Path(sys.argv[1])
        for layout in sys.argv[2:] or LAYOUTS:
            make(target, layout)
