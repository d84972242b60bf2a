"""Trajectory writer: files safetensors can read, with their metadata, pruned and atomic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from wa_cli.errors import ExitCode, WaError
from wa_cli.io import writer
from wa_cli.train import trajectory
from wa_cli.train.trajectory import TrajectoryWriter, checkpoint_metadata


def conv_bn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    model.train()
    model(torch.randn(5, 1, 6, 6))  # real BN statistics and num_batches_tracked = 1
    return model


def test_files_load_with_safe_open_and_carry_their_metadata(tmp_path: Path) -> None:
    model = conv_bn()
    writer = TrajectoryWriter(tmp_path / "run", every=1, unit="epoch")
    path = writer.maybe_save(model, step=120, epoch=3, metrics={"val_loss": 0.1 + 0.2, "acc": 0.5})
    assert path == tmp_path / "run" / "ckpt_120.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta == {
            "format": "pt",
            "step": "120",
            "epoch": "3",
            "val_loss": "0.30000000000000004",
            "acc": "0.5",
        }
        assert float(meta["val_loss"]) == 0.1 + 0.2  # repr round-trips exactly
        state = model.state_dict()
        assert set(f.keys()) == set(state)
        for key, value in state.items():
            assert torch.equal(f.get_tensor(key), value), key
        assert f.get_tensor("1.num_batches_tracked").dtype == torch.int64
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt_120.safetensors"]


def test_period_start_and_unit(tmp_path: Path) -> None:
    by_step = TrajectoryWriter(tmp_path / "s", every=50, unit="step", start=100)
    saved = [s for s in range(0, 301, 25) if by_step.maybe_save(conv_bn(), step=s)]
    assert saved == [100, 150, 200, 250, 300]
    by_epoch = TrajectoryWriter(tmp_path / "e", every=2, unit="epoch", start=3)
    saved = [e for e in range(1, 9) if by_epoch.maybe_save(conv_bn(), step=10 * e, epoch=e)]
    assert saved == [3, 5, 7]


def test_keep_last_removes_the_oldest_files(tmp_path: Path) -> None:
    writer = TrajectoryWriter(tmp_path, every=1, unit="step", keep_last=2)
    model = conv_bn()
    for step in (5, 10, 15, 100):
        writer.maybe_save(model, step=step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_100.safetensors",
        "ckpt_15.safetensors",
    ]
    # a resumed run counts the files already there
    again = TrajectoryWriter(tmp_path, every=1, unit="step", keep_last=2)
    again.maybe_save(model, step=105)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_100.safetensors",
        "ckpt_105.safetensors",
    ]


def test_existing_file_is_refused_without_force(tmp_path: Path) -> None:
    model = conv_bn()
    TrajectoryWriter(tmp_path, unit="step").save(model, step=7)
    with pytest.raises(WaError, match="already exists") as e:
        TrajectoryWriter(tmp_path, unit="step").save(model, step=7)
    assert e.value.code == ExitCode.OUTPUT
    TrajectoryWriter(tmp_path, unit="step", force=True).save(model, step=7)


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    path = TrajectoryWriter(tmp_path, unit="step").save(model, step=1)
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("emb.weight"), f.get_tensor("head.weight"))


def test_a_failure_mid_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writer._as_bytes
    calls = []

    def fails_on_the_second_key(chunk: torch.Tensor) -> memoryview:
        calls.append(1)
        if len(calls) == 2:  # the header and the first tensor are already in the file
            raise OSError(28, "No space left on device")
        return real(chunk)

    monkeypatch.setattr(writer, "_as_bytes", fails_on_the_second_key)
    with pytest.raises(WaError, match="No space left") as e:
        TrajectoryWriter(tmp_path, unit="step").save(conv_bn(), step=3)
    assert e.value.code == ExitCode.OUTPUT
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_tied_and_strided_views_are_written_without_a_clone(tmp_path: Path) -> None:
    # save_file refuses both of these (shared storage; a non-contiguous view): the streaming
    # writer copies each key's bytes as it writes them, and the tensors are left untouched.
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"w": base, "w_tied": base, "w_t": base.t(), "row": base[1]}
    path = trajectory.save_checkpoint(tmp_path / "tied.safetensors", state, {"format": "pt"})
    with safe_open(str(path), framework="pt") as f:
        for key, value in state.items():
            assert torch.equal(f.get_tensor(key), value), key
        assert f.metadata() == {"format": "pt"}
    assert state["w_tied"] is base and state["w_t"].data_ptr() == base.data_ptr()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(WaError, match="every must be >= 1"):
        TrajectoryWriter(tmp_path, every=0)
    with pytest.raises(WaError, match="needs epoch"):
        TrajectoryWriter(tmp_path, unit="epoch").maybe_save(conv_bn(), step=1)
    with pytest.raises(WaError, match="reserved"):
        checkpoint_metadata(1, metrics={"step": 3})
