"""Averaging a DeepSpeed ZeRO-2 trajectory: ``wa average out/`` against ``zero_to_fp32.py`` +
``wa average``, time and exact peak RSS, at two model sizes.

The trajectory is written by real DeepSpeed (2 CPU ranks on gloo, ``engine.save_checkpoint``
after each of 3 Adam steps) for an MLP of ``--layers`` Linear(1024, 1024) layers. wa reads each
step's fp32 master weights parameter by parameter from byte ranges of the rank partitions
(``wa_cli.io.deepspeed``). The baseline is what users do today: DeepSpeed's own
``zero_to_fp32.py`` per step (which loads every rank's optimizer file, Adam moments included),
then ``wa average`` over the converted safetensors. Every command is measured as a fresh child
by ``_measure.py``; the baseline's peak is the largest of its commands, its time their sum. The
two averages are checked equal bit for bit.

Usage: python benchmarks/bench_deepspeed.py [--layers 4,16] [--dir /tmp/wa-bench-ds]
Needs DeepSpeed (CPU is enough).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WIDTH, STEPS, WORLD = 1024, 3, 2


def train(layers: int, out: str) -> None:
    """One rank: 3 Adam steps of an MLP under ZeRO-2, saving after each (run per rank)."""
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": 2},
        "steps_per_print": 10**6,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=cfg
    )
    for _ in range(STEPS):
        engine.backward(engine(torch.randn(2, WIDTH)).pow(2).mean())
        engine.step()
        engine.save_checkpoint(out)


def make_run(out: Path, layers: int) -> None:
    if (out / "latest").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, DS_ACCELERATOR="cpu")
        args = [sys.executable, __file__, "--train", str(layers), str(out)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"DeepSpeed training of {layers} layers failed")


def measure(cmd: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(
        [sys.executable, str(HERE / "_measure.py"), "--", *cmd],
        capture_output=True, text=True, check=True, cwd=REPO, env=env,
    )  # fmt: skip
    record = json.loads(done.stdout)
    if record["rc"] != 0:
        raise SystemExit(f"{cmd[:4]} failed: {record['stderr']}")
    return {"wall_s": record["wall_s"], "peak_rss_mb": record["peak_rss_mb"]}


def compare(layers: int, root: Path) -> dict[str, object]:
    out = root / f"zero2_{layers}"
    make_run(out, layers)
    size = sum(f.stat().st_size for f in out.rglob("*.pt")) / 2**20
    wa_out = root / f"wa_{layers}.safetensors"
    wa = measure([sys.executable, "-m", "wa_cli", "average", str(out), "-o", str(wa_out),
                  "--force", "-q"])  # fmt: skip
    base: list[dict[str, float]] = []
    converted = []
    script = out / "zero_to_fp32.py"
    for step in range(1, STEPS + 1):
        target = root / f"fp32_{layers}_{step}"
        shutil.rmtree(target, ignore_errors=True)
        base.append(measure([sys.executable, str(script), str(out), str(target),
                             "--tag", f"global_step{step}", "--safe_serialization"]))  # fmt: skip
        converted.append(str(target / "model.safetensors"))
    base_out = root / f"base_{layers}.safetensors"
    base.append(measure([sys.executable, "-m", "wa_cli", "average", *converted, "-o",
                         str(base_out), "--force", "-q"]))  # fmt: skip
    from safetensors.torch import load_file

    a, b = load_file(wa_out), load_file(base_out)
    same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    return {
        "layers": layers,
        "params_m": layers * (WIDTH * WIDTH + WIDTH) / 1e6,
        "run_mb": size,
        "wa": wa,
        "base": {
            "wall_s": sum(r["wall_s"] for r in base),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in base),
        },
        "equal": same,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="4,16", help="model sizes, in Linear(1024) layers")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/wa-bench-ds"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = [compare(int(n), args.dir) for n in args.layers.split(",")]
    print(f"DeepSpeed ZeRO-2 (fp32, {WORLD} ranks), {STEPS} checkpoints averaged")
    print(f"{'model':>14} {'run on disk':>12} | {'wa average out/':>24} | "
          f"{'zero_to_fp32.py x3 + wa average':>34} | equal")  # fmt: skip
    for r in rows:
        wa, base = r["wa"], r["base"]
        assert isinstance(wa, dict) and isinstance(base, dict)
        print(
            f"{r['params_m']:>8.1f} M par {r['run_mb']:>9.0f} MB | "
            f"{wa['peak_rss_mb']:>8.0f} MB {wa['wall_s']:>7.2f} s       | "
            f"{base['peak_rss_mb']:>8.0f} MB {base['wall_s']:>7.2f} s            | {r['equal']}"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--train":
        train(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    sys.exit(main())
