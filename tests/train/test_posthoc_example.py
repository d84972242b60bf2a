"""examples/posthoc_ema.py with small settings: PowerEMA snapshots, then σ_rel chosen after."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import posthoc_ema  # noqa: E402


def test_snapshot_widths_reconstruct_exactly_and_others_within_their_fit(tmp_path):
    raw, rows = posthoc_ema.run(epochs=2, every=45, out=tmp_path, grid=(0.05, 0.08, 0.10))
    by_sigma = {r.sigma_rel: r for r in rows}
    # A tracked width at the last snapshot step is that snapshot itself.
    assert by_sigma[0.05].fit_error < 1e-6 and by_sigma[0.10].fit_error < 1e-6
    last = max(
        tmp_path.glob("snapshots/ema_0.1_*.safetensors"), key=lambda p: int(p.stem.split("_")[-1])
    )
    rebuilt, snapshot = load_file(tmp_path / "ema_0.1.safetensors"), load_file(last)
    for key, value in snapshot.items():
        torch.testing.assert_close(rebuilt[key], value, rtol=1e-6, atol=1e-6)
    assert 0 < by_sigma[0.08].fit_error < 0.05
    assert all(0.5 < r.accuracy <= 1 for r in rows) and 0.5 < raw <= 1
