"""Checkpoints holding both the raw (online) and the EMA weights: ``--variant raw|ema``.

Without the flag each is refused in one line naming both choices; with it, the output is the
float64 mean of the chosen copy. ema-pytorch is installed, so its files are written by its own
``EMA`` module. timm, Lightning, torch-ema and diffusers do not install beside the CPU torch here;
their layouts are reproduced by hand from their saving code:

* timm ``CheckpointSaver._save``: ``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``,
  ``args`` (a Namespace), ``state_dict_ema`` (``get_state_dict(model_ema)``), ``metric``;
* Lightning ``WeightAveraging.on_save_checkpoint``: ``current_model_state`` = the trained
  ``state_dict``, ``state_dict`` = the average model's ``module.*`` entries without ``module.``,
  ``averaging_state`` = its other entries (``n_averaged``);
* torch-ema ``ExponentialMovingAverage.state_dict``: ``decay``, ``num_updates``,
  ``shadow_params`` (``[p.clone().detach() for p in parameters]``, the list passed in, i.e.
  ``model.parameters()``: no buffers, no names), ``collected_params``; diffusers
  ``EMAModel.state_dict``: ``decay``, ``min_decay``, ``optimization_step``, ``update_after_step``,
  ``use_ema_warmup``, ``inv_gamma``, ``power``, ``shadow_params`` (same list). Users save it beside
  ``model.state_dict()``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import assert_one_line_error, run_wa
from wa_cli.errors import WaError
from wa_cli.io.reader import ReadOptions, open_checkpoint


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4))


def train_step(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3))  # moves the BatchNorm statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def mean64(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = states[-1][k]  # non-float: copied from the last input
    return out


def assert_states(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(out) == set(expected), set(out) ^ set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v, rtol=1e-6, atol=1e-7)


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def check_both(run: Path, out: Path, raw: list, ema: list, capsys, *names: str) -> None:
    """No flag: one line naming both choices; each flag: the mean of that copy."""
    r = run_wa(["average", run, "-o", out], capsys)
    assert_one_line_error(r, 2, "--variant raw", "--variant ema", *names)
    for variant, states in (("raw", raw), ("ema", ema)):
        r = run_wa(["average", run, "--variant", variant, "-o", out, "--force"], capsys)
        assert r.code == 0, r.stderr
        assert_states(load_file(out), mean64(states))
        assert f"read the {'EMA' if variant == 'ema' else 'raw'} weights" in r.stdout


def test_timm_state_dict_ema(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    raw, ema = [], []
    for epoch in range(3):
        model, model_ema = net(epoch), net(epoch + 50)
        raw.append(clone(model.state_dict()))
        ema.append(clone(model_ema.state_dict()))
        torch.save(
            {"epoch": epoch, "arch": "resnet18", "state_dict": model.state_dict(),
             "optimizer": {"state": {}, "param_groups": []}, "version": 2,
             "args": argparse.Namespace(model="resnet18"), "state_dict_ema": model_ema.state_dict(),
             "metric": 50.0 + epoch},
            run / f"checkpoint-{epoch}.pth.tar",
        )  # fmt: skip
    check_both(run, tmp_path / "avg.safetensors", raw, ema, capsys, "'state_dict_ema'")


def test_lightning_weight_averaging(tmp_path, capsys):
    run = tmp_path / "checkpoints"
    run.mkdir()
    raw, ema = [], []
    for step in (10, 20):
        model, average = net(step), net(step + 1)
        current = {f"model.{k}": v for k, v in clone(model.state_dict()).items()}
        averaged = {f"model.{k}": v for k, v in clone(average.state_dict()).items()}
        raw.append(current)
        ema.append(averaged)
        torch.save(
            {"epoch": 0, "global_step": step, "state_dict": averaged,
             "current_model_state": current,
             "averaging_state": {"n_averaged": torch.tensor(step)},
             "optimizer_states": [], "lr_schedulers": [], "callbacks": {}},
            run / f"epoch=0-step={step}.ckpt",
        )  # fmt: skip
    check_both(run, tmp_path / "avg.safetensors", raw, ema, capsys, "'current_model_state'")


def test_ema_pytorch_written_by_ema_pytorch(tmp_path, capsys):
    """ema-pytorch's own ``EMA.state_dict()``: ``online_model.*`` and ``ema_model.*``."""
    ema_pytorch = pytest.importorskip("ema_pytorch")
    model = net(0)
    ema = ema_pytorch.EMA(model, beta=0.5, update_after_step=0, update_every=1)
    run = tmp_path / "run"
    run.mkdir()
    raw_states, ema_states = [], []
    for step in range(1, 4):
        train_step(model, step)
        ema.update()
        torch.save(ema.state_dict(), run / f"ema_{step}.pt")
        raw_states.append(clone(model.state_dict()))
        ema_states.append(clone(ema.ema_model.state_dict()))
    assert not torch.equal(raw_states[-1]["0.weight"], ema_states[-1]["0.weight"])
    check_both(run, tmp_path / "avg.safetensors", raw_states, ema_states, capsys, "ema_model")


def torch_ema_state(params: list[torch.Tensor], updates: int) -> dict:
    return {"decay": 0.99, "num_updates": updates, "shadow_params": params,
            "collected_params": None}  # fmt: skip


def diffusers_ema_state(params: list[torch.Tensor], updates: int) -> dict:
    return {"decay": 0.9999, "min_decay": 0.0, "optimization_step": updates,
            "update_after_step": 0, "use_ema_warmup": False, "inv_gamma": 1.0, "power": 2 / 3,
            "shadow_params": params}  # fmt: skip


@pytest.mark.parametrize("ema_state", [torch_ema_state, diffusers_ema_state])
def test_shadow_params_matched_to_the_model(tmp_path, capsys, ema_state):
    """``shadow_params`` follows ``model.parameters()``: BatchNorm statistics stay the model's."""
    run = tmp_path / "run"
    run.mkdir()
    raw, ema = [], []
    for step in (100, 200, 300):
        model, shadow_model = net(step), net(step + 7)
        train_step(model, step)
        shadow = [p.detach().clone() for p in shadow_model.parameters()]
        state = clone(model.state_dict())
        names = [n for n, _ in model.named_parameters()]
        raw.append(state)
        ema.append({**state, **dict(zip(names, shadow, strict=True))})
        torch.save({"model": state, "ema": ema_state(shadow, step), "step": step},
                   run / f"ckpt_{step}.pt")  # fmt: skip
    check_both(run, tmp_path / "avg.safetensors", raw, ema, capsys, "'ema.shadow_params'")


def test_shadow_params_of_another_parameter_list_refused(tmp_path):
    """A list made from only some parameters cannot be placed: refused, never misaligned."""
    model = net(1)
    trainable = [p.detach().clone() for p in list(model.parameters())[2:]]
    path = tmp_path / "a.pt"
    torch.save({"model": model.state_dict(), "ema": torch_ema_state(trainable, 5)}, path)
    with pytest.raises(WaError, match="do not match"):
        open_checkpoint(path, options=ReadOptions(variant="ema"))
    raw = open_checkpoint(path, options=ReadOptions(variant="raw"))
    assert torch.equal(raw.tensor("0.weight"), model.state_dict()["0.weight"])


def test_variant_is_checked_and_key_still_wins(tmp_path):
    model, model_ema = net(0), net(1)
    path = tmp_path / "t.pth.tar"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": model_ema.state_dict()}, path)
    with pytest.raises(WaError, match="variant must be raw or ema"):
        ReadOptions(variant="both")
    ckpt = open_checkpoint(path, options=ReadOptions(key="state_dict_ema"))
    assert torch.equal(ckpt.tensor("0.weight"), model_ema.state_dict()["0.weight"])
    ckpt = open_checkpoint(path, options=ReadOptions(variant="ema"))
    assert torch.equal(ckpt.tensor("0.weight"), model_ema.state_dict()["0.weight"])
    assert any("state_dict_ema" in n for n in ckpt.notes)
    with pytest.raises(WaError, match="pass key or variant, not both"):
        open_checkpoint(path, options=ReadOptions(key="state_dict", variant="ema"))


def test_only_the_ema_saved_is_read_and_said(tmp_path, capsys):
    """``state_dict_ema`` alone (the raw weights not saved): read, the report says EMA."""
    model_ema = net(3)
    path = tmp_path / "ema_only.pth.tar"
    torch.save({"epoch": 1, "state_dict_ema": model_ema.state_dict()}, path)
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", path, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "read the EMA weights ('state_dict_ema'" in r.stdout
    assert_states(load_file(out), clone(model_ema.state_dict()))
    r = run_wa(["average", path, "--variant", "raw", "-o", out, "--force"], capsys)
    assert_one_line_error(r, 2, "holds no raw weights")


def test_ema_command_takes_the_variant(tmp_path, capsys):
    """``wa ema`` reads the chosen copy too (an EMA over the saved EMA copies)."""
    run = tmp_path / "run"
    run.mkdir()
    ema = []
    for step in (1, 2):
        model, model_ema = net(step), net(step + 9)
        ema.append(clone(model_ema.state_dict()))
        saved = {"epoch": step, "state_dict": model.state_dict(),
                 "state_dict_ema": model_ema.state_dict()}  # fmt: skip
        torch.save(saved, run / f"checkpoint-{step}.pth.tar")
    out = tmp_path / "ema.safetensors"
    r = run_wa(["ema", run, "--decay", "0.5", "-o", out], capsys)
    assert_one_line_error(r, 2, "--variant raw", "--variant ema")
    r = run_wa(["ema", run, "--decay", "0.5", "--variant", "ema", "-o", out], capsys)
    assert r.code == 0, r.stderr
    got = load_file(out)["0.weight"].double()
    expected = 0.5 * ema[0]["0.weight"].double() + 0.5 * ema[1]["0.weight"].double()
    torch.testing.assert_close(got, expected.float().double(), rtol=1e-6, atol=1e-7)
