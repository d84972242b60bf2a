"""Soups on the sample task: fine-tunes of one pre-trained model at several learning rates.

For each seed: pre-train the sample CNN (``examples/digits.py``'s model and data) on the first
half of the training split, fine-tune it on the whole training split at every learning rate of
``--lrs`` (two data orders each), and compare on the test split

* the best single fine-tune (chosen by accuracy on a held-out validation slice),
* the uniform soup of all fine-tunes (``wa.average_to_file``),
* the greedy soup (``wa.greedy_soup_to_file``, scored on the validation slice),

every soup with its BatchNorm statistics re-estimated on the training split. The differences are
paired over seeds (the same pre-trained model and fine-tunes for all three).

    python examples/soups.py --seeds 3 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import wa_cli as wa  # noqa: E402
from examples.digits import configure_determinism, sample  # noqa: E402
from wa_cli.train import save_checkpoint  # noqa: E402

VAL = 300  # the last VAL training images: the greedy soup's held-out scores


@dataclasses.dataclass
class SeedResult:
    seed: int
    best_single: float
    uniform: float
    greedy: float
    kept: int
    of: int


def _train(model: nn.Module, x, y, lr: float, epochs: int, order_seed: int) -> None:
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(order_seed))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()


def _accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _test_accuracy(path: Path, bn_loader: DataLoader | None, x, y) -> float:
    model = sample.build()
    model.load_state_dict(load_file(str(path)))
    if bn_loader is not None:
        wa.update_bn(bn_loader, model)
    return _accuracy(model, x, y)


def run_seed(seed: int, lrs: tuple[float, ...], epochs: int, work: Path) -> SeedResult:
    configure_determinism()
    torch.manual_seed(seed)
    x, y = sample.load_digits("train")
    x_test, y_test = sample.load_digits("test")
    x_fit, y_fit, x_val, y_val = x[:-VAL], y[:-VAL], x[-VAL:], y[-VAL:]
    pre = sample.build()
    _train(pre, x_fit[: len(x_fit) // 2], y_fit[: len(y_fit) // 2], 0.05, epochs, 100 + seed)
    folder = work / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for lr in lrs:
        for order in (0, 1):
            model = sample.build()
            model.load_state_dict(pre.state_dict())
            _train(model, x_fit, y_fit, lr, epochs, 1000 * seed + order)
            path = folder / f"ft_lr{lr:g}_order{order}.safetensors"
            save_checkpoint(path, model, {"format": "pt"}, force=True)
            paths.append(path)
    bn_loader = DataLoader(TensorDataset(x_fit), batch_size=128)

    def val_acc(model: nn.Module) -> float:
        return _accuracy(model, x_val, y_val)

    singles = [_test_accuracy(p, None, x_val, y_val) for p in paths]
    best = paths[max(range(len(paths)), key=lambda i: singles[i])]
    uniform = folder / "uniform.safetensors"
    wa.average_to_file(paths, uniform, force=True)
    greedy = folder / "greedy.safetensors"
    soup, _ = wa.greedy_soup_to_file(
        paths, greedy, model=sample.build, evaluate=val_acc, mode="max", bn_data=bn_loader,
        force=True,
    )  # fmt: skip
    return SeedResult(
        seed,
        _test_accuracy(best, None, x_test, y_test),
        _test_accuracy(uniform, bn_loader, x_test, y_test),
        _test_accuracy(greedy, bn_loader, x_test, y_test),
        len(soup.kept),
        len(paths),
    )


def _paired(a: list[float], b: list[float]) -> str:
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    wins = sum(d > 0 for d in diffs)
    return f"{100 * mean:+.2f} pp (sd {100 * spread:.2f}, better in {wins} of {len(diffs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", default="0.005,0.02,0.08")
    parser.add_argument("--work", type=Path, default=Path("soups_run"))
    args = parser.parse_args()
    lrs = tuple(float(v) for v in args.lrs.split(","))
    rows = [run_seed(s, lrs, args.epochs, args.work) for s in range(args.seeds)]
    print("| seed | best single | uniform soup | greedy soup | kept |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.seed} | {r.best_single:.4f} | {r.uniform:.4f} | {r.greedy:.4f} | "
              f"{r.kept} of {r.of} |")  # fmt: skip
    greedy = [r.greedy for r in rows]
    print(f"greedy - best single: {_paired(greedy, [r.best_single for r in rows])}")
    print(f"greedy - uniform:     {_paired(greedy, [r.uniform for r in rows])}")


if __name__ == "__main__":
    main()
