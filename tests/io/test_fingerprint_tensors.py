"""Tensor fingerprints of checkpoints: a sample nominates, only a full comparison decides.

Files are written with safetensors' own ``save_file``; the expected answers follow from the
tensors the test wrote (which bytes differ, and where).
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from wa_cli.io.fingerprint import tensor_sample, tensors_equal
from wa_cli.io.reader import open_checkpoint

N = 1 << 12  # 16 KiB of float32: the sample is the first and last 256 bytes of each tensor


def _open(tmp_path, name, state):
    save_file(state, str(tmp_path / name), metadata={"step": "3"})
    return open_checkpoint(tmp_path / name)


def test_the_same_tensors_match_in_sample_and_in_full(tmp_path):
    state = {"w": torch.randn(N), "b": torch.arange(3.0), "e": torch.empty(0)}
    a, b = _open(tmp_path, "a.safetensors", state), _open(tmp_path, "b.safetensors", state)
    assert tensor_sample(a) == tensor_sample(b)
    assert tensors_equal(a, b)


def test_a_middle_byte_passes_the_sample_but_not_the_full_comparison(tmp_path):
    w = torch.randn(N)
    other = w.clone()
    other[N // 2] += 1  # far from the 256 sampled bytes at either end
    a = _open(tmp_path, "a.safetensors", {"w": w})
    b = _open(tmp_path, "b.safetensors", {"w": other})
    assert tensor_sample(a) == tensor_sample(b)
    assert not tensors_equal(a, b)


def test_keys_dtypes_and_shapes_tell_checkpoints_apart(tmp_path):
    w = torch.zeros(4, 4)
    a = _open(tmp_path, "a.safetensors", {"w": w})
    for name, state in {
        "key": {"v": w},
        "dtype": {"w": w.double()},
        "shape": {"w": w.reshape(16)},
    }.items():
        b = _open(tmp_path, f"{name}.safetensors", state)
        assert tensor_sample(a) != tensor_sample(b), name
        assert not tensors_equal(a, b), name
