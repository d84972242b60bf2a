"""Memory and time of the soups: ``wa average --greedy`` and ``--model-stock`` against a plain
``wa average`` of the same inputs (the streaming floor), at several model sizes and counts.

The inputs are N fine-tunes (base + 0.01 · noise) of an MLP of Linear(2048, 2048) layers, written
with ``safetensors.torch.save_file`` one checkpoint in memory at a time, in float32 and bf16. The
greedy soup's model is that MLP (built in the checkpoints' dtype) and its score is analytic and
cheap: minus the distance of the last layer's bias to a target (fine-tune i's bias lies
(i + 1) · 0.01 from it, so the soup keeps some and rejects others). Model Stock merges the same
N fine-tunes around their base. Every command is a fresh child of ``_measure.py`` (exact peak RSS
via ``getrusage(RUSAGE_CHILDREN)``). The greedy soup builds its candidates in memory (the model
plus one float32 sum of the kept inputs, plus the input being read); the table's ``expected``
column is that sum over the average's own peak.

Usage: python benchmarks/bench_soups.py [--sizes 50,200] [--counts 3,6] [--dtypes fp32,bf16]
The data (at most ~2 GB at a time) is written under ``--dir`` and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WIDTH = 2048
DTYPES = {"fp32": ("float32", 4), "bf16": ("bfloat16", 2)}

MODEL_PY = """
import os
import torch

LAYERS = int(os.environ["WA_BENCH_LAYERS"])
DTYPE = getattr(torch, os.environ["WA_BENCH_DTYPE"])


def build():
    layers = [torch.nn.Linear(2048, 2048, device="meta") for _ in range(LAYERS)]
    return torch.nn.Sequential(*layers).to_empty(device="cpu").to(DTYPE)


def score(model):
    bias = model[-1].bias.detach().double()
    return -float(torch.linalg.vector_norm(bias - 1.0))
"""


def layers_for(size_mb: int, itemsize: int) -> int:
    per_layer = (WIDTH * WIDTH + WIDTH) * itemsize
    return max(1, round(size_mb * 1e6 / per_layer))


def generate(folder: Path, layers: int, dtype: str, count: int) -> list[Path]:
    """base.safetensors and ft{i}.safetensors (i < count); one state dict in memory at a time."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    dt = getattr(torch, dtype)

    def state(seed: int, scale: float, bias_offset: float) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        base = torch.Generator().manual_seed(12345)
        out = {}
        for i in range(layers):
            w = torch.randn(WIDTH, WIDTH, generator=base) * 0.02
            b = torch.randn(WIDTH, generator=base) * 0.02
            if scale:
                w += scale * torch.randn(WIDTH, WIDTH, generator=gen)
                b += scale * torch.randn(WIDTH, generator=gen)
            if i == layers - 1:
                b = 1.0 + bias_offset * torch.randn(WIDTH, generator=gen)
            out[f"{i}.weight"], out[f"{i}.bias"] = w.to(dt), b.to(dt)
        return out

    save_file(state(0, 0.0, 0.5), str(folder / "base.safetensors"))
    paths = []
    for i in range(count):
        path = folder / f"ft{i}.safetensors"
        save_file(state(i + 1, 0.01, 0.01 * (i + 1)), str(path))
        paths.append(path)
    return paths


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    wrapped = [sys.executable, str(HERE / "_measure.py"), "--", *cmd]
    proc = subprocess.run(wrapped, capture_output=True, text=True, env=env, check=True)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if record["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{record['stderr']}")
    return record


def run_case(folder: Path, paths: list[Path], n: int, env: dict[str, str]) -> dict[str, dict]:
    wa = [sys.executable, "-m", "wa_cli", "average"]
    inputs = [str(p) for p in paths[:n]]
    out = str(folder / "out.safetensors")
    model = str(folder / "soup_model.py")
    cmds = {
        "average": [*wa, *inputs, "-o", out, "--force", "-q"],
        "greedy": [*wa, *inputs, "-o", out, "--force", "-q", "--greedy",
                   "--model", f"{model}:build", "--eval", f"{model}:score", "--mode", "max"],
        "stock": [*wa, *inputs, "-o", out, "--force", "-q",
                  "--model-stock", str(folder / "base.safetensors")],
    }  # fmt: skip
    return {name: measure(cmd, env) for name, cmd in cmds.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,200", help="MB of weights per checkpoint")
    ap.add_argument("--counts", default="3,6", help="numbers of fine-tunes N")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--dir", default="/tmp/wa-bench-soups")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = sorted(int(c) for c in args.counts.split(","))
    root = Path(args.dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    header = (
        f"{'dtype':>5} {'size':>7} {'N':>3} | {'wa average':>17} | {'--greedy':>17} | "
        f"{'--model-stock':>17} | greedy - average  expected"
    )
    print(header, "\n" + "-" * len(header), flush=True)
    try:
        for tag in args.dtypes.split(","):
            dtype, itemsize = DTYPES[tag]
            for size in sizes:
                layers = layers_for(size, itemsize)
                folder = root / f"{tag}-{size}"
                paths = generate(folder, layers, dtype, counts[-1])
                (folder / "soup_model.py").write_text(MODEL_PY)
                mb = paths[0].stat().st_size / 1e6
                env.update(WA_BENCH_LAYERS=str(layers), WA_BENCH_DTYPE=dtype)
                for n in counts:
                    r = run_case(folder, paths, n, env)
                    cells = " | ".join(
                        f"{r[k]['peak_rss_mb']:7.0f} MB {r[k]['wall_s']:5.1f} s"
                        for k in ("average", "greedy", "stock")
                    )
                    extra = r["greedy"]["peak_rss_mb"] - r["average"]["peak_rss_mb"]
                    # the model (its dtype) + one float32 sum + one input being read
                    expected = mb + mb * 4 / itemsize + mb
                    print(
                        f"{tag:>5} {mb:5.0f}MB {n:3d} | {cells} | {extra:7.0f} MB "
                        f"{extra / mb:4.1f}x  {expected:5.0f} MB",
                        flush=True,
                    )
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
