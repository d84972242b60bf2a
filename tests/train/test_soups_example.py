"""examples/soups.py with small settings: fine-tunes, the uniform and the greedy soup."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import soups  # noqa: E402


def test_one_seed_runs_and_the_uniform_soup_is_the_mean_of_the_fine_tunes(tmp_path):
    row = soups.run_seed(0, (0.01, 0.05), 1, tmp_path)
    assert row.of == 4 and 1 <= row.kept <= 4
    assert all(0.5 < a <= 1 for a in (row.best_single, row.uniform, row.greedy))
    fine_tunes = sorted((tmp_path / "seed0").glob("ft_*.safetensors"))
    uniform = load_file(tmp_path / "seed0" / "uniform.safetensors")
    mean = sum(load_file(p)["fc.weight"].double() for p in fine_tunes) / len(fine_tunes)
    torch.testing.assert_close(uniform["fc.weight"], mean.float())
