"""`wa ema` through the CLI: PyTorch's EMA as oracle, effective weights, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from tests.oracles import torch_ema

# An earlier output: a safetensors file, which --force may replace (anything else it may not).
KEEP_ME = safetensors_bytes({"keep": torch.zeros(1)})


def test_ema_matches_torch_in_step_order_whatever_the_argument_order(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=4)  # steps 100..400 in metadata
    out = tmp_path / "ema.safetensors"
    r = run_wa(["ema", *reversed(traj.paths), "--decay", "0.9", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    got = load_file(out)
    for key, expected in torch_ema(traj.states, 0.9).items():
        torch.testing.assert_close(got[key], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(got["1.num_batches_tracked"], traj.states[-1]["1.num_batches_tracked"])
    report = json.loads(r.stdout)
    assert report["method"] == "ema" and report["inputs"] == [str(p) for p in traj.paths]
    # Effective weights: c_i = 0.1 · 0.9^(3−i) for i ≥ 1, c_0 = 0.9³; they sum to 1.
    assert report["weights"] == pytest.approx([0.729, 0.081, 0.09, 0.1], rel=1e-12)
    assert math.isclose(math.fsum(report["weights"]), 1.0, rel_tol=1e-12)
    with safe_open(out, "pt") as f:
        assert f.metadata()["wa_method"] == "ema"


def test_decay_zero_returns_the_last_checkpoint_bit_for_bit(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=3)
    out = tmp_path / "ema.safetensors"
    r = run_wa(["ema", *traj.paths, "--decay", "0", "-o", out, "-q"], capsys)
    assert r.code == 0, r.stderr
    got, last = load_file(out), load_file(traj.paths[-1])
    assert got.keys() == last.keys()
    for key in last:
        assert got[key].dtype == last[key].dtype
        assert got[key].numpy().tobytes() == last[key].numpy().tobytes(), key


def test_decay_per_step_with_uneven_gaps(tmp_path, capsys):
    steps = [3, 5, 12, 13]
    gen = torch.Generator().manual_seed(0)
    values, paths = [], []
    for step in steps:
        values.append(torch.randn(6, generator=gen))
        paths.append(tmp_path / f"ckpt_{step}.safetensors")  # steps only in the names
        save_file({"w": values[-1]}, paths[-1])
    out = tmp_path / "e.safetensors"
    r = run_wa(["ema", *paths, "--decay-per-step", "0.7", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    e = values[0].double()  # float64 recursion e_i = β_i e_{i−1} + (1 − β_i) θ_i, β_i = d^gap
    for prev, cur, theta in zip(steps, steps[1:], values[1:], strict=False):
        beta = 0.7 ** (cur - prev)
        e = beta * e + (1 - beta) * theta.double()
    torch.testing.assert_close(load_file(out)["w"].double(), e, rtol=1e-6, atol=1e-7)
    weights = json.loads(r.stdout)["weights"]
    assert weights[-1] == pytest.approx(0.3) and math.isclose(sum(weights), 1.0, rel_tol=1e-12)


def test_every_and_alpha_give_lookahead_slow_weights(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=5)
    out = tmp_path / "la.safetensors"
    args = ["ema", *traj.paths, "--every", "2", "--alpha", "0.8", "-o", out, "--json"]
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["inputs"] == [str(traj.paths[i]) for i in (0, 2, 4)]
    phi = traj.states[0]["0.weight"].double()
    for i in (2, 4):
        phi = phi + 0.8 * (traj.states[i]["0.weight"].double() - phi)
    torch.testing.assert_close(load_file(out)["0.weight"].double(), phi, rtol=1e-6, atol=1e-7)
    assert report["params"]["alpha"] == 0.8


def test_text_report_lists_each_weight(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=2)
    out = tmp_path / "e.safetensors"
    r = run_wa(["ema", *traj.paths, "--half-life", "100", "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: ema of 2 input(s)")
    rows = [line.split() for line in r.stdout.splitlines() if "ckpt_" in line]
    # Gap 100 = one half-life: both checkpoints weigh 0.5.
    assert [(row[2], row[3]) for row in rows] == [("100", "0.500000"), ("200", "0.500000")]
    assert "bn-recalibrate" in r.stderr and "bn-recalibrate" not in r.stdout


def test_dtype_and_existing_output_behave_as_in_average(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=2)
    out = tmp_path / "e.safetensors"
    out.write_bytes(KEEP_ME)
    r = run_wa(["ema", *traj.paths, "--decay", "0.5", "-o", out], capsys)
    assert_one_line_error(r, 5, "already exists", "--force")
    assert out.read_bytes() == KEEP_ME
    args = ["ema", *traj.paths, "--decay", "0.5", "-o", out, "--force", "--dtype", "float16"]
    assert run_wa(args, capsys).code == 0
    got = load_file(out)
    assert got["0.weight"].dtype == torch.float16
    expected = (traj.states[0]["0.weight"].double() + traj.states[1]["0.weight"].double()) / 2
    torch.testing.assert_close(got["0.weight"], expected.half(), rtol=1e-3, atol=1e-3)


def test_dry_run_shows_weights_and_writes_nothing(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=3)
    before = sorted(tmp_path.rglob("*"))
    r = run_wa(["ema", *traj.paths, "--decay", "0.5", "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["dry_run"] is True and report["method"] == "ema"
    assert [row["weight"] for row in report["checkpoints"]] == [0.25, 0.25, 0.5]
    assert [row["step"] for row in report["checkpoints"]] == [100, 200, 300]
    assert sorted(tmp_path.rglob("*")) == before


def _stepless(tmp_path: Path) -> list[Path]:
    paths = []
    for i, name in enumerate(("first", "second")):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file({"w": torch.full((2,), float(i))}, paths[-1])  # other bytes: no duplicate
    return paths


def _same_step(tmp_path: Path) -> list[Path]:
    paths = []
    for i, name in enumerate(("a", "b")):
        paths.append(tmp_path / f"{name}.safetensors")
        # Other tensors: the same step with the same tensors would be one checkpoint twice.
        save_file({"w": torch.full((2,), float(i))}, paths[-1], metadata={"step": "7"})
    return paths


EMA_ERRORS = [
    # (inputs, flags, exit code, fragments of the one error line)
    ("traj", ["--decay", "1.5"], 2, ["--decay must be in [0, 1]", "1.5"]),
    ("traj", ["--decay", "-0.1"], 2, ["--decay must be in [0, 1]"]),
    ("traj", ["--decay-per-step", "2"], 2, ["--decay-per-step must be in [0, 1]"]),
    ("traj", ["--half-life", "0"], 2, ["--half-life must be a positive"]),
    ("traj", ["--half-life", "-5"], 2, ["--half-life must be a positive"]),
    ("traj", [], 2, ["exactly one of --decay, --decay-per-step, --half-life"]),
    ("traj", ["--decay", "0.5", "--half-life", "3"], 2, ["exactly one of", "got --decay and"]),
    ("traj", ["--decay", "0.5", "--alpha", "0.5"], 2, ["--alpha or --decay"]),
    ("traj", ["--alpha", "0"], 2, ["--alpha must be in (0, 1]"]),
    ("traj", ["--decay", "abc"], 2, ["--decay"]),
    ("stepless", ["--decay-per-step", "0.9"], 2, ["no step numbers", "--decay"]),
    ("stepless", ["--half-life", "10"], 2, ["no step numbers"]),
    ("same_step", ["--decay", "0.5"], 2, ["share step 7", "--order"]),
    ("same_step", ["--order", "given", "--half-life", "3"], 2, ["strictly increasing"]),
    ("traj", ["--decay", "0.5", "--to-step", "50"], 2, ["keeps no checkpoint"]),
    ("traj", ["--decay", "0.5", "--top-k", "1"], 2, ["--top-k needs a metric"]),
    ("traj", ["--decay", "0.5", "--top-k", "1", "--metric", "val_loss"], 3, ["val_loss"]),
]


@pytest.mark.parametrize("which, flags, code, fragments", EMA_ERRORS)
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, which, flags, code, fragments):
    inputs = {
        "traj": lambda: make_trajectory(tmp_path / "in", n=3).paths,
        "stepless": lambda: _stepless(tmp_path),
        "same_step": lambda: _same_step(tmp_path),
    }[which]()
    out = tmp_path / "o.safetensors"
    r = run_wa(["ema", *inputs, *flags, "-o", out], capsys)
    assert_one_line_error(r, code, *fragments)
    assert not out.exists()
