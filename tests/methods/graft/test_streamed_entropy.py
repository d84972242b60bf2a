"""Entropy streamed from a checkpoint, chunk by chunk: the same counts as the whole-tensor oracles.

Oracles: the float64 numpy formula (closed rule), a port of the reference loop (half-open rule),
float64 numpy L1 norms; float8 and 0-size tensors through the CLI without a traceback; the peak
RSS of inspect-entropy on a 500 MB tensor (slow).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import REPO, run_wa
from tests.methods.graft.test_entropy import numpy_counts, reference_counts, reference_entropy
from wa_cli.io.reader import open_checkpoint
from wa_cli.methods.graft import entropy as entropy_mod
from wa_cli.methods.graft.entropy import (
    checkpoint_measure,
    entropy_from_counts,
    tensor_entropy,
)

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05).to(dtype)


@pytest.fixture(params=["direct", "one chunk", "many chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    from wa_cli.methods.graft import histogram

    if request.param == "direct":
        return "direct"  # small tensors: the formulas on the elements themselves
    monkeypatch.setattr(histogram, "DIRECT_ELEMENTS", 0)  # the large-tensor paths
    if request.param == "many chunks":
        # 700-element chunks and no whole-tensor copy: rows span chunks, two passes re-read.
        monkeypatch.setattr(entropy_mod, "_CHUNK", 700)
        monkeypatch.setattr(entropy_mod, "_KEEP_BYTES", 0)
    return str(request.param)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "reference"])
def test_streamed_counts_equal_the_oracles(tmp_path, chunking, dtype, half_open):
    t = sample(dtype, (6, 1100))
    save_file({"w": t}, tmp_path / "a.safetensors")
    m = checkpoint_measure(
        open_checkpoint(tmp_path / "a.safetensors"), "w", half_open=half_open, l1_norms=True
    )
    x = t.to(torch.float64).numpy()
    if half_open:
        expected = reference_entropy(t.float() if dtype.itemsize == 1 else t)
    else:
        expected = entropy_from_counts(numpy_counts(x, 10, False), x.size)
    assert m.entropy == expected
    assert m.entropy == tensor_entropy(t, half_open=half_open)
    norms = np.abs(x).reshape(6, -1).sum(axis=1)
    np.testing.assert_allclose(m.l1_norms.numpy(), norms, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_edge_values_streamed_land_where_the_rule_says(tmp_path, chunking, dtype):
    # Values on and next to every float64 edge, repeated across chunk boundaries.
    lo, hi = -1.3, 2.7
    step = (hi - lo) / 10
    edges = torch.tensor([lo + j * step for j in range(11)], dtype=torch.float64).to(dtype)
    near = [edges]
    for direction in (-math.inf, math.inf):
        v = edges
        for _ in range(3):
            v = torch.nextafter(v.float(), torch.full_like(v.float(), direction)).to(dtype)
            near.append(v)
    t = torch.cat(near * 60).clamp(edges[0], edges[-1])
    save_file({"w": t}, tmp_path / "e.safetensors")
    ckpt = open_checkpoint(tmp_path / "e.safetensors")
    closed = checkpoint_measure(ckpt, "w").entropy
    x = t.to(torch.float64).numpy()
    assert closed == entropy_from_counts(numpy_counts(x, 10, False), x.size)
    paper = checkpoint_measure(ckpt, "w", half_open=True).entropy
    assert paper == reference_entropy(t)
    assert entropy_mod.bin_counts(t, half_open=True) == reference_counts(t)


def test_zero_size_tensors(tmp_path, chunking):
    save_file(
        {"a": torch.empty(0, 3), "b": torch.empty(3, 0), "c": torch.empty(0)},
        tmp_path / "z.safetensors",
    )
    ckpt = open_checkpoint(tmp_path / "z.safetensors")
    a = checkpoint_measure(ckpt, "a", l1_norms=True)
    assert a.entropy == 0.0 and a.l1_norms.numel() == 0
    b = checkpoint_measure(ckpt, "b", l1_norms=True, half_open=True)
    assert b.entropy == 0.0 and b.l1_norms.tolist() == [0.0, 0.0, 0.0]
    assert checkpoint_measure(ckpt, "c").entropy == 0.0
    assert entropy_mod.filter_l1_norms(torch.empty(0, 3)).numel() == 0


def test_float8_and_zero_size_tensors_through_the_cli(tmp_path, capsys):
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        state = {
            "conv.weight": torch.randn(8, 3, 3, 3, generator=g).to(torch.float8_e4m3fn),
            "fc.weight": torch.randn(4, 4, generator=g).to(torch.float8_e5m2),
            "empty.weight": torch.empty(0, 3),
        }
        save_file(state, tmp_path / f"m{i}.safetensors")
    a, b = tmp_path / "m0.safetensors", tmp_path / "m1.safetensors"
    result = run_wa(["inspect-entropy", a, b, "--json"], capsys)
    assert result.code == 0, result.stderr
    rows = {r["key"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["empty.weight"]["entropy"] == [0.0, 0.0]
    x = state["fc.weight"].to(torch.float64).numpy()
    assert rows["fc.weight"]["entropy"][1] == entropy_from_counts(numpy_counts(x, 10, False), 16)
    for rule in ("module", "paper"):
        out = tmp_path / f"g-{rule}.safetensors"
        result = run_wa(["graft", a, b, "-o", out, "--rule", rule, "-q"], capsys)
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_inspect_entropy_of_a_500_mb_tensor_stays_under_300_mb(tmp_path):
    # bf16 (read once) and float32 (min/max, then histogram: read twice) of 500 MB each.
    for dtype, name in [(torch.bfloat16, "bf16"), (torch.float32, "fp32")]:
        n = 500 * 2**20 // dtype.itemsize
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": torch.randn(n // 4096, 4096).to(dtype)}, path)
        code = (
            "import resource, subprocess, sys; "
            "p = subprocess.run([sys.executable, '-m', 'wa_cli', 'inspect-entropy', sys.argv[1], "
            "'--json'], capture_output=True); "
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
        ).stdout.split()
        assert out[0] == "0"
        assert int(out[1]) / 1024 < 300, f"{name}: {int(out[1]) / 1024:.0f} MB"
        path.unlink()
