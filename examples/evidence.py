"""Evidence: does each technique in ``wa`` beat its own control, on a task where it can?

The task leaves the methods room to differ: 8x8 ``digits`` (the sample data's 1797 images) split
afresh for every seed into 500 training images whose labels are 40 % wrong (each noisy label is
a uniformly drawn *other* class) and a clean test set of the other 1297, learned by a small
BatchNorm CNN (three conv-BN layers, about 31k weights) with one-pixel random shifts, 40 epochs.
Every comparison is paired: method and control share the seed's split, label noise, initial
weights and data order, and the script reports the per-seed difference (mean ± std, t statistic,
wins) rather than two separate means. Learning rates were chosen on seeds 200-201 (see
docs/evidence.md).

Comparisons (each against its own control):

* SWA (Izmailov et al. 2018): ``wa average`` of one checkpoint per epoch over the last half,
  saved by ``TrajectoryWriter`` while a high constant learning rate is held, vs that run's final
  iterate, and vs SGD with cosine decay to 0 (the tuned schedule) over the same epochs.
* ``wa bn-recalibrate`` on the SWA weights vs the same weights with averaged BN statistics.
* ``wa ema --half-life`` over the same trajectory vs the run's final iterate.
* Lookahead(SGD), k=5, alpha=0.5 (Zhang et al. 2019) vs the inner SGD alone (cosine schedule).
* Gradient centralization with the paper's weight-decay form Phi(g + wd w) (Yong et al. 2020)
  vs plain SGD (cosine schedule).
* Large batch with linear lr scaling (4x batch, 4x lr): Goyal et al.'s 5-epoch warmup from
  lr/4 vs no warmup, both cosine afterwards.
* Filter grafting in training (Meng et al. 2020): two runs at lr 0.1 and 0.05 (different seeds),
  grafted after every epoch with ``wa.graft_to_file`` on the files ``TrajectoryWriter`` saved,
  vs the better of the two single runs, and vs the A = 0 control (same runs and schedule, alpha
  fixed at 0.5: a plain average every epoch), which tests the entropy weighting itself.

    python examples/evidence.py --seeds 5          # ~3 min (300 s of CPU) on 2 idle cores
    python examples/evidence.py --quick --seeds 1  # a smoke test of every path, seconds

Seeds and experiments run in parallel worker processes (``--jobs``, default: the CPU count), one
torch thread each; the numbers do not depend on ``--jobs``. A ``wa`` command that fails turns its
rows into "n/a" with the reason. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import wa_cli as wa  # noqa: E402
from wa_cli.train.centralization import enable_gradient_centralization  # noqa: E402
from wa_cli.train.lookahead import Lookahead  # noqa: E402
from wa_cli.train.trajectory import TrajectoryWriter  # noqa: E402
from wa_cli.train.warmup import linear_warmup, swa_schedule  # noqa: E402

DATA = ROOT / "sample_checkpoints" / "digits.safetensors"
MODEL_SPEC = f"{Path(__file__).resolve()}:build"
NOISE = 0.4


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the experiment is: --quick shrinks it to a smoke test."""

    n_train: int = 500
    epochs: int = 40
    swa_start: int = 20  # first averaged epoch (1-based); SWA's lr is held from 0.9 swa_start
    warmup_epochs: int = 5  # Goyal et al.'s gradual warmup


FULL = Size()
QUICK = Size(n_train=200, epochs=4, swa_start=2, warmup_epochs=1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run; ``seed`` fixes the initial weights and the data order."""

    seed: int
    epochs: int
    lr: float = 0.1
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "swa": hold lr to 0.5 swa_start, linear to swa_lr by 0.9 swa_start, hold (SWA's schedule)
    # "cosine": linear warmup from warmup_start * lr over warmup_epochs, then cosine to 0
    schedule: Literal["swa", "cosine"] = "cosine"
    swa_start: int = 0
    swa_lr: float = 0.05
    warmup_epochs: int = 0
    warmup_start: float = 0.0
    lookahead: bool = False
    gc: bool = False
    augment: bool = True  # random shifts of up to one pixel


def shift(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by -1, 0 or 1 pixels in each direction (zero fill): data augmentation."""
    n, _, h, w = xb.shape
    padded = nn.functional.pad(xb, (1, 1, 1, 1))
    rows = torch.randint(0, 3, (n, 1), generator=g) + torch.arange(h)
    cols = torch.randint(0, 3, (n, 1), generator=g) + torch.arange(w)
    out = padded[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
    return out.unsqueeze(1)


class EvidenceNet(nn.Module):
    """conv-BN-relu x3 with two max-pools, then a linear layer: 8x8 -> 10 classes."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.conv1, self.bn1 = nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv3, self.bn3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)  # 8x8 -> 4x4
        x = nn.functional.max_pool2d(torch.relu(self.bn3(self.conv3(x))), 2)  # 4x4 -> 2x2
        return self.fc(x.flatten(1))


def build() -> nn.Module:
    """A fresh EvidenceNet (what ``wa bn-recalibrate --model examples/evidence.py:build`` loads)."""
    return EvidenceNet()


@dataclasses.dataclass(frozen=True)
class Split:
    """One seed's data: noisy training labels, the true ones, and a clean test set."""

    x_train: torch.Tensor
    y_train: torch.Tensor  # with label noise: what the network is trained on
    y_clean: torch.Tensor  # the true training labels
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_split(seed: int, n_train: int, noise: float = NOISE) -> Split:
    """A fresh random split of all 1797 images; exactly round(noise * n_train) labels flipped."""
    data = load_file(DATA)
    x = torch.cat([data["train_images"], data["test_images"]]).float().div_(16.0)
    y = torch.cat([data["train_labels"], data["test_labels"]])
    g = torch.Generator().manual_seed(10_000 + seed)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:n_train], order[n_train:]
    y_clean = y[train]
    flipped = torch.randperm(n_train, generator=g)[: round(noise * n_train)]
    y_noisy = y_clean.clone()
    # a shift of 1..9 classes: always a different class, uniformly among the other nine
    y_noisy[flipped] = (y_clean[flipped] + torch.randint(1, 10, (len(flipped),), generator=g)) % 10
    return Split(x[train], y_noisy, y_clean, x[test], y[test])


Result = tuple[float, float]  # (test loss, test accuracy)


def evaluate(model: nn.Module, split: Split) -> Result:
    """(mean cross-entropy, accuracy) on the clean test set, in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = model(split.x_test)
    loss = nn.functional.cross_entropy(logits, split.y_test)
    return float(loss), float((logits.argmax(1) == split.y_test).float().mean())


def load_model(path: Path) -> nn.Module:
    model = build()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


class Run:
    """One training run, advanced an epoch at a time (so a caller can graft between epochs)."""

    def __init__(self, cfg: RunConfig, split: Split) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = build()
        self.loader = DataLoader(
            TensorDataset(split.x_train, split.y_train),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(1000 + cfg.seed),
        )
        self.shifts = torch.Generator().manual_seed(2000 + cfg.seed)
        inner = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        if cfg.gc:
            # the default form is the paper's SGD: Phi(g + wd * w), not Phi(g) + wd * w
            enable_gradient_centralization(inner)
        spe = len(self.loader)
        if cfg.schedule == "swa":
            self.scheduler = swa_schedule(
                inner,
                swa_lr=cfg.swa_lr,
                hold_steps=int(0.5 * cfg.swa_start * spe),
                anneal_steps=int(0.4 * cfg.swa_start * spe),
            )
        else:
            self.scheduler = linear_warmup(
                inner,
                cfg.warmup_epochs * spe,
                total_steps=cfg.epochs * spe,
                decay="cosine",
                start_factor=cfg.warmup_start,
            )
        self.optimizer: torch.optim.Optimizer = inner
        if cfg.lookahead:
            self.optimizer = Lookahead(inner, k=5, alpha=0.5)
        self.step = 0
        self.epoch = 0

    def train_epoch(self) -> int:
        """One pass over the training data; returns the (1-based) epoch just finished."""
        self.model.train()
        for xb, yb in self.loader:
            if self.cfg.augment:
                xb = shift(xb, self.shifts)
            self.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(xb), yb).backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
        self.epoch += 1
        return self.epoch

    def result_model(self) -> nn.Module:
        """The model, or with Lookahead its slow weights (the method's output, Zhang et al.)."""
        if not isinstance(self.optimizer, Lookahead):
            return self.model
        model = build()
        model.load_state_dict(self.model.state_dict())
        with torch.no_grad():
            for fast, slow in zip(self.model.parameters(), model.parameters(), strict=True):
                slow.copy_(self.optimizer.state[fast]["slow_param"])
        return model

    def train(self, writer: TrajectoryWriter | None = None) -> nn.Module:
        while self.epoch < self.cfg.epochs:
            epoch = self.train_epoch()
            if writer is not None:
                writer.maybe_save(self.result_model(), self.step, epoch)
        return self.result_model()


class WaFailed(RuntimeError):
    """A ``wa`` command exited non-zero; the message is its last stderr line."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wa_command(*args: str | Path) -> None:
    """Run ``python -m wa_cli ARGS`` from this repository (one torch thread, on the CPU)."""
    path = [p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "wa_cli", *map(str, args), "--device", "cpu", "--force", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        raise WaFailed(f"wa {args[0]} exited {proc.returncode}: {lines[-1]}")


# ---------------------------------------------------------------------------------------------
# The experiments: each trains its own runs for one seed and returns its rows' results. They are
# independent of each other, so (seed, experiment) pairs are the units of parallel work.

LR, LR_LOW = 0.1, 0.05  # the tuned cosine lr (best of 0.01, 0.02, 0.05, 0.1, 0.2); its half
SWA_LR = 0.05  # SWA: lr 0.05 from the start, held (best of three SWA schedules)
BIG = 4  # large-batch factor k: batch 32 k, lr 0.1 k (linear scaling, Goyal et al.)
EMA_HALF_LIFE_EPOCHS = 3
GRAFT_A = 0.4  # the paper's A (and c = 500, the library's default)

Rows = dict[str, "Result | str"]


def base(seed: int, size: Size, **changes: object) -> RunConfig:
    return dataclasses.replace(RunConfig(seed=seed, epochs=size.epochs, lr=LR), **changes)  # type: ignore[arg-type]


def swa_rows(seed: int, size: Size, split: Split, work: Path) -> Rows:
    """SGD on SWA's schedule, one file per epoch from swa_start; then the wa commands on them."""
    cfg = base(seed, size, lr=SWA_LR, schedule="swa", swa_start=size.swa_start, swa_lr=SWA_LR)
    run = Run(cfg, split)
    writer = TrajectoryWriter(work / "traj", every=1, unit="epoch", start=size.swa_start)
    rows: Rows = {"sgd_swa_schedule": evaluate(run.train(writer), split)}
    files = [p for _, p in writer.saved]
    half_life = EMA_HALF_LIFE_EPOCHS * len(run.loader)
    x_train = work / "x_train.safetensors"
    save_file({"inputs": split.x_train.contiguous()}, str(x_train))
    swa, swa_bn, ema = (work / f"{n}.safetensors" for n in ("swa", "swa_bn", "ema"))
    steps: list[tuple[str, Path, Callable[[], None]]] = [
        ("swa", swa, lambda: wa_command("average", *files, "-o", swa)),
        (
            "swa_bn",
            swa_bn,
            lambda: wa_command(
                "bn-recalibrate", swa, "-o", swa_bn, "--model", MODEL_SPEC,
                "--data", x_train, "--batch-size", cfg.batch_size,
            ),
        ),
        ("ema", ema, lambda: wa_command("ema", *files, "--half-life", half_life, "-o", ema)),
    ]  # fmt: skip
    for name, out, step in steps:
        try:
            step()
            rows[name] = evaluate(load_model(out), split)
        except WaFailed as e:
            rows[name] = str(e).replace("|", "/")
    return rows


def grafted_in_training(seed: int, size: Size, split: Split, work: Path, a: float) -> nn.Module:
    """Two runs (lr LR and LR_LOW, different seeds) in lockstep, grafted after every epoch.

    Each epoch both models are saved by their ``TrajectoryWriter``; ``wa.graft_to_file`` grafts
    the two files, and both runs continue from the result with their own learning rate, momentum
    and data order. For two models both grafts are one model (alpha_1 + alpha_2 = 1). With
    ``a = 0`` every alpha is 0.5: a plain average every epoch, the control for the weighting.
    """
    runs = [Run(base(seed, size), split), Run(base(seed + 100, size, lr=LR_LOW), split)]
    writers = [
        TrajectoryWriter(work / f"graft{i}", unit="epoch", start=1, keep_last=1) for i in (0, 1)
    ]
    out = work / "grafted.safetensors"
    while runs[0].epoch < size.epochs:
        files = []
        for run, writer in zip(runs, writers, strict=True):
            epoch = run.train_epoch()
            files.append(writer.save(run.model, run.step, epoch))
        wa.graft_to_file(files, out, a=a, device="cpu", force=True)
        state = load_file(str(out))
        for run in runs:
            run.model.load_state_dict(state)
    return runs[0].model


def trained(seed: int, size: Size, split: Split, **changes: object) -> Result:
    return evaluate(Run(base(seed, size, **changes), split).train(), split)


Experiment = Callable[[int, Size, Split, Path], Rows]
EXPERIMENTS: dict[str, Experiment] = {
    "swa": swa_rows,
    "cosine": lambda s, z, d, w: {"sgd_cosine": trained(s, z, d)},
    "lookahead": lambda s, z, d, w: {"lookahead": trained(s, z, d, lookahead=True)},
    "gc": lambda s, z, d, w: {"gc": trained(s, z, d, gc=True)},
    "low_lr": lambda s, z, d, w: {"sgd_low_lr": trained(s + 100, z, d, lr=LR_LOW)},
    "big_batch": lambda s, z, d, w: {
        "big_no_warmup": trained(s, z, d, batch_size=32 * BIG, lr=LR * BIG)
    },
    "big_batch_warmup": lambda s, z, d, w: {
        "big_warmup": trained(
            s,
            z,
            d,
            batch_size=32 * BIG,
            lr=LR * BIG,
            warmup_epochs=z.warmup_epochs,
            warmup_start=1 / BIG,
        )
    },
    "graft": lambda s, z, d, w: {"graft": evaluate(grafted_in_training(s, z, d, w, GRAFT_A), d)},
    "graft_a0": lambda s, z, d, w: {"graft_a0": evaluate(grafted_in_training(s, z, d, w, 0.0), d)},
}
# heaviest first, so that the last tasks to finish are short ones
EXPERIMENT_COST = {"graft": 2.1, "graft_a0": 2.1, "swa": 1.5, "lookahead": 1.1, "gc": 1.1}

ROWS = {
    "sgd_swa_schedule": f"SGD, constant lr {SWA_LR} (SWA's schedule), final iterate",
    "swa": "SWA of its last half, 1 file/epoch (`wa average`), averaged BN stats",
    "swa_bn": "SWA + BN re-estimated (`wa bn-recalibrate`)",
    "ema": f"EMA, half-life {EMA_HALF_LIFE_EPOCHS} epochs (`wa ema --half-life`)",
    "sgd_cosine": f"SGD, lr {LR} cosine to 0 (tuned SGD)",
    "lookahead": "Lookahead(SGD), k=5, alpha=0.5, same cosine schedule",
    "gc": "SGD + GC, Phi(g + wd w), same cosine schedule",
    "sgd_low_lr": f"SGD, lr {LR_LOW} cosine (graft partner, other seed)",
    "big_no_warmup": f"batch {32 * BIG}, lr {LR * BIG:g} cosine, no warmup",
    "big_warmup": f"batch {32 * BIG}, lr {LR * BIG:g} cosine, warmup from lr/{BIG} (5 epochs)",
    "graft": f"grafted every epoch (`wa graft`, A={GRAFT_A}, c=500)",
    "graft_a0": "averaged every epoch (A=0: alpha fixed at 0.5)",
    "better_single": "better single run of the two (picked per seed on test)",
}

COMPARISONS = [  # (what is tested, method row, control row)
    ("SWA vs its own final iterate", "swa", "sgd_swa_schedule"),
    ("SWA vs tuned SGD (cosine to 0)", "swa", "sgd_cosine"),
    ("SWA + BN re-estimation vs SWA with averaged BN stats", "swa_bn", "swa"),
    ("SWA + BN re-estimation vs tuned SGD", "swa_bn", "sgd_cosine"),
    ("EMA vs its own final iterate", "ema", "sgd_swa_schedule"),
    ("Lookahead vs its inner SGD", "lookahead", "sgd_cosine"),
    ("GC vs plain SGD", "gc", "sgd_cosine"),
    (f"warmup vs none, batch x{BIG} and lr x{BIG}", "big_warmup", "big_no_warmup"),
    ("grafting in training vs the better single run", "graft", "better_single"),
    ("grafting in training vs A=0 (same runs, alpha 0.5)", "graft", "graft_a0"),
    ("A=0 (average every epoch) vs the better single run", "graft_a0", "better_single"),
]


# ---------------------------------------------------------------------------------------------
# Statistics and tables

# two-sided 5 % critical values of Student's t by degrees of freedom (a df between two entries
# uses the smaller df's value, which is the more conservative)
T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
          9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}  # fmt: skip


def t_critical(df: int) -> float:
    return T_CRIT[max(k for k in T_CRIT if k <= df)] if df < 120 else 1.960


@dataclasses.dataclass(frozen=True)
class Paired:
    """Per-seed differences method - control: accuracy in points, loss in nats."""

    n: int
    mean: float
    std: float
    t: float | None  # mean / (std / sqrt(n)); None with fewer than 2 seeds
    wins: int
    ties: int
    loss_mean: float
    loss_std: float


def paired(method: list[Result], control: list[Result]) -> Paired:
    d_acc = [100 * (m[1] - c[1]) for m, c in zip(method, control, strict=True)]
    d_loss = [m[0] - c[0] for m, c in zip(method, control, strict=True)]
    n = len(d_acc)
    mean = statistics.fmean(d_acc)
    std = statistics.stdev(d_acc) if n > 1 else 0.0
    t = None
    if n > 1:
        t = (
            mean / (std / math.sqrt(n))
            if std > 0
            else (0.0 if mean == 0 else math.copysign(math.inf, mean))
        )
    return Paired(
        n=n,
        mean=mean,
        std=std,
        t=t,
        wins=sum(d > 0 for d in d_acc),
        ties=sum(d == 0 for d in d_acc),
        loss_mean=statistics.fmean(d_loss),
        loss_std=statistics.stdev(d_loss) if n > 1 else 0.0,
    )


def reading(p: Paired) -> str:
    """In words: within noise unless |t| passes the two-sided 5 % level."""
    if p.t is None:
        return "one seed: no test"
    if abs(p.t) < t_critical(p.n - 1):
        return "within noise"
    return "better" if p.mean > 0 else "worse"


def add_better_single(results: dict[str, list[Result | str]]) -> None:
    """Per seed, the graft partner with the higher test accuracy (a control favoured by it)."""
    pairs = zip(results.get("sgd_cosine", []), results.get("sgd_low_lr", []), strict=True)
    results["better_single"] = [
        max(a, b, key=lambda r: r[1]) if not isinstance(a, str) and not isinstance(b, str) else a
        for a, b in pairs
    ]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def runs_table(results: dict[str, list[Result | str]]) -> str:
    lines = ["| run | test accuracy (%) | test loss |", "|---|---|---|"]
    for key, label in ROWS.items():
        outcomes = results.get(key, [])
        failed = [o for o in outcomes if isinstance(o, str)]
        if not outcomes or failed:
            lines.append(f"| {label} | n/a | {failed[0] if failed else 'not run'} |")
            continue
        acc = [100 * o[1] for o in outcomes]  # type: ignore[index]
        loss = [o[0] for o in outcomes]  # type: ignore[index]
        lines.append(
            f"| {label} | {statistics.fmean(acc):.2f} ± {_std(acc):.2f} "
            f"| {statistics.fmean(loss):.4f} ± {_std(loss):.4f} |"
        )
    return "\n".join(lines)


def paired_table(results: dict[str, list[Result | str]]) -> str:
    lines = [
        "| comparison (method - control) | Δ accuracy, points | t | wins/ties/losses "
        "| Δ test loss | reading |",
        "|---|---|---|---|---|---|",
    ]
    for label, method, control in COMPARISONS:
        m, c = results.get(method, []), results.get(control, [])
        if not m or len(m) != len(c) or any(isinstance(o, str) for o in (*m, *c)):
            lines.append(f"| {label} | n/a | | | | a row failed or did not run |")
            continue
        p = paired(m, c)  # type: ignore[arg-type]
        t = "—" if p.t is None else f"{p.t:+.2f}"
        lines.append(
            f"| {label} | {p.mean:+.2f} ± {p.std:.2f} | {t} | {p.wins}/{p.ties}/"
            f"{p.n - p.wins - p.ties} | {p.loss_mean:+.4f} ± {p.loss_std:.4f} | {reading(p)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running it


def run_task(task: tuple[int, str, Size, Path]) -> tuple[int, str, Rows, float]:
    """One experiment for one seed, in a worker process with one torch thread."""
    seed, name, size, work_root = task
    torch.set_num_threads(1)  # a 31k-weight model: more threads cost more than they give
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    work = work_root / f"seed{seed}" / name
    work.mkdir(parents=True, exist_ok=True)
    rows = EXPERIMENTS[name](seed, size, make_split(seed, size.n_train), work)
    shutil.rmtree(work, ignore_errors=True)
    return seed, name, rows, time.perf_counter() - started


def run_all(seeds: int, size: Size, jobs: int, work_root: Path) -> dict[str, list[Result | str]]:
    tasks = [(s, n, size, work_root) for s in range(seeds) for n in EXPERIMENTS]
    tasks.sort(key=lambda t: -EXPERIMENT_COST.get(t[1], 1.0))
    by_seed: dict[int, Rows] = {s: {} for s in range(seeds)}
    if jobs == 1:
        outcomes = map(run_task, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        outcomes = pool.imap_unordered(run_task, tasks)
    try:
        for seed, name, rows, seconds in outcomes:
            by_seed[seed].update(rows)
            shown = ", ".join(
                f"{k} {v if isinstance(v, str) else f'{100 * v[1]:.2f} %'}" for k, v in rows.items()
            )
            log(f"seed {seed} {name}: {shown} ({seconds:.1f} s)")
    finally:
        if jobs != 1:
            pool.close()
            pool.join()
    results: dict[str, list[Result | str]] = {}
    for s in range(seeds):
        for key in ROWS:
            if key in by_seed[s]:
                results.setdefault(key, []).append(by_seed[s][key])
    add_better_single(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)"
    )
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="also write the per-seed numbers here")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL

    work_root = args.workdir or Path(tempfile.mkdtemp(prefix="wa-evidence-"))
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        results = run_all(args.seeds, size, max(1, args.jobs), work_root)
    finally:
        if args.workdir is None:
            shutil.rmtree(work_root, ignore_errors=True)
    n_test = 1797 - size.n_train
    user, system = (now - then for now, then in zip(_cpu_seconds(), cpu_started, strict=True))
    print(paired_table(results))
    print()
    print(runs_table(results))
    print(
        f"\n{args.seeds} seed(s); {size.n_train} training images, {round(NOISE * 100)} % of labels "
        f"wrong; {n_test} clean test images (one image = {100 / n_test:.3f} points); "
        f"{size.epochs} epochs. 'within noise': |t| < {t_critical(max(1, args.seeds - 1)):.3f} "
        f"(two-sided 5 %, {max(1, args.seeds - 1)} df). {time.perf_counter() - started:.0f} s "
        f"wall, {user:.0f} s user + {system:.0f} s system CPU, {args.jobs} job(s) on "
        f"{os.cpu_count()} CPUs."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and its finished children (workers, wa runs)."""
    t = os.times()
    return t.user + t.children_user, t.system + t.children_system


if __name__ == "__main__":
    sys.exit(main())
