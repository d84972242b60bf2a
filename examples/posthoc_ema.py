"""Post-hoc EMA on the sample task: train with PowerEMA snapshots, choose σ_rel afterwards.

Trains the sample CNN on digits (``examples/digits.py``) while ``wa_cli.train.PowerEMA`` tracks
two power-function EMAs (σ_rel 0.05 and 0.10) and saves them every ``--every`` steps. Then, for
each σ_rel of a grid, the EMA of that width is reconstructed from the snapshots with
``wa_cli.methods.ema.ema_to_file(..., sigma_rel=S)`` (what ``wa ema --sigma-rel`` runs) and scored
on the held-out split, beside the raw final weights.

    python examples/posthoc_ema.py --epochs 10 --every 45 --out /tmp/posthoc
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch.nn.functional as F  # noqa: E402

from examples.digits import Run, RunConfig, evaluate, load_model  # noqa: E402
from wa_cli.methods.ema import ema_to_file  # noqa: E402
from wa_cli.train import PowerEMA  # noqa: E402

GRID = (0.05, 0.08, 0.10, 0.15, 0.20, 0.25)


@dataclasses.dataclass
class Row:
    sigma_rel: float
    fit_error: float
    loss: float
    accuracy: float


def run(
    epochs: int, every: int, out: Path, grid: tuple[float, ...] = GRID
) -> tuple[float, list[Row]]:
    """Train, snapshot, reconstruct each σ_rel; (raw final accuracy, one row per σ_rel)."""
    cfg = RunConfig(epochs=epochs, schedule="cosine", lr=0.05, seed=0)
    training = Run(cfg)
    snapshots = out / "snapshots"
    ema = PowerEMA(training.model, sigma_rels=(0.05, 0.10), directory=snapshots, every=every)
    while training.epoch < cfg.epochs:
        training.model.train()
        for xb, yb in training.loader:
            training.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(training.model(xb), yb).backward()
            training.optimizer.step()
            training.scheduler.step()
            training.step += 1
            ema.update()
            ema.maybe_save(force=True)
        training.epoch += 1
    raw_accuracy = evaluate(training.model)[1]
    rows = []
    files = sorted(snapshots.glob("*.safetensors"))
    for sigma_rel in grid:
        target = out / f"ema_{sigma_rel:g}.safetensors"
        report = ema_to_file(files, target, sigma_rel=sigma_rel)
        loss, accuracy = evaluate(load_model(target))
        rows.append(Row(sigma_rel, float(report.params["fit_error"]), loss, accuracy))
    return raw_accuracy, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--every", type=int, default=45, help="snapshot period in steps")
    parser.add_argument("--out", type=Path, default=Path("posthoc_run"))
    args = parser.parse_args()
    raw, rows = run(args.epochs, args.every, args.out)
    print(f"raw final weights: accuracy {raw:.4f}")
    print("| sigma_rel | fit error | test loss | test accuracy |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.sigma_rel:.2f} | {r.fit_error:.2%} | {r.loss:.4f} | {r.accuracy:.4f} |")


if __name__ == "__main__":
    main()
