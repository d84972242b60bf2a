"""wa_cli.methods.ema through the engine: EMA files and generators vs PyTorch and float64."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.helpers import make_trajectory
from tests.oracles import ema_recursion64, torch_ema
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.ema import ema, ema_to_file


def save_steps(folder: Path, steps: list[int], seed: int = 0) -> list[Path]:
    """One random float32 tensor 'w' and an int64 counter per checkpoint, steps in metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for step in steps:
        path = folder / f"at_{step}.safetensors"
        state = {"w": torch.randn(4, 5, generator=gen), "count": torch.tensor([step])}
        save_file(state, path, metadata={"format": "pt", "step": str(step)})
        paths.append(path)
    return paths


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_ema_file_matches_torch_get_ema_multi_avg_fn(tmp_path: Path, decay: float) -> None:
    traj = make_trajectory(tmp_path / "in", n=4)
    report = ema_to_file(traj.paths, tmp_path / "ema.safetensors", decay=decay, device="cpu")
    got = load_file(tmp_path / "ema.safetensors")
    expected = torch_ema(traj.states, decay)
    assert set(expected) < set(got)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)
    # Non-float buffers are copied from the last checkpoint, never interpolated.
    assert torch.equal(got["1.num_batches_tracked"], traj.states[-1]["1.num_batches_tracked"])
    assert report.method == "ema"
    assert math.isclose(math.fsum(report.input_weights), 1.0, rel_tol=1e-12)


def test_decay_zero_is_the_last_checkpoint_bit_for_bit(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "in", n=3)
    out = tmp_path / "ema.safetensors"
    ema_to_file(traj.paths, out, decay=0.0, device="cpu")
    with safe_open(out, "pt") as got, safe_open(traj.paths[-1], "pt") as last:
        assert sorted(got.keys()) == sorted(last.keys())
        for key in last.keys():  # noqa: SIM118 - safe_open has no __iter__
            a, b = got.get_tensor(key), last.get_tensor(key)
            assert a.dtype == b.dtype
            assert a.numpy().tobytes() == b.numpy().tobytes(), key


def test_decay_one_is_the_first_checkpoint(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "in", n=3)
    got = dict(ema(traj.paths, decay=1.0))
    assert torch.equal(got["0.weight"], traj.states[0]["0.weight"])


def test_decay_per_step_with_uneven_gaps_matches_a_float64_recursion(tmp_path: Path) -> None:
    steps = [0, 1, 4, 10, 11]
    paths = save_steps(tmp_path, steps)
    d = 0.8
    ema_to_file(paths, tmp_path / "e.safetensors", decay_per_step=d, device="cpu")
    values = [load_file(p)["w"] for p in paths]
    betas = [d ** (b - a) for a, b in zip(steps[:-1], steps[1:], strict=True)]
    expected = ema_recursion64(values, betas)
    # Hand check of one β: the gap 4 → 10 decays by 0.8**6.
    assert betas[2] == pytest.approx(0.262144)
    got = load_file(tmp_path / "e.safetensors")["w"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)


def test_half_life_matches_the_recursion_and_steps_can_be_given(tmp_path: Path) -> None:
    paths = save_steps(tmp_path, [10, 20, 50])
    values = [load_file(p)["w"] for p in paths]
    # Explicit steps override the metadata: gaps 5 and 5 with H = 5 halve each time.
    got = dict(ema(paths, half_life=5.0, steps=[0, 5, 10]))["w"]
    torch.testing.assert_close(
        got.double(), ema_recursion64(values, [0.5, 0.5]), rtol=1e-6, atol=1e-7
    )
    got = dict(ema(paths, half_life=10.0))["w"]  # metadata steps: gaps 10 and 30
    expected = ema_recursion64(values, [0.5, 0.5**3])
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)


def test_alpha_is_lookahead_slow_weights(tmp_path: Path) -> None:
    paths = save_steps(tmp_path, [5, 10, 15])
    values = [load_file(p)["w"].double() for p in paths]
    alpha = 0.8
    phi = values[0]
    for theta in values[1:]:
        phi = phi + alpha * (theta - phi)  # the Lookahead update φ ← φ + α(θ − φ)
    got = dict(ema(paths, alpha=alpha))["w"]
    torch.testing.assert_close(got.double(), phi, rtol=1e-6, atol=1e-7)


def test_generator_equals_the_file(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "in", n=3)
    ema_to_file(traj.paths, tmp_path / "e.safetensors", decay=0.7, device="cpu")
    from_file = load_file(tmp_path / "e.safetensors")
    in_memory = dict(ema(traj.paths, decay=0.7))
    assert from_file.keys() == in_memory.keys()
    for key in from_file:
        assert torch.equal(from_file[key], in_memory[key]), key


def test_union_key_is_the_ema_of_the_checkpoints_that_hold_it(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    shared = [torch.randn(3, generator=gen) for _ in range(3)]
    late = [torch.randn(3, generator=gen) for _ in range(2)]
    paths = []
    for i in range(3):
        state = {"shared": shared[i]}
        if i >= 1:
            state["late"] = late[i - 1]  # a key that appears at the second checkpoint
        paths.append(tmp_path / f"c{i}.safetensors")
        save_file(state, paths[-1], metadata={"step": str(i)})
    got = dict(ema(paths, decay=0.5, keys="union"))
    torch.testing.assert_close(got["shared"].double(), ema_recursion64(shared, [0.5, 0.5]))
    # Its EMA starts at its first holder: e = 0.5 θ_1 + 0.5 θ_2 (not renormalised (1/3, 2/3)).
    torch.testing.assert_close(got["late"].double(), ema_recursion64(late, [0.5]))


def test_union_decay_zero_takes_the_last_holder(tmp_path: Path) -> None:
    a = {"w": torch.ones(2), "early": torch.full((2,), 7.0)}
    b = {"w": torch.full((2,), 3.0)}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    got = dict(ema(paths, decay=0.0, keys="union"))
    assert torch.equal(got["w"], b["w"]) and torch.equal(got["early"], a["early"])


def test_provenance_records_the_method_and_decay(tmp_path: Path) -> None:
    paths = save_steps(tmp_path, [1, 2])
    out = tmp_path / "e.safetensors"
    ema_to_file(paths, out, half_life=3.0, command="wa ema test")
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["wa_method"] == "ema" and meta["format"] == "pt"
    params = json.loads(meta["wa_params"])
    assert params["half_life"] == 3.0 and params["steps"] == [1, 2]
    assert json.loads(meta["wa_inputs"]) == [str(p) for p in paths]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decay": 1.5}, "decay must be in [0, 1]"),
        ({"decay": 0.5, "alpha": 0.5}, "alpha or decay"),
        ({}, "exactly one of"),
        ({"half_life": 0.0}, "half_life must be a positive"),
        ({"decay_per_step": 0.9, "steps": [1]}, "got 1 steps for 2 checkpoints"),
        ({"decay_per_step": 0.9, "steps": [5, 5]}, "strictly increasing"),
    ],
)
def test_errors_before_anything_is_written(tmp_path: Path, kwargs: dict, message: str) -> None:
    paths = save_steps(tmp_path, [1, 2])
    with pytest.raises(WaError) as info:
        ema_to_file(paths, tmp_path / "e.safetensors", **kwargs)
    assert message in info.value.message and info.value.code == ExitCode.USAGE
    assert not (tmp_path / "e.safetensors").exists()


def test_step_aware_decay_needs_steps(tmp_path: Path) -> None:
    for name in ("first", "second"):
        save_file({"w": torch.ones(1)}, tmp_path / f"{name}.safetensors")
    paths = [tmp_path / "first.safetensors", tmp_path / "second.safetensors"]
    with pytest.raises(WaError, match="no step numbers"):
        dict(ema(paths, decay_per_step=0.9))
    assert torch.equal(dict(ema(paths, decay=0.5))["w"], torch.ones(1))  # a fixed decay needs none
