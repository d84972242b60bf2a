"""The naive script for ``.pt`` inputs: ``torch.load`` each file whole, add, save.

Floating tensors are added into float32 accumulators; non-float tensors are taken from the last
input (as ``wa``'s default); divide by N, cast back, ``save_file``.

Usage: python benchmarks/_naive_pt.py OUT_FILE INPUT...
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file


def main(argv: list[str]) -> int:
    out, inputs = argv[0], argv[1:]
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in inputs:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in state.items():
            dtypes[key] = value.dtype
            if not value.is_floating_point():
                acc[key] = value
            elif key in acc:
                acc[key] += value
            else:
                acc[key] = value.to(torch.float32, copy=True)
        del state
    n = len(inputs)
    result = {
        key: (value / n).to(dtypes[key]) if value.is_floating_point() else value
        for key, value in acc.items()
    }
    save_file(result, out, metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
