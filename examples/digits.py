"""Train the sample CNN on digits with the ``wa_cli.train`` helpers, for the sample trajectory
(``sample_checkpoints/generate.py``); ``examples/evidence.py`` has its own harder task.

Runs are deterministic for a given configuration: seeded weights and data order, one thread,
``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wa_cli.train.centralization import enable_gradient_centralization  # noqa: E402
from wa_cli.train.lookahead import Lookahead  # noqa: E402
from wa_cli.train.trajectory import TrajectoryWriter, save_checkpoint  # noqa: E402
from wa_cli.train.warmup import linear_warmup, swa_schedule  # noqa: E402

MODEL_FILE = ROOT / "sample_checkpoints" / "model.py"


def _load_sample_module():
    # model.py is loaded by path, the way `wa --model sample_checkpoints/model.py:build` loads it
    spec = importlib.util.spec_from_file_location("wa_sample_model", MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sample = _load_sample_module()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run. Epoch counts are 1-based: epoch e ends after e passes over the data."""

    seed: int = 0
    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    # "swa": hold lr until 0.5 swa_start, decay linearly to swa_lr by 0.9 swa_start, hold (SWA)
    # "cosine": cosine to 0 after `warmup_epochs` of linear warmup
    schedule: Literal["swa", "cosine"] = "swa"
    swa_start: int = 20
    swa_lr: float = 0.01
    warmup_epochs: int = 0
    lookahead: bool = False
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    gc: bool = False
    save_from: int | None = None  # first epoch saved to `save_dir` (default: swa_start)


def configure_determinism() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a 10k-weight model: threads cost more than they give


def evaluate(model: nn.Module, split: str = "test") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on a split."""
    x, y = sample.load_digits(split)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float(
        (logits.argmax(1) == y).float().mean()
    )


def load_model(path: str | Path) -> nn.Module:
    """A DigitsNet holding the weights (and BN buffers) of a safetensors checkpoint."""
    model = sample.build()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


class Run:
    """One training run, advanced an epoch at a time (so a caller can graft between epochs)."""

    def __init__(self, cfg: RunConfig) -> None:
        configure_determinism()
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = sample.build()
        x, y = sample.load_digits("train")
        self.loader = DataLoader(
            TensorDataset(x, y),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(1000 + cfg.seed),
        )
        steps_per_epoch = len(self.loader)
        total = cfg.epochs * steps_per_epoch
        inner = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        if cfg.gc:
            # fold_weight_decay: centralize grad + wd * w, as the GC paper's SGD does
            enable_gradient_centralization(inner, fold_weight_decay=True)
        if cfg.schedule == "swa":
            self.scheduler = swa_schedule(
                inner,
                swa_lr=cfg.swa_lr,
                hold_steps=int(0.5 * cfg.swa_start * steps_per_epoch),
                anneal_steps=int(0.4 * cfg.swa_start * steps_per_epoch),
            )
        else:
            self.scheduler = linear_warmup(
                inner, cfg.warmup_epochs * steps_per_epoch, total_steps=total, decay="cosine"
            )
        self.optimizer: torch.optim.Optimizer = inner
        if cfg.lookahead:
            self.optimizer = Lookahead(inner, k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)
        self.step = 0
        self.epoch = 0

    def train_epoch(self) -> int:
        """One pass over the training data; returns the (1-based) epoch just finished."""
        self.model.train()
        for xb, yb in self.loader:
            self.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(xb), yb).backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
        self.epoch += 1
        return self.epoch

    def eval_model(self) -> nn.Module:
        """The weights to evaluate and save: the model, or with Lookahead its slow weights.

        Lookahead's result is its slow weights (Zhang et al. 2019). At an epoch end the fast
        weights equal them only when the steps so far are a multiple of k, so they are copied
        explicitly into a copy of the model (BN buffers stay those of the fast weights).
        """
        if not isinstance(self.optimizer, Lookahead):
            return self.model
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for fast, slow in zip(self.model.parameters(), model.parameters(), strict=True):
                slow.copy_(self.optimizer.state[fast]["slow_param"])
        return model


def train(cfg: RunConfig, save_dir: str | Path | None = None, force: bool = False) -> nn.Module:
    """Train one run; if ``save_dir`` is given, save one checkpoint per epoch from ``save_from``."""
    run = Run(cfg)
    writer = None
    if save_dir is not None:
        start = cfg.swa_start if cfg.save_from is None else cfg.save_from
        writer = TrajectoryWriter(save_dir, every=1, unit="epoch", start=start, force=force)
    while run.epoch < cfg.epochs:
        epoch = run.train_epoch()
        if writer is not None and writer.due(run.step, epoch):
            model = run.eval_model()
            val_loss, val_acc = evaluate(model)
            writer.save(model, run.step, epoch, {"val_loss": val_loss, "val_acc": val_acc})
    return run.eval_model()


def save_final(model: nn.Module, path: str | Path) -> Path:
    """Save a trained model (as the last checkpoint of a run would be), replacing ``path``."""
    return save_checkpoint(path, model, {"format": "pt"}, force=True)
