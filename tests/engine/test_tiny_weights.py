"""Tiny weights: ``--weights 1e-30,1e-30`` must not flush the products to zero (issue 22, item 6).

The weights are normal float32 numbers, but 1e-30 x 1e-20 underflows a float32 accumulator; the
engine scales the largest weight into [1, 2) by a power of two (exact, no ratio changes). Oracle:
the float64 weighted mean of the bf16 values, rounded once to bf16.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_wa

VALUES = [1e-20, 1e-38, 1.0]


def _oracle(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    mean = sum(w / total * t.double() for w, t in zip(weights, tensors, strict=True))
    return mean.to(torch.bfloat16)


@pytest.mark.parametrize(
    ("second", "weights"),
    [
        ([1e-20, 1e-38, 1.0], "1e-30,1e-30"),  # the case: same values, two files
        ([3e-20, 5e-38, 2.0], "1e-30,1e-30"),
        ([3e-20, 5e-38, 2.0], "1e-30,3e-30"),
        ([3e-20, 5e-38, 2.0], "1e-200,3e-200"),
    ],
)
def test_tiny_weights_do_not_flush_small_values_to_zero(tmp_path, capsys, second, weights):
    a = torch.tensor(VALUES, dtype=torch.bfloat16)
    b = torch.tensor(second, dtype=torch.bfloat16)
    save_file({"w": a}, tmp_path / "a.safetensors", metadata={"run": "a"})
    save_file({"w": b}, tmp_path / "b.safetensors", metadata={"run": "b"})
    out = tmp_path / "out.safetensors"
    r = run_wa(
        ["average", tmp_path / "a.safetensors", tmp_path / "b.safetensors",
         "--weights", weights, "-o", out],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    got = load_file(out)["w"]
    want = _oracle([a, b], [float(x) for x in weights.split(",")])
    assert (want[:2] != 0).all()  # the oracle itself is not zero: the test can fail
    assert torch.equal(got, want), (got.tolist(), want.tolist())
