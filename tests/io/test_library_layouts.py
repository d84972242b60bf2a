"""fairseq, OpenNMT-py, Composer and NeMo checkpoints through the real ``wa average`` command.

None of these libraries installs beside the CPU torch here, so each layout is reproduced by hand
from the library's saving code and written with ``torch.save`` (and ``tarfile`` for ``.nemo``):

* fairseq ``Trainer.state_dict`` / ``checkpoint_utils.save_checkpoint``: ``args`` (a Namespace),
  ``cfg``, ``model``, ``criterion``, ``optimizer_history`` (a list of dicts whose last holds
  ``num_updates``), ``task_state``, ``extra_state`` (``train_iterator``, ``val_loss``, ``metrics``,
  ``previous_training_time``) and ``last_optimizer_state``; names ``checkpoint{epoch}.pt``, and
  ``checkpoint_{epoch}_{updates}.pt`` with ``--save-interval-updates``; ``checkpoint_last.pt`` is
  a copy of the newest.
* OpenNMT-py ``ModelSaver._save``: ``model`` (the model's state dict without ``generator`` keys),
  ``generator`` (``model.generator.state_dict()``), ``vocab``, ``opt`` (a Namespace) and ``optim``.
* Composer ``Trainer`` checkpoints (``State.state_dict``): ``{"state": {"model", "optimizers",
  "schedulers", "algorithms" (a list of (name, state)), "callbacks", "timestamp" ({"Timestamp":
  Timestamp.state_dict()}, with ``datetime.timedelta`` wall-clock times), "rank_zero_seed",
  "run_name", "integrations", "metadata"}, "rng": [{"python", "numpy", "torch"}]}``, the numpy
  entry being ``np.random.get_state()``; names ``ep{E}-ba{B}-rank{R}.pt``.
* NeMo ``SaveRestoreConnector``: a tar (``w:``, older releases ``w:gz``) of ``model_config.yaml``
  and ``model_weights.ckpt`` (``torch.save(model.state_dict())``).

Oracles: the float64 mean of the tensors the test saved.
"""

from __future__ import annotations

import argparse
import datetime
import io
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_one_line_error, run_wa


def model_state(seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}enc.weight": torch.randn(4, 3, generator=g),
        f"{prefix}enc.bias": torch.randn(4, generator=g),
        f"{prefix}dec.weight": torch.randn(2, 4, generator=g),
    }


def mean64(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype)
        for k in states[0]
    }


def assert_equal_states(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(out) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v, rtol=1e-6, atol=1e-7)


# --- fairseq ------------------------------------------------------------------------------------


def fairseq_save(path: Path, epoch: int, updates: int) -> dict[str, torch.Tensor]:
    state = model_state(updates)
    torch.save(
        {
            "args": argparse.Namespace(arch="transformer", lr=[0.0005]),
            "cfg": {"common": {"seed": 1}, "optimization": {"max_update": 10000}},
            "model": state,
            "criterion": {},
            "optimizer_history": [
                {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                 "lr_scheduler_state": {"best": 2.5}, "num_updates": updates},
            ],
            "task_state": {},
            "extra_state": {
                "train_iterator": {"epoch": epoch, "iterations_in_epoch": 0, "shuffle": True},
                "val_loss": 3.5, "metrics": {}, "previous_training_time": 12.5,
            },
            "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4, 3)}},
                                     "param_groups": [{"lr": 0.1, "params": [0]}]},
        },
        path,
    )  # fmt: skip
    return state


def test_fairseq_mixed_names_order_by_num_updates(tmp_path, capsys):
    """Epoch names and update names in one folder: --last 2 takes the two highest num_updates.

    By name, ``checkpoint_3_6000.pt`` would be step 6000 and ``checkpoint4.pt`` step 4, so the
    last two by name digits are the wrong pair.
    """
    run = tmp_path / "checkpoints"
    run.mkdir()
    states = {
        2000: fairseq_save(run / "checkpoint1.pt", 1, 2000),
        4000: fairseq_save(run / "checkpoint2.pt", 2, 4000),
        6000: fairseq_save(run / "checkpoint_3_6000.pt", 3, 6000),
        7500: fairseq_save(run / "checkpoint3.pt", 3, 7500),
        9000: fairseq_save(run / "checkpoint_4_9000.pt", 4, 9000),
    }
    shutil.copyfile(run / "checkpoint_4_9000.pt", run / "checkpoint_last.pt")
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", run, "--last", "2", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), mean64([states[7500], states[9000]]))
    assert "num_updates" in r.stdout


def test_fairseq_store_ema_needs_a_choice(tmp_path, capsys):
    """fairseq ``--store-ema`` keeps the EMA model in ``extra_state['ema']``."""
    raw, ema = {}, {}
    for i, updates in enumerate((100, 200)):
        path = tmp_path / f"checkpoint{i + 1}.pt"
        raw[updates] = fairseq_save(path, i + 1, updates)
        ckpt = torch.load(path, weights_only=False)
        ema[updates] = model_state(updates + 1)
        ckpt["extra_state"]["ema"] = ema[updates]
        torch.save(ckpt, path)
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path, "-o", out], capsys)
    assert_one_line_error(r, 2, "'model'", "'extra_state.ema'", "--variant raw", "--variant ema")
    r = run_wa(["average", tmp_path, "-o", out, "--variant", "ema"], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), mean64(list(ema.values())))


# --- OpenNMT-py ---------------------------------------------------------------------------------


def opennmt_save(path: Path, step: int) -> dict[str, torch.Tensor]:
    model = model_state(step)
    g = torch.Generator().manual_seed(step + 7)
    generator = {"0.weight": torch.randn(5, 4, generator=g), "0.bias": torch.randn(5, generator=g)}
    torch.save(
        {"model": model, "generator": generator, "vocab": {"src": ["<unk>", "a"]},
         "opt": argparse.Namespace(enc_layers=2), "optim": {"training_step": step + 1}},
        path,
    )  # fmt: skip
    return {**model, **{f"generator.{k}": v for k, v in generator.items()}}


def test_opennmt_keeps_the_generator(tmp_path, capsys):
    states = [opennmt_save(tmp_path / f"model_step_{s}.pt", s) for s in (1000, 2000, 3000)]
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", *sorted(tmp_path.glob("model_step_*.pt")), "-o", out], capsys)
    assert r.code == 0, r.stderr
    result = load_file(out)
    assert "generator.0.weight" in result
    assert_equal_states(result, mean64(states))
    assert "generator" in r.stdout
    only = tmp_path / "model_only.safetensors"
    r = run_wa(["average", tmp_path / "model_step_1000.pt", "--key", "model", "-o", only], capsys)
    assert r.code == 0 and not any(k.startswith("generator.") for k in load_file(only))


# --- Composer -----------------------------------------------------------------------------------


def composer_save(path: Path, epoch: int, batch: int, ema: dict | None = None) -> dict:
    """``Trainer`` checkpoint of a HuggingFaceModel-style ComposerModel (``model.`` prefix)."""
    model = model_state(batch, "model.")
    wct = datetime.timedelta(seconds=batch)
    stamp = {"iteration": 0, "epoch": epoch, "batch": batch, "sample": batch * 8, "token": 0,
             "epoch_in_iteration": epoch, "token_in_iteration": 0, "batch_in_epoch": 3,
             "sample_in_epoch": 24, "token_in_epoch": 0, "total_wct": wct, "iteration_wct": wct,
             "epoch_wct": wct, "batch_wct": datetime.timedelta(milliseconds=5)}  # fmt: skip
    random.seed(batch)
    np.random.seed(batch)
    state = {
        "model": model,
        "optimizers": {
            "DecoupledAdamW": {"state": {}, "param_groups": [{"lr": 0.1, "params": []}]}
        },
        "schedulers": {"LambdaLR": {"base_lrs": [0.1], "last_epoch": batch}},
        "algorithms": [] if ema is None else [("EMA", ema)],
        "callbacks": {"SpeedMonitor": {"total_eval_wct": 0.0}},
        "timestamp": {"Timestamp": stamp},
        "rank_zero_seed": 17,
        "run_name": "run",
        "integrations": {},
        "metadata": {"composer_env_info": {"composer_version": "0.30.0"}},
    }
    rng = [{"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.random.get_rng_state()}]  # fmt: skip
    torch.save({"state": state, "rng": rng}, path)
    return model


def test_composer_run_folder_without_flags(tmp_path, capsys):
    """``wa average run/`` reads ``state.model``, steps from ``ba`` (never ``rank0``)."""
    run = tmp_path / "run"
    run.mkdir()
    states = {
        b: composer_save(run / f"ep{e}-ba{b}-rank0.pt", e, b)
        for e, b in ((1, 50), (2, 100), (3, 150))
    }
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", run, "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), mean64(list(states.values())))
    r = run_wa(["average", run, "--last", "2", "-o", out, "--force"], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), mean64([states[100], states[150]]))


def test_composer_weights_only_steps_from_the_name(tmp_path, capsys):
    """``save_weights_only``: no timestamp; the step is ``ba{B}`` in the name."""
    states = {}
    for e, b in ((1, 40), (2, 80)):
        states[b] = model_state(b, "model.")
        torch.save({"state": {"model": states[b], "integrations": {}, "metadata": {}}},
                   tmp_path / f"ep{e}-ba{b}-rank0.pt")  # fmt: skip
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path, "--last", "1", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), states[80])


def test_composer_ema_algorithm_both_copies(tmp_path, capsys):
    """Composer's EMA swaps the EMA into ``state.model`` at checkpoint time
    (``ema_weights_active``) and stores the training weights in its algorithm state."""
    raw, ema = [], []
    run = tmp_path / "run"
    run.mkdir()
    for e, b in ((1, 10), (2, 20)):
        trained = model_state(b + 100, "model.")
        path = run / f"ep{e}-ba{b}-rank0.pt"
        stored = {
            "repr": "EMA(half_life='1000ba')", "ema_weights_active": True, "ema_started": True,
            "ema_model": {"named_parameters_dict": trained, "named_buffers_dict": {}},
        }  # fmt: skip
        ema.append(composer_save(path, e, b, stored))
        raw.append(trained)
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", run, "-o", out], capsys)
    assert_one_line_error(r, 2, "--variant raw", "--variant ema", "Composer")
    for variant, states in (("raw", raw), ("ema", ema)):
        r = run_wa(["average", run, "-o", out, "--force", "--variant", variant], capsys)
        assert r.code == 0, r.stderr
        assert_equal_states(load_file(out), mean64(states))
        assert f"read the {variant if variant == 'raw' else 'EMA'} weights" in r.stdout


# --- NeMo ---------------------------------------------------------------------------------------


def nemo_save(path: Path, seed: int, mode: str = "w:") -> dict[str, torch.Tensor]:
    state = model_state(seed)
    weights = io.BytesIO()
    torch.save(state, weights)
    config = b"target: nemo.collections.asr.models.EncDecCTCModel\n"
    with tarfile.open(path, mode) as tar:
        for name, data in (
            ("./model_config.yaml", config),
            ("./model_weights.ckpt", weights.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return state


def test_nemo_read_in_place(tmp_path, capsys):
    states = [nemo_save(tmp_path / f"model_{i}.nemo", i) for i in (1, 2, 3)]
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(out), mean64(states))


def test_nemo_compressed_refused_with_the_command_that_extracts_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = nemo_save(tmp_path / "old.nemo", 5, "w:gz")
    r = run_wa(["average", "old.nemo", "-o", "avg.safetensors"], capsys)
    assert_one_line_error(r, 3, "gzip-compressed", "tar -xzf")
    command = r.stderr.split("extract it with: ")[1].split(" (then pass")[0]
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    extracted = r.stderr.split("(then pass '")[1].split("'")[0]
    r = run_wa(["average", extracted, "-o", "avg.safetensors"], capsys)
    assert r.code == 0, r.stderr
    assert_equal_states(load_file(tmp_path / "avg.safetensors"), state)


def test_nemo_dcp_weights_name_the_extraction(tmp_path, capsys):
    path = tmp_path / "dist.nemo"
    with tarfile.open(path, "w:") as tar:
        for name in ("model_config.yaml", "model_weights/.metadata", "model_weights/__0_0.distcp"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    r = run_wa(["average", path, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "model_weights/", "tar -xf")


@pytest.mark.parametrize("flag", [["--variant", "ema"]])
def test_variant_ema_on_a_plain_checkpoint_is_refused(tmp_path, capsys, flag):
    torch.save({"model": model_state(1)}, tmp_path / "a.pt")
    r = run_wa(["average", tmp_path / "a.pt", *flag, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 2, "no EMA copy")
