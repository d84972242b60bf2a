"""Training-run layouts through the CLI: Lightning names, steps inside files, --top-k direction.

Layouts are written by hand from the libraries' documented formats (PEERS.md, "What training
libraries actually write"), with torch.save and safetensors' own writer; oracles are the tensors
the test saved.
"""

from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------ duplicates, timm, shell order


def timm_run(folder: Path, metrics: list[float]) -> dict[int, dict[str, torch.Tensor]]:
    """timm's CheckpointSaver layout: checkpoint-E.pth.tar, last/model_best as hard links.

    The pickle holds what timm's train.py saves: epoch, arch, state_dict, optimizer, version,
    metric and ``args``, an argparse.Namespace (read through the reader's safe globals).
    """
    folder.mkdir(parents=True)
    states = {}
    for epoch, metric in enumerate(metrics):
        torch.manual_seed(epoch)
        state = {"fc.weight": torch.randn(2, 3), "bn.num_batches_tracked": torch.tensor(epoch)}
        args = argparse.Namespace(model="resnet18", lr=0.1, epochs=len(metrics))
        torch.save({"epoch": epoch, "arch": "resnet18", "state_dict": state,
                    "optimizer": {"state": {}, "param_groups": []}, "version": 2,
                    "args": args, "metric": metric},
                   folder / f"checkpoint-{epoch}.pth.tar")  # fmt: skip
        states[epoch] = state
    best = max(range(len(metrics)), key=lambda e: metrics[e])
    (folder / "model_best.pth.tar").hardlink_to(folder / f"checkpoint-{best}.pth.tar")
    (folder / "last.pth.tar").hardlink_to(folder / f"checkpoint-{len(metrics) - 1}.pth.tar")
    return states


def test_timm_top_k_by_the_stored_metric_keeps_the_highest(tmp_path, capsys):
    metrics = [0.50, 0.91, 0.72, 0.95, 0.60, 0.93]
    states = timm_run(tmp_path / "run", metrics)
    out = tmp_path / "best3.safetensors"
    args = ["average", tmp_path / "run", "--top-k", "3", "--metric", "metric", "--mode", "max"]
    r = run_wa([*args, "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)["selection"]
    assert [(Path(x["path"]).name, x["value"]) for x in rows] == [
        ("checkpoint-1.pth.tar", 0.91), ("checkpoint-3.pth.tar", 0.95),
        ("checkpoint-5.pth.tar", 0.93)]  # fmt: skip
    assert "model_best" in r.stderr and "last.pth.tar" in r.stderr  # named, used once
    want = torch.stack([states[e]["fc.weight"].double() for e in (1, 3, 5)]).mean(0)
    torch.testing.assert_close(load_file(out)["fc.weight"].double(), want, rtol=1e-6, atol=1e-7)
    # timm's own "metric" is ambiguous: without --mode, one line says so.
    r = run_wa(["average", tmp_path / "run", "--top-k", "3", "--metric", "metric", "--dry-run"],
               capsys)  # fmt: skip
    assert "--top-k needs --mode" in r.stderr.splitlines()[-1] and r.code == 2


def test_lightning_top_k_by_the_monitored_score(tmp_path, capsys):
    lightning_run(tmp_path / "ckpts")
    args = ["average", tmp_path / "ckpts", "--top-k", "2", "--metric", "val_loss", "--dry-run"]
    r = run_wa([*args, "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["mode"] == "min"
    assert [(x["step"], x["value"]) for x in report["checkpoints"]] == [
        (69, pytest.approx(0.5529)), (115, pytest.approx(0.3050))]  # fmt: skip


def test_timm_last_and_model_best_hard_links_are_used_once(tmp_path, capsys):
    states = timm_run(tmp_path / "run", [0.5, 0.7, 0.9, 0.8])
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "run", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(Path(p).name for p in report["inputs"]) == [
        f"checkpoint-{e}.pth.tar" for e in range(4)]  # fmt: skip
    warnings = [line for line in r.stderr.splitlines() if "used once" in line]
    assert len(warnings) == 2, r.stderr
    assert any("last.pth.tar' is the same file as" in w and "checkpoint-3.pth.tar" in w
               for w in warnings)  # fmt: skip
    assert any("model_best.pth.tar' is the same file as" in w and "checkpoint-2.pth.tar" in w
               for w in warnings)  # fmt: skip
    want = torch.stack([s["fc.weight"].double() for s in states.values()]).mean(0)
    torch.testing.assert_close(load_file(out)["fc.weight"].double(), want, rtol=1e-6, atol=1e-7)
    assert load_file(out)["bn.num_batches_tracked"].item() == 3


def test_lightning_last_ckpt_copy_is_used_once(tmp_path, capsys):
    states = lightning_run(tmp_path / "ckpts")
    # last.ckpt: a separate save of the final step; its callback state differs, so its bytes do.
    final = tmp_path / "ckpts" / "epoch=4-step=115-val_loss=0.3050.ckpt"
    obj = torch.load(final, weights_only=True)
    obj["callbacks"] = {"ModelCheckpoint{'monitor': None}": {"last_model_path": "x"}}
    torch.save(obj, tmp_path / "ckpts" / "last.ckpt")
    assert (tmp_path / "ckpts" / "last.ckpt").read_bytes() != final.read_bytes()
    r = run_wa(["ema", tmp_path / "ckpts", "--half-life", "23", "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)["checkpoints"]
    assert [Path(row["path"]).name for row in rows][-1] == final.name
    assert len(rows) == len(states)
    assert "last.ckpt' records the same global_step (115) and holds the same tensors" in r.stderr
    # A checkpoint of the same step with other tensors is no duplicate: the steps tie.
    obj["state_dict"] = {k: v + 1 for k, v in obj["state_dict"].items()}
    torch.save(obj, tmp_path / "ckpts" / "last.ckpt")
    r = run_wa(["ema", tmp_path / "ckpts", "--half-life", "23", "--dry-run"], capsys)
    assert_one_line_error(r, 2, "share step 115")


def test_a_copy_with_the_same_bytes_is_used_once(tmp_path, capsys):
    paths = metric_run(tmp_path / "run", "val_loss", [0.3, 0.2])
    copy = tmp_path / "run" / "copy_of_1.safetensors"
    copy.write_bytes(paths[1].read_bytes())
    r = run_wa(["average", *paths, copy, "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["checkpoints"]) == 2
    assert "copy_of_1.safetensors' has the same bytes as" in r.stderr


def test_non_float_tensors_come_from_the_last_in_training_order(tmp_path, capsys):
    # The shell sorts ckpt_1350 before ckpt_990; the README's headline command passes them so.
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (900, 990, 1350):
        save_file({"w": torch.full((2,), float(step)), "n": torch.tensor(step)},
                  folder / f"ckpt_{step}.safetensors", metadata={"step": str(step)})  # fmt: skip
    shell = sorted(folder.iterdir(), key=lambda p: p.name)
    assert shell[-1].name == "ckpt_990.safetensors"
    out = tmp_path / "swa.safetensors"
    r = run_wa(["average", *shell, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert load_file(out)["n"].item() == 1350
    note = "non-float tensors from the last input in training order, 'ckpt_1350.safetensors'"
    assert note in r.stdout
    r = run_wa(["average", *shell, "-o", out, "--force", "--non-float", "first"], capsys)
    assert load_file(out)["n"].item() == 900
    # Weights follow their checkpoints: 1,0,0 in the given order weighs ckpt_1350 only.
    r = run_wa(["average", *shell, "-o", out, "--force", "--weights", "1,0,0"], capsys)
    assert r.code == 0, r.stderr
    assert load_file(out)["w"].tolist() == [1350.0, 1350.0]


def test_non_float_epoch_names_follow_epoch_order(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    for epoch in (8, 9, 10):
        save_file(
            {"w": torch.ones(1), "n": torch.tensor(epoch)}, folder / f"epoch_{epoch}.safetensors"
        )
    shell = sorted(folder.iterdir(), key=lambda p: p.name)  # epoch_10, epoch_8, epoch_9
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", *shell, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert load_file(out)["n"].item() == 10
    assert "epochs in the file names used as steps" in r.stdout


@pytest.mark.parametrize("command", ["average", "ema"])
def test_dry_run_fails_where_the_run_fails(tmp_path, capsys, command):
    a, b = tmp_path / "ckpt_1.safetensors", tmp_path / "ckpt_2.safetensors"
    save_file({"w": torch.ones(3)}, a)
    save_file({"w": torch.ones(4)}, b)
    decay = ["--decay", "0.5"] if command == "ema" else []
    real = run_wa([command, a, b, *decay, "-o", tmp_path / "o.safetensors"], capsys)
    dry = run_wa([command, a, b, *decay, "--dry-run"], capsys)
    assert_one_line_error(real, 4, "shape mismatch", "'w'")
    assert (dry.code, dry.stderr) == (real.code, real.stderr)
    assert dry.stdout == ""
    # Keys and dtypes too, and an output that is an input.
    save_file({"w": torch.ones(3, dtype=torch.float16)}, b)
    dry = run_wa([command, a, b, *decay, "--dry-run"], capsys)
    assert_one_line_error(dry, 4, "dtype mismatch")
    save_file({"v": torch.ones(3)}, b)
    dry = run_wa([command, a, b, *decay, "--dry-run"], capsys)
    assert_one_line_error(dry, 4, "key sets differ")
    save_file({"w": torch.zeros(3)}, b)
    dry = run_wa([command, a, b, *decay, "--dry-run", "-o", a, "--force"], capsys)
    assert_one_line_error(dry, 5, "would overwrite the input")


def test_outputs_record_the_step_range_and_the_last_step(tmp_path, capsys):
    from safetensors import safe_open

    lightning_run(tmp_path / "ckpts")
    for command, extra in (("average", ["--last", "3"]), ("ema", ["--half-life", "23"])):
        out = tmp_path / f"{command}.safetensors"
        r = run_wa([command, tmp_path / "ckpts", *extra, "-o", out], capsys)
        assert r.code == 0, r.stderr
        with safe_open(out, "pt") as f:
            meta = f.metadata()
        steps = [69, 92, 115] if command == "average" else [23, 46, 69, 92, 115]
        assert json.loads(meta["wa_steps"]) == steps
        assert (meta["wa_first_step"], meta["wa_last_step"]) == (str(steps[0]), "115")
        assert meta["wa_step_source"] == "steps from 'global_step' recorded inside the files"
        assert json.loads(meta["wa_epochs"]) == list(range(5))[-len(steps) :]


def test_fairseq_best_and_last_copies_are_used_once(tmp_path, capsys):
    """fairseq saves checkpoint_E_U.pt, then copies it to checkpoint_last.pt (and _best)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch, updates in ((1, 100), (2, 200), (3, 300)):
        torch.manual_seed(epoch)
        obj = {"args": argparse.Namespace(arch="transformer"), "cfg": {"common": {"seed": 1}},
               "model": {"encoder.w": torch.randn(3, 2)}, "optimizer_history": [],
               "extra_state": {"train_iterator": {"epoch": epoch}}}  # fmt: skip
        torch.save(obj, folder / f"checkpoint_{epoch}_{updates}.pt")
    (folder / "checkpoint_last.pt").write_bytes((folder / "checkpoint_3_300.pt").read_bytes())
    (folder / "checkpoint_best.pt").write_bytes((folder / "checkpoint_2_200.pt").read_bytes())
    r = run_wa(["average", *sorted(folder.glob("checkpoint*.pt")), "--last", "2", "--dry-run",
                "--json"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)["checkpoints"]
    assert [(Path(x["path"]).name, x["step"]) for x in rows] == [
        ("checkpoint_2_200.pt", 200), ("checkpoint_3_300.pt", 300)]  # fmt: skip
    assert r.stderr.count("has the same bytes as") == 2
