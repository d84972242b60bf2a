"""Run folders as one checkpoint each: HF Trainer checkpoint-N/, accelerate checkpoint_N/,
save_pretrained folders, FSDP's DCP subfolder; a folder of them is a trajectory.

Where transformers and accelerate install (the `real` test extra), their own saving code writes
the folders; the hand-made layouts follow the files those libraries write.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, cnn_state, run_wa, save_sharded
from tests.real_trainer import trainer_run
from wa_cli.io.reader import open_checkpoint
from wa_cli.select import expand_inputs


def trainer_checkpoint(folder: Path, step: int, seed: int, sharded: bool = False) -> dict:
    """checkpoint-N/ as the HF Trainer writes it (model, training state, trainer_state.json)."""
    state = cnn_state(seed)
    if sharded:
        save_sharded(state, folder, {"format": "pt"})
    else:
        folder.mkdir(parents=True)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text("{}")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"not": "weights"}, folder / name)
    log = [
        {"step": step, "loss": 1.0 / step, "epoch": step / 10},
        {"step": step, "eval_loss": 2.0 / step},
    ]
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": step / 10, "log_history": log})
    )
    return state


def test_trainer_folder_is_one_checkpoint_with_its_record(tmp_path):
    state = trainer_checkpoint(tmp_path / "checkpoint-6", 6, 0)
    assert expand_inputs([tmp_path / "checkpoint-6"]) == [tmp_path / "checkpoint-6"]
    ckpt = open_checkpoint(tmp_path / "checkpoint-6")
    assert ckpt.name == "checkpoint-6"
    assert set(ckpt.keys()) == set(state)
    assert torch.equal(ckpt.tensor("4.weight"), state["4.weight"])
    assert ckpt.metadata["global_step"] == "6" and float(ckpt.metadata["eval_loss"]) == 2.0 / 6
    note = ckpt.chosen_file_note or ""
    assert note.startswith("model.safetensors of checkpoint-6/") and "optimizer.pt" in note
    assert tmp_path / "checkpoint-6" / "model.safetensors" in ckpt.files


def test_folder_of_trainer_folders_is_a_trajectory(tmp_path, capsys):
    out = tmp_path / "out"
    states = {
        s: trainer_checkpoint(out / f"checkpoint-{s}", s, s, sharded=s == 20) for s in (10, 20, 30)
    }
    assert [p.name for p in expand_inputs([out])] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]
    avg = tmp_path / "avg.safetensors"
    r = run_wa(["average", out, "--last", "2", "-o", avg], capsys)
    assert r.code == 0, r.stderr
    assert "read model.safetensors.index.json of checkpoint-20/ (left out optimizer.pt" in r.stdout
    got = load_file(avg)["4.weight"].double()
    want = (states[20]["4.weight"].double() + states[30]["4.weight"].double()) / 2
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_top_level_model_beside_run_folders_is_left_out_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    trainer_checkpoint(out / "checkpoint-1", 1, 0)
    save_file(cnn_state(9), out / "model.safetensors")  # trainer.save_model(out)
    with caplog.at_level(logging.WARNING):
        assert expand_inputs([out]) == [out / "checkpoint-1"]
    assert "run folders and a model of its own" in caplog.text


def test_save_pretrained_folders(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    state = cnn_state(1)
    save_file(state, unet / "diffusion_pytorch_model.safetensors")
    (unet / "config.json").write_text("{}")
    ckpt = open_checkpoint(expand_inputs([unet])[0])
    assert torch.equal(ckpt.tensor("0.weight"), state["0.weight"])
    binary = tmp_path / "bin_model"
    binary.mkdir()
    torch.save(state, binary / "pytorch_model.bin")
    (binary / "config.json").write_text("{}")
    assert torch.equal(open_checkpoint(binary).tensor("0.bias"), state["0.bias"])


def test_plain_folder_with_a_model_file_stays_a_folder_of_checkpoints(tmp_path):
    save_file(cnn_state(0), tmp_path / "model.safetensors")
    save_file(cnn_state(1), tmp_path / "ckpt_1.safetensors")
    assert len(expand_inputs([tmp_path])) == 2


def test_sharded_bin_folder_says_what_to_do(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    torch.save(cnn_state(0), folder / "pytorch_model-00001-of-00001.bin")
    r = run_wa(["average", folder, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "sharded .bin", "safe_serialization")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_fsdp_dcp_subfolder_is_the_model(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    folder = tmp_path / "checkpoint_2"
    state = cnn_state(2)
    dcp.save(dict(state), checkpoint_id=str(folder / "pytorch_model_fsdp_0"))
    torch.save({"x": 1}, folder / "optimizer.bin")
    torch.save({"x": 1}, folder / "random_states_0.pkl")
    ckpt = open_checkpoint(expand_inputs([folder])[0])
    assert torch.equal(ckpt.tensor("4.weight"), state["4.weight"])
    assert (ckpt.chosen_file_note or "").startswith("pytorch_model_fsdp_0 of checkpoint_2/")


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A real HF Trainer run: 6 steps, a checkpoint every 2, evaluation logged at each."""
    return trainer_run(tmp_path_factory.mktemp("hf"), 6, evaluate=True)


def test_real_trainer_run_folders(hf_run, tmp_path, capsys):
    paths = expand_inputs([hf_run])
    assert [p.name for p in paths] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    ckpts = [open_checkpoint(p) for p in paths]
    assert [c.metadata["global_step"] for c in ckpts] == ["2", "4", "6"]
    assert all("eval_loss" in c.metadata for c in ckpts)
    files = [load_file(p / "model.safetensors") for p in paths]
    out = tmp_path / "avg"
    r = run_wa(["average", hf_run, "--last", "2", "-o", out, "--max-shard-size", "5GB"], capsys)
    assert r.code == 0, r.stderr
    avg = open_checkpoint(out)
    for key, value in files[2].items():
        if value.is_floating_point():
            want = (files[1][key].double() + value.double()) / 2
            torch.testing.assert_close(avg.tensor(key).double(), want, rtol=1e-6, atol=1e-7)
    r = run_wa(["ema", hf_run, "--half-life", "2", "-o", tmp_path / "ema.safetensors"], capsys)
    assert r.code == 0, r.stderr


def test_real_accelerate_save_state_folders(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    acc = accelerate.Accelerator(cpu=True, project_config=project)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net, opt = acc.prepare(net, opt)
    saved = []
    for _ in range(2):
        with torch.no_grad():
            net.weight.add_(1.0)
        acc.save_state()
        saved.append(net.weight.detach().clone())
    paths = expand_inputs([tmp_path / "checkpoints"])
    assert [p.name for p in paths] == ["checkpoint_0", "checkpoint_1"]
    for path, weight in zip(paths, saved, strict=True):
        ckpt = open_checkpoint(path)
        assert torch.equal(ckpt.tensor("weight"), weight)
        assert "optimizer.bin" in (ckpt.chosen_file_note or "")


@pytest.mark.parametrize("history", [5, "x", {"step": 6}, True])
def test_a_trainer_state_whose_log_history_is_not_a_list_is_one_line(tmp_path, capsys, history):
    """A hand-made trainer_state.json with "log_history": 5 was a TypeError traceback."""
    for step in (6, 7):
        trainer_checkpoint(tmp_path / f"checkpoint-{step}", step, step)
    state = tmp_path / "checkpoint-7" / "trainer_state.json"
    state.write_text(json.dumps({"global_step": 7, "log_history": history}))
    r = run_wa(["average", tmp_path, "-o", tmp_path / "avg.safetensors"], capsys)
    assert_one_line_error(r, 3, "trainer_state.json", "log_history")
    assert not (tmp_path / "avg.safetensors").exists()
