"""Grafting checkpoints on disk (Filter Grafting, arXiv 2001.05868): two passes, streamed.

Oracles: numpy's own histogram for entropies, SPEC's closed form for alpha, and a float64
recomputation of u' = alpha u + (1 - alpha) v from the input files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from tests.helpers import TOLERANCE, cnn_state, make_trajectory
from tests.oracles import np_entropy, spec_alpha
from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.names import distinct_names
from wa_cli.io.reader import open_checkpoint
from wa_cli.methods.graft.files import GraftPlan, graft_to_files, output_paths, plan_graft

# An earlier output: a safetensors file, which --force may replace (anything else it may not).
KEEP_ME = safetensors_bytes({"keep": torch.zeros(1)})

# tiny_cnn keys: 0 = Conv2d, 1 = BatchNorm2d, 4 = Linear.
MODULE_OF = {"0": "0.weight", "1": "1.weight", "4": "4.weight"}


def float64_graft(
    u: dict, v: dict, a: float = 0.4, c: float = 500.0, dtype: torch.dtype | None = None
) -> dict:
    """Module rule, recomputed: each module's alpha from its weight's entropies, in float64."""
    out = {}
    for k, t in u.items():
        if not t.is_floating_point():
            out[k] = t
            continue
        w = MODULE_OF[k.rpartition(".")[0]]
        alpha = spec_alpha(np_entropy(u[w]), np_entropy(v[w]), a, c)
        out[k] = (alpha * u[k].double() + (1 - alpha) * v[k].double()).to(dtype or t.dtype)
    return out


def graft_paths(
    inputs: list, output: Path, *, force: bool = False, command: str | None = None, **graft
) -> tuple[GraftPlan, list]:
    """Both passes on the CPU: plan_graft, then graft_to_files with the option objects."""
    plan = plan_graft(inputs, device="cpu", **graft)
    write = WriteOptions.checked(force=force, command=command)
    return plan, graft_to_files(plan, output, ReduceOptions.checked(device="cpu"), write)


def assert_state_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for k, t in expected.items():
        assert actual[k].dtype == t.dtype, k
        if t.is_floating_point():
            torch.testing.assert_close(actual[k], t, **TOLERANCE[t.dtype])
        else:
            assert torch.equal(actual[k], t), k


def test_two_models_write_one_graft_equal_to_float64_recomputation(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "g.safetensors"
    plan, reports = graft_paths(traj.paths, out)
    assert [r.outputs for r in reports] == [[str(out)]]
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    assert_state_close(load_file(out), float64_graft(u, v))
    # The alpha table: one row per module, from its weight.
    assert [(r.name, r.source, len(r.keys)) for r in plan.rows] == [
        ("0", "0.weight", 2), ("1", "1.weight", 4), ("4", "4.weight", 2),
    ]  # fmt: skip
    for row in plan.rows:
        expected = spec_alpha(np_entropy(u[row.source]), np_entropy(v[row.source]))
        assert row.alphas == [pytest.approx(expected, abs=1e-12)]


def test_provenance_records_a_c_rule_and_every_alpha(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "g.safetensors"
    graft_paths(traj.paths, out, a=0.3, c=100.0, command="wa graft ...")
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    params = json.loads(meta["wa_params"])
    assert meta["wa_method"] == "graft" and meta["format"] == "pt"
    assert (params["a"], params["c"], params["rule"]) == (0.3, 100.0, "module")
    assert (params["receiver"], params["donor"]) == ("ckpt_0", "ckpt_1")
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    expected = {m: spec_alpha(np_entropy(u[w]), np_entropy(v[w]), 0.3, 100.0) for m, w in
                MODULE_OF.items()}  # fmt: skip
    assert params["alphas"] == pytest.approx(expected, abs=1e-12)


def test_three_model_ring_against_float64_recomputation(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "in", n=3)
    out = tmp_path / "ring"  # created by the run
    _, reports = graft_paths(traj.paths, out)
    states = [load_file(p) for p in traj.paths]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"ckpt_{i}.grafted.safetensors" for i in range(3)]
    for i in range(3):
        grafted = load_file(out / f"ckpt_{i}.grafted.safetensors")
        # Model i receives from model i - 1 (model 0 from model 2), all from pre-graft weights.
        assert_state_close(grafted, float64_graft(states[i], states[i - 1]))
    assert len(reports) == 3


def test_only_the_entropy_keys_are_read_in_the_first_pass(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=2)
    ckpts = [open_checkpoint(p) for p in traj.paths]
    read: list[str] = []
    for ck in ckpts:
        original = ck.tensor

        def counting(key: str, original=original) -> torch.Tensor:
            read.append(key)
            return original(key)

        ck.tensor = counting  # type: ignore[method-assign]
    plan_graft(ckpts, rule="module")
    assert sorted(read) == sorted(list(MODULE_OF.values()) * 2)


def test_zero_amplitude_is_the_plain_mean_bit_for_bit(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "g.safetensors"
    graft_paths(traj.paths, out, a=0.0)
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    g = load_file(out)
    for k, t in u.items():
        if t.is_floating_point():
            # 0.5 u + 0.5 v in float64 is (u + v) / 2 exactly, rounded once to float32.
            assert torch.equal(g[k], ((t.double() + v[k].double()) / 2).float()), k
        else:
            assert torch.equal(g[k], t), k


def test_output_dtype_and_16_bit_inputs(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=2, dtype=torch.bfloat16)
    out = tmp_path / "g.safetensors"
    graft_paths(traj.paths, out, dtype=torch.float16)
    g = load_file(out)
    assert g["0.weight"].dtype == torch.float16 and g["1.num_batches_tracked"].dtype == torch.int64
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    assert_state_close(g, float64_graft(u, v, dtype=torch.float16))


def test_every_output_is_checked_before_the_first_is_written(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "in", n=3)
    out = tmp_path / "ring"
    out.mkdir()
    (out / "ckpt_2.grafted.safetensors").write_bytes(KEEP_ME)
    with pytest.raises(WaError, match="already exists") as e:
        graft_paths(traj.paths, out)
    assert e.value.code == ExitCode.OUTPUT
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_2.grafted.safetensors"]
    graft_paths(traj.paths, out, force=True)
    assert len(list(out.iterdir())) == 3


def test_ring_output_must_be_a_folder(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=3)
    plan = plan_graft(traj.paths)
    with pytest.raises(WaError, match="must name a folder") as e:
        output_paths(plan, tmp_path / "g.safetensors")
    assert e.value.code == ExitCode.USAGE


def test_same_file_names_in_different_folders_get_distinct_outputs(tmp_path: Path) -> None:
    paths = []
    for run in ("run_a", "run_b", "run_c"):
        (tmp_path / run).mkdir()
        save_file(cnn_state(len(paths)), tmp_path / run / "last.safetensors")
        paths.append(tmp_path / run / "last.safetensors")
    graft_paths(paths, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{run}_last.grafted.safetensors" for run in ("run_a", "run_b", "run_c")
    ]


def test_distinct_names() -> None:
    assert distinct_names([Path("a/x.safetensors"), Path("b/y.pt")]) == ["x", "y"]
    assert distinct_names([Path("r/a/x.safetensors"), Path("r/b/x.safetensors")])[0].endswith("a/x")
    same = distinct_names([Path("a/x.safetensors"), Path("a/x.safetensors")])
    assert len(set(same)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"a": 1.0}, r"a must be in \[0, 1\)"),
        ({"a": -0.1}, r"a must be in \[0, 1\)"),
        ({"c": 0.0}, "c must be"),
        ({"bins": 1}, "bins must be"),
    ],
)
def test_bad_parameters_fail_before_reading(tmp_path: Path, kwargs: dict, match: str) -> None:
    traj = make_trajectory(tmp_path, n=2)
    with pytest.raises(WaError, match=match) as e:
        plan_graft(traj.paths, **kwargs)
    assert e.value.code == ExitCode.USAGE


def test_fewer_than_two_models(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path, n=1)
    with pytest.raises(WaError, match="at least two checkpoints"):
        plan_graft(traj.paths)
