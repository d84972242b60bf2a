"""``wa ema --half-life`` says which unit the steps are in, and warns past the run (issue 22, 4).

On ``epoch_{e}`` files the steps are epoch numbers, so a half-life meant in training steps
counts epochs; the report and ``--json`` state the unit, and a half-life longer than the
trajectory's span gets one warning line. Oracle: the EMA recurrence in float64.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_wa

SPAN_WARNING = "longer than the trajectory's span"


def _states(n: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    base = torch.randn(8, 8)
    return [{"w": base + 0.1 * torch.randn(8, 8)} for _ in range(n)]


def _ema(states, steps, half_life: float) -> torch.Tensor:
    e = states[0]["w"].double()
    for prev, step, state in zip(steps[:-1], steps[1:], states[1:], strict=True):
        beta = 0.5 ** ((step - prev) / half_life)
        e = beta * e + (1 - beta) * state["w"].double()
    return e


def _run(args, capsys):
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    warnings = [line for line in r.stderr.splitlines() if SPAN_WARNING in line]
    return report, warnings


def test_epoch_files_say_epochs_and_a_long_half_life_warns(tmp_path, capsys):
    states = _states(5)
    (tmp_path / "run").mkdir()
    for e, state in enumerate(states, start=1):
        save_file(state, tmp_path / "run" / f"epoch_{e}.safetensors")
    out = tmp_path / "ema.safetensors"
    report, warnings = _run(["ema", tmp_path / "run", "--half-life", "46", "-o", out, "--json"],
                            capsys)  # fmt: skip
    assert report["params"]["step_unit"] == "epoch"
    assert "epoch" in report["params"]["step_source"]
    assert any("counted per epoch" in n for n in report["notes"])
    assert len(warnings) == 1 and "46 epochs" in warnings[0] and "4 epochs" in warnings[0]
    assert any(SPAN_WARNING in w for w in report["warnings"])
    want = _ema(states, [1, 2, 3, 4, 5], 46.0)
    torch.testing.assert_close(load_file(out)["w"].double(), want, rtol=1e-6, atol=1e-7)
    # The unit is recorded in the output's metadata too (its wa_params).
    from safetensors import safe_open

    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()["wa_params"])["step_unit"] == "epoch"


@pytest.mark.parametrize(
    ("name", "extra", "unit"),
    [
        ("ep{i}.pt", {"epoch": "{i}"}, "epoch"),  # bare numbers that equal the recorded epoch
        ("ckpt_{i}.pt", {}, "unknown"),  # bare numbers, no unit said anywhere
        ("model.pt", {"global_step": "{s}"}, "step"),  # recorded inside: steps
    ],
)
def test_the_unit_follows_where_the_steps_came_from(tmp_path, capsys, name, extra, unit):
    states = _states(3)
    paths = []
    for i, state in enumerate(states, start=1):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        fill = {"i": i, "s": 100 * i}
        obj = {"state_dict": state, **{k: int(v.format(**fill)) for k, v in extra.items()}}
        path = folder / name.format(**fill)
        torch.save(obj, path)
        paths.append(path)
    report, warnings = _run(["ema", *paths, "--half-life", "1", "--order", "given",
                             "-o", tmp_path / "o.safetensors", "--json"], capsys)  # fmt: skip
    assert report["params"]["step_unit"] == unit
    assert not warnings  # a half-life of 1 is within every span here


def test_a_half_life_within_the_span_of_real_steps_does_not_warn(tmp_path, capsys):
    states = _states(3)
    (tmp_path / "run").mkdir()
    for i, state in enumerate(states):
        save_file(state, tmp_path / "run" / f"c{i}.safetensors", metadata={"step": str(500 * i)})
    out = tmp_path / "ema.safetensors"
    report, warnings = _run(["ema", tmp_path / "run", "--half-life", "400", "-o", out, "--json"],
                            capsys)  # fmt: skip
    assert report["params"]["step_unit"] == "step" and not warnings
    assert any("counted per training step" in n for n in report["notes"])
    want = _ema(states, [0, 500, 1000], 400.0)
    torch.testing.assert_close(load_file(out)["w"].double(), want, rtol=1e-6, atol=1e-7)
