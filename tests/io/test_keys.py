"""--key a.b.c, --strip-prefix (any, repeatable, auto), --include/--exclude."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, cnn_state, run_wa
from wa_cli.errors import WaError
from wa_cli.io.keys import shared_prefix, walk_key, wrapper_prefix
from wa_cli.io.reader import ReadOptions, open_checkpoint, open_checkpoints

SWA_KEY = "callbacks.StochasticWeightAveraging.average_model_state"


def lightning_swa_checkpoint(path, seed: int):
    """Lightning's layout with its SWA callback: the averaged LightningModule's state dict sits
    under callbacks[state_key]['average_model_state'], next to a ModelCheckpoint state whose key
    holds dots and braces."""
    live = {f"model.{k}": v for k, v in cnn_state(seed).items()}
    averaged = {f"model.{k}": v for k, v in cnn_state(seed + 10).items()}
    torch.save(
        {
            "epoch": 9,
            "global_step": 300,
            "state_dict": live,
            "callbacks": {
                "StochasticWeightAveraging": {
                    "n_averaged": 4,
                    "latest_update_epoch": 9,
                    "scheduler_state": None,
                    "average_model_state": averaged,
                },
                "ModelCheckpoint{'monitor': 'val.loss', 'mode': 'min'}": {
                    "monitor": "val.loss",
                    "current_score": torch.tensor(0.25),
                },
            },
        },
        path,
    )
    return live, averaged


def test_key_walks_nested_dicts_to_lightning_swa_state(tmp_path):
    live, averaged = lightning_swa_checkpoint(tmp_path / "last.ckpt", 0)
    ckpt = open_checkpoint(tmp_path / "last.ckpt", key=SWA_KEY)
    assert torch.equal(ckpt.tensor("model.4.weight"), averaged["model.4.weight"])
    assert ckpt.metadata["val.loss"] == "0.25"
    assert torch.equal(open_checkpoint(tmp_path / "last.ckpt").tensor("model.4.weight"),
                       live["model.4.weight"])  # fmt: skip
    with pytest.raises(WaError, match=r"no entry 'nope' at entry 'callbacks'.*Stochastic"):
        open_checkpoint(tmp_path / "last.ckpt", key="callbacks.nope")


def test_walk_key_prefers_the_longest_dotted_key():
    tree = {"a.b": {"c": 1}, "a": {"b": {"c": 2}}}
    assert walk_key(tree, "a.b.c", "x") == 1
    assert (
        walk_key({"ModelCheckpoint{'m': 'v.l'}": {"s": 3}}, "ModelCheckpoint{'m': 'v.l'}.s", "x")
        == 3
    )


def test_cli_averages_lightning_swa_states_with_auto_prefix(tmp_path, capsys):
    avgs = [lightning_swa_checkpoint(tmp_path / f"r{i}.ckpt", i)[1] for i in range(2)]
    out = tmp_path / "o.safetensors"
    args = ["average", tmp_path / "r0.ckpt", tmp_path / "r1.ckpt", "--key", SWA_KEY]
    result = run_wa([*args, "--strip-prefix", "auto", "-o", out], capsys)
    assert result.code == 0, result.stderr
    got = load_file(out)
    assert "4.weight" in got and not any(k.startswith("model.") for k in got)
    expected = (avgs[0]["model.4.weight"].double() + avgs[1]["model.4.weight"].double()) / 2
    torch.testing.assert_close(got["4.weight"].double(), expected, rtol=1e-6, atol=1e-7)


def test_strip_prefix_any_and_repeatable(tmp_path):
    state = cnn_state(0)
    save_file({f"module._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "a.safetensors")
    save_file({f"model.{k}": v for k, v in state.items()}, tmp_path / "b.safetensors")
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    opts = ReadOptions(strip_prefixes=["model.", "_orig_mod.", "module."])
    a, b = open_checkpoints(paths, options=opts)
    assert set(a.keys()) == set(b.keys()) == set(state)
    assert any("stripped" in n for n in a.notes)


def test_auto_strips_only_what_every_input_shares(tmp_path):
    state = cnn_state(0)
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "a.safetensors")
    save_file(dict(state), tmp_path / "b.safetensors")
    a, b = open_checkpoints(
        [tmp_path / "a.safetensors"] * 2, options=ReadOptions(strip_prefixes="auto")
    )
    assert set(a.keys()) == set(state)
    # Mixed inputs share no prefix: auto leaves both alone, and the error names the prefix.
    assert shared_prefix([list(state), [f"module.{k}" for k in state]]) == ""
    assert wrapper_prefix(set(state), {f"module.{k}" for k in state}) == "module."


def test_prefix_mismatch_error_says_strip_prefix(tmp_path, capsys):
    state = cnn_state(0)
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.safetensors")
    save_file(dict(state), tmp_path / "plain.safetensors")
    out = tmp_path / "o.safetensors"
    inputs = [tmp_path / "plain.safetensors", tmp_path / "ddp.safetensors"]
    result = run_wa(["average", *inputs, "-o", out], capsys)
    assert_one_line_error(result, 4, "--strip-prefix module.")
    assert "--keys intersection" not in result.stderr
    result = run_wa(["average", *inputs, "--strip-prefix", "module.", "-o", out], capsys)
    assert result.code == 0, result.stderr
    assert set(load_file(out)) == set(state)


def test_include_and_exclude_choose_keys(tmp_path, capsys):
    state = cnn_state(0)
    for i in range(2):
        save_file(cnn_state(i), tmp_path / f"c{i}.safetensors")
    inputs = [tmp_path / "c0.safetensors", tmp_path / "c1.safetensors"]
    out = tmp_path / "o.safetensors"
    result = run_wa(["average", *inputs, "--exclude", r"^1\.", "-o", out], capsys)
    assert result.code == 0, result.stderr
    assert set(load_file(out)) == {k for k in state if not k.startswith("1.")}
    result = run_wa(
        ["ema", *inputs, "--decay", "0.5", "--include", "weight$", "-o", out, "--force"], capsys
    )
    assert result.code == 0, result.stderr
    assert set(load_file(out)) == {k for k in state if k.endswith("weight")}
    result = run_wa(["average", *inputs, "--include", "nothing", "-o", out, "--force"], capsys)
    assert_one_line_error(result, 3, "keeps no tensor")
    result = run_wa(["average", *inputs, "--include", "(", "-o", out, "--force"], capsys)
    assert_one_line_error(result, 2, "not a regular expression")


BN_USER_CODE = """
import torch
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )


def loader():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 5, 5, generator=g) for _ in range(3)]
"""


def test_bn_recalibrate_auto_prefix_fits_the_model_and_says_so(tmp_path, capsys):
    (tmp_path / "net.py").write_text(BN_USER_CODE)
    state = cnn_state(0)
    torch.save({"global_step": 5, "state_dict": {f"model.{k}": v for k, v in state.items()}},
               tmp_path / "last.ckpt")  # fmt: skip
    out = tmp_path / "bn.safetensors"
    base = ["bn-recalibrate", tmp_path / "last.ckpt", "--model", f"{tmp_path / 'net.py'}:build",
            "--data", f"{tmp_path / 'net.py'}:loader", "-o", out]  # fmt: skip
    r = run_wa(base, capsys)
    assert_one_line_error(r, 4, "--strip-prefix model.")
    r = run_wa([*base, "--strip-prefix", "auto", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert any("removed the prefix 'model.'" in n for n in json.loads(r.stdout)["notes"])
    got = load_file(out)
    assert set(got) == set(state)
    assert torch.equal(got["0.weight"], state["0.weight"])  # only BN buffers change
