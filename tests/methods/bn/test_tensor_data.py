"""tensor_file_batches: every format gives back the stored rows, in order, in batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import update_bn

from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.bn.recalibrate import recalibrate_bn
from wa_cli.methods.bn.tensor_data import tensor_file_batches

ROWS = torch.arange(11 * 3, dtype=torch.float32).reshape(11, 3)
LABELS = torch.arange(11)


def check_batches(batches, expected: torch.Tensor, batch_size: int) -> None:
    """Whole batches in order, then the rest, unless the rest is a single row after a batch."""
    parts = list(batches)
    full, rest = divmod(len(expected), batch_size)
    kept_rest = rest if rest > 1 or (rest == 1 and full == 0) else 0
    assert [len(p) for p in parts] == [batch_size] * full + ([kept_rest] if kept_rest else [])
    assert torch.equal(torch.cat(parts), expected[: full * batch_size + kept_rest])
    assert len(batches) == len(parts)
    assert batches.dropped == len(expected) - full * batch_size - kept_rest


def test_safetensors_single_tensor_and_reiterable(tmp_path) -> None:
    path = tmp_path / "data.safetensors"
    save_file({"anything": ROWS}, path)
    batches = tensor_file_batches(path, batch_size=4)
    check_batches(batches, ROWS, 4)
    check_batches(batches, ROWS, 4)  # a second pass reads the same rows
    assert (batches.key, batches.shape, batches.samples) == ("anything", (11, 3), 11)


def test_safetensors_picks_inputs_by_name(tmp_path) -> None:
    path = tmp_path / "data.safetensors"
    save_file({"x": ROWS, "y": LABELS}, path)
    check_batches(tensor_file_batches(path, batch_size=5), ROWS, 5)
    check_batches(tensor_file_batches(path, batch_size=5, input_key="y"), LABELS, 5)


def test_ambiguous_and_missing_keys(tmp_path) -> None:
    path = tmp_path / "data.safetensors"
    save_file({"a": ROWS, "b": ROWS.clone()}, path)
    with pytest.raises(WaError) as info:
        tensor_file_batches(path, batch_size=2)
    assert info.value.message == (
        f"data file '{path}' holds 2 tensors ('a', 'b'): name the model's input with input_key"
    )
    assert info.value.render(spell).endswith("with --input-key")  # the CLI's spelling
    with pytest.raises(WaError, match=r"has no tensor 'c' \(available: 'a', 'b'\)"):
        tensor_file_batches(path, batch_size=2, input_key="c")


@pytest.mark.parametrize(
    ("payload", "key", "expected"),
    [
        (ROWS, None, ROWS),
        ({"images": ROWS, "labels": LABELS, "epoch": 3}, None, ROWS),
        ((ROWS, LABELS), "0", ROWS),
        ([ROWS, LABELS], "1", LABELS),
    ],
    ids=["tensor", "dict", "tuple", "list"],
)
def test_pickle_forms(tmp_path, payload, key, expected) -> None:
    path = tmp_path / "data.pt"
    torch.save(payload, path)
    check_batches(tensor_file_batches(path, batch_size=3, input_key=key), expected, 3)


def test_pickle_is_loaded_weights_only(tmp_path) -> None:
    path = tmp_path / "data.pt"
    torch.save({"x": ROWS, "module": nn.Linear(2, 2)}, path)  # needs full unpickling
    with pytest.raises(
        WaError, match=r"data\.pt' needs the global\(s\) 'torch\.nn\.modules\.linear\.Linear'"
    ) as info:
        tensor_file_batches(path, batch_size=3)
    assert info.value.code == ExitCode.BAD_INPUT


def test_numpy_with_dtype_cast(tmp_path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, ROWS.double().numpy())
    batches = tensor_file_batches(path, batch_size=4, dtype=torch.float32)
    assert {b.dtype for b in batches} == {torch.float32}
    check_batches(batches, ROWS, 4)
    with pytest.raises(WaError, match="holds one array: leave out input_key"):
        tensor_file_batches(path, batch_size=4, input_key="x")


def test_npz(tmp_path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=ROWS.numpy(), y=LABELS.numpy())
    check_batches(tensor_file_batches(path, batch_size=6), ROWS, 6)


def test_drop_last(tmp_path) -> None:
    path = tmp_path / "data.safetensors"
    save_file({"x": ROWS}, path)
    batches = tensor_file_batches(path, batch_size=5, drop_last=True)
    assert [len(b) for b in batches] == [5, 5]
    assert torch.equal(torch.cat(list(batches)), ROWS[:10])
    with pytest.raises(WaError, match="holds 11 samples, fewer than one batch of 12"):
        tensor_file_batches(path, batch_size=12, drop_last=True)


@pytest.mark.parametrize("size", [0, -3, True, 2.5, "8"])
def test_bad_batch_size(tmp_path, size) -> None:
    with pytest.raises(WaError, match=r"batch size must be a positive integer, got "):
        tensor_file_batches(tmp_path / "data.safetensors", batch_size=size)


def test_safetensors_batches_are_one_positional_read_each(tmp_path, monkeypatch) -> None:
    from safetensors import safe_open

    from wa_cli.io.checkpoint import PositionalFile

    data = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    path = tmp_path / "data.safetensors"
    save_file({"labels": torch.arange(10), "inputs": data}, path)
    reads = []
    real = PositionalFile.read

    def counted(self, out, position, key):
        reads.append((key, out.numel()))
        return real(self, out, position, key)

    monkeypatch.setattr(PositionalFile, "read", counted)
    batches = tensor_file_batches(path, batch_size=4)
    parts = list(batches)
    with safe_open(str(path), framework="pt") as f:  # the library's own slicing, the oracle
        sliced = f.get_slice("inputs")
        expected = [sliced[0:4], sliced[4:8], sliced[8:10]]
    assert len(parts) == 3
    for got, want in zip(parts, expected, strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    row = 2 * 3 * 2  # bytes per row of bfloat16 (2, 3)
    assert reads == [("inputs", 4 * row), ("inputs", 4 * row), ("inputs", 2 * row)]


def test_file_errors(tmp_path) -> None:
    with pytest.raises(WaError, match=r"data file '.*none\.safetensors' does not exist"):
        tensor_file_batches(tmp_path / "none.safetensors", batch_size=2)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(WaError, match=r"has suffix '\.csv', expected one of '\.safetensors'"):
        tensor_file_batches(tmp_path / "data.csv", batch_size=2)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(WaError, match=r"cannot read data file '.*bad\.safetensors'") as info:
        tensor_file_batches(tmp_path / "bad.safetensors", batch_size=2)
    assert info.value.code == ExitCode.BAD_INPUT
    save_file({"x": torch.tensor(1.0)}, tmp_path / "scalar.safetensors")
    with pytest.raises(WaError, match=r"has shape \(\): expected at least one sample"):
        tensor_file_batches(tmp_path / "scalar.safetensors", batch_size=2)


def test_feeds_recalibrate_bn_like_a_loader(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(23, 4, generator=generator) * 3 + 2
    path = tmp_path / "calib.safetensors"
    save_file({"x": data, "y": torch.zeros(23)}, path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    reference = copy.deepcopy(model)
    update_bn(list(data.split(8)), reference)
    report = recalibrate_bn(model, tensor_file_batches(path, batch_size=8))
    assert (report.batches, report.samples) == (3, 23)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=1e-6)


def test_a_last_batch_of_one_row_is_left_out_by_default(tmp_path) -> None:
    path = tmp_path / "data.safetensors"
    save_file({"x": ROWS}, path)  # 11 rows
    batches = tensor_file_batches(path, batch_size=5)
    assert [len(b) for b in batches] == [5, 5] and batches.dropped == 1
    assert batches.note.startswith(f"left out the last row of data file '{path}': 11 rows")
    kept = tensor_file_batches(path, batch_size=5, drop_last=False)
    assert [len(b) for b in kept] == [5, 5, 1] and kept.dropped == 0 and kept.note is None
    assert torch.equal(torch.cat(list(kept)), ROWS)
    assert tensor_file_batches(path, batch_size=4).note is None  # a last batch of 3 stays
    every = tensor_file_batches(path, batch_size=4, drop_last=True)
    assert every.dropped == 3 and "left out the last 3 of 11 rows" in every.note
    save_file({"x": ROWS[:1]}, tmp_path / "one.safetensors")  # a single row is all there is
    assert [len(b) for b in tensor_file_batches(tmp_path / "one.safetensors", batch_size=4)] == [1]
