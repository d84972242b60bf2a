"""DCP app states (issue 20 item 3): only the model's weights are averaged, never the optimizer.

Every folder here is written by ``torch.distributed.checkpoint.save`` itself (one process, no
process group) from a real model trained a few steps with a real Adam optimizer. The app-state
shapes around the model are reproduced by hand from each library's saving code, since
torchtitan, OLMo-core and Megatron-core do not install here:

* accelerate / hand loops: ``dcp.save({"model": model.state_dict(), "optimizer": ...})``;
* torchtitan ``CheckpointManager``: the model's state dict flattened into the top level beside
  ``optimizer``, ``lr_scheduler``, ``dataloader`` and ``train_state`` (whose ``step`` is a 0-d
  int32 tensor in older releases, an int in newer ones), in ``step-N/``;
* OLMo-core: ``stepN/model_and_optim/`` holding ``model.*`` and ``optim.*``, beside ``train/``;
* Megatron-core ``torch_dist`` (and NeMo 2's ``weights/``): model keys at the top level with
  layers stacked as one ``[L, ...]`` tensor, ``optimizer.state.exp_avg.*`` tensors, the
  ``rng_state`` and ``*._extra_state`` sharded objects (bytes), and ``common.pt`` +
  ``metadata.json`` beside the ``.distcp`` files.

The oracle is the float64 mean of the model's own ``state_dict()`` at each step.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import assert_one_line_error, run_wa
from wa_cli.io.reader import open_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict  # noqa: E402


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def train(steps: int) -> list[tuple[dict[str, torch.Tensor], dict[str, object], nn.Module]]:
    """(model state, optimizer state by parameter name, model) after each of ``steps`` steps."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out.append((state, get_optimizer_state_dict(model, opt), model))
    return out


def mean64(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The float64 mean of every float key, cast back; non-float keys from the last state."""
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            acc = torch.stack([s[key].double() for s in states]).mean(0)
            out[key] = acc.to(last.dtype)
        else:
            out[key] = last
    return out


def assert_model_average(path: Path, states: list[dict[str, torch.Tensor]]) -> None:
    got, want = load_file(path), mean64(states)
    assert set(got) == set(want)  # exactly the model's keys: no optimizer entry
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)
    model = tiny_model()
    model.load_state_dict(got, strict=True)


def save_app_states(root: Path, steps: int = 3) -> list[dict[str, torch.Tensor]]:
    states = []
    for i, (state, optim, _) in enumerate(train(steps)):
        dcp.save({"model": state, "optimizer": optim}, checkpoint_id=str(root / f"step_{i + 1}"))
        states.append(state)
    return states


def test_model_optimizer_app_state_averages_only_the_model(tmp_path, capsys):
    states = save_app_states(tmp_path / "run")
    ckpt = open_checkpoint(tmp_path / "run" / "step_1")
    assert set(ckpt.keys()) == set(states[0])
    assert "'model.' removed" in ckpt.notes[0] and "optimizer (" in ckpt.notes[0]
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "run", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "took the 'model' sub-tree" in r.stdout and "left out optimizer" in r.stdout
    assert_model_average(out, states)


def test_key_picks_any_sub_tree_and_strip_prefix_works(tmp_path, capsys):
    states = save_app_states(tmp_path / "run", 2)
    folders = sorted((tmp_path / "run").iterdir())
    ckpt = open_checkpoint(folders[0], key="optimizer")
    assert ckpt.keys() and all(k.startswith("state.") for k in ckpt.keys())
    # --key model then --strip-prefix of a layer index: the rename reaches the reads.
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", *folders, "--key", "model", "--strip-prefix", "0.", "-o", out], capsys)
    assert r.code == 0, r.stderr
    got = load_file(out)
    assert "weight" in got and "1.running_mean" in got
    torch.testing.assert_close(got["weight"], mean64(states)["0.weight"])


def test_include_and_exclude_see_the_model_names(tmp_path, capsys):
    states = save_app_states(tmp_path / "run", 2)
    out = tmp_path / "avg.safetensors"
    args = ["average", tmp_path / "run", "--include", r"^0\.", "--exclude", "bias", "-o", out]
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    got = load_file(out)
    assert set(got) == {"0.weight"}
    torch.testing.assert_close(got["0.weight"], mean64(states)["0.weight"])


def test_strip_prefix_on_dcp_in_every_command(tmp_path, capsys):
    """Before: KeyError in read_into for any --strip-prefix on a DCP input."""
    folders = []
    for i, (state, _, _) in enumerate(train(2)):
        folder = tmp_path / f"s{i}"
        dcp.save({f"module.{k}": v for k, v in state.items()}, checkpoint_id=str(folder))
        folders.append(folder)
    for strip in ("auto", "module."):
        out = tmp_path / f"avg_{strip}.safetensors"
        r = run_wa(["average", *folders, "--strip-prefix", strip, "-o", out], capsys)
        assert r.code == 0, r.stderr
        assert "0.weight" in load_file(out)
        r = run_wa(["inspect-entropy", folders[0], "--strip-prefix", strip, "--json"], capsys)
        assert r.code == 0, r.stderr
        graft = tmp_path / f"graft_{strip}.safetensors"
        args = ["graft", *folders, "--strip-prefix", strip, "-o", graft]
        r = run_wa(args, capsys)
        assert r.code == 0, r.stderr


def test_unclassified_sub_tree_beside_model_is_refused(tmp_path, capsys):
    (state, optim, _) = train(1)[0]
    folder = tmp_path / "d"
    ema = {k: v + 1 for k, v in state.items()}
    dcp.save({"model": state, "ema": ema, "optimizer": optim}, checkpoint_id=str(folder))
    r = run_wa(["average", folder, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "'ema'", "--key model", "--key ema")
    assert not (tmp_path / "o.safetensors").exists()
    out = tmp_path / "ema.safetensors"
    r = run_wa(["average", folder, "--key", "ema", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert torch.equal(load_file(out)["0.weight"], ema["0.weight"])


@pytest.mark.parametrize("step_as", ["tensor", "int"])
def test_torchtitan_step_folders(tmp_path, capsys, step_as):
    states = []
    for i, (state, optim, _) in enumerate(train(3)):
        step = 10 * (i + 1)
        saved = {
            **state,  # torchtitan flattens the model into the top level
            "optimizer": optim,
            "lr_scheduler": {"lr_scheduler_0": {"last_epoch": step, "base_lrs": [0.05]}},
            "dataloader": {"dp_rank_0": io.BytesIO(b"loader state").getvalue()},
            "train_state": {
                "step": torch.tensor(step, dtype=torch.int32) if step_as == "tensor" else step,
                "ntokens_seen": torch.tensor(1000 * step),
            },
        }
        dcp.save(saved, checkpoint_id=str(tmp_path / "checkpoint" / f"step-{step}"))
        states.append(state)
    ckpt = open_checkpoint(tmp_path / "checkpoint" / "step-20")
    assert ckpt.metadata["step"] == "20"
    assert set(ckpt.keys()) == set(states[0])
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "checkpoint", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert "optimizer (" in " ".join(report["notes"]) and "train_state (" in " ".join(
        report["notes"]
    )
    assert_model_average(out, states)
    r = run_wa(["ema", tmp_path / "checkpoint", "--half-life", "10", "--dry-run"], capsys)
    assert r.code == 0, r.stderr
    assert "took the model keys beside the training state of step-10" in r.stdout
    assert "left out dataloader (1), lr_scheduler (" in r.stdout


def test_trainer_fsdp_checkpoint_folders(tmp_path, capsys):
    """accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer`` (SHARDED_STATE_DICT), as the HF
    Trainer calls them: ``checkpoint-N/pytorch_model_fsdp_0/`` holds ``{"model": ...}`` and
    ``optimizer_0/`` holds ``{"optimizer": ...}``, beside ``trainer_state.json``."""
    states = []
    for i, (state, optim, _) in enumerate(train(2)):
        folder = tmp_path / "out" / f"checkpoint-{5 * (i + 1)}"
        dcp.save({"model": state}, checkpoint_id=str(folder / "pytorch_model_fsdp_0"))
        dcp.save({"optimizer": optim}, checkpoint_id=str(folder / "optimizer_0"))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5 * (i + 1)}))
        torch.save({"last_epoch": i}, folder / "scheduler.pt")
        states.append(state)
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "out", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "'model.' removed" in r.stdout
    assert_model_average(out, states)


def test_olmo_core_step_folders(tmp_path, capsys):
    states = []
    for i, (state, optim, _) in enumerate(train(2)):
        step_dir = tmp_path / "run" / f"step{100 * (i + 1)}"
        dcp.save({"model": state, "optim": optim}, checkpoint_id=str(step_dir / "model_and_optim"))
        (step_dir / "train").mkdir()
        torch.save({"global_step": 100 * (i + 1)}, step_dir / "train" / "rank0.pt")
        states.append(state)
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "run", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "left out optim (" in r.stdout
    assert_model_average(out, states)


def megatron_state(state: dict[str, torch.Tensor], optim: dict[str, object]) -> dict[str, object]:
    """A ``torch_dist`` sharded state dict as Megatron-core saves it: layers stacked [L, ...]."""
    opt_state = optim["state"]
    assert isinstance(opt_state, dict)
    return {
        "embedding.weight": state["0.weight"],
        "decoder.layers.weight": torch.stack([state["3.weight"], state["3.weight"] * 2]),
        "decoder.final_norm.weight": state["1.weight"],
        "decoder.layers.self_attention._extra_state/shard_0_1": io.BytesIO(b"fp8 meta"),
        "optimizer": {"state": {"exp_avg": {"embedding.weight": opt_state["0.weight"]["exp_avg"]}}},
        "rng_state/shard_0.0_1.1": [{"random_rng_state": 5}],
    }


def test_megatron_torch_dist_folders(tmp_path, capsys):
    wanted = []
    for i, (state, optim, _) in enumerate(train(2)):
        folder = tmp_path / "ckpt" / f"iter_{i + 1:07d}"
        saved = megatron_state(state, optim)
        dcp.save(saved, checkpoint_id=str(folder))
        torch.save({"iteration": i + 1, "checkpoint_version": 3.0}, folder / "common.pt")
        (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
        wanted.append({k: v for k, v in saved.items() if isinstance(v, torch.Tensor)})
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", tmp_path / "ckpt", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "_extra_state (1)" in r.stdout and "optimizer (" in r.stdout
    got, want = load_file(out), mean64(wanted)
    assert set(got) == {"embedding.weight", "decoder.layers.weight", "decoder.final_norm.weight"}
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_tutorial_app_wrapper(tmp_path):
    """torch's DCP tutorial saves ``{"app": AppState}`` whose state is ``{model, optim}``."""
    (state, optim, _) = train(1)[0]
    dcp.save({"app": {"model": state, "optim": optim}}, checkpoint_id=str(tmp_path / "d"))
    ckpt = open_checkpoint(tmp_path / "d")
    assert set(ckpt.keys()) == set(state)
