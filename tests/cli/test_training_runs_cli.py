"""Training-run layouts through the CLI: Lightning names, steps inside files, --top-k direction.

Layouts are written by hand from the libraries' documented formats (PEERS.md, "What training
libraries actually write"), with torch.save and safetensors' own writer; oracles are the tensors
the test saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, run_wa


def lightning_ckpt(path: Path, epoch: int, step: int, val_loss: float) -> dict[str, torch.Tensor]:
    """A LightningModule checkpoint as ModelCheckpoint writes it (state under ``model.``)."""
    torch.manual_seed(step)
    state = {"model.fc.weight": torch.randn(3, 4), "model.fc.bias": torch.randn(3),
             "model.bn.num_batches_tracked": torch.tensor(step)}  # fmt: skip
    monitor = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0}"
    torch.save(
        {
            "epoch": epoch,
            "global_step": step,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": state,
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
            "callbacks": {monitor: {"monitor": "val_loss", "current_score": torch.tensor(val_loss),
                                    "best_model_score": torch.tensor(val_loss)}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.1},
        },
        path,
    )  # fmt: skip
    return state


def lightning_run(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Default-style names with the monitored loss in them; the loss digits would misorder."""
    folder.mkdir(parents=True)
    losses = [0.9012, 0.7001, 0.5529, 0.6100, 0.3050]
    states = {}
    for epoch, loss in enumerate(losses):
        step = 23 * (epoch + 1)
        name = f"epoch={epoch}-step={step}-val_loss={loss:.4f}.ckpt"
        states[step] = lightning_ckpt(folder / name, epoch, step, loss)
    return states


def test_lightning_last_3_picks_the_latest_by_global_step(tmp_path, capsys):
    states = lightning_run(tmp_path / "ckpts")
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "ckpts", "--last", "3", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert [row["step"] for row in report["selection"]] == [69, 92, 115]
    assert {row["source"] for row in report["selection"]} == {"metadata"}
    got = load_file(out)
    want = torch.stack([states[s]["model.fc.weight"].double() for s in (69, 92, 115)]).mean(0)
    torch.testing.assert_close(got["model.fc.weight"].double(), want, rtol=1e-6, atol=1e-7)
    # num_batches_tracked comes from the last checkpoint in training order.
    assert got["model.bn.num_batches_tracked"].item() == 115


def test_lightning_ema_uses_global_step_gaps(tmp_path, capsys):
    lightning_run(tmp_path / "ckpts")
    r = run_wa(["ema", tmp_path / "ckpts", "--half-life", "23", "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)["checkpoints"]
    assert [row["step"] for row in rows] == [23, 46, 69, 92, 115]
    # Half-life of one save interval: each checkpoint weighs half of the next (first: e_0).
    weights = [row["weight"] for row in rows]
    expected = [0.0625, 0.0625, 0.125, 0.25, 0.5]
    assert weights == pytest.approx(expected, rel=1e-9)


def metric_run(folder: Path, metric: str, values: list[float]) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, v in enumerate(values):
        p = folder / f"ckpt_{i}.safetensors"
        save_file({"w": torch.full((2,), float(i))}, p, metadata={"format": "pt", metric: str(v)})
        paths.append(p)
    return paths


def test_top_k_of_an_accuracy_keeps_the_highest_and_lists_them(tmp_path, capsys):
    paths = metric_run(tmp_path / "run", "val_acc", [0.50, 0.97, 0.60, 0.99, 0.98])
    out = tmp_path / "best.safetensors"
    r = run_wa(["average", *paths, "--top-k", "3", "--metric", "val_acc", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "with the highest val_acc (--mode max)" in r.stdout
    for name, value in (("ckpt_1", "0.97"), ("ckpt_3", "0.99"), ("ckpt_4", "0.98")):
        assert any(name in line and value in line for line in r.stdout.splitlines()), r.stdout
    assert "ckpt_0" not in r.stdout and "ckpt_2" not in r.stdout
    assert torch.equal(load_file(out)["w"], torch.full((2,), 8 / 3, dtype=torch.float64).float())
    r = run_wa(["average", *paths, "--top-k", "3", "--metric", "val_acc", "--json", "-o", out,
                "--force"], capsys)  # fmt: skip
    rows = json.loads(r.stdout)["selection"]
    assert [(Path(x["path"]).stem, x["value"]) for x in rows] == [
        ("ckpt_1", 0.97), ("ckpt_3", 0.99), ("ckpt_4", 0.98)]  # fmt: skip


def test_top_k_of_an_ambiguous_metric_requires_mode(tmp_path, capsys):
    paths = metric_run(tmp_path / "run", "metric", [0.5, 0.9, 0.7])
    r = run_wa(["average", *paths, "--top-k", "2", "--metric", "metric", "--dry-run"], capsys)
    assert_one_line_error(r, 2, "--top-k needs --mode min or --mode max", "'metric'")
    r = run_wa(["average", *paths, "--top-k", "2", "--metric", "metric", "--mode", "max",
                "--dry-run", "--json"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["mode"] == "max"
    assert [x["value"] for x in report["checkpoints"]] == [0.9, 0.7]


def test_dry_run_says_where_the_order_came_from(tmp_path, capsys):
    lightning_run(tmp_path / "ckpts")
    r = run_wa(["average", tmp_path / "ckpts", "--last", "2", "--dry-run"], capsys)
    assert r.code == 0, r.stderr
    assert "steps from 'global_step' recorded inside the files" in r.stdout.splitlines()[0]
