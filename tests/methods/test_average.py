"""Averaging against oracles: float64 recomputation, AveragedModel, exact rounding, invariants."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel

from tests.helpers import TOLERANCE, make_trajectory, tiny_cnn
from wa_cli.engine.plan import build_plan
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.run import assemble
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import open_checkpoint
from wa_cli.methods.average import average, average_to_file


def float64_mean(states, weights=None):
    weights = weights or [1.0] * len(states)
    total = sum(weights)
    return {
        k: sum(w * s[k].double() for w, s in zip(weights, states)) / total
        for k, v in states[0].items()
        if v.is_floating_point()
    }


@pytest.mark.parametrize("form", ["file", "sharded", "pt"])
def test_mean_matches_float64_reference_in_every_form(tmp_path, form):
    traj = make_trajectory(tmp_path, n=4, form=form)
    result = dict(average(traj.paths))
    for key, ref in float64_mean(traj.states).items():
        torch.testing.assert_close(result[key].double(), ref, rtol=1e-6, atol=1e-7)
        assert result[key].dtype == torch.float32


def test_weighted_mean_matches_float64_reference(tmp_path):
    traj = make_trajectory(tmp_path, n=3)
    weights = [1.0, 2.0, 0.5]
    result = dict(average(traj.paths, weights=weights))
    for key, ref in float64_mean(traj.states, weights).items():
        torch.testing.assert_close(result[key].double(), ref, **TOLERANCE[torch.float32])


def test_matches_averaged_model_running_mean(tmp_path):
    traj = make_trajectory(tmp_path, n=5)
    model = tiny_cnn(0)
    swa = AveragedModel(model, use_buffers=False)
    for state in traj.states:
        model.load_state_dict(state)
        swa.update_parameters(model)
    result = dict(average(traj.paths))
    for name, param in swa.module.named_parameters():
        torch.testing.assert_close(result[name], param.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_identical_inputs_average_to_themselves_bit_for_bit(tmp_path, dtype):
    traj = make_trajectory(tmp_path, n=1, dtype=dtype)
    for weights in (None, [1.0, 2.0, 1.0, 3.0]):
        result = dict(average([traj.paths[0]] * 4, weights=weights))
        for key, value in traj.states[0].items():
            assert result[key].dtype == value.dtype
            assert torch.equal(result[key], value), key


def test_bf16_output_is_the_correctly_rounded_float64_mean(tmp_path):
    torch.manual_seed(0)
    states = [{"w": torch.randn(200_000).bfloat16()} for _ in range(8)]
    paths = []
    for i, s in enumerate(states):
        save_file(s, tmp_path / f"c{i}.safetensors")
        paths.append(tmp_path / f"c{i}.safetensors")
    result = dict(average(paths))["w"]
    exact = torch.stack([s["w"].double() for s in states]).mean(0).to(torch.bfloat16)
    agree = (result == exact).double().mean().item()
    assert agree >= 0.999, agree
    # A bf16 running sum (what fairseq does) misses this bar by far; the test can fail.
    naive = states[0]["w"].clone()
    for s in states[1:]:
        naive += s["w"]
    assert ((naive / 8) == exact).double().mean().item() < 0.99


def test_num_batches_tracked_keeps_dtype_and_value(tmp_path):
    traj = make_trajectory(tmp_path, n=3)
    last = dict(average(traj.paths))
    assert last["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(last["1.num_batches_tracked"], traj.states[-1]["1.num_batches_tracked"])
    ckpts = [open_checkpoint(p) for p in traj.paths]
    plan = build_plan(ckpts, non_float="first")
    first = dict(assemble(plan, linear_combination(plan, lambda e: [1.0] * len(e.sources))))
    assert torch.equal(first["1.num_batches_tracked"], traj.states[0]["1.num_batches_tracked"])


def test_non_float_error_policy_fails_only_when_inputs_differ(tmp_path):
    traj = make_trajectory(tmp_path, n=2)
    with pytest.raises(WaError, match="num_batches_tracked"):
        build_plan([open_checkpoint(p) for p in traj.paths], non_float="error")
    build_plan([open_checkpoint(traj.paths[0])] * 2, non_float="error")


def test_output_dtype_override_and_precision(tmp_path):
    traj = make_trajectory(tmp_path, n=3)
    result = dict(average(traj.paths, dtype=torch.bfloat16, precision="float32"))
    ref = float64_mean(traj.states)
    for key, value in ref.items():
        assert result[key].dtype == torch.bfloat16
        torch.testing.assert_close(result[key].double(), value, **TOLERANCE[torch.bfloat16])
    assert result["1.num_batches_tracked"].dtype == torch.int64


def test_chunking_does_not_change_the_result(tmp_path):
    traj = make_trajectory(tmp_path, n=3)
    ckpts = [open_checkpoint(p) for p in traj.paths]
    plan = build_plan(ckpts)
    ones = lambda e: [1.0] * len(e.sources)  # noqa: E731
    whole = dict(assemble(plan, linear_combination(plan, ones)))
    tiny = dict(assemble(plan, linear_combination(plan, ones, chunk_elements=7)))
    assert all(torch.equal(whole[k], tiny[k]) for k in whole)


def test_union_averages_each_key_over_its_holders(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "only_a": torch.tensor([4.0])}
    b = {"w": torch.tensor([3.0, 6.0])}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    with pytest.raises(WaError, match="key sets differ") as e:
        dict(average(paths))
    assert e.value.code == ExitCode.INCOMPATIBLE
    union = dict(average(paths, keys="union"))
    assert torch.equal(union["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(union["only_a"], torch.tensor([4.0]))
    assert set(dict(average(paths, keys="intersection"))) == {"w"}


def test_shape_mismatch_names_key_files_and_shapes(tmp_path):
    save_file({"w": torch.ones(2, 3)}, tmp_path / "a.safetensors")
    save_file({"w": torch.ones(3, 2)}, tmp_path / "b.safetensors")
    with pytest.raises(WaError) as e:
        dict(average([tmp_path / "a.safetensors", tmp_path / "b.safetensors"]))
    assert e.value.code == ExitCode.INCOMPATIBLE
    assert "'w': (3, 2) in b.safetensors vs (2, 3) in a.safetensors" in e.value.message


@pytest.mark.parametrize(
    "weights, fragment",
    [
        ([1.0], "weights has 1 values for 2 inputs"),
        ([1.0, -1.0], "non-negative"),
        ([0.0, 0.0], "all zero"),
    ],
)
def test_bad_weights(tmp_path, weights, fragment):
    traj = make_trajectory(tmp_path, n=2)
    with pytest.raises(WaError, match=fragment):
        dict(average(traj.paths, weights=weights))


def test_report_provenance_and_bn_hint(tmp_path):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "avg.safetensors"
    report = average_to_file(traj.paths, out, weights=[1, 3], command="wa average test")
    from safetensors import safe_open

    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["wa_method"] == "weighted_mean"
    assert meta["wa_command"] == "wa average test"
    assert "ckpt_1.safetensors" in meta["wa_inputs"]
    assert report.input_weights == [0.25, 0.75]
    assert report.hints and "bn-recalibrate" in report.hints[0]
    assert report.to_json()["copied"] == 1
    ref = float64_mean(traj.states, [1, 3])
    loaded = load_file(out)
    for k, v in ref.items():
        torch.testing.assert_close(loaded[k].double(), v, **TOLERANCE[torch.float32])


def test_non_finite_values_are_counted(tmp_path):
    save_file({"w": torch.tensor([1.0, float("nan"), float("inf")])}, tmp_path / "a.safetensors")
    save_file({"w": torch.tensor([1.0, 2.0, 3.0])}, tmp_path / "b.safetensors")
    report = average_to_file(
        [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "o.safetensors"
    )
    assert report.stats.non_finite == {"w": 2}
    assert "2 non-finite" in report.warnings[0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_path_matches_the_cpu_path(tmp_path, dtype):
    traj = make_trajectory(tmp_path, n=4, dtype=dtype)
    ckpts = [open_checkpoint(p) for p in traj.paths]
    plan = build_plan(ckpts)
    weights = lambda e: [1.0, 2.0, 0.0, 3.0]  # noqa: E731 - a zero weight skips a read
    cpu = dict(assemble(plan, linear_combination(plan, weights, chunk_elements=16)))
    gpu = dict(
        assemble(
            plan,
            linear_combination(plan, weights, device=torch.device("cuda"), chunk_elements=16),
        )
    )
    for key, value in cpu.items():
        assert gpu[key].device.type == "cpu" and gpu[key].dtype == value.dtype
        torch.testing.assert_close(gpu[key], value, **TOLERANCE[dtype])


def test_package_exports_resolve_lazily():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import sys, wa_cli\n"
        "assert 'torch' not in sys.modules\n"
        "for name in wa_cli.__all__:\n    getattr(wa_cli, name)\n"
        "assert wa_cli.average_to_file.__module__ == 'wa_cli.methods.average'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float64, torch.float16),
    ],
)
def test_mixed_float_dtypes_with_an_explicit_output_dtype(tmp_path, dtypes):
    torch.manual_seed(0)
    values = [torch.randn(1000).to(d) for d in dtypes]
    paths = []
    for i, v in enumerate(values):
        save_file({"w": v, "n": torch.tensor(i)}, tmp_path / f"c{i}.safetensors")
        paths.append(tmp_path / f"c{i}.safetensors")
    with pytest.raises(WaError, match="dtype mismatch"):
        dict(average(paths))
    result = dict(average(paths, dtype=torch.float32))
    expected = torch.stack([v.double() for v in values]).mean(0)
    assert result["w"].dtype == torch.float32
    torch.testing.assert_close(result["w"].double(), expected, rtol=1e-6, atol=1e-7)
    # A small chunk crosses the inputs' different byte sizes at many offsets.
    ckpts = [open_checkpoint(p) for p in paths]
    plan = build_plan(ckpts, dtype=torch.float32)
    chunked = dict(
        assemble(plan, linear_combination(plan, lambda e: [1.0] * len(e.sources), chunk_elements=7))
    )
    assert torch.equal(chunked["w"], result["w"])


def test_report_notes_what_was_left_out_and_counts_every_tensor(tmp_path):
    save_file(
        {"w": torch.ones(2), "only_a": torch.ones(1), "e": torch.empty(0)},
        tmp_path / "a.safetensors",
    )
    save_file({"w": torch.zeros(2), "e": torch.empty(0)}, tmp_path / "b.safetensors")
    report = average_to_file(
        [tmp_path / "a.safetensors", tmp_path / "b.safetensors"],
        tmp_path / "o.safetensors",
        keys="intersection",
    )
    assert any("only_a" in note and "left out 1 key" in note for note in report.notes)
    assert report.stats.combined == 2  # 'w' and the empty 'e'
    torch.save({"state_dict": {"w": torch.ones(2)}, "opt": {"lr": 0.1}}, tmp_path / "c.pt")
    torch.save({"state_dict": {"w": torch.ones(2), "cfg": "x"}}, tmp_path / "d.pt")
    report = average_to_file(
        [tmp_path / "c.pt", tmp_path / "d.pt"], tmp_path / "p.safetensors", keys="strict"
    )
    assert any("'cfg'" in note and "d.pt" in note for note in report.notes)
