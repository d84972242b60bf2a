"""Output folders that load like their inputs: --shard-name (and detection), --copy-config.

HF Trainer folders are written by hand from the files the Trainer writes (PEERS.md) and, where
transformers installs, by the Trainer itself, with ``from_pretrained`` as the oracle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, cnn_state, run_wa
from tests.real_trainer import trainer_run

CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
TRAINING_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def trainer_checkpoint(folder: Path, step: int) -> dict[str, torch.Tensor]:
    state = cnn_state(step)
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for name in CONFIG_FILES:
        (folder / name).write_text(json.dumps({"from_step": step}))
    for name in TRAINING_FILES:
        torch.save({"not": "weights"}, folder / name)
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": step / 100, "log_history": []})
    )
    return state


def test_hf_average_last_3_copies_the_newest_config_and_no_training_state(tmp_path, capsys):
    out = tmp_path / "out"
    states = {s: trainer_checkpoint(out / f"checkpoint-{s}", s) for s in (500, 1000, 1500, 2000)}
    avg = tmp_path / "avg"
    args = ["average", out, "--last", "3", "-o", avg, "--copy-config", "--max-shard-size", "5GB"]
    r = run_wa([*args, "--json"], capsys)
    assert r.code == 0, r.stderr
    assert [row["step"] for row in json.loads(r.stdout)["selection"]] == [1000, 1500, 2000]
    names = sorted(p.name for p in avg.iterdir())
    assert names == sorted(["model-00001-of-00001.safetensors", "model.safetensors.index.json",
                            *CONFIG_FILES])  # fmt: skip
    for name in CONFIG_FILES:  # from the newest input, byte for byte
        assert (avg / name).read_bytes() == (out / "checkpoint-2000" / name).read_bytes()
    got = load_file(avg / "model-00001-of-00001.safetensors")
    want = sum(states[s]["4.weight"].double() for s in (1000, 1500, 2000)) / 3
    torch.testing.assert_close(got["4.weight"].double(), want, rtol=1e-6, atol=1e-7)
    r = run_wa(["ema", out, "--half-life", "500", "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)["checkpoints"]
    assert [row["step"] for row in rows] == [500, 1000, 1500, 2000]
    assert [row["weight"] for row in rows] == pytest.approx([0.125, 0.125, 0.25, 0.5], rel=1e-9)


def test_copy_config_needs_a_folder_output(tmp_path, capsys):
    out = tmp_path / "out"
    for s in (1, 2):
        trainer_checkpoint(out / f"checkpoint-{s}", s)
    r = run_wa(["average", out, "-o", tmp_path / "a.safetensors", "--copy-config"], capsys)
    assert_one_line_error(r, 2, "--copy-config", "--max-shard-size")


def test_a_copy_config_folder_is_replaced_with_force_but_not_with_a_stranger_file(tmp_path, capsys):
    out = tmp_path / "out"
    for s in (1, 2):
        trainer_checkpoint(out / f"checkpoint-{s}", s)
    avg = tmp_path / "avg"
    args = ["average", out, "-o", avg, "--copy-config", "--max-shard-size", "5GB"]
    assert run_wa(args, capsys).code == 0
    index = json.loads((avg / "model.safetensors.index.json").read_text())
    assert sorted(json.loads(index["metadata"]["wa_companions"])) == sorted(CONFIG_FILES)
    first = {p.name: p.read_bytes() for p in avg.iterdir()}
    r = run_wa([*args, "--force"], capsys)  # the folder wa wrote, config files included
    assert r.code == 0, r.stderr
    assert {p.name for p in avg.iterdir()} == set(first)
    (avg / "notes.txt").write_text("mine")  # a file wa did not copy: the folder is the user's
    r = run_wa([*args, "--force"], capsys)
    assert_one_line_error(r, 5, "notes.txt")
    assert (avg / "notes.txt").read_text() == "mine"
    assert (avg / "config.json").read_bytes() == first["config.json"]


def test_diffusers_names_are_detected_and_can_be_chosen(tmp_path, capsys):
    for i, name in enumerate(("unet_a", "unet_b")):
        (tmp_path / name).mkdir()
        save_file(cnn_state(i), tmp_path / name / "diffusion_pytorch_model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps({"_class_name": "UNet", "i": i}))
    avg = tmp_path / "avg"
    args = ["average", tmp_path / "unet_a", tmp_path / "unet_b", "--max-shard-size", "5GB"]
    r = run_wa([*args, "-o", avg, "--copy-config"], capsys)
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in avg.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model-00001-of-00001.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    ]
    index = json.loads((avg / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "diffusion_pytorch_model-00001-of-00001.safetensors"
    }
    assert json.loads((avg / "config.json").read_text())["i"] == 1
    r = run_wa([*args, "-o", tmp_path / "named", "--shard-name", "model"], capsys)
    assert r.code == 0, r.stderr
    assert "model.safetensors.index.json" in {p.name for p in (tmp_path / "named").iterdir()}
    r = run_wa([*args, "-o", tmp_path / "bad", "--shard-name", "../x"], capsys)
    assert_one_line_error(r, 2, "shard-name")


@pytest.fixture(scope="module")
def hf_trainer_run(tmp_path_factory):
    """A real HF Trainer run: 8 steps, a checkpoint every 2 (4 checkpoint-N/ folders)."""
    return trainer_run(tmp_path_factory.mktemp("hf"), 8)


def test_real_trainer_average_loads_with_from_pretrained(hf_trainer_run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    avg = tmp_path / "avg"
    args = ["average", hf_trainer_run, "--last", "3", "-o", avg, "--copy-config",
            "--max-shard-size", "5GB", "--json"]  # fmt: skip
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    assert [row["step"] for row in json.loads(r.stdout)["selection"]] == [4, 6, 8]
    assert "config.json" in {p.name for p in avg.iterdir()}
    assert not {"optimizer.pt", "trainer_state.json", "training_args.bin"} & {
        p.name for p in avg.iterdir()}  # fmt: skip
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(avg), output_loading_info=True
        )
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not records, [r.getMessage() for r in records]
    # The oracle: the mean of the three checkpoints' own files, in float64.
    files = [load_file(hf_trainer_run / f"checkpoint-{s}" / "model.safetensors") for s in (4, 6, 8)]
    state = model.state_dict()
    for key in files[0]:
        if files[0][key].is_floating_point():
            want = sum(f[key].double() for f in files) / 3
            torch.testing.assert_close(state[key].double(), want, rtol=1e-6, atol=1e-7)
    r = run_wa(["ema", hf_trainer_run, "--half-life", "500", "-o", tmp_path / "e.safetensors",
                "--json"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert [row["step"] for row in json.loads(r.stdout)["selection"]] == [2, 4, 6, 8]
