"""The sample network and data: a small BatchNorm CNN on scikit-learn's 8x8 ``digits`` images.

Imports only torch and safetensors; the data lives in ``digits.safetensors`` next to this file
(1437 train / 360 test images, a fixed stratified split), so ``wa bn-recalibrate`` can use it:

    wa bn-recalibrate swa.safetensors -o swa_bn.safetensors \
        --model sample_checkpoints/model.py:build --data sample_checkpoints/model.py:train_loader
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DATA = Path(__file__).resolve().with_name("digits.safetensors")


class DigitsNet(nn.Module):
    """conv1-bn1-relu-pool, conv2-bn2-relu-pool, fc: 8x8 -> 10 classes (about 9.5k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)  # 8x8 -> 4x4
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)  # 4x4 -> 2x2
        return self.fc(x.flatten(1))


def build() -> nn.Module:
    """A fresh DigitsNet (weights from torch's current RNG state)."""
    return DigitsNet()


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images, float32 (N, 1, 8, 8) scaled to [0, 1], and int64 labels of a split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_file(DATA)
    return data[f"{split}_images"].float().div_(16.0), data[f"{split}_labels"]


def train_loader(batch_size: int = 64) -> DataLoader:
    """The training split in a fixed order (what BatchNorm re-estimation needs)."""
    return DataLoader(TensorDataset(*load_digits("train")), batch_size=batch_size, shuffle=False)


def test_loader(batch_size: int = 360) -> DataLoader:
    """The held-out split."""
    return DataLoader(TensorDataset(*load_digits("test")), batch_size=batch_size, shuffle=False)
