"""open_data_tensor: any row slice of a data file equals the rows the library that wrote it saved.

The files are written by safetensors, torch.save and numpy themselves; the expected rows are the
arrays handed to them, not anything wa read. The last test holds issue 19's "bytes only in io/"
for data files: no module outside ``wa_cli/io`` loads a pickle or an array itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wa_cli
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.data_files import open_data_tensor

ROWS = np.arange(7 * 2, dtype=np.float64).reshape(7, 2) / 3


def _write(path: Path) -> None:
    rows = torch.from_numpy(ROWS)
    if path.suffix == ".safetensors":
        save_file({"inputs": rows, "labels": torch.arange(7)}, path)
    elif path.suffix == ".pt":
        torch.save({"inputs": rows, "labels": torch.arange(7)}, path)
    elif path.suffix == ".npy":
        np.save(path, ROWS)
    else:
        np.savez(path, inputs=ROWS, labels=np.arange(7))


@pytest.mark.parametrize("name", ["d.safetensors", "d.pt", "d.npy", "d.npz"])
def test_rows_come_back_as_saved(tmp_path, name) -> None:
    path = tmp_path / name
    _write(path)
    key, shape, open_slicer = open_data_tensor(path, None)
    assert key == ("(array)" if name.endswith(".npy") else "inputs")
    assert shape == (7, 2)
    for _ in range(2):  # each opener call is a fresh pass over the same rows
        slicer = open_slicer()
        for start, stop in [(0, 3), (3, 6), (6, 7)]:
            assert np.array_equal(slicer(start, stop).numpy(), ROWS[start:stop])


def test_a_tensor_without_rows_is_refused(tmp_path) -> None:
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 3)))
    with pytest.raises(WaError) as info:
        open_data_tensor(path, None)
    assert info.value.code == ExitCode.BAD_INPUT
    assert "expected at least one sample along dimension 0" in str(info.value)


_READERS = {"load_pickle", "SafetensorsFile", "safe_open"}


def test_no_data_bytes_are_read_outside_io() -> None:
    """np.load, torch.load, load_pickle and safetensors' own opener appear only under io/."""
    root = Path(wa_cli.__file__).parent
    found = []
    for source in sorted(root.rglob("*.py")):
        if source.relative_to(root).parts[0] == "io":
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func, "value", None)
            owner_name = getattr(owner, "id", "")
            if name in _READERS or (name == "load" and owner_name in {"np", "numpy", "torch"}):
                found.append(f"{source.relative_to(root)}:{node.lineno} {name}")
    assert not found
