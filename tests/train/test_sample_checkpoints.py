"""The sample trajectory: real checkpoints of the sample CNN whose metadata tells the truth."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_checkpoints"


def load_module():
    spec = importlib.util.spec_from_file_location("sample_model_under_test", SAMPLE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def test_model_file_imports_only_torch_and_safetensors() -> None:
    tree = ast.parse((SAMPLE / "model.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "pathlib", "torch", "safetensors"}, roots


def test_loaders_serve_the_fixed_split() -> None:
    model = load_module()
    x, y = next(iter(model.train_loader(batch_size=2000)))
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    xt, yt = next(iter(model.test_loader()))
    assert xt.shape == (360, 1, 8, 8) and yt.shape == (360,)


@pytest.mark.parametrize(("run", "count"), [("run_a", 11), ("run_b", 3)])
def test_checkpoints_carry_true_metadata(run: str, count: int) -> None:
    module = load_module()
    files = sorted((SAMPLE / run).glob("ckpt_*.safetensors"), key=step_of)
    assert len(files) == count
    epochs = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert meta["format"] == "pt"
        assert int(meta["step"]) == step_of(path)
        epochs.append(int(meta["epoch"]))
        state = load_file(str(path))
        assert state["bn1.num_batches_tracked"].dtype == torch.int64
        assert int(state["bn1.num_batches_tracked"]) == int(meta["step"])  # one per training step
        net = module.build()
        net.load_state_dict(state, strict=True)
        net.eval()
        x, y = module.load_digits("test")
        with torch.no_grad():
            logits = net(x)
        # the metrics in the file are what the checkpoint really scores on the test split
        assert float(meta["val_acc"]) == pytest.approx(
            float((logits.argmax(1) == y).float().mean())
        )
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        assert float(meta["val_loss"]) == pytest.approx(loss, rel=1e-4)
        assert float(meta["val_acc"]) > 0.95
    assert epochs == list(range(epochs[-1] - count + 1, epochs[-1] + 1))


def test_the_two_runs_differ_and_the_folder_is_small() -> None:
    a = load_file(str(SAMPLE / "run_a" / "ckpt_1350.safetensors"))
    b = load_file(str(SAMPLE / "run_b" / "ckpt_1350.safetensors"))
    assert a.keys() == b.keys()
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 5_000_000


@pytest.mark.slow
def test_generate_reproduces_the_same_tensors(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True
    )
    for run in ("run_a", "run_b"):
        names = sorted(p.name for p in (SAMPLE / run).glob("*.safetensors"))
        assert sorted(p.name for p in (tmp_path / run).glob("*.safetensors")) == names
        for name in names:
            ours, fresh = load_file(str(SAMPLE / run / name)), load_file(str(tmp_path / run / name))
            assert ours.keys() == fresh.keys()
            for key in ours:
                assert torch.equal(ours[key], fresh[key]), (run, name, key)
